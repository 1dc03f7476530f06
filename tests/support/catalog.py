"""What a catalog entry lacks: one phrase per missing part (tests/unit/test_catalog_complete.py)."""

from __future__ import annotations

from fleetcmd.agent import handlers as agent_handlers
from fleetcmd.indexer.parts import PARTS
from fleetcmd.indexer.reversals import REVERSALS
from fleetcmd.model import actions as a
from fleetcmd.model import params as p
from fleetcmd.model.catalog import CommandSpec, Expansion, Target
from fleetcmd.server import handlers as server_handlers
from fleetcmd.server.dashboard.forms import FORMS


def overrides(cls: type, method: str) -> bool:
    return getattr(cls, method) is not getattr(p.Params, method)


def missing_parts(spec: CommandSpec) -> list[str]:
    """What `spec` lacks, one phrase per missing part (empty: complete)."""
    t, missing = spec.task_type, []
    if not overrides(spec.params, "reach"):
        missing.append(f"{t}: params {spec.params.__name__} do not say what they reach (reach)")
    if spec.expansion is Expansion.BY_TASK_MANAGER and not overrides(spec.params, "selection"):
        missing.append(f"{t}: params {spec.params.__name__} select no agents (selection)")
    if a.ACTIONS.get(spec.action) is not spec.args:
        missing.append(f"{t}: action '{spec.action}' is not in model/actions.py ACTIONS")
    receivers = (
        agent_handlers.HANDLERS if spec.receiver is Target.AGENT else server_handlers.HANDLERS
    )
    handler = receivers.get(spec.action)
    if handler is None or handler[0] is not spec.args:
        missing.append(f"{t}: no {spec.receiver.value} handler for action '{spec.action}'")
    part = PARTS.get(t)
    if spec.expansion is Expansion.BY_COMMAND_MANAGER and (part is None or part.expand is None):
        missing.append(f"{t}: no command-manager expansion in indexer/parts.py")
    if spec.reversible != (t in REVERSALS):
        missing.append(f"{t}: reversible={spec.reversible} but indexer/reversals.py disagrees")
    if spec.attended != (t in FORMS):
        missing.append(f"{t}: attended={spec.attended} but the dashboard form disagrees")
    return missing
