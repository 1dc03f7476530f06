"""Approvals: each person's decision on a task an approval policy holds, and the task's
approval record and status as decisions come in (indexer/approvals.py decides)."""

from __future__ import annotations

from typing import Any

from fleetcmd.model.records import dumps, loads
from fleetcmd.model.status import AWAITING_APPROVAL
from fleetcmd.store.core import StoreCore, TxCore


class ApprovalsTx(TxCore):
    def record_decision(self, task_id: int, user: str, decision: str, reason: str) -> bool:
        """False when `user` has decided on this task before (nothing is written)."""
        if self.one(
            "SELECT 1 FROM task_approvals WHERE task_id = :t AND username = :u",
            {"t": task_id, "u": user},
        ):
            return False
        self.ex(
            "INSERT INTO task_approvals (task_id, username, decision, reason, decided_at) "
            "VALUES (:t, :u, :d, :r, :now)",
            {"t": task_id, "u": user, "d": decision, "r": reason, "now": self.now},
        )
        return True

    def set_approval(self, task_id: int, approval: dict[str, Any], status: str) -> None:
        final = status != AWAITING_APPROVAL and status != "pending"
        before = self.one(
            "SELECT status, cancelled, type, username, source FROM tasks WHERE id = :id",
            {"id": task_id},
        )
        self.ex(
            "UPDATE tasks SET approval = :a, status = :s, updated_at = :now, "
            "completed_at = :done WHERE id = :id",
            {
                "a": dumps(approval),
                "s": status,
                "now": self.now,
                "done": self.now if final else None,
                "id": task_id,
            },
        )
        if before is not None and before[0] != status:
            self.task_event(task_id, status, before)

    def awaiting_approval(self) -> list[tuple[int, dict[str, Any]]]:
        rows = self.all(
            "SELECT id, approval FROM tasks WHERE status = :s ORDER BY id",
            {"s": AWAITING_APPROVAL},
        )
        return [(int(r[0]), loads(r[1]) or {}) for r in rows]


class ApprovalsStore(StoreCore):
    def task_decisions(self, task_id: int) -> list[dict[str, Any]]:
        with self.reading() as tx:
            rows = tx.all(
                "SELECT username, decision, reason, decided_at FROM task_approvals "
                "WHERE task_id = :t ORDER BY decided_at, username",
                {"t": task_id},
            )
        return [{"user": r[0], "decision": r[1], "reason": r[2], "at": r[3]} for r in rows]
