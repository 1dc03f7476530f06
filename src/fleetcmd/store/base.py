"""The SQL store shared by both backends.

Everything that is the same on SQLite and PostgreSQL lives here: status moves guarded by the
transition table, per-parent and per-task counts kept in the same transaction as each move,
roll-up of parents and tasks, and the index reads and writes. A backend supplies connections,
placeholder style, row locking and a few dialect-specific expressions.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from importlib import resources
from typing import Any

from fleetcmd.errors import Conflict, InvalidParams, LeaseLost, NotFound
from fleetcmd.model.config import config_hash, merge
from fleetcmd.model.nesting import Unreadable
from fleetcmd.model.records import Agent, Command, Group, Page, Task, dumps, loads
from fleetcmd.model.status import ACTIVE, FINAL, Status, rollup, sources_of
from fleetcmd.store import retention
from fleetcmd.store.protocol import (
    AgentSelection,
    ClaimFilter,
    Fanout,
    NewCommand,
    PurgeReport,
    Result,
    SweepReport,
    UpkeepReport,
    chunks,
)

log = logging.getLogger("fleetcmd.store")

ACTIVE_SQL = "('pending', 'processing', 'sent', 'delivered')"
UNDELIVERED_SQL = "('pending', 'processing', 'sent')"
REMOVED_OFFLINE = (
    "the agent was not connected: it is removed from the index and its credentials are "
    "refused if it returns"
)
REMOVED_UNDELIVERED = "never delivered: its agent was removed from the fleet"
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


def _cursor_id(cursor: str | None) -> int | None:
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


class SqlTx(ABC):
    """One open transaction with the domain operations the task and command managers use."""

    def __init__(self, store: SqlStore, cur: Any) -> None:
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
        row = self.one("SELECT status, cancelled FROM tasks WHERE id = :id", {"id": task_id})
        if row is None:
            return
        status = rollup(self.counts("task", task_id), cancelled=bool(row[1]))
        if status != row[0]:
            final = status not in ("pending", "in_progress")
            self.ex(
                "UPDATE tasks SET status = :s, updated_at = :now, completed_at = :done "
                "WHERE id = :id",
                {"s": status, "now": self.now, "done": self.now if final else None, "id": task_id},
            )

    # -- tasks and first commands ---------------------------------------------------------------
    def insert_task(
        self,
        type_: str,
        params: dict[str, Any],
        source: str,
        user: str,
        idempotency_key: str | None,
    ) -> int:
        row = self.one(
            "INSERT INTO tasks (type, params, source, username, idempotency_key, status, "
            "created_at, updated_at) VALUES (:type, :params, :source, :user, :key, 'pending', "
            ":now, :now) RETURNING id",
            {
                "type": type_,
                "params": dumps(params),
                "source": source,
                "user": user,
                "key": idempotency_key,
                "now": self.now,
            },
        )
        assert row is not None
        self.touched_tasks.add(int(row[0]))
        return int(row[0])

    def task_by_key(self, key: str) -> int | None:
        row = self.one("SELECT id FROM tasks WHERE idempotency_key = :k", {"k": key})
        return None if row is None else int(row[0])

    def lock_task(self, task_id: int) -> Task:
        row = self.one(
            f"SELECT {TASK_COLS} FROM tasks WHERE id = :id{self.store.for_update}", {"id": task_id}
        )
        if row is None:
            raise NotFound(f"task {task_id} not found")
        return task_from_row(row)

    def insert_commands(
        self,
        task_id: int,
        source: str,
        user: str,
        timeout: float,
        expires_at: float,
        commands: list[NewCommand],
    ) -> list[int]:
        ids = []
        for c in commands:
            row = self.one(
                "INSERT INTO commands (task_id, parent_id, source, username, target_type, "
                "target_id, action_name, action_args, timeout, expires_at, status, created_at, "
                "updated_at) VALUES (:task, :parent, :source, :user, :tt, :tid, :action, :args, "
                ":timeout, :expires, 'pending', :now, :now) RETURNING id",
                {
                    "task": task_id,
                    "parent": c.parent_id,
                    "source": source,
                    "user": user,
                    "tt": c.target_type,
                    "tid": c.target_id,
                    "action": c.action_name,
                    "args": dumps(c.action_args),
                    "timeout": timeout,
                    "expires": expires_at,
                    "now": self.now,
                },
            )
            assert row is not None
            ids.append(int(row[0]))
            self.count(c.parent_id, task_id, False, "pending", 1)
            self.notify(c.target_type)
        self.touched_tasks.add(task_id)
        return ids

    def selection_sql(self, sel: AgentSelection, params: dict[str, Any]) -> str:
        """FROM/WHERE over the agents index (alias `a`) for a selection."""
        base = "FROM agents a WHERE a.status <> 'removed'"
        if sel.all:
            return base
        if sel.groups is not None:
            params["_groups"] = self.list_param(list(sel.groups))
            if len(sel.groups) == 1:
                params["_group"] = sel.groups[0]
                return (
                    "FROM agent_groups g JOIN agents a ON a.id = g.agent_id "
                    "WHERE g.group_name = :_group AND a.status <> 'removed'"
                )
            return (
                f"{base} AND a.id IN (SELECT agent_id FROM agent_groups "
                f"WHERE {self.in_list('group_name', '_groups')})"
            )
        assert sel.ids is not None
        params["_agent_ids"] = self.list_param(list(sel.ids))
        return f"{base} AND {self.in_list('a.id', '_agent_ids')}"

    def fan_out(self, fanout: Fanout, selection: AgentSelection) -> int:
        """One child command per selected agent, written inside the store (no per-row Python)."""
        if self.stage is not None:
            return self.stage(self, fanout, selection)
        params: dict[str, Any] = {
            "task": fanout.task_id,
            "parent": fanout.parent_id,
            "source": fanout.source,
            "user": fanout.user,
            "action": fanout.action_name,
            "args": dumps(fanout.action_args),
            "timeout": fanout.timeout,
            "expires": fanout.expires_at,
            "now": self.now,
        }
        args = self.args_with_groups_sql() if fanout.with_groups else ":args"
        source = self.selection_sql(selection, params)
        cur = self.ex(
            "INSERT INTO commands (task_id, parent_id, source, username, target_type, target_id, "
            "action_name, action_args, timeout, expires_at, status, created_at, updated_at) "
            f"SELECT :task, :parent, :source, :user, 'agent', a.id, :action, {args}, :timeout, "
            f":expires, 'pending', :now, :now {source} ORDER BY a.id",
            params,
        )
        n = int(cur.rowcount)
        if n:
            self.count(fanout.parent_id, fanout.task_id, False, "pending", n)
            self.notify("agent")
        self.touched_tasks.add(fanout.task_id)
        return n

    def count_agents(self, selection: AgentSelection) -> int:
        params: dict[str, Any] = {}
        row = self.one(f"SELECT count(*) {self.selection_sql(selection, params)}", params)
        return int(row[0]) if row else 0

    def known_agents(self, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for part in chunks(ids, 20_000):
            found.update(
                r[0]
                for r in self.all(
                    "SELECT id FROM agents WHERE status <> 'removed' AND "
                    + self.in_list("id", "ids"),
                    {"ids": self.list_param(part)},
                )
            )
        return found

    # -- command manager ------------------------------------------------------------------------
    def lease_held(self, command_id: int, owner: str) -> Command:
        row = self.one(
            f"SELECT {COLS} FROM commands WHERE id = :id{self.store.for_update}", {"id": command_id}
        )
        if row is None:
            raise NotFound(f"command {command_id} not found")
        cmd = Command.from_row(row)
        if cmd.status != Status.PROCESSING or cmd.lease_owner != owner:
            raise LeaseLost(
                f"command {command_id}: lease no longer held by {owner} "
                f"(status {cmd.status}, owner {cmd.lease_owner})"
            )
        return cmd

    def finish_expansion(self, parent: Command, children: int, data: dict[str, Any]) -> None:
        """The seed's step 5: the parent is handed on to its children (or done if none)."""
        self.ex(
            "UPDATE commands SET status = 'sent', expanded = 1, sent_at = :now, updated_at = :now, "
            "lease_owner = NULL, lease_expires_at = NULL, result_data = :data WHERE id = :id",
            {"now": self.now, "data": dumps(data), "id": parent.id},
        )
        self.count(parent.parent_id, parent.task_id, False, parent.status, -1)
        if parent.parent_id is not None:
            self.count(parent.parent_id, parent.task_id, True, "sent", +1)
        self.touched_parents.add(parent.id)
        self.touched_tasks.add(parent.task_id)

    def fail_command(self, command_id: int, message: str, code: int = 1) -> None:
        self.move(
            "id = :cid",
            {"cid": command_id, "_msg": message[:2000], "_code": code},
            Status.FAILURE,
            sets=", completed_at = :_now, result_code = :_code, result_message = :_msg, "
            "lease_owner = NULL, lease_expires_at = NULL",
        )

    # -- agents and groups ----------------------------------------------------------------------
    def agents_groups(self, ids: list[str] | None, group: str | None) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        if group is not None:
            rows = self.all(
                "SELECT a.id, a.groups FROM agent_groups g JOIN agents a ON a.id = g.agent_id "
                "WHERE g.group_name = :g AND a.status <> 'removed' ORDER BY a.id",
                {"g": group},
            )
            return {r[0]: loads(r[1]) for r in rows}
        for part in chunks(ids or [], 20_000):
            for r in self.all(
                f"SELECT id, groups FROM agents WHERE status <> 'removed' AND "
                f"{self.in_list('id', 'ids')}",
                {"ids": self.list_param(part)},
            ):
                out[r[0]] = loads(r[1])
        return out

    def set_agents_groups(self, groups_by_agent: dict[str, list[str]]) -> None:
        ids = list(groups_by_agent)
        for part in chunks(ids, 20_000):
            self.ex(
                f"DELETE FROM agent_groups WHERE {self.in_list('agent_id', 'ids')}",
                {"ids": self.list_param(part)},
            )
        self.many(
            "UPDATE agents SET groups = :groups, updated_at = :now WHERE id = :id",
            [{"groups": dumps(g), "now": self.now, "id": a} for a, g in groups_by_agent.items()],
        )
        self.many(
            "INSERT INTO agent_groups (group_name, agent_id) VALUES (:g, :a)",
            [{"g": g, "a": a} for a, gs in groups_by_agent.items() for g in gs],
        )

    def agent(self, agent_id: str) -> Agent | None:
        row = self.one(f"SELECT {Agent.COLUMNS} FROM agents WHERE id = :id", {"id": agent_id})
        return None if row is None else Agent.from_row(row)

    def agent_named(self, name: str, other_than: str | None = None) -> str | None:
        """The id of the agent (removed ones included) holding `name`, other than `other_than`."""
        row = self.one(
            "SELECT id FROM agents WHERE name = :n AND id <> :id",
            {"n": name, "id": other_than or ""},
        )
        return None if row is None else str(row[0])

    def rename_agent(self, agent_id: str, name: str) -> None:
        clash = self.agent_named(name, other_than=agent_id)
        if clash:
            raise Conflict(f"agent name '{name}' is already used by agent {clash}")
        self.ex(
            "UPDATE agents SET name = :n, updated_at = :now WHERE id = :id",
            {"n": name, "now": self.now, "id": agent_id},
        )

    def remove_agent(self, agent_id: str) -> None:
        """Agents are tombstoned, not dropped: the Comms API must keep refusing them and their
        deletion command still has to be routed to the node they are connected to."""
        self.ex("DELETE FROM agent_groups WHERE agent_id = :id", {"id": agent_id})
        self.ex(
            "UPDATE agents SET status = 'removed', groups = '[]', secret_hash = NULL, "
            "name = :tomb, updated_at = :now WHERE id = :id",
            {"id": agent_id, "now": self.now, "tomb": f"removed-{agent_id}"},
        )

    def settle_removed(
        self,
        *,
        agent_id: str | None = None,
        ids: Sequence[int] | None = None,
        connected: bool = False,
    ) -> int:
        """Commands aimed at a removed agent never wait for it (they would be claimed and
        released for ever: issue 14.2). Undelivered ones end `expired`, saying why; its own
        `delete` command ends `success` unless the agent is `connected` to a node that can
        still hand it over: the deletion is done on this side, and the agent's credentials
        are refused if it ever returns. Scoped to one agent (at removal) or to `ids` (just
        handed back to pending)."""
        where = (
            "target_type = 'agent' AND expanded = 0 "
            "AND target_id IN (SELECT id FROM agents WHERE status = 'removed')"
        )
        params: dict[str, Any] = {}
        if agent_id is not None:
            where += " AND target_id = :rid"
            params["rid"] = agent_id
        if ids is not None:
            if not ids:
                return 0
            where += " AND status = 'pending' AND " + self.in_list("id", "sids")
            params["sids"] = self.list_param(list(ids))
        else:
            where += f" AND status IN {UNDELIVERED_SQL}"
        n = 0
        cleared = ", completed_at = :_now, lease_owner = NULL, lease_expires_at = NULL, "
        if not connected:
            rows, _ = self.move(
                where + " AND action_name = 'delete'",
                dict(
                    params, _msg=REMOVED_OFFLINE, _data=dumps({"deleted": True, "delivered": False})
                ),
                Status.SUCCESS,
                sets=cleared + "result_code = 0, result_message = :_msg, result_data = :_data",
            )
            n += len(rows)
        rows, _ = self.move(
            where + " AND action_name <> 'delete'",
            dict(params, _msg=REMOVED_UNDELIVERED),
            Status.EXPIRED,
            sets=cleared + "result_message = :_msg",
        )
        return n + len(rows)

    def group(self, name: str) -> Group | None:
        row = self.one(
            "SELECT name, config_hash, version, created_at, updated_at FROM groups WHERE name = :n",
            {"n": name},
        )
        return None if row is None else Group(row[0], row[1], int(row[2]), row[3], row[4])

    def ensure_groups(self, names: list[str]) -> None:
        self.many(
            "INSERT INTO groups (name, version, created_at, updated_at) VALUES (:n, 0, :now, :now) "
            "ON CONFLICT (name) DO NOTHING",
            [{"n": n, "now": self.now} for n in names],
        )

    def delete_group(self, name: str) -> None:
        self.ex("DELETE FROM agent_groups WHERE group_name = :n", {"n": name})
        self.ex("DELETE FROM groups WHERE name = :n", {"n": name})

    def put_config(self, config: dict[str, Any]) -> str:
        text = dumps(config)
        h = config_hash(config)
        self.ex(
            "INSERT INTO configs (hash, content, size, created_at) VALUES (:h, :c, :s, :now) "
            "ON CONFLICT (hash) DO NOTHING",
            {"h": h, "c": text, "s": len(text), "now": self.now},
        )
        return h

    def put_group_config(
        self, name: str, config: dict[str, Any], task_id: int | None
    ) -> tuple[str, int]:
        h = self.put_config(config)
        self.ensure_groups([name])
        row = self.one(
            "UPDATE groups SET config_hash = :h, version = version + 1, "
            "updated_at = :now WHERE name = :n RETURNING version",
            {"h": h, "now": self.now, "n": name},
        )
        assert row is not None
        version = int(row[0])
        self.ex(
            "INSERT INTO group_history (group_name, version, config_hash, task_id, changed_at) "
            "VALUES (:n, :v, :h, :t, :now)",
            {"n": name, "v": version, "h": h, "t": task_id, "now": self.now},
        )
        return h, version

    # -- generic content indexes ----------------------------------------------------------------
    def put_document(self, index: str, doc_id: str, body: Any) -> int:
        row = self.one(
            "INSERT INTO documents (index_name, doc_id, body, version, updated_at) "
            "VALUES (:i, :d, :b, 1, :now) ON CONFLICT (index_name, doc_id) DO UPDATE SET "
            "body = excluded.body, version = documents.version + 1, "
            "updated_at = excluded.updated_at "
            "RETURNING version",
            {"i": index, "d": doc_id, "b": dumps(body), "now": self.now},
        )
        assert row is not None
        return int(row[0])

    def delete_document(self, index: str, doc_id: str) -> bool:
        cur = self.ex(
            "DELETE FROM documents WHERE index_name = :i AND doc_id = :d", {"i": index, "d": doc_id}
        )
        return bool(cur.rowcount)

    def document(self, index: str, doc_id: str) -> Any:
        row = self.one(
            "SELECT body FROM documents WHERE index_name = :i AND doc_id = :d",
            {"i": index, "d": doc_id},
        )
        return None if row is None else loads(row[0])

    def documents(self, index: str, prefix: str = "") -> dict[str, Any]:
        rows = self.all(
            "SELECT doc_id, body FROM documents WHERE index_name = :i ORDER BY doc_id", {"i": index}
        )
        return {r[0]: loads(r[1]) for r in rows if r[0].startswith(prefix)}

    def document_page(
        self, index: str, prefix: str, after: str | None, limit: int, descending: bool = False
    ) -> tuple[list[tuple[str, Any]], bool]:
        """Up to `limit` documents in id order (or reverse) past `after`, and whether more
        follow. The prefix is matched exactly (`substr`), not as a range, which a collation
        may reorder."""
        where = "index_name = :i AND doc_id >= :p AND substr(doc_id, 1, :n) = :p"
        if after is not None:
            where += " AND doc_id < :after" if descending else " AND doc_id > :after"
        rows = self.all(
            f"SELECT doc_id, body FROM documents WHERE {where} "
            f"ORDER BY doc_id {'DESC' if descending else 'ASC'} LIMIT :lim",
            {"i": index, "p": prefix, "n": len(prefix), "after": after, "lim": limit + 1},
        )
        return [(r[0], loads(r[1])) for r in rows[:limit]], len(rows) > limit

    # -- the audit trail (append-only) -----------------------------------------------------------
    def append_audit(self, record: dict[str, Any]) -> int:
        """One audit record, in this transaction (so it commits or rolls back with the change)."""
        row = self.one(
            "INSERT INTO audit (at, actor, action, outcome, address, target, node, details) "
            "VALUES (:at, :actor, :action, :outcome, :address, :target, :node, :details) "
            "RETURNING id",
            {
                "at": record.get("at") or self.now,
                "actor": record["actor"],
                "action": record["action"],
                "outcome": record["outcome"],
                "address": record.get("address"),
                "target": record.get("target"),
                "node": record.get("node"),
                "details": dumps(record.get("details") or {}),
            },
        )
        assert row is not None
        return int(row[0])

    def active_nodes(self, max_age: float) -> list[str]:
        return [
            r[0]
            for r in self.all(
                "SELECT id FROM nodes WHERE heartbeat_at >= :t ORDER BY id",
                {"t": self.now - max_age},
            )
        ]


