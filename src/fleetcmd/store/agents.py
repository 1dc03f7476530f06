"""Agents: the agents index and its group memberships (`agent_groups`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fleetcmd.errors import Conflict, NotFound
from fleetcmd.model.records import Agent, Page, dumps, loads
from fleetcmd.model.selectors import version_key
from fleetcmd.store.core import StoreCore, TxCore
from fleetcmd.store.stream import StreamStore
from fleetcmd.store.types import chunks

if TYPE_CHECKING:
    from fleetcmd.store.base import SqlTx


def _with_version_key(fields: dict[str, Any]) -> dict[str, Any]:
    """A reported `version` brings its sortable key (selectors compare versions on it)."""
    if "version" not in fields:
        return fields
    v = fields["version"]
    return {**fields, "version_key": version_key(v) if isinstance(v, str) else None}


class AgentsTx(TxCore):
    """Agent reads and writes inside a task's transaction (groups, rename, removal)."""

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

    def report_agent_fields(self, reported: dict[int, dict[str, str]]) -> None:
        """Results' agent fields (command id -> {field: value}) onto the agents that ran them."""
        rows: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for part in chunks(sorted(reported), 20_000):
            for cid, kind, agent_id in self.all(
                "SELECT id, target_type, target_id FROM commands WHERE "
                + self.in_list("id", "ids"),
                {"ids": self.list_param(part)},
            ):
                if kind == "agent":
                    fields = _with_version_key(reported[int(cid)])
                    rows.setdefault(tuple(sorted(fields)), []).append(
                        {**fields, "id": agent_id, "now": self.now}
                    )
        for keys, batch in rows.items():
            sets = ", ".join(f"{k} = :{k}" for k in keys)
            self.many(
                f"UPDATE agents SET {sets}, updated_at = :now "
                "WHERE id = :id AND status <> 'removed'",
                batch,
            )

    def set_labels(self, agent_id: str, labels: dict[str, str]) -> None:
        """Replace the agent's labels (free key=value pairs selectors match on)."""
        self.ex("DELETE FROM agent_labels WHERE agent_id = :id", {"id": agent_id})
        self.many(
            "INSERT INTO agent_labels (agent_id, key, value) VALUES (:id, :k, :v)",
            [{"id": agent_id, "k": k, "v": v} for k, v in sorted(labels.items())],
        )

    def labels_of(self, agent_id: str) -> dict[str, str]:
        rows = self.all(
            "SELECT key, value FROM agent_labels WHERE agent_id = :id ORDER BY key",
            {"id": agent_id},
        )
        return {str(k): str(v) for k, v in rows}

    def remove_agent(self, agent_id: str) -> None:
        """Agents are tombstoned, not dropped: the Comms API must keep refusing them and their
        deletion command still has to be routed to the node they are connected to."""
        self.agent_status_events("id = :rid", {"rid": agent_id}, "removed")
        self.ex("DELETE FROM agent_groups WHERE agent_id = :id", {"id": agent_id})
        self.ex("DELETE FROM agent_labels WHERE agent_id = :id", {"id": agent_id})
        self.ex(
            "UPDATE agents SET status = 'removed', groups = '[]', secret_hash = NULL, "
            "name = :tomb, updated_at = :now WHERE id = :id",
            {"id": agent_id, "now": self.now, "tomb": f"removed-{agent_id}"},
        )


