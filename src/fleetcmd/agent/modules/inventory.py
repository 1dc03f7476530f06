"""Package inventory: `inventory` section, sent to `POST /agents/inventory` on start, on its
interval, and at once on `vulnerability-rescan` (row 8), for the engine's CVE matching.

`inventory`: `{"enabled": bool (default true), "interval": seconds (default 3600)}`.
Two sources, one list (the server replaces an agent's inventory whole on each post):
- `dpkg`: `dpkg-query` where it is installed (the dpkg status file when only that is there);
- `python`: the distributions of the agent's interpreter (`importlib.metadata`).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetcmd.agent.modules import ConfigError, SectionModule, flag, seconds
from fleetcmd.agent.processes import run_bounded

log = logging.getLogger("fleetcmd.agent.inventory")

DEFAULT_INTERVAL = 3600.0
DPKG_STATUS = Path("/var/lib/dpkg/status")
DPKG_FORMAT = "${db:Status-Status}\t${Package}\t${Version}\n"
DPKG_TIMEOUT = 60.0
RETRY_AFTER = 300.0
Package = dict[str, str]


class InventoryDisabled(ConfigError):
    """An inventory was asked for while the configuration disables it."""


def parse_dpkg_query(output: str) -> list[Package]:
    """Lines `status<TAB>name<TAB>version` (DPKG_FORMAT); only installed packages count
    (a removed package whose configuration files remain is not on the host)."""
    packages = []
    for line in output.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        status, name, version = (p.strip() for p in parts)
        if status == "installed" and name and version:
            packages.append({"name": name, "version": version, "source": "dpkg"})
    return packages


def dpkg_query() -> list[Package] | None:
    """Installed packages from `dpkg-query`; None when dpkg-query is not installed."""
    exe = shutil.which("dpkg-query")
    if exe is None:
        return None
    done = run_bounded([exe, "-W", "-f", DPKG_FORMAT], DPKG_TIMEOUT, cap=64 * 1024 * 1024)
    if done.timed_out or done.exit_code != 0:
        log.warning("dpkg-query failed (exit %s): %s", done.exit_code, done.text("stderr")[:200])
        return []
    return parse_dpkg_query(done.text())


def dpkg_packages(path: Path = DPKG_STATUS) -> list[Package]:
    """Installed packages from a dpkg status file (streamed: the file can be megabytes)."""
    packages: list[Package] = []
    if not path.exists():
        return packages
    name = version = status = ""
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in (*f, "\n"):
            if line == "\n":
                if name and version and status.endswith(" installed"):
                    packages.append({"name": name, "version": version, "source": "dpkg"})
                name = version = status = ""
            elif line.startswith("Package: "):
                name = line[9:].strip()
            elif line.startswith("Version: "):
                version = line[9:].strip()
            elif line.startswith("Status: "):
                status = line[8:].strip()
    return packages


def python_distributions() -> list[Package]:
    """Distributions importable by this interpreter; the first on the path wins on a clash,
    as it does for imports."""
    import importlib.metadata

    seen: set[str] = set()
    packages = []
    for dist in importlib.metadata.distributions():
        name, version = dist.metadata["Name"], dist.version
        if not name or not version:
            continue
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        packages.append({"name": name, "version": version, "source": "python"})
    return packages


def collect() -> list[Package]:
    dpkg = dpkg_query()
    if dpkg is None:
        dpkg = dpkg_packages()
    return dpkg + python_distributions()


def counts(packages: list[Package]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in packages:
        out[p["source"]] = out.get(p["source"], 0) + 1
    return out


class Inventory(SectionModule):
    section = "inventory"

    def __init__(
        self, send: Callable[[list[Package]], None], collect: Callable[[], list[Package]] = collect
    ) -> None:
        self.send = send
        self.collect = collect
        self.enabled = True
        self.interval = DEFAULT_INTERVAL
        self.last_run: float | None = None  # never: the first tick sends at once
        self.last_sent: dict[str, int] | None = None

    def check(self, section: dict[str, Any]) -> None:
        flag(section, self.section, "enabled", True)
        seconds(section, self.section, "interval", DEFAULT_INTERVAL, minimum=60.0)

    def configure(self, section: dict[str, Any]) -> list[str]:
        enabled = flag(section, self.section, "enabled", True)
        interval = seconds(section, self.section, "interval", DEFAULT_INTERVAL, minimum=60.0)
        changes = []
        if enabled != self.enabled:
            changes.append(f"inventory {'enabled' if enabled else 'disabled'}")
        if interval != self.interval:
            changes.append(f"inventory interval {interval:g}s")
        self.enabled, self.interval = enabled, interval
        return changes

    def send_now(self, now: float | None = None) -> dict[str, int]:
        """Collect and send the inventory; returns the count per source. Raises when the
        server did not take it (the caller decides whether that is a failure)."""
        if not self.enabled:
            raise InventoryDisabled("inventory is disabled by configuration")
        packages = self.collect()
        self.send(packages)
        self.last_sent = counts(packages)
        if now is not None:
            self.last_run = now
        log.info(
            "inventory sent: %d packages (%s)",
            len(packages),
            ", ".join(f"{k} {v}" for k, v in sorted(self.last_sent.items())),
        )
        return self.last_sent

    def tick(self, now: float) -> None:
        if not self.enabled or (self.last_run is not None and now < self.last_run + self.interval):
            return
        self.last_run = now
        try:
            self.send_now()
        except Exception as exc:
            # Try again sooner than a whole interval, but not on every loop turn.
            self.last_run = now - self.interval + min(RETRY_AFTER, self.interval)
            log.warning("inventory not sent: %s", exc)

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "interval": self.interval, "last_sent": self.last_sent}
