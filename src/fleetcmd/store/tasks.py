"""Tasks: the task rows, a task's first commands and its agent fan-outs, and the task reads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from fleetcmd.errors import NotFound
from fleetcmd.model.records import Page, Task, dumps, loads
from fleetcmd.model.status import AWAITING_APPROVAL
from fleetcmd.model.targets import AgentSelection
from fleetcmd.store import retention
from fleetcmd.store.core import StoreCore, TxCore, cursor_id
from fleetcmd.store.selectors import Compiler
from fleetcmd.store.types import Fanout, NewCommand, PurgeReport, chunks

if TYPE_CHECKING:
    from fleetcmd.store.base import SqlStore, SqlTx


TASK_COLS = (
    "id, type, params, source, username, status, created_at, updated_at, completed_at, "
    "idempotency_key, cancelled, rerun_of, target_set, approval, schedule_id, occurrence_at"
)


def task_from_row(r: tuple[Any, ...]) -> Task:
    return Task(
        int(r[0]),
        r[1],
        loads(r[2]),
        r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        r[8],
        r[9],
        bool(r[10]),
        None if r[11] is None else int(r[11]),
        None if r[12] is None else int(r[12]),
        None if r[13] is None else loads(r[13]),
        None if r[14] is None else int(r[14]),
        None if r[15] is None else float(r[15]),
    )


class TasksTx(TxCore):
    """Writing a task and its first commands; fanning a parent out to agents."""

    def insert_task(
        self,
        type_: str,
        params: dict[str, Any],
        source: str,
        user: str,
        idempotency_key: str | None,
        *,
        rerun_of: int | None = None,
        target_set: int | None = None,
        approval: dict[str, Any] | None = None,
    ) -> int:
        """`approval`: the task waits for approvals (status `awaiting-approval`, no command)."""
        row = self.one(
            "INSERT INTO tasks (type, params, source, username, idempotency_key, status, "
            "rerun_of, target_set, approval, created_at, updated_at) VALUES (:type, :params, "
            ":source, :user, :key, :status, :rerun, :set, :approval, :now, :now) RETURNING id",
            {
                "type": type_,
                "params": dumps(params),
                "source": source,
                "user": user,
                "key": idempotency_key,
                "status": "pending" if approval is None else AWAITING_APPROVAL,
                "rerun": rerun_of,
                "set": target_set,
                "approval": None if approval is None else dumps(approval),
                "now": self.now,
            },
        )
        assert row is not None
        self.touched_tasks.add(int(row[0]))
        self.task_event(int(row[0]), "pending" if approval is None else AWAITING_APPROVAL, None)
        return int(row[0])

    def task_target_set(self, task_id: int) -> int | None:
        row = self.one("SELECT target_set FROM tasks WHERE id = :id", {"id": task_id})
        return None if row is None or row[0] is None else int(row[0])

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
        source = self._selection_source(sel, params)
        if sel.scope is not None:
            source += " AND " + Compiler(self, params).scope(sel.scope)
        return source

    def _selection_source(self, sel: AgentSelection, params: dict[str, Any]) -> str:
        base = "FROM agents a WHERE a.status <> 'removed'"
        if sel.frozen is not None:
            params["_set"] = sel.frozen
            return f"{base} AND a.id IN ({Compiler(self, params).frozen_ids('_set')})"
        if sel.selector is not None:
            return f"{base} AND {Compiler(self, params).where(sel.selector)}"
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
            # `self` is the composed `SqlTx`: this mixin exists only inside it.
            return self.stage(cast("SqlTx", self), fanout, selection)
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


class TasksStore(StoreCore):
    """Reading tasks, and retention of finished ones."""

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
        after = cursor_id(cursor)
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

    def purge_finished(
        self, older_than: float, now: float | None = None, batch: int = 2000
    ) -> PurgeReport:
        """Retention: tasks finished more than `older_than` seconds ago leave the store with
        their commands and counts, in short batched transactions (store/retention.py)."""
        return retention.purge(cast("SqlStore", self), older_than, now, batch)
