"""What a task names, reaches and selects: the three questions every task type's params
answer for themselves (model/params.py), so no caller keeps a list of task types.

- `Names`: agents and groups the params refer to by name; the task manager refuses a task
  that names one that does not exist, before anything is written.
- `Reach`: what filing the task touches, for RBAC (server/access.py): agents (listed or
  through a group), groups whose configuration or membership changes, or everything.
- `AgentSelection`: the agents an agent-bound task's commands are written for (the store
  expands it inside the task's transaction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fleetcmd.model.selectors import Expr


@dataclass(frozen=True)
class Names:
    agents: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reach:
    agents: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()  # every member is reached
    changes_groups: tuple[str, ...] = ()  # their configuration or membership changes
    everything: bool = False
    # A selector's agents are not known before the task is written: the indexer intersects
    # them with the user's scope (`AgentScope`) instead of RBAC refusing agents up front.
    selector: str | None = None


EVERYTHING = Reach(everything=True)


@dataclass(frozen=True)
class AgentScope:
    """Where a scoped user may file a task: agents whose id matches one of `ids` or that are
    in a group matching one of `groups` (fnmatch patterns, as in the user's RBAC policies)."""

    ids: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[str]]:
        return {"ids": list(self.ids), "groups": list(self.groups)}


@dataclass(frozen=True)
class AgentSelection:
    """Agents a fan-out reaches: all, members of any of `groups`, the listed `ids`, those a
    `selector` matches, or the frozen target set `frozen` (a preview, a re-run, an approval);
    within `scope` when given."""

    all: bool = False
    groups: tuple[str, ...] | None = None
    ids: tuple[str, ...] | None = None
    selector: Expr | None = None
    frozen: int | None = None
    scope: AgentScope | None = None


class Lookup(Protocol):
    """What a selection may read while the task is written (the task's transaction)."""

    def groups_with_document(self, index: str, name: str) -> list[str]:
        """Groups holding a `<group>/<name>` document in `index`."""
        ...
