"""The values that cross the store's edge (claims, results, fan-outs, reports).

There is no separate protocol class: `SqlStore` and `SqlTx` (store/base.py) are the store's
interface, which every consumer types against; SQLite and PostgreSQL subclass them and pass one
contract suite (tests/contract). A second, hand-kept list of signatures beside them was typed
against by nobody and drifted, so it went (issue 15)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Beat:
    """A heartbeat of a running command (store `command_heartbeats`): the agent's interval,
    optionally its progress, and output chunks `(seq, text)` numbered from 0 per command."""

    id: int
    interval: float
    percent: float | None = None
    message: str | None = None
    output: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Output:
    """One chunk of a command's output, as kept."""

    seq: int
    at: float
    data: str


@dataclass(frozen=True)
class ClaimFilter:
    """Which commands a claimer wants.

    `target_type` always; then at most one of: `node` (agent commands for agents connected to
    that server node, or server commands addressed to it or to any node), `target_ids`.
    """

    target_type: str
    node: str | None = None
    target_ids: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Result:
    id: int
    status: str  # success | failure
    code: int = 0
    message: str = ""
    data: Any = None


@dataclass
class PurgeReport:
    """What one retention pass removed (store/retention.py)."""

    tasks: int = 0
    commands: int = 0
    batches: int = 0
    seconds: float = 0.0


@dataclass
class UpkeepReport:
    """What one upkeep pass did: the store's own maintenance (store.upkeep)."""

    autovacuum: bool | None = None  # PostgreSQL's autovacuum covers the stream (None: SQLite)
    vacuumed: dict[str, int] = field(default_factory=dict)  # table -> dead rows it held
    analyzed: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)  # one line per step, for the log
    skipped: str = ""  # why nothing was looked at, if so
    seconds: float = 0.0


@dataclass
class SweepReport:
    lease_lapsed: int = 0
    expired: int = 0
    timed_out: int = 0
    # Running commands whose agent stopped heartbeating (two intervals without one).
    stopped_reporting: int = 0
    disconnected: int = 0
    # Agent commands handed back early because the server node holding them fell silent.
    node_silent: int = 0
    silent_nodes: dict[str, int] = field(default_factory=dict)  # node -> commands handed back

    @property
    def total(self) -> int:
        return (
            self.lease_lapsed
            + self.expired
            + self.timed_out
            + self.stopped_reporting
            + self.node_silent
        )


@dataclass(frozen=True)
class NewCommand:
    """A first command, written by the task manager."""

    target_type: str
    target_id: str
    action_name: str
    action_args: dict[str, Any]
    parent_id: int | None = None


@dataclass
class Fanout:
    """What each child command of a fan-out carries."""

    task_id: int
    parent_id: int | None
    source: str
    user: str
    action_name: str
    action_args: dict[str, Any]
    timeout: float
    expires_at: float
    with_groups: bool = False  # add each agent's full group list to its args
    extra: dict[str, Any] = field(default_factory=dict)


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
