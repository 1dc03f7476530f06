"""What a supervisor of agents (`fleetcmd up`, a service script) can read from an agent's state
folder: which process runs the agent now, and which one may start it again.

An agent keeps `agent.pid` current. An upgrade (agent/upgrade.py) re-executes the agent under
the same pid, but when the new version does not come up, its watchdog — started in a session
of its own, outside the supervisor's process tree — starts the previous version under the
watchdog's pid. A supervisor that follows only the process it started loses the agent then;
one that reads the folder follows it, and when it stops everything it stops the watchdog
first (a watchdog outliving its agent would start it again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetcmd.agent.state import StateDir, process_alive
from fleetcmd.agent.upgrade import ROLLED_BACK, TRIAL, Versions

# How long after a rollback its watchdog may still be starting the previous version (it gives
# the new one STOP_GRACE seconds to stop, then waits as long for the folder's lock).
RESTART_WINDOW = 60.0


@dataclass(frozen=True)
class Processes:
    agent: int | None  # the live agent on the folder
    watchdog: int | None  # a live upgrade watchdog that may stop and start the agent
    removed: bool  # the agent was deleted (it left for good, on purpose)
    upgrade: dict[str, Any] | None  # the last upgrade's boot marker

    def restart(self) -> str:
        """Why the agent runs under another pid, in words (for a supervisor's report)."""
        m = self.upgrade or {}
        if m.get("state") == ROLLED_BACK:
            return (
                f"upgrade to {m['to']['version']} rolled back ({m.get('reason')}); "
                f"version {m['from']['version']} runs again"
            )
        if m.get("state") == TRIAL:
            return f"version {m['to']['version']} is on trial"
        return "restarted outside its supervisor"


def fleetcmd_process(pid: int) -> bool:
    """A live process running fleetcmd code (not a recycled pid)."""
    try:
        return process_alive(pid) and b"fleetcmd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _watching(marker: dict[str, Any]) -> bool:
    """The watchdog named in the marker may still act: the upgrade is on trial, or it rolled
    back a moment ago (the watchdog is becoming the previous version). Past that, its pid
    may be some other process's."""
    if marker.get("state") == TRIAL:
        return True
    at = marker.get("rolled_back_at")
    return (
        marker.get("state") == ROLLED_BACK
        and isinstance(at, int | float)
        and time.time() - at < RESTART_WINDOW
    )


def processes(state_dir: Path | str) -> Processes:
    folder = StateDir(state_dir)
    pid = folder.running_pid()
    agent = pid if pid is not None and fleetcmd_process(pid) else None
    marker = Versions(folder).marker()
    watchdog = marker.get("watchdog") if marker and _watching(marker) else None
    if not isinstance(watchdog, int) or watchdog == agent or not fleetcmd_process(watchdog):
        watchdog = None
    try:
        applied = folder.load_state()
    except ValueError:
        applied = None
    return Processes(agent, watchdog, bool(applied and applied.removed), marker)
