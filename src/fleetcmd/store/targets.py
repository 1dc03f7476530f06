"""Target sets: the frozen list of agents a preview, a re-run or an approval reaches.

A set is written once (one aggregate over the selection, inside the store: a JSON array of
ids in the set's row) and read back
as a selection (`AgentSelection(frozen=id)`): a task filed from it reaches exactly those
agents, whatever matches later. A preview's set waits, unclaimed, until its token is used or
it expires; a task's set lives as long as the task."""

from __future__ import annotations

import secrets
from typing import Any

from fleetcmd.errors import Conflict, Forbidden, InvalidParams, NotFound
from fleetcmd.model.records import dumps, loads
from fleetcmd.model.targets import AgentScope, AgentSelection
from fleetcmd.store.core import StoreCore, TxCore
from fleetcmd.store.selectors import Compiler

PAGE = 50


class TargetsTx(TxCore):
    def freeze(
        self,
        selection: AgentSelection,
        *,
        user: str,
        task_type: str,
        params: dict[str, Any],
        ttl: float,
    ) -> tuple[int, str, int]:
        """Write the set `selection` reaches now; (id, token, size)."""
        set_id, token = self._new_set(user, task_type, params, ttl)
        sql_params: dict[str, Any] = {"_set_id": set_id}
        source = self.selection_sql(selection, sql_params)  # type: ignore[attr-defined]
        return set_id, token, self._fill(set_id, f"SELECT a.id {source}", sql_params)

    def freeze_rerun(
        self,
        task_id: int,
        statuses: list[str],
        scope: AgentScope | None,
        *,
        user: str,
        task_type: str,
        params: dict[str, Any],
    ) -> tuple[int, int]:
        """The set of the agents whose commands of `task_id` ended in one of `statuses`
        (within `scope`); (id, size)."""
        set_id, _ = self._new_set(user, task_type, params, 0.0)
        sql_params: dict[str, Any] = {
            "_set_id": set_id,
            "_task": task_id,
            "_statuses": self.list_param(statuses),
        }
        where = ""
        if scope is not None:
            where = " AND " + Compiler(self, sql_params).scope(scope)
        ids = (
            "SELECT DISTINCT a.id FROM commands c JOIN agents a ON a.id = c.target_id "
            "WHERE c.task_id = :_task AND c.target_type = 'agent' AND "
            f"{self.in_list('c.status', '_statuses')} AND a.status <> 'removed'{where}"
        )
        return set_id, self._fill(set_id, ids, sql_params)

    def _new_set(
        self, user: str, task_type: str, params: dict[str, Any], ttl: float
    ) -> tuple[int, str]:
        token = secrets.token_urlsafe(24)
        row = self.one(
            "INSERT INTO target_sets (token, username, task_type, params, size, created_at, "
            "expires_at) VALUES (:token, :user, :type, :params, 0, :now, :exp) RETURNING id",
            {
                "token": token,
                "user": user,
                "type": task_type,
                "params": dumps(params),
                "now": self.now,
                "exp": self.now + ttl,
            },
        )
        assert row is not None
        return int(row[0]), token

    def _fill(self, set_id: int, ids_sql: str, params: dict[str, Any]) -> int:
        """The set's ids from `ids_sql` (a query of one `id` column), in one aggregate: one
        value written, not a row per agent (a preview of 100,000 agents stays fast)."""
        c = Compiler(self, params)
        self.ex(
            f"UPDATE target_sets SET agents = (SELECT {c.id_array('x.id')} FROM ({ids_sql}) x) "
            "WHERE id = :_set_id",
            params,
        )
        self.ex(
            f"UPDATE target_sets SET size = {c.array_length('agents')} WHERE id = :id",
            {"id": set_id},
        )
        return self.target_set_size(set_id)

    def claim_target_set(
        self, token: str, *, user: str, task_type: str, params: dict[str, Any]
    ) -> int:
        """The set a preview froze, for the task being written by the same user with the
        same type and params; it is the task's from now on (a token is used once)."""
        row = self.one(
            "SELECT id, username, task_type, params, expires_at, task_id FROM target_sets "
            f"WHERE token = :t{self.store.for_update}",
            {"t": token},
        )
        if row is None:
            raise NotFound("unknown preview token (previews are kept for a limited time)")
        set_id, owner, type_, stored, expires_at, task_id = row
        if owner != user:
            raise Forbidden("this preview was made by another user")
        if task_id is not None:
            raise Conflict(f"this preview was already used by task {task_id}", task_id=task_id)
        if float(expires_at) < self.now:
            raise InvalidParams("this preview has expired: preview again")
        if type_ != task_type or dumps(loads(stored)) != dumps(params):
            raise InvalidParams("the task's type or params differ from the preview's")
        return int(set_id)

    def bind_target_set(self, set_id: int, task_id: int) -> None:
        self.ex("UPDATE target_sets SET task_id = :t WHERE id = :id", {"t": task_id, "id": set_id})

    def target_set_size(self, set_id: int) -> int:
        row = self.one("SELECT size FROM target_sets WHERE id = :id", {"id": set_id})
        return 0 if row is None else int(row[0])

    def frozen_summary(self, set_id: int, size: int, selection: AgentSelection) -> dict[str, Any]:
        """The summary of a set just frozen from `selection`: on SQLite read through the set's
        ids when it is a small part of the fleet (a lookup each), else by evaluating the
        selection again (one pass over the index beats a lookup per agent). PostgreSQL plans
        the set's JSON array blindly (it guesses its length), so it always re-evaluates
        (`fleetcmd bench preview`, docs/performance.md)."""
        if self.store.dialect != "sqlite":
            return self.selection_summary(selection)
        fleet = self.count_agents(AgentSelection(all=True))  # type: ignore[attr-defined]
        small = size * 3 < fleet
        return self.selection_summary(AgentSelection(frozen=set_id) if small else selection)

    def selection_summary(self, selection: AgentSelection, limit: int = PAGE) -> dict[str, Any]:
        """What a preview shows: counts by status, group, node and version, and a first page.
        Read from the selection itself, in the transaction that froze it (the same rows), so
        each count is one pass over the agents index, not a lookup per frozen agent."""
        p: dict[str, Any] = {"limit": limit}
        source = self.selection_sql(selection, p)  # type: ignore[attr-defined]
        by_status: dict[str, int] = {}
        by_node: dict[str, int] = {}
        by_version: dict[str, int] = {}
        total = 0
        for status, node, version, n in self.all(
            f"SELECT a.status, a.node, a.version, count(*) {source} "
            "GROUP BY a.status, a.node, a.version",
            p,
        ):
            for counts, key in ((by_status, status), (by_node, node), (by_version, version)):
                counts[key or ""] = counts.get(key or "", 0) + int(n)
            total += int(n)
        by_group = {
            str(k): int(n)
            for k, n in self.all(
                "SELECT g.group_name, count(*) FROM agent_groups g WHERE g.agent_id IN "
                f"(SELECT a.id {source}) GROUP BY 1",
                p,
            )
        }
        page = [
            {"id": r[0], "name": r[1], "status": r[2], "version": r[3], "node": r[4]}
            for r in self.all(
                f"SELECT a.id, a.name, a.status, a.version, a.node {source} "
                "ORDER BY a.id LIMIT :limit",
                p,
            )
        ]
        return {
            "total": total,
            "by_status": by_status,
            "by_group": by_group,
            "by_node": by_node,
            "by_version": by_version,
            "first_page": page,
        }


class TargetsStore(StoreCore):
    def purge_target_sets(self, now: float | None = None) -> int:
        """Previews nobody filed, past their expiry, and the sets and approval decisions of
        tasks that have left the store (retention)."""
        with self.transaction() as tx:
            cut = tx.now if now is None else now
            ids = [
                int(r[0])
                for r in tx.all(
                    "SELECT id FROM target_sets WHERE (task_id IS NULL AND expires_at < :cut "
                    "AND expires_at > created_at) OR (task_id IS NOT NULL AND NOT EXISTS "
                    "(SELECT 1 FROM tasks k WHERE k.id = target_sets.task_id))",
                    {"cut": cut},
                )
            ]
            if ids:
                tx.ex(
                    f"DELETE FROM target_sets WHERE {tx.in_list('id', 'ids')}",
                    {"ids": tx.list_param(ids)},
                )
            tx.ex(
                "DELETE FROM task_approvals WHERE NOT EXISTS "
                "(SELECT 1 FROM tasks k WHERE k.id = task_approvals.task_id)"
            )
        return len(ids)
