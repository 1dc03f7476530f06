"""Start-up options of a server node, and the live configuration that `server-config`
commands change without a restart (observers are told what changed)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetcmd.errors import InvalidParams
from fleetcmd.model.wire import MAX_WINDOW

log = logging.getLogger("fleetcmd.server.config")


@dataclass
class ServerOptions:
    """What `fleetcmd server` was started with (fixed for the life of the process)."""

    indexer_url: str
    token: str
    data_dir: Path
    node_id: str
    host: str = "127.0.0.1"
    management_port: int = 55000
    comms_port: int = 27000
    enrollment_key: str = ""
    jwt_key: str = ""
    log_level: str = "info"
    heartbeat_interval: float = 5.0
    pull_wait: float = 20.0
    lease: float = 60.0
    body_limit: int = 1024 * 1024
    token_ttl: float = 15 * 60.0
    # Requests per second per client address (0: no limit); bursts of ten times as many.
    enroll_rate: float = 10.0
    auth_rate: float = 50.0
    # TLS for both APIs, and the CA that signed the indexer's certificate (https indexer).
    tls_cert: str | None = None
    tls_key: str | None = None
    ca: str | None = None
    # Proxies whose X-Forwarded-For is believed (comma-separated addresses; none: the peer).
    forwarded_allow_ips: str = ""
    # Each API: a request's headers and body must arrive in time; open connections capped.
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 16_384


Observer = Callable[[dict[str, Any]], None]

# Settings a server applies live, with their defaults. Unknown keys are kept (and reported)
# so a newer node's setting is not lost by an older one, but nothing acts on them.
DEFAULTS: dict[str, Any] = {
    "log_level": "info",
    "comms.max_poll_wait": 60.0,
    "comms.results_flush_ms": 20,
    "events.queue_size": 10_000,
    # The longest execution timeout a task may ask for, seconds (issue 17.3): long commands
    # heartbeat, so a high cap costs nothing when an agent dies. Up to MAX_WINDOW (30 days).
    "commands.max_timeout": 86_400.0,
}


def check_timeout(config: ServerConfig, timeout: float | None) -> None:
    """Refuse (422) an execution timeout over the administrator's cap."""
    if timeout is None:
        return
    try:
        cap = min(float(config.get("commands.max_timeout")), float(MAX_WINDOW))
    except (TypeError, ValueError):
        cap = float(DEFAULTS["commands.max_timeout"])
    if timeout > cap:
        raise InvalidParams(
            f"timeout {timeout:g} s is over the longest execution timeout allowed, {cap:g} s "
            "(server setting commands.max_timeout; an administrator raises it with a "
            "server-config-change task)"
        )


@dataclass
class ServerConfig:
    """The in-memory live configuration. `apply` returns what changed and notifies observers."""

    settings: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS))
    version: int = 0
    _observers: list[Observer] = field(default_factory=list)

    def observe(self, observer: Observer) -> None:
        self._observers.append(observer)

    def get(self, key: str) -> Any:
        return self.settings.get(key, DEFAULTS.get(key))

    def apply(self, new: dict[str, Any]) -> dict[str, dict[str, Any]]:
        changed = {
            k: {"old": self.settings.get(k), "new": v}
            for k, v in new.items()
            if self.settings.get(k) != v
        }
        if not changed:
            return {}
        self.settings.update({k: c["new"] for k, c in changed.items()})
        self.version += 1
        log.info("server configuration v%d: %s changed", self.version, ", ".join(sorted(changed)))
        for observer in self._observers:
            try:
                observer(changed)
            except Exception:
                log.exception("configuration observer %r failed", observer)
        return changed


def log_level_observer(changed: dict[str, dict[str, Any]]) -> None:
    """`log_level` changes the process's log level at once."""
    if "log_level" in changed:
        level = str(changed["log_level"]["new"]).upper()
        if isinstance(logging.getLevelName(level), int):
            logging.getLogger().setLevel(level)
