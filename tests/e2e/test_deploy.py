"""deploy/ (issue 19.3): the systemd units verify with `systemd-analyze verify`, are hardened
as docs/deployment.md says, and each runs a role with an example configuration that
`fleetcmd config check` accepts."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleetcmd.role_settings import check_config

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
ROLES = ("indexer", "server", "content-manager", "agent")
ANALYZE = "/usr/bin/systemd-analyze"
HARDENING = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "StateDirectory=",
    "LogsDirectory=",
    "CapabilityBoundingSet=",
    "UMask=0077",
)


def fleetcmd_binary() -> str:
    return str(Path(sys.executable).with_name("fleetcmd"))


def settings(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize("role", ROLES)
def test_each_unit_verifies_and_is_hardened(role: str, tmp_path: Path) -> None:
    if not Path(ANALYZE).exists():
        pytest.fail(f"{ANALYZE} is missing (Debian package systemd)")
    unit = UNITS / f"fleetcmd-{role}.service"
    # verify needs ExecStart's binary to exist: the venv's fleetcmd stands in for /opt/fleetcmd.
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/fleetcmd/bin/fleetcmd", fleetcmd_binary()))
    dropins = unit.with_name(unit.name + ".d")
    if dropins.is_dir():
        shutil.copytree(dropins, tmp_path / dropins.name)
    r = subprocess.run(
        [ANALYZE, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    # An unknown or misspelt setting is only a warning: any output fails the test.
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", r.stderr
    s = settings(unit)
    for needed in HARDENING:
        key, value = needed.split("=", 1)
        assert key in s and (not value or value in s[key]), f"{unit.name}: {needed}"
    exec_start = s["ExecStart"][0].split()
    assert exec_start[:2] == ["/opt/fleetcmd/bin/fleetcmd", role], exec_start
    assert exec_start[2:] == ["--config", f"/etc/fleetcmd/{role}.toml"]
    assert s["User"][0] not in ("root", "")  # a dedicated user
    caps = s["CapabilityBoundingSet"][0].split()
    assert caps == (["CAP_NET_ADMIN"] if role == "agent" else []), caps


def test_the_agents_account_drop_in_adds_only_what_locking_accounts_needs() -> None:
    dropin = settings(UNITS / "fleetcmd-agent.service.d" / "accounts.conf")
    assert dropin["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_CHOWN"]
    assert dropin["ReadWritePaths"] == ["/etc"]


def test_the_agent_unit_lets_upgrades_roll_back() -> None:
    """agent/upgrade.py: a version on trial that the watchdog stops (SIGTERM, then SIGKILL)
    must be started again, so that the launcher rolls it back; a clean exit (a deleted agent)
    must not."""
    s = settings(UNITS / "fleetcmd-agent.service")
    assert s["Restart"] == ["on-failure"]
    assert set(s["RestartForceExitStatus"][0].split()) == {"SIGTERM", "SIGKILL"}
    assert s["StateDirectory"] == ["fleetcmd-agent"]  # versions/ is installed there
    assert "ReadOnlyPaths" not in s and "InaccessiblePaths" not in s


@pytest.mark.parametrize("role", [*ROLES, "up"])
def test_each_example_configuration_checks(role: str) -> None:
    path = ROOT / "deploy" / "config" / f"{role}.toml"
    found, problems = check_config(path)
    assert (found, problems) == (role, [])
    assert not re.search(r"://[^/@\s]*:[^/@\s]*@", path.read_text()), "a password in a URL"
