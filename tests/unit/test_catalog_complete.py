"""Every catalog entry has all its parts (issue 15: "a command is one thing").

An entry links a task type to its params, its action's arguments, the receiver's handler, the
indexer's steps, the dashboard's form and its reversibility; `missing_parts` names what an
entry lacks, so a 16th command that forgets one fails here with the name of the part."""

from __future__ import annotations

import pytest

from fleetcmd.agent import handlers as agent_handlers
from fleetcmd.indexer.parts import PARTS
from fleetcmd.indexer.reversals import REVERSALS
from fleetcmd.model import actions as a
from fleetcmd.model import params as p
from fleetcmd.model.catalog import CATALOG, CommandSpec, Expansion, Target
from fleetcmd.server import handlers as server_handlers
from fleetcmd.server.dashboard.forms import FORMS
from support.catalog import missing_parts


@pytest.mark.req("R8")
@pytest.mark.parametrize("task_type", sorted(CATALOG))
def test_every_catalog_entry_has_all_its_parts(task_type: str) -> None:
    assert missing_parts(CATALOG[task_type]) == []


def test_no_part_is_registered_for_a_command_the_catalog_lacks() -> None:
    actions = {s.action for s in CATALOG.values()}
    assert set(a.ACTIONS) == actions
    assert set(agent_handlers.HANDLERS) | set(server_handlers.HANDLERS) == actions
    assert (
        set(PARTS) <= set(CATALOG) and set(REVERSALS) <= set(CATALOG) and set(FORMS) <= set(CATALOG)
    )


class Ping(a.ActionArgs):
    action = "ping"


def test_an_incomplete_16th_command_is_named_part_by_part() -> None:
    spec = CommandSpec(
        16,
        "agent-ping",
        Target.AGENT,
        p.AgentDeletion,  # names an agent but says nothing about agent selection
        "-",
        Expansion.BY_TASK_MANAGER,
        Ping,
        10,
        "Agents answer",
        reversible=True,
    )
    missing = "\n".join(missing_parts(spec))
    assert "select no agents (selection)" in missing
    assert "action 'ping' is not in model/actions.py" in missing
    assert "no agent handler for action 'ping'" in missing
    assert "reversible=True but indexer/reversals.py disagrees" in missing
    assert "attended=True but the dashboard form disagrees" in missing
    # A type that falls back to the base class's reach is refused, never "reaches everything".
    with pytest.raises(NotImplementedError):
        p.Params().reach()
    bare = CommandSpec(
        16, "x", Target.SERVER, p.Params, "-", Expansion.PER_SERVER_NODE, Ping, 1, ""
    )
    assert any("(reach)" in m for m in missing_parts(bare))
