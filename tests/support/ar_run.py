"""Run one active response through the agent's own module, as `ar-execute` does, in whatever
network namespace this process was started in (`ip netns exec NS python ar_run.py …`):

    ar_run.py STATE_DIR NAME DEFINITION_JSON ARGUMENTS_JSON

Prints `{"ok", "data", "message"}` (or `{"refused": message}`) as JSON."""

from __future__ import annotations

import json
import sys

from fleetcmd.agent.modules.active_response import ActiveResponse, ResponseRefused
from fleetcmd.agent.state import StateDir


def main(argv: list[str]) -> int:
    state, name, definition, arguments = argv
    ar = ActiveResponse(StateDir(state).create())
    ar.configure({})
    try:
        ar.store(name, json.loads(definition))
        ok, data, message = ar.execute(name, json.loads(arguments))
    except ResponseRefused as exc:
        print(json.dumps({"refused": str(exc)}))
        return 0
    print(json.dumps({"ok": ok, "data": data, "message": message}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
