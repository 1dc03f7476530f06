"""Command statuses and the one table of legal transitions (SPEC §3)."""

from __future__ import annotations

from enum import StrEnum

from fleetcmd.errors import IllegalTransition


class Status(StrEnum):
    # Held for the target agent's maintenance window (indexer/windows.py): not claimable;
    # back to pending when a window opens, to held again when it closes undelivered.
    HELD = "held"
    PENDING = "pending"
    PROCESSING = "processing"
    SENT = "sent"
    DELIVERED = "delivered"
    # Delivered and reporting: the agent sends heartbeats while a long command runs (only
    # after it has run a few seconds); one whose heartbeats stop ends `timeout`.
    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"
    EXPIRED = "expired"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


FINAL: frozenset[Status] = frozenset(
    {Status.SUCCESS, Status.FAILURE, Status.EXPIRED, Status.TIMEOUT, Status.CANCELLED}
)
ACTIVE: frozenset[Status] = frozenset(set(Status) - FINAL)

# A result may arrive for any non-final command: delivery is at-least-once, so a
# result can overtake a lease that lapsed and sent the command back to `pending`.
_RESULT = {Status.SUCCESS, Status.FAILURE}
_STOP = {Status.CANCELLED}

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.HELD: frozenset({Status.PENDING, Status.EXPIRED, *_STOP}),
    # pending -> delivered: an agent reported holding a command whose lease had lapsed.
    # pending -> held: its maintenance window closed before it was delivered.
    Status.PENDING: frozenset(
        {Status.HELD, Status.PROCESSING, Status.DELIVERED, Status.EXPIRED, *_RESULT, *_STOP}
    ),
    # processing -> pending: lease released; processing -> processing: lease reclaimed.
    Status.PROCESSING: frozenset(
        {
            Status.PENDING,
            Status.PROCESSING,
            Status.SENT,
            Status.DELIVERED,
            Status.EXPIRED,
            *_RESULT,
            *_STOP,
        }
    ),
    # sent -> processing: the holder's lease lapsed before the agent had it; another claims it.
    Status.SENT: frozenset(
        {Status.PENDING, Status.PROCESSING, Status.DELIVERED, Status.EXPIRED, *_RESULT, *_STOP}
    ),
    Status.DELIVERED: frozenset({Status.RUNNING, Status.TIMEOUT, *_RESULT, *_STOP}),
    Status.RUNNING: frozenset({Status.TIMEOUT, *_RESULT, *_STOP}),
    Status.SUCCESS: frozenset(),
    Status.FAILURE: frozenset(),
    Status.EXPIRED: frozenset(),
    Status.TIMEOUT: frozenset(),
    Status.CANCELLED: frozenset(),
}


def can_move(old: Status | str, new: Status | str) -> bool:
    return Status(new) in TRANSITIONS[Status(old)]


def check_transition(old: Status | str, new: Status | str, command_id: int | None = None) -> None:
    if not can_move(old, new):
        raise IllegalTransition(
            f"command {command_id}: illegal transition {old} -> {new}",
            command_id=command_id,
            old=str(old),
            new=str(new),
        )


def sources_of(new: Status) -> list[str]:
    """Statuses from which `new` may be reached (used to build guarded UPDATEs)."""
    return sorted(str(s) for s, targets in TRANSITIONS.items() if new in targets)


# Task statuses beyond the roll-up of its commands: a task an approval policy holds
# (docs/security.md) has no command until it is approved, and ends without one when it is
# rejected or its approvals do not come in time.
AWAITING_APPROVAL = "awaiting-approval"
REJECTED = "rejected"
APPROVAL_EXPIRED = "approval-expired"
APPROVAL_STATUSES = (AWAITING_APPROVAL, REJECTED, APPROVAL_EXPIRED)
TASK_STATUSES = (
    "pending",
    "in_progress",
    "success",
    "failure",
    "expired",
    "cancelled",
    *APPROVAL_STATUSES,
)
FINAL_TASK_STATUSES = frozenset(
    {"success", "failure", "expired", "cancelled", REJECTED, APPROVAL_EXPIRED}
)


def rollup(counts: dict[str, int], *, cancelled: bool = False) -> str:
    """Status of a parent or task from its per-status counts.

    Final only when nothing is active. `expired` (never reached) is kept apart from
    `failure` (reached and failed) so operators can tell the two.
    """
    active = sum(counts.get(s, 0) for s in ACTIVE)
    if active:
        moving = active - counts.get(Status.PENDING, 0) - counts.get(Status.HELD, 0)
        done = sum(counts.get(s, 0) for s in FINAL)
        return "in_progress" if (moving or done) else "pending"
    if cancelled or counts.get(Status.CANCELLED, 0):
        return "cancelled"
    if counts.get(Status.FAILURE, 0) or counts.get(Status.TIMEOUT, 0):
        return "failure"
    if counts.get(Status.EXPIRED, 0):
        return "expired"
    return "success"