class AgentsStore(StoreCore):
    """Enrollment, the servers' batched updates, and the agent reads."""

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
                "vkey": version_key(a["version"]) if a.get("version") else None,
                "info": dumps(a.get("info", {})),
                "secret": a.get("secret_hash"),
                "request": a.get("enrollment_request"),
                "now": tx.now,
            }
            for a in agents
        ]
        tx.many(
            "INSERT INTO agents (id, name, groups, status, version, version_key, info, "
            "secret_hash, enrollment_request, created_at, updated_at) VALUES (:id, :name, "
            ":groups, :status, :version, :vkey, :info, :secret, :request, :now, :now) "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, groups = excluded.groups, "
            "version = excluded.version, version_key = excluded.version_key, info = excluded.info, "
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

    def put_labels(self, agent_id: str, labels: dict[str, str]) -> dict[str, str]:
        """Replace a live agent's labels; the labels it had before."""
        with self.transaction() as tx:
            agent = tx.agent(agent_id)
            if agent is None or agent.status == "removed":
                raise NotFound(f"agent {agent_id} not found")
            before = tx.labels_of(agent_id)
            tx.set_labels(agent_id, labels)
        return before

    def get_labels(self, agent_id: str) -> dict[str, str]:
        with self.reading() as tx:
            agent = tx.agent(agent_id)
            if agent is None or agent.status == "removed":
                raise NotFound(f"agent {agent_id} not found")
            return tx.labels_of(agent_id)

    def backfill_version_keys(self) -> int:
        """Keys for versions written before migration 8 (run once, when the store opens)."""
        with self.transaction() as tx:
            rows = tx.all(
                "SELECT id, version FROM agents WHERE version IS NOT NULL AND version_key IS NULL"
            )
            tx.many(
                "UPDATE agents SET version_key = :k WHERE id = :id",
                [{"id": r[0], "k": version_key(r[1])} for r in rows if version_key(r[1])],
            )
        return len(rows)

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
            self._follow_moved_agents(tx, updates)
            by_shape: dict[tuple[tuple[str, ...], bool], list[dict[str, Any]]] = {}
            for u in updates:
                keys = tuple(sorted(k for k in u if k in allowed))
                if not keys:
                    continue
                row = _with_version_key({k: (dumps(u[k]) if k == "info" else u[k]) for k in keys})
                keys = tuple(sorted(row))
                row["id"] = u["id"]
                row["now"] = tx.now
                # `if_node`: apply only while the agent is still attached to that node (a node
                # detaching agents it lost must not detach them from the node they moved to).
                if u.get("if_node") is not None:
                    row["if_node"] = u["if_node"]
                by_shape.setdefault((keys, "if_node" in row), []).append(row)
            for (keys, conditional), rows in by_shape.items():
                if "status" in keys:
                    _status_events(tx, rows, conditional)
                sets = ", ".join(f"{k} = :{k}" for k in keys)
                tx.many(
                    f"UPDATE agents SET {sets}, updated_at = :now "
                    "WHERE id = :id AND status <> 'removed'"
                    + (" AND node = :if_node" if conditional else ""),
                    rows,
                )
                n += len(rows)
        return n

    @staticmethod
    def _follow_moved_agents(tx: SqlTx, updates: list[dict[str, Any]]) -> None:
        """Agents now polling another node than the one they were attached to (a load
        balancer moved them, their node went away): the commands another node claimed for
        them and has not delivered go back to the stream now, for the node they poll now,
        instead of waiting in the old node's mailbox until its lease lapses or the agent
        comes back. The old node loses the lease, so it can no longer mark them `sent`; one
        it had already handed is confirmed once, whichever node the agent's ack reaches."""
        wanted = {
            str(u["id"]): str(u["node"])
            for u in updates
            if u.get("node") and u.get("if_node") is None
        }
        if not wanted:
            return
        moved: dict[str, list[str]] = {}  # new node -> its agents that were elsewhere
        for part in chunks(list(wanted), 5000):
            for agent_id, node in tx.all(
                f"SELECT id, node FROM agents WHERE {tx.in_list('id', 'ids')}",
                {"ids": tx.list_param(part)},
            ):
                if node and node != wanted[agent_id]:
                    moved.setdefault(wanted[agent_id], []).append(agent_id)
        for node, ids in moved.items():
            prefix = f"{node}#"
            for part in chunks(ids, 5000):
                StreamStore._hand_back(
                    tx,
                    f"target_type = 'agent' AND {tx.in_list('target_id', 'ids')} "
                    "AND status IN ('processing', 'sent') AND lease_owner IS NOT NULL "
                    "AND substr(lease_owner, 1, :n) <> :prefix",
                    {"ids": tx.list_param(part), "n": len(prefix), "prefix": prefix},
                )

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


def _status_events(tx: SqlTx, rows: list[dict[str, Any]], conditional: bool) -> None:
    """Agent-status events for the rows whose status changes (called before the update; one
    statement per new status, and per node for updates conditional on the node)."""
    groups: dict[tuple[str, str | None], list[str]] = {}
    for r in rows:
        if r.get("status"):
            node = str(r["if_node"]) if conditional else None
            groups.setdefault((str(r["status"]), node), []).append(str(r["id"]))
    for (status, node), ids in groups.items():
        where = tx.in_list("id", "eids") + (" AND node = :enode" if node is not None else "")
        tx.agent_status_events(where, {"eids": tx.list_param(ids), "enode": node}, status)
