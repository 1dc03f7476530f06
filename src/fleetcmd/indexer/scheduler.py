"""The scheduler: each due occurrence of a schedule becomes an ordinary task, filed once.

One transaction per occurrence claims the due schedule (`FOR UPDATE SKIP LOCKED` on
PostgreSQL: indexers sharing a store split the due schedules), records the occurrence under
its unique key (schedule, occurrence time), files the task through the task manager (the same
checks as a task filed by hand: references, freezes, approvals, the filer's scope) and moves
the schedule to its next occurrence. A second indexer, or this one after a restart, finds the
key taken and files nothing. An occurrence later than `GRACE` was missed (no indexer ran):
the schedule's `missed` policy files the latest one once ("run-once") or records it skipped,
and says so in the occurrence's record and the audit log.

Time is read from `clock` (the wall clock; a test gives its own, and a test's indexer process
reads `FLEETCMD_SCHEDULER_CLOCK`, a file holding seconds since the epoch). The loop sleeps
until the next due occurrence, woken early when a schedule is created, paused or resumed
(on PostgreSQL through NOTIFY, from any indexer).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from fleetcmd.errors import Conflict, FleetError, Forbidden, InvalidParams
from fleetcmd.indexer.task_manager import ATTENDED_SOURCES, TaskManager, TaskRequest
from fleetcmd.model.schedules import (
    GRACE,
    Recurrence,
    ScheduleError,
    ScheduleIn,
    iso_local,
    iso_utc,
    schedule_view,
)
from fleetcmd.model.targets import AgentScope
from fleetcmd.store.base import SqlTx

log = logging.getLogger("fleetcmd.scheduler")

CLOCK_ENV = "FLEETCMD_SCHEDULER_CLOCK"
MAX_SLEEP = 60.0  # re-read the store at least this often (a schedule another node changed)
TEST_CLOCK_SLEEP = 0.2  # a file clock can jump at any time: look often


def clock_from_env() -> tuple[Callable[[], float], bool]:
    """The wall clock, or the test clock a file holds (and True)."""
    path = os.environ.get(CLOCK_ENV)
    if not path:
        return time.time, False

    def read() -> float:
        with open(path) as f:
            return float(f.read().strip())

    return read, True


class Scheduler:
    def __init__(self, tasks: TaskManager, clock: Callable[[], float] = time.time) -> None:
        self.tasks = tasks
        self.store = tasks.store
        self.clock = clock

    # -- what people do -------------------------------------------------------------------------
    def create(
        self, body: ScheduleIn, user: str, source: str, scope: AgentScope | None, proven: bool
    ) -> dict[str, Any]:
        task = body.task
        if source not in ATTENDED_SOURCES:
            raise InvalidParams(f"schedules are filed by people (source {source!r})")
        self.tasks.check(
            TaskRequest(
                task.type,
                task.params,
                source,
                user,
                None,
                task.timeout,
                task.expires_in,
                task.rollout,
            )
        )
        now = self.clock()
        try:
            rec = Recurrence(body.rrule, body.start or _local_now(now, body.tz), body.tz)
        except ScheduleError as exc:
            raise InvalidParams(str(exc)) from None
        if body.rrule is None and body.start is not None and rec.next_after(now - 1) is None:
            raise InvalidParams(f"'start' {body.start} ({body.tz}) is in the past")
        next_at = rec.next_after(now - 1)
        if next_at is None:
            raise InvalidParams("the rule has no occurrence from now on")
        with self.store.transaction() as tx:
            sid = tx.insert_schedule(
                {
                    "name": body.name,
                    "user": user,
                    "source": source,
                    "task": {**task.model_dump(exclude_none=True), "proven": proven},
                    "scope": None if scope is None else scope.to_json(),
                    "rrule": body.rrule,
                    "start_local": rec.start.isoformat(),
                    "tz": body.tz,
                    "missed": body.missed,
                    "status": "active",
                    "next_at": next_at,
                }
            )
        log.info("schedule %s created by %s: next at %s", sid, user, iso_utc(next_at))
        return self.show(sid)

    def show(self, schedule_id: int) -> dict[str, Any]:
        view = schedule_view(self.store.get_schedule(schedule_id), self.clock())
        view["occurrences"] = [
            {
                **o,
                "occurrence_at": iso_utc(o["occurrence_at"]),
                "handled_at": iso_utc(o["handled_at"]),
            }
            for o in self.store.schedule_occurrences(schedule_id)
        ]
        return view

    def list(self, user: str | None = None) -> list[dict[str, Any]]:
        now = self.clock()
        return [schedule_view(row, now) for row in self.store.list_schedules(user)]

    def pause(self, schedule_id: int) -> dict[str, Any]:
        with self.store.transaction() as tx:
            row = tx.lock_schedule(schedule_id)
            if row["status"] != "active":
                raise Conflict(f"schedule {schedule_id} is {row['status']}, not active")
            tx.set_schedule_state(schedule_id, "paused", row["next_at"])
        return self.show(schedule_id)

    def resume(self, schedule_id: int) -> dict[str, Any]:
        """Occurrences that fell while it was paused are not filed: it goes on from now."""
        now = self.clock()
        with self.store.transaction() as tx:
            row = tx.lock_schedule(schedule_id)
            if row["status"] != "paused":
                raise Conflict(f"schedule {schedule_id} is {row['status']}, not paused")
            rec = Recurrence(row["rrule"], row["start_local"], row["tz"])
            next_at = rec.next_after(max(now, row["last_at"] or 0.0))
            tx.set_schedule_state(schedule_id, "active" if next_at else "done", next_at)
        return self.show(schedule_id)

    def delete(self, schedule_id: int) -> None:
        with self.store.transaction() as tx:
            tx.lock_schedule(schedule_id)
            tx.delete_schedule(schedule_id)

    # -- the loop's step ------------------------------------------------------------------------
    def run_once(self) -> float:
        """File every due occurrence; answer how long to sleep until the next one."""
        now = self.clock()
        while self._step(now):
            pass
        due = self.store.next_schedule_due()
        return MAX_SLEEP if due is None else min(MAX_SLEEP, max(0.0, due - self.clock()))

    def _step(self, now: float) -> bool:
        """One due occurrence (or one run of missed ones), one transaction. False: none due."""
        refused: tuple[dict[str, Any], float, str, str] | None = None
        try:
            with self.store.transaction() as tx:
                sched = tx.claim_due_schedule(now)
                if sched is None:
                    return False
                self._handle(tx, sched, now)
                return True
        except FleetError as exc:
            # The occurrence's task is refused as a hand-filed one would be: record why, in a
            # transaction of its own (the refused one wrote nothing), and go on.
            refused = getattr(exc, "occurrence", None)
            if refused is None:
                raise
        sched, at, outcome, message = refused
        with self.store.transaction() as tx:
            row = tx.lock_schedule(sched["id"])
            if row["next_at"] == sched["next_at"]:
                self._record(tx, row, at, outcome, None, message)
                self._advance(tx, row, at, 0)
        return True

    def _handle(self, tx: SqlTx, sched: dict[str, Any], now: float) -> None:
        rec = Recurrence(sched["rrule"], sched["start_local"], sched["tz"])
        at = float(sched["next_at"])
        if now - at <= GRACE:
            self._file(tx, sched, rec, at, "filed", "")
            return
        lower = sched["last_at"] if sched["last_at"] is not None else at - 1e-3
        latest, n = rec.between(lower, now - GRACE, limit=1)
        last = latest[-1] if latest else at
        since = (
            f"{n} occurrence(s) from {iso_utc(at)} to {iso_utc(last)} were missed while no "
            "indexer ran"
        )
        if sched["missed"] == "run-once":
            self._file(tx, sched, rec, last, "filed-late", f"{since}: filed once on return")
        else:
            self._record(tx, sched, last, "skipped", None, f"{since}: skipped (missed: skip)")
            self._advance(tx, sched, last, 0, rec)
        log.warning("schedule %s: %s (policy %s)", sched["id"], since, sched["missed"])

    def _file(
        self,
        tx: SqlTx,
        sched: dict[str, Any],
        rec: Recurrence,
        at: float,
        outcome: str,
        message: str,
    ) -> None:
        if not tx.record_occurrence(sched["id"], at, outcome, None, message):
            # Handled before (cannot happen while the row lock holds, but the key decides).
            self._advance(tx, sched, at, 0, rec)
            return
        task = sched["task"]
        try:
            self._check_filer(tx, sched)
            scope = sched["scope"]
            task_id = self.tasks.write_in(
                tx,
                TaskRequest(
                    task["type"],
                    task.get("params", {}),
                    sched["source"],
                    sched["user"],
                    f"schedule:{sched['id']}:{at:.3f}",
                    task.get("timeout"),
                    task.get("expires_in"),
                    task.get("rollout"),
                    scope=None
                    if scope is None
                    else AgentScope(tuple(scope.get("ids", ())), tuple(scope.get("groups", ()))),
                    override_freeze=bool(task.get("override_freeze")),
                    window=task.get("window"),
                ),
            )
        except FleetError as exc:
            exc.occurrence = (sched, at, "refused", exc.message)  # type: ignore[attr-defined]
            raise
        tx.set_occurrence_task(sched["id"], at, task_id)
        tx.link_task(task_id, sched["id"], at)
        self._audit(tx, sched, at, outcome, task_id, message)
        self._advance(tx, sched, at, 1, rec)
        log.info("schedule %s: occurrence %s filed as task %s", sched["id"], iso_utc(at), task_id)

    def _check_filer(self, tx: SqlTx, sched: dict[str, Any]) -> None:
        """The person the schedule files for must still be an enabled user."""
        if not sched["task"].get("proven"):
            return
        doc = tx.document("rbac", f"users/{sched['user']}")
        if doc is not None and doc.get("disabled"):
            raise Forbidden(f"user '{sched['user']}' is disabled: the occurrence is not filed")

    def _record(
        self,
        tx: SqlTx,
        sched: dict[str, Any],
        at: float,
        outcome: str,
        task_id: int | None,
        message: str,
    ) -> None:
        if tx.record_occurrence(sched["id"], at, outcome, task_id, message):
            self._audit(tx, sched, at, outcome, task_id, message)

    def _audit(
        self,
        tx: SqlTx,
        sched: dict[str, Any],
        at: float,
        outcome: str,
        task_id: int | None,
        message: str,
    ) -> None:
        tx.append_audit(
            {
                "actor": sched["user"],
                "action": "schedule.occurrence",
                "outcome": "denied" if outcome == "refused" else "success",
                "target": f"schedule:{sched['id']}",
                "details": {
                    "occurrence": iso_utc(at),
                    "outcome": outcome,
                    "task_id": task_id,
                    "message": message,
                },
            }
        )

    def _advance(
        self, tx: SqlTx, sched: dict[str, Any], at: float, filed: int, rec: Recurrence | None = None
    ) -> None:
        rec = rec or Recurrence(sched["rrule"], sched["start_local"], sched["tz"])
        tx.advance_schedule(sched["id"], at, rec.next_after(at), filed)


def _local_now(now: float, tz: str) -> str:
    try:
        return iso_local(now, Recurrence(None, "2000-01-01T00:00", tz).tz)[:19]
    except ScheduleError as exc:
        raise InvalidParams(str(exc)) from None
