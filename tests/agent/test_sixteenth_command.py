"""A throw-away 16th command, added the way docs/architecture.md ("Adding a command") says:
its params, its action's arguments, its catalog entry and its agent handler, and nothing
else. The task manager writes one command per selected agent, and the agent runs it.

The files a real 16th command touches: model/params.py, model/actions.py, model/catalog.py,
agent/handlers.py (or server/handlers.py), dashboard/forms.py when people file it, and its
section in docs/commands.md; indexer/parts.py only when the indexer changes an index for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from fleetcmd.agent import handlers
from fleetcmd.agent.handlers import Context, execute
from fleetcmd.indexer.task_manager import TaskManager, TaskRequest
from fleetcmd.model import actions as a
from fleetcmd.model import params as p
from fleetcmd.model.catalog import CATALOG, CommandSpec, Expansion, Target
from fleetcmd.store.base import SqlStore
from support.catalog import missing_parts


class AgentPing(p.AgentSelector):  # model/params.py
    message: str = ""


@dataclass(frozen=True, kw_only=True)
class Ping(a.ActionArgs):  # model/actions.py
    action: ClassVar[str] = "ping"
    message: str


def ping(ctx: Context, args: Ping) -> dict[str, Any]:  # agent/handlers.py
    return {"pong": args.message, "name": ctx.applied.name}


SPEC = CommandSpec(  # model/catalog.py
    16,
    "agent-ping",
    Target.AGENT,
    AgentPing,
    "-",
    Expansion.BY_TASK_MANAGER,
    Ping,
    30,
    "Agents answer with the message",
    attended=False,
    unattended=True,
)


def test_a_16th_command_is_its_catalog_entry_and_its_parts(
    store: SqlStore, ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(CATALOG, SPEC.task_type, SPEC)
    monkeypatch.setitem(a.ACTIONS, Ping.action, Ping)
    monkeypatch.setitem(handlers.HANDLERS, Ping.action, (Ping, ping))
    assert missing_parts(SPEC) == []
    store.register_agents([{"id": f"a{i}", "name": f"host-{i}", "groups": []} for i in range(3)])
    task, created = TaskManager(store).submit(
        TaskRequest("agent-ping", {"agents": ["a0", "a2"], "message": "hello"}, source="engine")
    )
    assert created
    commands = store.list_commands(task_id=task.id, target_type="agent").items
    assert sorted(c.target_id for c in commands) == ["a0", "a2"]
    assert {c.action_name for c in commands} == {"ping"}
    assert all(c.action_args == {"message": "hello"} for c in commands)
    result = execute(ctx, commands[0].to_json())
    assert result.status == "success", result
    assert result.data["pong"] == "hello"
    # Arguments of the wrong shape are named, not run.
    bad = execute(ctx, {"id": 9, "action": {"name": "ping", "args": {"message": 3}}})
    assert bad.status == "failure" and "'message' must be a string" in bad.message
