"""The two-person rule (docs/security.md): approving, rejecting and expiring tasks an approval
policy holds. A held task has no command; the last approval writes them (`write_commands`, the
same step a task not held takes when it is filed), in the approval's transaction, so nothing
reaches an agent, or is signed for one, before it is approved."""

from __future__ import annotations

import logging
from typing import Any

from fleetcmd.errors import Conflict, Forbidden, InvalidParams
from fleetcmd.indexer.task_manager import TaskManager, TaskRequest
from fleetcmd.model.catalog import validate
from fleetcmd.model.records import Task
from fleetcmd.model.status import APPROVAL_EXPIRED, AWAITING_APPROVAL, REJECTED

log = logging.getLogger("fleetcmd.approvals")


class Approvals:
    def __init__(self, tasks: TaskManager) -> None:
        self.tasks = tasks
        self.store = tasks.store

    def decide(self, task_id: int, user: str, decision: str, reason: str = "") -> Task:
        """`user` (proven by a user proof) approves or rejects `task_id`."""
        if decision not in ("approved", "rejected"):
            raise InvalidParams("a decision is 'approved' or 'rejected'")
        if decision == "rejected" and not reason.strip():
            raise InvalidParams("a rejection needs a reason")
        with self.store.transaction() as tx:
            task = tx.lock_task(task_id)
            approval: dict[str, Any] = dict(task.approval or {})
            if task.status != AWAITING_APPROVAL:
                raise Conflict(
                    f"task {task_id} is not awaiting approval (it is {task.status})",
                    status=task.status,
                )
            if float(approval.get("deadline", 0)) < tx.now:
                raise Conflict(f"the approval time of task {task_id} has run out")
            if user == task.user:
                raise Forbidden("the requester of a task may not approve or reject it")
            if not tx.record_decision(task_id, user, decision, reason):
                raise Conflict(f"user '{user}' has already decided on task {task_id}")
            if decision == "rejected":
                approval.update(rejected_by=user, reason=reason)
                tx.set_approval(task_id, approval, REJECTED)
            else:
                approval["approved_by"] = [*approval.get("approved_by", []), user]
                if len(approval["approved_by"]) < int(approval.get("required", 1)):
                    tx.set_approval(task_id, approval, AWAITING_APPROVAL)
                else:
                    approval["approved_at"] = tx.now
                    tx.set_approval(task_id, approval, "pending")
                    self._release(tx, task, approval)
        log.info("task %s %s by %s", task_id, decision, user)
        return self.store.get_task(task_id)

    def _release(self, tx: Any, task: Task, approval: dict[str, Any]) -> None:
        spec, parsed = validate(task.type, task.params)
        kept = approval.get("request") or {}
        req = TaskRequest(
            task.type,
            task.params,
            task.source,
            task.user,
            timeout=kept.get("timeout"),
            expires_in=kept.get("expires_in"),
            rollout=kept.get("rollout"),
            window=kept.get("window"),
            freeze_hold=bool(kept.get("freeze_hold")),
        )
        self.tasks.write_commands(tx, task.id, spec, parsed, req, task.target_set)
        tx.touched_tasks.add(task.id)

    def expire(self) -> int:
        """Held tasks past their approval time end as `approval-expired` (the sweeper)."""
        n = 0
        with self.store.transaction() as tx:
            for task_id, approval in tx.awaiting_approval():
                if float(approval.get("deadline", 0)) < tx.now:
                    tx.set_approval(task_id, {**approval, "expired_at": tx.now}, APPROVAL_EXPIRED)
                    n += 1
        return n
