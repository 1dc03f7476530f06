"""The agent process proper: `fleetcmd agent` parses its options with typer, then replaces
itself (same pid, via exec) with this light entry point.

Why: the `fleetcmd` CLI loads every role's command table, and with it typer's rich help, httpx,
rich and pygments (about 20 MB). The agent must idle under 40 MB, so it runs in an interpreter
that imports only the agent's own modules. Options travel in one environment variable, which is
removed at once, so the enrollment key does not stay visible in the process's argument list.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

OPTIONS_ENV = "FLEETCMD_AGENT_OPTIONS"


def main() -> int:
    from fleetcmd.agent.runner import Agent, AgentOptions, FatalStartError

    raw = os.environ.pop(OPTIONS_ENV, None)
    if raw is None:
        sys.stderr.write("run the agent with `fleetcmd agent …`\n")
        return 2
    known = {f.name for f in dataclasses.fields(AgentOptions)}
    # Options another version wrote (an upgrade's restart) may hold fields this one lacks.
    options = AgentOptions(**{k: v for k, v in json.loads(raw).items() if k in known})
    from fleetcmd.logsetup import setup_logging

    setup_logging(options.log_level)
    try:
        return Agent(options).run()
    except (FatalStartError, ValueError) as exc:
        sys.stderr.write(f"fleetcmd agent: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
