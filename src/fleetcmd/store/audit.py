"""The audit trail: append-only records of who did what, and their reads."""

from __future__ import annotations

from typing import Any

from fleetcmd.model.records import Page, dumps, loads
from fleetcmd.store.core import StoreCore, TxCore, cursor_id


class AuditTx(TxCore):
    """An audit record written in the transaction of the change it records."""

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
        self.add_events("audit", [{"type": record["action"], "subject": int(row[0])}])
        return int(row[0])


class AuditStore(StoreCore):
    """Audit records on their own, and the filtered, newest-first read."""

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
        oldest_first: bool = False,
    ) -> Page:
        """Newest first (oldest first for an export). `action` ending in `*` is a prefix
        (`task.*`). The cursor is the last id read: a keyset, so a walk of the whole trail
        reads each page by the primary key, whatever its size."""
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
        after = cursor_id(cursor)
        if after is not None:
            where.append("id > :after" if oldest_first else "id < :after")
            params["after"] = after
        order = "ASC" if oldest_first else "DESC"
        with self.reading() as tx:
            rows = tx.all(
                "SELECT id, at, actor, action, outcome, address, target, node, details "
                f"FROM audit WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT :limit",
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
