"""The store protocol: what the indexer needs from a backend. SQLite and PostgreSQL implement it
and pass one contract suite (tests/contract)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleetcmd.model.records import Agent, Command, Group, Page, Task
from fleetcmd.model.targets import AgentSelection


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
    disconnected: int = 0

    @property
    def total(self) -> int:
        return self.lease_lapsed + self.expired + self.timed_out


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


class Tx(Protocol):
    """One transaction: everything done through it commits together or not at all."""

    now: float

    def insert_task(
        self,
        type_: str,
        params: dict[str, Any],
        source: str,
        user: str,
        idempotency_key: str | None,
    ) -> int: ...
    def task_by_key(self, key: str) -> int | None: ...
    def lock_task(self, task_id: int) -> Task: ...
    def insert_commands(
        self,
        task_id: int,
        source: str,
        user: str,
        timeout: float,
        expires_at: float,
        commands: list[NewCommand],
    ) -> list[int]: ...
    def fan_out(self, fanout: Fanout, selection: AgentSelection) -> int: ...
    def count_agents(self, selection: AgentSelection) -> int: ...
    def known_agents(self, ids: list[str]) -> set[str]: ...
    def lease_held(self, command_id: int, owner: str) -> Command: ...
    def finish_expansion(self, parent: Command, children: int, data: dict[str, Any]) -> None: ...
    def fail_command(self, command_id: int, message: str, code: int = 1) -> None: ...
    def agents_groups(self, ids: list[str] | None, group: str | None) -> dict[str, list[str]]: ...
    def set_agents_groups(self, groups_by_agent: dict[str, list[str]]) -> None: ...
    def agent(self, agent_id: str) -> Agent | None: ...
    def agent_named(self, name: str, other_than: str | None = None) -> str | None: ...
    def rename_agent(self, agent_id: str, name: str) -> None: ...
    def remove_agent(self, agent_id: str) -> None: ...
    def group(self, name: str) -> Group | None: ...
    def ensure_groups(self, names: list[str]) -> None: ...
    def delete_group(self, name: str) -> None: ...
    def put_group_config(
        self, name: str, config: dict[str, Any], task_id: int | None
    ) -> tuple[str, int]: ...
    def put_document(self, index: str, doc_id: str, body: Any) -> int: ...
    def delete_document(self, index: str, doc_id: str) -> bool: ...
    def document(self, index: str, doc_id: str) -> Any: ...
    def documents(self, index: str, prefix: str = "") -> dict[str, Any]: ...
    def active_nodes(self, max_age: float) -> list[str]: ...
    def notify(self, target_type: str) -> None: ...


class Store(Protocol):
    url: str

    def migrate(self) -> int: ...
    def close(self) -> None: ...
    def transaction(self) -> AbstractContextManager[Tx]: ...
    def subscribe(self, callback: Callable[[str], None]) -> None: ...

    # tasks and commands
    def get_task(self, task_id: int) -> Task: ...
    def list_tasks(
        self,
        *,
        status: str | None = None,
        type_: str | None = None,
        user: str | None = None,
        source: str | None = None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page: ...
    def get_command(self, command_id: int) -> Command: ...
    def list_commands(
        self,
        *,
        task_id: int | None = None,
        parent_id: int | None = None,
        status: str | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page: ...
    def counts(self, scope: str, scope_id: int) -> dict[str, int]: ...
    def recount(self, scope: str, scope_id: int) -> dict[str, int]: ...
    def command_targets(self, ids: list[int]) -> dict[int, tuple[str, str, str]]: ...

    # the stream
    def claim(self, owner: str, where: ClaimFilter, limit: int, lease: float) -> list[Command]: ...
    def renew(self, owner: str, ids: list[int], lease: float) -> list[int]: ...
    def release(self, owner: str, ids: list[int]) -> int: ...
    def release_previous(self, owner: str) -> int: ...
    def mark(self, owner: str | None, ids: list[int], status: str) -> list[int]: ...
    def complete(self, results: list[Result]) -> list[dict[str, Any]]: ...
    def cancel_task(self, task_id: int) -> int: ...
    def sweep(self, now: float | None = None, batch: int = 5000) -> SweepReport: ...
    def purge_finished(
        self, older_than: float, now: float | None = None, batch: int = 2000
    ) -> PurgeReport: ...
    def upkeep(self) -> UpkeepReport: ...

    # indexes
    def register_agents(self, agents: list[dict[str, Any]]) -> int: ...
    def get_agent(self, agent_id: str) -> Agent: ...
    def list_agents(
        self,
        *,
        group: str | None = None,
        status: str | None = None,
        node: str | None = None,
        search: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
        scope_groups: Sequence[str] | None = None,
        scope_ids: Sequence[str] | None = None,
    ) -> Page: ...
    def agent_summary(self) -> dict[str, Any]: ...
    def update_agents(self, updates: list[dict[str, Any]]) -> int: ...
    def agent_secret_hash(self, agent_id: str) -> tuple[str | None, str]: ...

    def removed_agents(self, since: float, limit: int = 10_000) -> list[tuple[str, float]]: ...
    def get_group(self, name: str) -> Group: ...
    def list_groups(self) -> list[Group]: ...
    def group_history(self, name: str) -> list[dict[str, Any]]: ...
    def get_config(self, config_hash: str) -> dict[str, Any]: ...
    def merged_config(self, groups: list[str]) -> tuple[dict[str, Any], str]: ...
    def get_document(self, index: str, doc_id: str) -> Any: ...
    def list_documents(self, index: str, prefix: str = "") -> dict[str, Any]: ...
    def document_page(
        self,
        index: str,
        prefix: str = "",
        cursor: str | None = None,
        limit: int = 100,
        descending: bool = False,
    ) -> Page: ...
    # the audit trail (append-only: no update or delete exists)
    def append_audit(self, records: list[dict[str, Any]]) -> list[int]: ...
    def list_audit(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        target: str | None = None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page: ...
    def heartbeat(self, node_id: str, url: str | None, info: dict[str, Any]) -> None: ...
    def list_nodes(self) -> list[dict[str, Any]]: ...


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