TASK_COLS = (
    "id, type, params, source, username, status, created_at, updated_at, completed_at, "
    "idempotency_key, cancelled"
)


def task_from_row(r: tuple[Any, ...]) -> Task:
    return Task(int(r[0]), r[1], loads(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], r[9], bool(r[10]))


class SqlStore(ABC):
    """Shared implementation of the `Store` protocol."""

    url: str
    for_update = ""
    tx_class: type[SqlTx]
    # Driver errors that mean "this value cannot be stored": bad input, not a crash.
    bad_input: tuple[type[BaseException], ...] = (OverflowError,)

    def __init__(self, url: str) -> None:
        self.url = url
        self._subscribers: list[Callable[[str], None]] = []
        self._sub_lock = threading.Lock()
        self._merged_cache: dict[tuple[str | None, ...], tuple[dict[str, Any], str]] = {}

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

    # -- tasks and commands ---------------------------------------------------------------------
    def get_task(self, task_id: int) -> Task:
        with self.reading() as tx:
            row = tx.one(f"SELECT {TASK_COLS} FROM tasks WHERE id = :id", {"id": task_id})
            if row is None:
                raise NotFound(f"task {task_id} not found")
            task = task_from_row(row)
            task.counts = tx.counts("task", task_id)
        return task

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
    ) -> Page:
        where: list[str] = ["1 = 1"]
        params: dict[str, Any] = {"limit": limit + 1}
        for col, val in (
            ("status", status),
            ("type", type_),
            ("username", user),
            ("source", source),
        ):
            if val is not None:
                where.append(f"{col} = :{col}")
                params[col] = val
        if since is not None:
            where.append("created_at >= :since")
            params["since"] = since
        if until is not None:
            where.append("created_at < :until")
            params["until"] = until
        after = _cursor_id(cursor)
        if after is not None:
            where.append("id < :after")
            params["after"] = after
        with self.reading() as tx:
            rows = tx.all(
                f"SELECT {TASK_COLS} FROM tasks WHERE {' AND '.join(where)} "
                "ORDER BY id DESC LIMIT :limit",
                params,
            )
            tasks = [task_from_row(r) for r in rows[:limit]]
            for t in tasks:
                t.counts = tx.counts("task", t.id)
        nxt = str(tasks[-1].id) if len(rows) > limit else None
        return Page(tasks, nxt)

    def get_command(self, command_id: int) -> Command:
        with self.reading() as tx:
            row = tx.one(f"SELECT {COLS} FROM commands WHERE id = :id", {"id": command_id})
        if row is None:
            raise NotFound(f"command {command_id} not found")
        return Command.from_row(row)

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
    ) -> Page:
        where: list[str] = ["1 = 1"]
        params: dict[str, Any] = {"limit": limit + 1}
        for col, val in (
            ("task_id", task_id),
            ("parent_id", parent_id),
            ("status", status),
            ("target_type", target_type),
            ("target_id", target_id),
        ):
            if val is not None:
                where.append(f"{col} = :{col}")
                params[col] = val
        after = _cursor_id(cursor)
        if after is not None:
            where.append("id > :after")
            params["after"] = after
        with self.reading() as tx:
            rows = tx.all(
                f"SELECT {COLS} FROM commands WHERE {' AND '.join(where)} ORDER BY id LIMIT :limit",
                params,
            )
        cmds = [Command.from_row(r) for r in rows[:limit]]
        return Page(cmds, str(cmds[-1].id) if len(rows) > limit else None)

    def counts(self, scope: str, scope_id: int) -> dict[str, int]:
        with self.reading() as tx:
            return tx.counts(scope, scope_id)

    def targets(self, ids: list[int]) -> dict[int, tuple[str, str]]:
        """Command id -> (target type, target id)."""
        out: dict[int, tuple[str, str]] = {}
        with self.reading() as tx:
            for part in chunks(ids, 20_000):
                for r in tx.all(
                    "SELECT id, target_type, target_id FROM commands WHERE "
                    f"{tx.in_list('id', 'ids')}",
                    {"ids": tx.list_param(part)},
                ):
                    out[int(r[0])] = (r[1], r[2])
        return out

    def command_targets(self, ids: list[int]) -> dict[int, tuple[str, str, str]]:
        """Command id -> (target type, target id, action name), for many ids at once (a
        server checking that the results an agent posts are its own)."""
        out: dict[int, tuple[str, str, str]] = {}
        with self.reading() as tx:
            for part in chunks(ids, 20_000):
                for r in tx.all(
                    "SELECT id, target_type, target_id, action_name FROM commands WHERE "
                    f"{tx.in_list('id', 'ids')}",
                    {"ids": tx.list_param(part)},
                ):
                    out[int(r[0])] = (r[1], r[2], r[3])
        return out

    def recount(self, scope: str, scope_id: int) -> dict[str, int]:
        """Count by scanning the stream: only for checking the kept counts (tests, invariants)."""
        if scope == "parent":
            sql = "SELECT status, count(*) FROM commands WHERE parent_id = :id GROUP BY status"
        else:
            sql = (
                "SELECT status, count(*) FROM commands WHERE task_id = :id AND expanded = 0 "
                "GROUP BY status"
            )
        with self.reading() as tx:
            return {s: int(n) for s, n in tx.all(sql, {"id": scope_id})}

    # -- the stream -----------------------------------------------------------------------------
    def claim(self, owner: str, where: ClaimFilter, limit: int, lease: float) -> list[Command]:
        """Claim up to `limit` pending commands under a lease (each by one claimer at a time)."""
        with self.transaction() as tx:
            params: dict[str, Any] = {
                "tt": where.target_type,
                "now": tx.now,
                "owner": owner,
                "until": tx.now + lease,
            }
            cond = "status = 'pending' AND target_type = :tt AND expires_at > :now"
            if where.target_type == "agent" and (
                where.node is not None or where.target_ids is not None
            ):
                # Go from the agents (of the node, or listed) to their pending commands through
                # commands_pending_target, not along every pending command in id order: with
                # 100,000 commands waiting for offline agents that walk took 33 ms a claim on
                # SQLite (5 ms this way), and grew with the offline fleet.
                cond = cond.replace("target_type", tx.by_target_first("target_type"), 1)
            if where.node is not None:
                params["node"] = where.node
                if where.target_type == "agent":
                    cond += " AND target_id IN (SELECT id FROM agents WHERE node = :node)"
                else:
                    cond += " AND target_id IN (:node, '*')"
            elif where.target_ids is not None:
                params["tids"] = tx.list_param(list(where.target_ids))
                cond += f" AND {tx.in_list('target_id', 'tids')}"
            _, claimed = tx.move(
                cond,
                params,
                Status.PROCESSING,
                sets=", lease_owner = :owner, lease_expires_at = :until, attempts = attempts + 1",
                limit=limit,
                skip_locked=True,
                returning=True,
            )
        return claimed

    def renew(self, owner: str, ids: list[int], lease: float) -> list[int]:
        if not ids:
            return []
        with self.transaction() as tx:
            return [
                int(r[0])
                for r in tx.update_returning(
                    self.sql(
                        "UPDATE commands SET lease_expires_at = :until WHERE "
                        f"{tx.in_list('id', 'ids')} AND lease_owner = :owner "
                        "AND status IN ('processing', 'sent') RETURNING id"
                    ),
                    {"until": tx.now + lease, "owner": owner, "ids": tx.list_param(ids)},
                )
            ]

    @staticmethod
    def _hand_back(tx: SqlTx, where: str, params: dict[str, Any]) -> int:
        """Leased commands matching `where` back to pending, lease cleared, claimers woken;
        those of removed agents end instead (`settle_removed`)."""
        rows, _ = tx.move(
            f"({where}) AND expanded = 0",
            params,
            Status.PENDING,
            sets=", lease_owner = NULL, lease_expires_at = NULL",
        )
        if rows:
            tx.settle_removed(ids=[int(r[0]) for r in rows])
            for tt in {"agent", "server", "indexer"}:
                tx.notify(tt)
        return len(rows)

    def release(self, owner: str, ids: list[int]) -> int:
        if not ids:
            return 0
        with self.transaction() as tx:
            return self._hand_back(
                tx,
                f"{tx.in_list('id', 'ids')} AND lease_owner = :owner",
                {"ids": tx.list_param(ids), "owner": owner},
            )

    def release_previous(self, owner: str) -> int:
        """A server node restarted: hand back at once what its earlier incarnations held
        (lease owners `NODE#INCARNATION`), instead of letting it wait out their leases. The
        caller's own leases are kept; a still-running older incarnation loses its leases, and
        with them the right to mark anything `sent` (the newest incarnation wins)."""
        node, sep, incarnation = owner.rpartition("#")
        if not sep or not node or not incarnation:
            raise InvalidParams("owner must be NODE#INCARNATION")
        prefix = node + "#"
        with self.transaction() as tx:
            return self._hand_back(
                tx,
                "status IN ('processing', 'sent') AND substr(lease_owner, 1, :n) = :prefix "
                "AND lease_owner <> :owner",
                {"n": len(prefix), "prefix": prefix, "owner": owner},
            )

    def mark(self, owner: str | None, ids: list[int], status: str) -> list[int]:
        """`sent` needs the caller's lease; returns the ids moved. `delivered` is accepted from
        whoever saw the agent take the command (the agent's journal makes a second delivery
        harmless); returns every id that is `delivered` now, moved by this call or an earlier
        one, because the agent executes only what this answer confirms: a command that went
        final undelivered (expired, cancelled) meanwhile is left out and never runs."""
        if not ids:
            return []
        with self.transaction() as tx:
            params: dict[str, Any] = {"ids": tx.list_param(ids), "owner": owner}
            if status == Status.SENT:
                rows, _ = tx.move(
                    f"{tx.in_list('id', 'ids')} AND lease_owner = :owner AND status = 'processing'",
                    params,
                    Status.SENT,
                    sets=", sent_at = :_now",
                )
            elif status == Status.DELIVERED:
                # A node may report a command it does not hold (its lease lapsed: the agent
                # has it all the same), but not one another node holds now: that is a zombie
                # node waking up with a stale mailbox.
                stale = (
                    " AND NOT (status IN ('processing', 'sent') AND lease_owner IS NOT NULL "
                    "AND lease_owner <> :owner)"
                    if owner is not None
                    else ""
                )
                rows, _ = tx.move(
                    f"{tx.in_list('id', 'ids')} AND expanded = 0{stale}",
                    params,
                    Status.DELIVERED,
                    sets=", delivered_at = :_now, timeout_at = :_now + timeout, "
                    "lease_owner = NULL, lease_expires_at = NULL",
                )
                moved = {int(r[0]) for r in rows}
                rest = [i for i in dict.fromkeys(ids) if i not in moved]
                if rest:  # acked before (the agent repeats an ack whose answer it lost)
                    moved.update(
                        int(r[0])
                        for r in tx.all(
                            f"SELECT id FROM commands WHERE {tx.in_list('id', 'rest')} "
                            "AND status = 'delivered'",
                            {"rest": tx.list_param(rest)},
                        )
                    )
                return sorted(moved)
            else:
                raise InvalidParams(f"status '{status}' cannot be marked; use results")
        return sorted(r[0] for r in rows)

    def complete(self, results: list[Result]) -> list[dict[str, Any]]:
        """Record results, idempotent per command id: a repeat of a final result is a no-op."""
        outcome: dict[int, str] = {}
        by_id = {r.id: r for r in results}
        for r in results:
            if r.status not in (Status.SUCCESS, Status.FAILURE):
                outcome[r.id] = (
                    f"rejected: result status must be success or failure, not {r.status}"
                )
        wanted = sorted(i for i in by_id if i not in outcome)
        with self.transaction() as tx:
            current = {
                row[0]: row
                for part in chunks(wanted, 20_000)
                for row in tx.select_locked(
                    tx.in_list("id", "ids"), {"ids": tx.list_param(part)}, None, False
                )
            }
            updates = []
            for cid in wanted:
                res = by_id[cid]
                row = current.get(cid)
                if row is None:
                    outcome[cid] = "not_found"
                    continue
                _, old, parent_id, task_id, expanded = row
                if old in FINAL:
                    outcome[cid] = "duplicate" if old == res.status else f"ignored: already {old}"
                    continue
                if expanded:
                    outcome[cid] = "rejected: a parent's result is derived from its children"
                    continue
                updates.append(
                    {
                        "id": cid,
                        "s": res.status,
                        "code": res.code,
                        "msg": res.message[:4000],
                        "data": dumps(res.data),
                        "now": tx.now,
                    }
                )
                tx.count(parent_id, task_id, False, old, -1)
                tx.count(parent_id, task_id, False, res.status, +1)
                if parent_id is not None:
                    tx.touched_parents.add(parent_id)
                tx.touched_tasks.add(task_id)
                outcome[cid] = "recorded"
            tx.many(
                "UPDATE commands SET status = :s, result_code = :code, result_message = :msg, "
                "result_data = :data, completed_at = :now, updated_at = :now, "
                "lease_owner = NULL, lease_expires_at = NULL WHERE id = :id",
                updates,
            )
        return [{"id": r.id, "outcome": outcome[r.id]} for r in results]

    def cancel_task(self, task_id: int) -> int:
        with self.transaction() as tx:
            tx.lock_task(task_id)
            tx.ex(
                "UPDATE tasks SET cancelled = 1, updated_at = :now WHERE id = :id",
                {"now": tx.now, "id": task_id},
            )
            rows, _ = tx.move(
                "task_id = :tid AND expanded = 0",
                {"tid": task_id},
                Status.CANCELLED,
                sets=", completed_at = :_now, result_message = 'cancelled', "
                "lease_owner = NULL, lease_expires_at = NULL",
            )
            # parents already handed on, with no child left to settle them
            for (pid,) in tx.all(
                "SELECT id FROM commands WHERE task_id = :tid AND expanded = 1 "
                f"AND status IN {ACTIVE_SQL}",
                {"tid": task_id},
            ):
                tx.touched_parents.add(int(pid))
            tx.touched_tasks.add(task_id)
        return len(rows)

    def purge_finished(
        self, older_than: float, now: float | None = None, batch: int = 2000
    ) -> PurgeReport:
        """Retention: tasks finished more than `older_than` seconds ago leave the store with
        their commands and counts, in short batched transactions (store/retention.py)."""
        return retention.purge(self, older_than, now, batch)

    def sweep(
        self, now: float | None = None, batch: int = 5000, disconnect_after: float | None = None
    ) -> SweepReport:
        """Time-driven moves: lapsed leases back to pending, missed deadlines to expired,
        delivered commands past their execution timeout to timeout."""
        report = SweepReport()
        steps: list[tuple[str, Status, str, str]] = [
            (
                "status IN ('processing', 'sent') AND lease_expires_at < :t AND expanded = 0",
                Status.PENDING,
                ", lease_owner = NULL, lease_expires_at = NULL",
                "lease_lapsed",
            ),
            (
                f"status IN {UNDELIVERED_SQL} AND expires_at < :t AND expanded = 0",
                Status.EXPIRED,
                ", completed_at = :_now, lease_owner = NULL, lease_expires_at = NULL, "
                "result_message = 'not delivered before its deadline'",
                "expired",
            ),
            (
                "status = 'delivered' AND timeout_at < :t",
                Status.TIMEOUT,
                ", completed_at = :_now, result_message = 'no result within the execution timeout'",
                "timed_out",
            ),
        ]
        for where, new, sets, field_name in steps:
            while True:
                with self.transaction() as tx:
                    t = tx.now if now is None else now
                    rows, _ = tx.move(
                        where, {"t": t}, new, sets=sets, limit=batch, skip_locked=True
                    )
                    if rows and new == Status.PENDING:
                        tx.settle_removed(ids=[int(r[0]) for r in rows])
                        tx.notify("agent")
                        tx.notify("server")
                        tx.notify("indexer")
                setattr(report, field_name, getattr(report, field_name) + len(rows))
                if len(rows) < batch:
                    break
        if disconnect_after is not None:
            with self.transaction() as tx:
                t = tx.now if now is None else now
                cur = tx.ex(
                    "UPDATE agents SET status = 'disconnected', updated_at = :now "
                    "WHERE status = 'active' AND last_seen < :t",
                    {"now": tx.now, "t": t - disconnect_after},
                )
                report.disconnected = int(cur.rowcount)
        return report

    # -- agents ---------------------------------------------------------------------------------
    def register_agents(self, agents: list[dict[str, Any]]) -> int:
        """Insert or update agents (id, name, groups, version, status, info, secret_hash,
        enrollment_request)."""
        with self.transaction() as tx:
            groups = sorted({g for a in agents for g in a.get("groups", [])})
            tx.ensure_groups(groups)
            self._insert_agents(tx, agents)
        return len(agents)

    def _insert_agents(self, tx: SqlTx, agents: list[dict[str, Any]]) -> None:
        names = [a["name"] for a in agents]
        if len(set(names)) != len(names):
            raise Conflict("two agents in the request have the same name")
        wanted = {a["name"]: a["id"] for a in agents}
        for part in chunks(names, 20_000):
            for name, owner in tx.all(
                f"SELECT name, id FROM agents WHERE {tx.in_list('name', 'names')}",
                {"names": tx.list_param(part)},
            ):
                if wanted[name] != owner:
                    raise Conflict(f"agent name '{name}' is already used by agent {owner}")
        requests = {r: a["id"] for a in agents if (r := a.get("enrollment_request"))}
        for part in chunks(list(requests), 20_000):
            for request, owner in tx.all(
                "SELECT enrollment_request, id FROM agents WHERE "
                f"{tx.in_list('enrollment_request', 'requests')}",
                {"requests": tx.list_param(part)},
            ):
                if requests[request] != owner:
                    raise Conflict(f"enrollment request {request} already enrolled agent {owner}")
        rows = [
            {
                "id": a["id"],
                "name": a["name"],
                "groups": dumps(a.get("groups", [])),
                "status": a.get("status", "never_connected"),
                "version": a.get("version"),
                "info": dumps(a.get("info", {})),
                "secret": a.get("secret_hash"),
                "request": a.get("enrollment_request"),
                "now": tx.now,
            }
            for a in agents
        ]
        tx.many(
            "INSERT INTO agents (id, name, groups, status, version, info, secret_hash, "
            "enrollment_request, created_at, updated_at) VALUES (:id, :name, :groups, :status, "
            ":version, :info, :secret, :request, :now, :now) "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
            "groups = excluded.groups, version = excluded.version, info = excluded.info, "
            "updated_at = excluded.updated_at",
            rows,
        )
        ids = [a["id"] for a in agents]
        for part in chunks(ids, 20_000):
            tx.ex(
                f"DELETE FROM agent_groups WHERE {tx.in_list('agent_id', 'ids')}",
                {"ids": tx.list_param(part)},
            )
        tx.many(
            "INSERT INTO agent_groups (group_name, agent_id) VALUES (:g, :a)",
            [{"g": g, "a": a["id"]} for a in agents for g in a.get("groups", [])],
        )

    def get_agent(self, agent_id: str) -> Agent:
        with self.reading() as tx:
            agent = tx.agent(agent_id)
        if agent is None:
            raise NotFound(f"agent {agent_id} not found")
        return agent

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
    ) -> Page:
        """`scope_groups`/`scope_ids` (either given): only agents in one of those groups or
        with one of those ids (what a scoped user may read; ids alone: a lookup)."""
        where: list[str] = ["a.status <> 'removed'"]
        params: dict[str, Any] = {"limit": limit + 1}
        if group is not None:
            where.append("a.id IN (SELECT agent_id FROM agent_groups WHERE group_name = :g)")
            params["g"] = group
        if status is not None:
            where.append("a.status = :status")
            params["status"] = status
        if node is not None:
            where.append("a.node = :node")
            params["node"] = node
        if search:
            where.append("(a.name LIKE :q OR a.id LIKE :q)")
            params["q"] = "".join(c for c in search if c not in "%_\\") + "%"
        if cursor:
            where.append("a.id > :after")
            params["after"] = cursor
        cols = ", ".join(f"a.{c.strip()}" for c in Agent.COLUMNS.split(","))
        with self.reading() as tx:
            if scope_groups is not None or scope_ids is not None:
                params["sg"] = tx.list_param(list(scope_groups or []))
                params["si"] = tx.list_param(list(scope_ids or []))
                where.append(
                    f"({tx.in_list('a.id', 'si')} OR a.id IN (SELECT agent_id FROM "
                    f"agent_groups WHERE {tx.in_list('group_name', 'sg')}))"
                )
            rows = tx.all(
                f"SELECT {cols} FROM agents a WHERE {' AND '.join(where)} "
                "ORDER BY a.id LIMIT :limit",
                params,
            )
        agents = [Agent.from_row(r) for r in rows[:limit]]
        return Page(agents, agents[-1].id if len(rows) > limit else None)

    def agent_summary(self) -> dict[str, Any]:
        with self.reading() as tx:
            by_status = dict(
                tx.all(
                    "SELECT status, count(*) FROM agents WHERE status <> 'removed' GROUP BY status"
                )
            )
            by_version = dict(
                tx.all(
                    "SELECT coalesce(version, 'unknown'), count(*) FROM agents "
                    "WHERE status <> 'removed' GROUP BY 1"
                )
            )
            by_group = dict(tx.all("SELECT group_name, count(*) FROM agent_groups GROUP BY 1"))
        return {
            "by_status": by_status,
            "by_version": by_version,
            "by_group": by_group,
            "total": sum(by_status.values()),
        }

    def update_agents(self, updates: list[dict[str, Any]]) -> int:
        """Batch of partial agent updates from servers: status, node, last_seen, version,
        config_hash, info. Removed agents stay removed."""
        allowed = ("status", "node", "last_seen", "version", "config_hash", "info", "secret_hash")
        n = 0
        with self.transaction() as tx:
            by_shape: dict[tuple[tuple[str, ...], bool], list[dict[str, Any]]] = {}
            for u in updates:
                keys = tuple(sorted(k for k in u if k in allowed))
                if not keys:
                    continue
                row = {k: (dumps(u[k]) if k == "info" else u[k]) for k in keys}
                row["id"] = u["id"]
                row["now"] = tx.now
                # `if_node`: apply only while the agent is still attached to that node (a node
                # detaching agents it lost must not detach them from the node they moved to).
                if u.get("if_node") is not None:
                    row["if_node"] = u["if_node"]
                by_shape.setdefault((keys, "if_node" in row), []).append(row)
            for (keys, conditional), rows in by_shape.items():
                sets = ", ".join(f"{k} = :{k}" for k in keys)
                tx.many(
                    f"UPDATE agents SET {sets}, updated_at = :now "
                    "WHERE id = :id AND status <> 'removed'"
                    + (" AND node = :if_node" if conditional else ""),
                    rows,
                )
                n += len(rows)
        return n

    def agent_secret_hash(self, agent_id: str) -> tuple[str | None, str]:
        with self.reading() as tx:
            row = tx.one("SELECT secret_hash, status FROM agents WHERE id = :id", {"id": agent_id})
        if row is None:
            raise NotFound(f"agent {agent_id} not found")
        return row[0], row[1]

    def agent_by_enrollment(self, request_id: str) -> dict[str, Any]:
        """The agent an enrollment request created: what the Comms API needs to answer a
        repeat of that request (id, name, groups, status, secret hash)."""
        with self.reading() as tx:
            row = tx.one(
                "SELECT id, name, groups, status, secret_hash FROM agents "
                "WHERE enrollment_request = :r",
                {"r": request_id},
            )
        if row is None:
            raise NotFound(f"no agent was enrolled by request {request_id}")
        return {
            "id": row[0],
            "name": row[1],
            "groups": loads(row[2]) or [],
            "status": row[3],
            "secret_hash": row[4],
        }

    def removed_agents(self, since: float, limit: int = 10_000) -> list[tuple[str, float]]:
        """(id, removed at) of agents removed at or after `since`, oldest first: server nodes
        follow this to refuse a deleted agent's unexpired token at once."""
        with self.reading() as tx:
            rows = tx.all(
                "SELECT id, updated_at FROM agents WHERE status = 'removed' AND updated_at >= :s "
                "ORDER BY updated_at, id LIMIT :n",
                {"s": since, "n": limit},
            )
        return [(str(r[0]), float(r[1])) for r in rows]

    # -- groups and configurations --------------------------------------------------------------
    def get_group(self, name: str) -> Group:
        with self.reading() as tx:
            group = tx.group(name)
            if group is None:
                raise NotFound(f"group {name} not found")
            row = tx.one("SELECT count(*) FROM agent_groups WHERE group_name = :n", {"n": name})
            group.members = int(row[0]) if row else 0
            if group.config_hash:
                c = tx.one("SELECT content FROM configs WHERE hash = :h", {"h": group.config_hash})
                group.configuration = loads(c[0]) if c else None
        return group

    def list_groups(self) -> list[Group]:
        with self.reading() as tx:
            members = dict(tx.all("SELECT group_name, count(*) FROM agent_groups GROUP BY 1"))
            rows = tx.all(
                "SELECT name, config_hash, version, created_at, updated_at FROM groups "
                "ORDER BY name"
            )
        return [Group(r[0], r[1], int(r[2]), r[3], r[4], int(members.get(r[0], 0))) for r in rows]

    def group_history(self, name: str) -> list[dict[str, Any]]:
        with self.reading() as tx:
            rows = tx.all(
                "SELECT version, config_hash, task_id, changed_at FROM group_history "
                "WHERE group_name = :n ORDER BY version DESC",
                {"n": name},
            )
        return [
            {"version": r[0], "config_hash": r[1], "task_id": r[2], "changed_at": r[3]}
            for r in rows
        ]

    def get_config(self, config_hash_: str) -> dict[str, Any]:
        config = self._config(config_hash_)
        return Unreadable() if isinstance(config, Unreadable) else dict(config)

    @lru_cache(maxsize=4096)  # noqa: B019 - content-addressed, so entries never go stale
    def _config(self, h: str) -> dict[str, Any]:
        with self.reading() as tx:
            row = tx.one("SELECT content FROM configs WHERE hash = :h", {"h": h})
        if row is None:
            raise NotFound(f"configuration {h} not found")
        value: dict[str, Any] = loads(row[0])
        return value

    def merged_config(self, groups: list[str]) -> tuple[dict[str, Any], str]:
        """The configuration an agent in `groups` runs, and its hash (what the agent reports)."""
        with self.reading() as tx:
            hashes: list[str | None] = []
            for g in groups:
                row = tx.one("SELECT config_hash FROM groups WHERE name = :n", {"n": g})
                hashes.append(row[0] if row else None)
        key = tuple(hashes)
        cached = self._merged_cache.get(key)
        if cached is None:
            parts = [self._config(h) for h in hashes if h]
            # A part too deep to read (stored before the limit) leaves nothing to merge.
            merged = Unreadable() if any(isinstance(c, Unreadable) for c in parts) else merge(parts)
            cached = (merged, config_hash(merged))
            if len(self._merged_cache) > 4096:
                self._merged_cache.clear()
            self._merged_cache[key] = cached
        return cached

    # -- blobs (agent packages and other content files, addressed by SHA-256) ------------------
    def put_blob(self, content: bytes) -> str:
        digest = hashlib.sha256(content).hexdigest()
        with self.transaction() as tx:
            tx.ex(
                "INSERT INTO blobs (sha256, size, content, created_at) VALUES (:h, :n, :c, :now) "
                "ON CONFLICT (sha256) DO NOTHING",
                {"h": digest, "n": len(content), "c": content, "now": tx.now},
            )
        return digest

    def get_blob(self, digest: str) -> bytes:
        with self.reading() as tx:
            row = tx.one("SELECT content FROM blobs WHERE sha256 = :h", {"h": digest})
        if row is None:
            raise NotFound(f"blob {digest} not found")
        return bytes(row[0])

    # -- documents and nodes --------------------------------------------------------------------
    def get_document(self, index: str, doc_id: str) -> Any:
        with self.reading() as tx:
            body = tx.document(index, doc_id)
        if body is None:
            raise NotFound(f"{index}/{doc_id} not found")
        return body

    def list_documents(self, index: str, prefix: str = "") -> dict[str, Any]:
        with self.reading() as tx:
            return tx.documents(index, prefix)

    def document_page(
        self,
        index: str,
        prefix: str = "",
        cursor: str | None = None,
        limit: int = 100,
        descending: bool = False,
    ) -> Page:
        """One page of an index in id order (or reverse): items are `{"id", "document"}`;
        the cursor is the last id of the page."""
        with self.reading() as tx:
            docs, more = tx.document_page(index, prefix, cursor or None, limit, descending)
        items = [{"id": doc_id, "document": body} for doc_id, body in docs]
        return Page(items, docs[-1][0] if more else None)

    # -- audit ----------------------------------------------------------------------------------
    def append_audit(self, records: list[dict[str, Any]]) -> list[int]:
        with self.transaction() as tx:
            return [tx.append_audit(r) for r in records]

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
    ) -> Page:
        """Newest first. `action` ending in `*` is a prefix (`task.*`)."""
        where: list[str] = ["1 = 1"]
        params: dict[str, Any] = {"limit": limit + 1}
        for col, val in (("actor", actor), ("outcome", outcome), ("target", target)):
            if val is not None:
                where.append(f"{col} = :{col}")
                params[col] = val
        if action is not None and action.endswith("*"):
            where.append("action LIKE :action")
            params["action"] = "".join(c for c in action[:-1] if c not in "%_\\") + "%"
        elif action is not None:
            where.append("action = :action")
            params["action"] = action
        if since is not None:
            where.append("at >= :since")
            params["since"] = since
        if until is not None:
            where.append("at < :until")
            params["until"] = until
        after = _cursor_id(cursor)
        if after is not None:
            where.append("id < :after")
            params["after"] = after
        with self.reading() as tx:
            rows = tx.all(
                "SELECT id, at, actor, action, outcome, address, target, node, details "
                f"FROM audit WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT :limit",
                params,
            )
        items = [
            {
                "id": int(r[0]),
                "at": r[1],
                "actor": r[2],
                "action": r[3],
                "outcome": r[4],
                "address": r[5],
                "target": r[6],
                "node": r[7],
                "details": loads(r[8]),
            }
            for r in rows[:limit]
        ]
        return Page(items, str(items[-1]["id"]) if len(rows) > limit else None)

    def heartbeat(self, node_id: str, url: str | None, info: dict[str, Any]) -> None:
        with self.transaction() as tx:
            tx.ex(
                "INSERT INTO nodes (id, url, info, heartbeat_at, started_at) VALUES "
                "(:id, :url, :info, :now, :now) ON CONFLICT (id) DO UPDATE SET url = excluded.url, "
                "info = excluded.info, heartbeat_at = excluded.heartbeat_at",
                {"id": node_id, "url": url, "info": dumps(info), "now": tx.now},
            )

    def list_nodes(self) -> list[dict[str, Any]]:
        with self.reading() as tx:
            rows = tx.all("SELECT id, url, info, heartbeat_at, started_at FROM nodes ORDER BY id")
        return [
            {"id": r[0], "url": r[1], "info": loads(r[2]), "heartbeat_at": r[3], "started_at": r[4]}
            for r in rows
        ]
