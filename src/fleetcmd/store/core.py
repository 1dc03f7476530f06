"""The store's transaction core, shared by both backends and by every concept module.

`TxCore` is one open transaction: the SQL plumbing, status moves guarded by the transition
table, per-parent and per-task counts kept in the same transaction as each move, and the
roll-up of parents and tasks when it settles. `StoreCore` opens transactions and wakes
subscribers after commit. A backend (`sqlite.py`, `postgres.py`) supplies connections,
placeholder style, row locking and a few dialect-specific expressions; the concept modules
(`stream`, `tasks`, `agents`, `groups`, `documents`, `audit`, `nodes`) add the domain
operations, and `base.py` composes them into `SqlTx` and `SqlStore`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any

from fleetcmd.errors import InvalidParams
from fleetcmd.model.records import Command, dumps
from fleetcmd.model.status import (
    ACTIVE,
    APPROVAL_STATUSES,
    AWAITING_APPROVAL,
    FINAL,
    Status,
    rollup,
    sources_of,
)
from fleetcmd.model.targets import AgentSelection
from fleetcmd.store.types import Fanout, UpkeepReport, chunks

if TYPE_CHECKING:
    from fleetcmd.store.base import SqlTx

log = logging.getLogger("fleetcmd.store")

ACTIVE_SQL = "(" + ", ".join(f"'{s}'" for s in sorted(ACTIVE)) + ")"
UNDELIVERED_SQL = "('pending', 'processing', 'sent')"
COLS = Command.COLUMNS
Moved = tuple[int, str, int | None, int, int]  # id, old status, parent_id, task_id, expanded


def migrations(dialect: str) -> list[tuple[int, str]]:
    """Schema steps after the base schema: `sql/NNNN_name.<dialect>.sql`, in order."""
    folder = resources.files("fleetcmd.store").joinpath("sql")
    steps = []
    for entry in folder.iterdir():
        m = re.fullmatch(rf"(\d{{4}})_[a-z0-9_]+\.{dialect}\.sql", entry.name)
        if m:
            steps.append((int(m.group(1)), entry.read_text()))
    return sorted(steps)


def schema_version(dialect: str) -> int:
    return max([1, *(n for n, _ in migrations(dialect))])


class SchemaTooNew(RuntimeError):
    """The store was migrated by a newer release: this one would misread it. Migrations only
    go forward, so the node stops before it writes anything."""

    def __init__(self, where: str, found: int, known: int) -> None:
        super().__init__(
            f"the store {where} has schema version {found}, newer than {known}, the newest this "
            f"release of fleetcmd knows: it was upgraded by a newer release; run that release "
            f"(or newer) on this node, never an older one (docs/deployment.md, upgrades)"
        )
        self.found, self.known = found, known


def check_schema(where: str, found: int, dialect: str) -> None:
    known = schema_version(dialect)
    if found > known:
        raise SchemaTooNew(where, found, known)


def cursor_id(cursor: str | None) -> int | None:
    if cursor is None or cursor == "":
        return None
    try:
        return int(cursor)
    except ValueError:
        raise InvalidParams(f"bad cursor {cursor!r}") from None


def _bad_input(exc: BaseException) -> InvalidParams:
    """A value the database cannot hold (a number past 64 bits, a NUL in text) is bad
    input, answered 422, not a crash."""
    if isinstance(exc, OverflowError):
        return InvalidParams("a number is out of range (ids and counts are 64-bit)")
    return InvalidParams(f"a value cannot be stored: {str(exc).splitlines()[0][:200]}")


class TxCore(ABC):
    """One open transaction: the plumbing, status moves and counts every concept uses. The
    domain operations the task and command managers use come from the concept mixins."""

    def __init__(self, store: StoreCore, cur: Any) -> None:
        self.store = store
        self.cur = cur
        self.now = time.time()
        self.deltas: Counter[tuple[str, int, str]] = Counter()
        self.touched_parents: set[int] = set()
        self.touched_tasks: set[int] = set()
        self.notifications: set[str] = set()
        # Set by a rollout (fleetcmd.indexer.rollouts): this transaction's agent fan-outs are
        # staged into held waves instead of being written claimable.
        self.stage: Callable[[SqlTx, Fanout, AgentSelection], int] | None = None

    # -- SQL plumbing -------------------------------------------------------------------------
    def ex(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        try:
            return self.cur.execute(self.store.sql(sql), params or {})
        except self.store.bad_input as exc:
            raise _bad_input(exc) from None

    def many(self, sql: str, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            try:
                self.cur.executemany(self.store.sql(sql), rows)
            except self.store.bad_input as exc:
                raise _bad_input(exc) from None

    def all(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return list(self.ex(sql, params).fetchall())

    def one(self, sql: str, params: dict[str, Any] | None = None) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.ex(sql, params).fetchone()
        return row

    @abstractmethod
    def in_list(self, column: str, param: str) -> str:
        """SQL for `column IN (<the JSON/array list bound to :param>)`."""

    @abstractmethod
    def list_param(self, values: Sequence[Any]) -> Any: ...

    def by_target_first(self, column: str) -> str:
        """`column` written so that the planner does not pick an index led by it (SQLite's
        unary `+`). PostgreSQL is left to its statistics (docs/performance.md: a case where
        stale ones mislead it)."""
        return column

    @abstractmethod
    def args_with_groups_sql(self) -> str:
        """Expression: the `:args` JSON object with the agent row's `a.groups` added."""

    @abstractmethod
    def select_locked(
        self, where: str, params: dict[str, Any], limit: int | None, skip_locked: bool
    ) -> list[Moved]: ...

    @abstractmethod
    def update_returning(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]: ...

    def notify(self, target_type: str) -> None:
        self.notifications.add(target_type)

    # -- the outbox (store/events.py: who reads it) --------------------------------------------
    def add_events(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Events of changes the caller has in hand: `type`, `subject`, `task_id`, `data`."""
        self.many(
            "INSERT INTO events (at, kind, type, subject, task_id, data) "
            "VALUES (:at, :kind, :type, :subject, :task_id, :data)",
            [
                {
                    "at": self.now,
                    "kind": kind,
                    "type": r["type"],
                    "subject": str(r["subject"]),
                    "task_id": r.get("task_id"),
                    "data": None if r.get("data") is None else dumps(r["data"]),
                }
                for r in rows
            ],
        )
        if rows:
            self.notify("events")

    def command_events(self, ids: list[int]) -> None:
        """One event per command of `ids`, now final, in bulk (the body is read at delivery)."""
        for part in chunks(ids, 20_000):
            self.ex(
                "INSERT INTO events (at, kind, type, subject, task_id) "
                "SELECT :now, 'command', status, CAST(id AS TEXT), task_id FROM commands "
                f"WHERE {self.in_list('id', 'ids')} ORDER BY id",
                {"now": self.now, "ids": self.list_param(part)},
            )
        if ids:
            self.notify("events")

    def agent_status_events(self, where: str, params: dict[str, Any], status: str) -> None:
        """One event per agent matching `where` whose status is about to become `status`
        (called before the update; the previous status goes in the event)."""
        self.ex(
            "INSERT INTO events (at, kind, type, subject, data) "
            "SELECT :_at, 'agent', :_status, id, '{\"previous\":\"' || status || '\"}' "
            f"FROM agents WHERE ({where}) AND status <> :_status AND status <> 'removed'",
            dict(params, _at=self.now, _status=status),
        )
        self.notify("events")

    # -- status moves and counts ----------------------------------------------------------------
    def move(
        self,
        where: str,
        params: dict[str, Any],
        new: Status,
        sets: str = "",
        limit: int | None = None,
        skip_locked: bool = False,
        returning: bool = False,
    ) -> tuple[list[Moved], list[Command]]:
        """Move the commands matching `where` to `new`, only from statuses that may reach it."""
        guard = ", ".join(f"'{s}'" for s in sources_of(new))
        rows = self.select_locked(f"({where}) AND status IN ({guard})", params, limit, skip_locked)
        if not rows:
            return [], []
        moved: list[Command] = []
        for part in chunks(rows, 20_000):
            p = dict(
                params, _new=str(new), _now=self.now, _ids=self.list_param([r[0] for r in part])
            )
            sql = (
                f"UPDATE commands SET status = :_new, updated_at = :_now{sets} "
                f"WHERE {self.in_list('id', '_ids')}"
            )
            if returning:
                moved.extend(
                    Command.from_row(r)
                    for r in self.update_returning(sql + f" RETURNING {COLS}", p)
                )
            else:
                self.ex(sql, p)
            if str(new) in FINAL:
                self.command_events([r[0] for r in part])
        for _, old, parent_id, task_id, expanded in rows:
            self.count(parent_id, task_id, bool(expanded), old, -1)
            self.count(parent_id, task_id, bool(expanded), str(new), +1)
            if str(new) in FINAL and parent_id is not None:
                self.touched_parents.add(parent_id)
            self.touched_tasks.add(task_id)
        moved.sort(key=lambda c: c.id)
        return rows, moved

    def count(
        self, parent_id: int | None, task_id: int, expanded: bool, status: str, n: int
    ) -> None:
        if parent_id is not None:
            self.deltas[("parent", parent_id, status)] += n
        if not expanded:
            self.deltas[("task", task_id, status)] += n

    def flush_counts(self) -> None:
        """Apply pending count deltas in key order (a fixed lock order: no deadlocks)."""
        rows = [
            {"scope": k[0], "scope_id": k[1], "status": k[2], "n": n}
            for k, n in sorted(self.deltas.items())
            if n
        ]
        self.deltas.clear()
        self.many(
            "INSERT INTO progress (scope, scope_id, status, n) "
            "VALUES (:scope, :scope_id, :status, :n) "
            "ON CONFLICT (scope, scope_id, status) DO UPDATE SET n = progress.n + excluded.n",
            rows,
        )

    def counts(self, scope: str, scope_id: int) -> dict[str, int]:
        return {
            s: int(n)
            for s, n in self.all(
                "SELECT status, n FROM progress WHERE scope = :scope AND scope_id = :id",
                {"scope": scope, "id": scope_id},
            )
            if n
        }

    def settle(self) -> None:
        """Finish parents whose children are all final, then re-derive touched tasks' status."""
        self.flush_counts()
        while self.touched_parents:
            pid = self.touched_parents.pop()
            counts = self.counts("parent", pid)
            if any(counts.get(s, 0) for s in ACTIVE):
                continue
            row = self.one(
                "SELECT status, expanded, task_id FROM commands WHERE id = :id", {"id": pid}
            )
            if row is None or not row[1] or row[0] in FINAL:
                continue
            task = self.one("SELECT cancelled FROM tasks WHERE id = :id", {"id": row[2]})
            new = Status(rollup(counts, cancelled=bool(task and task[0])))
            summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no children"
            self.move(
                "id = :pid",
                {
                    "pid": pid,
                    "_data": dumps({"counts": counts}),
                    "_msg": summary,
                    "_code": 0 if new == "success" else 1,
                },
                new,
                sets=", completed_at = :_now, result_data = :_data, "
                "result_message = :_msg, result_code = :_code",
            )
            self.flush_counts()
        for tid in sorted(self.touched_tasks):
            self.refresh_task(tid)
        self.touched_tasks.clear()

    def refresh_task(self, task_id: int) -> None:
        row = self.one(
            "SELECT status, cancelled, type, username, source FROM tasks WHERE id = :id",
            {"id": task_id},
        )
        if row is None:
            return
        if row[0] in APPROVAL_STATUSES:
            # No command yet: only a cancel moves a task waiting for approval.
            if row[0] == AWAITING_APPROVAL and row[1]:
                self.ex(
                    "UPDATE tasks SET status = 'cancelled', updated_at = :now, "
                    "completed_at = :now WHERE id = :id",
                    {"now": self.now, "id": task_id},
                )
                self.task_event(task_id, "cancelled", row)
            return
        status = rollup(self.counts("task", task_id), cancelled=bool(row[1]))
        if status != row[0]:
            final = status not in ("pending", "in_progress")
            self.ex(
                "UPDATE tasks SET status = :s, updated_at = :now, completed_at = :done "
                "WHERE id = :id",
                {"s": status, "now": self.now, "done": self.now if final else None, "id": task_id},
            )
            self.task_event(task_id, status, row)

    def task_event(self, task_id: int, status: str, row: tuple[Any, ...] | None) -> None:
        """A task's status changed (`row`: its status before, cancelled, type, user, source;
        None for a new task)."""
        if row is None:
            found = self.one(
                "SELECT NULL, cancelled, type, username, source FROM tasks WHERE id = :id",
                {"id": task_id},
            )
            if found is None:
                return
            row = found
        self.add_events(
            "task",
            [
                {
                    "type": status,
                    "subject": task_id,
                    "task_id": task_id,
                    "data": {
                        "id": task_id,
                        "status": status,
                        "previous": row[0],
                        "type": row[2],
                        "user": row[3],
                        "source": row[4],
                        "counts": self.counts("task", task_id),
                    },
                }
            ],
        )


class StoreCore(ABC):
    """Connections and transactions; the concept mixins add the store's methods."""

    url: str
    dialect: str  # "sqlite" or "postgres": store/selectors.py writes a few things per dialect
    for_update = ""
    # The final transaction class (a backend's `SqlTx`), set by the backend's store class.
    tx_class: type[SqlTx]
    # Driver errors that mean "this value cannot be stored": bad input, not a crash.
    bad_input: tuple[type[BaseException], ...] = (OverflowError,)

    def __init__(self, url: str) -> None:
        self.url = url
        self._subscribers: list[Callable[[str], None]] = []
        self._sub_lock = threading.Lock()

    # -- backend hooks --------------------------------------------------------------------------
    @abstractmethod
    def sql(self, text: str) -> str: ...

    @abstractmethod
    @contextmanager
    def _connection(self, write: bool) -> Iterator[Any]:
        """Yield a cursor inside an open transaction; commit on exit, roll back on error."""

    @abstractmethod
    def migrate(self) -> int: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def upkeep(self) -> UpkeepReport:
        """The store's own maintenance, run now and then by the indexer: what keeps the live
        path's queries on plans and indexes that match the data (docs/performance.md)."""

    def _publish(self, tx: SqlTx) -> None:  # noqa: B027 - optional hook, no-op by default
        """Backend hook run inside the transaction before commit (PostgreSQL: NOTIFY)."""

    # -- transactions ---------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[SqlTx]:
        with self._connection(write=True) as cur:
            tx = self.tx_class(self, cur)
            yield tx
            tx.settle()
            self._publish(tx)
        for target in tx.notifications:
            self._wake(target)

    @contextmanager
    def reading(self) -> Iterator[SqlTx]:
        with self._connection(write=False) as cur:
            yield self.tx_class(self, cur)

    def subscribe(self, callback: Callable[[str], None]) -> None:
        with self._sub_lock:
            self._subscribers.append(callback)

    def _wake(self, target_type: str) -> None:
        for cb in list(self._subscribers):
            try:
                cb(target_type)
            except Exception:  # a subscriber's bug must not break a commit that already happened
                log.exception("wake-up subscriber failed")
