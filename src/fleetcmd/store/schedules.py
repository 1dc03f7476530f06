"""Schedules: the schedule rows, the occurrences each one handled, and freezes.

An occurrence is recorded under the key (schedule, occurrence time) in the transaction that
files its task (indexer/scheduler.py): a second indexer, or the same one after a restart,
finds the key taken and files nothing. A due schedule is claimed with `FOR UPDATE SKIP
LOCKED` on PostgreSQL, so indexers sharing a store split the due schedules between them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from fleetcmd.errors import NotFound
from fleetcmd.model.records import dumps, loads
from fleetcmd.model.selectors import Expr
from fleetcmd.model.targets import AgentSelection
from fleetcmd.store.core import StoreCore, TxCore

if TYPE_CHECKING:
    from fleetcmd.store.base import SqlTx

SCHEDULE_COLS = (
    "id, name, username, source, task, scope, rrule, start_local, tz, missed, status, "
    "next_at, last_at, filed, created_at, updated_at"
)
OCCURRENCE_COLS = "schedule_id, occurrence_at, outcome, task_id, message, handled_at"
FREEZE_COLS = "id, name, selector, starts_at, ends_at, reason, username, created_at, mode"


def schedule_from_row(r: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": int(r[0]),
        "name": r[1],
        "user": r[2],
        "source": r[3],
        "task": loads(r[4]),
        "scope": None if r[5] is None else loads(r[5]),
        "rrule": r[6],
        "start_local": r[7],
        "tz": r[8],
        "missed": r[9],
        "status": r[10],
        "next_at": None if r[11] is None else float(r[11]),
        "last_at": None if r[12] is None else float(r[12]),
        "filed": int(r[13]),
        "created_at": float(r[14]),
        "updated_at": float(r[15]),
    }


def occurrence_from_row(r: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "schedule_id": int(r[0]),
        "occurrence_at": float(r[1]),
        "outcome": r[2],
        "task_id": None if r[3] is None else int(r[3]),
        "message": r[4],
        "handled_at": float(r[5]),
    }


def freeze_from_row(r: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": int(r[0]),
        "name": r[1],
        "selector": r[2],
        "starts_at": float(r[3]),
        "ends_at": float(r[4]),
        "reason": r[5],
        "user": r[6],
        "created_at": float(r[7]),
        "mode": r[8],
    }


class SchedulesTx(TxCore):
    def insert_schedule(self, fields: dict[str, Any]) -> int:
        row = self.one(
            "INSERT INTO schedules (name, username, source, task, scope, rrule, start_local, tz, "
            "missed, status, next_at, created_at, updated_at) VALUES (:name, :user, :source, "
            ":task, :scope, :rrule, :start, :tz, :missed, :status, :next, :now, :now) "
            "RETURNING id",
            {
                "name": fields["name"],
                "user": fields["user"],
                "source": fields["source"],
                "task": dumps(fields["task"]),
                "scope": None if fields.get("scope") is None else dumps(fields["scope"]),
                "rrule": fields.get("rrule"),
                "start": fields["start_local"],
                "tz": fields["tz"],
                "missed": fields["missed"],
                "status": fields["status"],
                "next": fields["next_at"],
                "now": self.now,
            },
        )
        assert row is not None
        self.notify("schedule")
        return int(row[0])

    def lock_schedule(self, schedule_id: int) -> dict[str, Any]:
        row = self.one(
            f"SELECT {SCHEDULE_COLS} FROM schedules WHERE id = :id{self.store.for_update}",
            {"id": schedule_id},
        )
        if row is None:
            raise NotFound(f"schedule {schedule_id} not found")
        return schedule_from_row(row)

    def claim_due_schedule(self, now: float) -> dict[str, Any] | None:
        """The active schedule due longest ago that no other transaction holds, locked."""
        lock = " FOR UPDATE SKIP LOCKED" if self.store.for_update else ""
        row = self.one(
            f"SELECT {SCHEDULE_COLS} FROM schedules WHERE status = 'active' "
            f"AND next_at IS NOT NULL AND next_at <= :now ORDER BY next_at, id LIMIT 1{lock}",
            {"now": now},
        )
        return None if row is None else schedule_from_row(row)

    def record_occurrence(
        self, schedule_id: int, at: float, outcome: str, task_id: int | None, message: str
    ) -> bool:
        """False when this occurrence was handled before (nothing is written)."""
        cur = self.ex(
            f"INSERT INTO schedule_occurrences ({OCCURRENCE_COLS}) VALUES (:s, :at, :outcome, "
            ":task, :msg, :now) ON CONFLICT (schedule_id, occurrence_at) DO NOTHING",
            {
                "s": schedule_id,
                "at": at,
                "outcome": outcome,
                "task": task_id,
                "msg": message,
                "now": self.now,
            },
        )
        return int(cur.rowcount) == 1

    def set_occurrence_task(self, schedule_id: int, at: float, task_id: int) -> None:
        self.ex(
            "UPDATE schedule_occurrences SET task_id = :t WHERE schedule_id = :s "
            "AND occurrence_at = :at",
            {"t": task_id, "s": schedule_id, "at": at},
        )

    def link_task(self, task_id: int, schedule_id: int, at: float) -> None:
        self.ex(
            "UPDATE tasks SET schedule_id = :s, occurrence_at = :at WHERE id = :id",
            {"s": schedule_id, "at": at, "id": task_id},
        )

    def advance_schedule(
        self, schedule_id: int, last_at: float | None, next_at: float | None, filed: int
    ) -> None:
        """After its occurrences up to `last_at`: `next_at` None ends it (`done`)."""
        done = "" if next_at is not None else ", status = 'done'"
        self.ex(
            "UPDATE schedules SET last_at = :last, next_at = :next, filed = filed + :n, "
            f"updated_at = :now{done} WHERE id = :id",
            {"last": last_at, "next": next_at, "n": filed, "now": self.now, "id": schedule_id},
        )

    def set_schedule_state(self, schedule_id: int, status: str, next_at: float | None) -> None:
        self.ex(
            "UPDATE schedules SET status = :s, next_at = :next, updated_at = :now WHERE id = :id",
            {"s": status, "next": next_at, "now": self.now, "id": schedule_id},
        )
        self.notify("schedule")

    def delete_schedule(self, schedule_id: int) -> None:
        """The schedule goes; the tasks it filed and their occurrence records stay."""
        self.ex("DELETE FROM schedules WHERE id = :id", {"id": schedule_id})
        self.notify("schedule")

    # -- freezes --------------------------------------------------------------------------------
    def insert_freeze(self, fields: dict[str, Any]) -> int:
        row = self.one(
            "INSERT INTO freezes (name, selector, starts_at, ends_at, reason, username, mode, "
            "created_at) VALUES (:name, :selector, :starts, :ends, :reason, :user, :mode, :now) "
            "RETURNING id",
            {**fields, "now": self.now},
        )
        assert row is not None
        return int(row[0])

    def freezes_at(self, at: float) -> list[dict[str, Any]]:
        return [
            freeze_from_row(r)
            for r in self.all(
                f"SELECT {FREEZE_COLS} FROM freezes WHERE starts_at <= :at AND ends_at > :at "
                "ORDER BY id",
                {"at": at},
            )
        ]

    def delete_freeze(self, freeze_id: int) -> bool:
        cur = self.ex("DELETE FROM freezes WHERE id = :id", {"id": freeze_id})
        return int(cur.rowcount) == 1


class SchedulesStore(StoreCore):
    def get_schedule(self, schedule_id: int) -> dict[str, Any]:
        with self.reading() as tx:
            row = tx.one(
                f"SELECT {SCHEDULE_COLS} FROM schedules WHERE id = :id", {"id": schedule_id}
            )
        if row is None:
            raise NotFound(f"schedule {schedule_id} not found")
        return schedule_from_row(row)

    def list_schedules(self, user: str | None = None) -> list[dict[str, Any]]:
        where, params = ("WHERE username = :u", {"u": user}) if user else ("", {})
        with self.reading() as tx:
            rows = tx.all(f"SELECT {SCHEDULE_COLS} FROM schedules {where} ORDER BY id", params)
        return [schedule_from_row(r) for r in rows]

    def schedule_occurrences(self, schedule_id: int, limit: int = 50) -> list[dict[str, Any]]:
        with self.reading() as tx:
            rows = tx.all(
                f"SELECT {OCCURRENCE_COLS} FROM schedule_occurrences WHERE schedule_id = :s "
                "ORDER BY occurrence_at DESC LIMIT :n",
                {"s": schedule_id, "n": limit},
            )
        return [occurrence_from_row(r) for r in rows]

    def next_schedule_due(self) -> float | None:
        with self.reading() as tx:
            row = tx.one(
                "SELECT min(next_at) FROM schedules WHERE status = 'active' AND next_at IS NOT NULL"
            )
        return None if row is None or row[0] is None else float(row[0])

    def list_freezes(self, since: float | None = None) -> list[dict[str, Any]]:
        where, params = ("WHERE ends_at > :t", {"t": since}) if since is not None else ("", {})
        with self.reading() as tx:
            rows = tx.all(
                f"SELECT {FREEZE_COLS} FROM freezes {where} ORDER BY starts_at, id", params
            )
        return [freeze_from_row(r) for r in rows]


class FreezesTx(TxCore):
    """Which agents a task would reach inside a freeze (the task manager refuses them)."""

    def frozen_among(
        self, reached: AgentSelection, freeze: Expr, limit: int = 5
    ) -> tuple[int, list[str]]:
        params: dict[str, Any] = {}
        # `self` is the composed SqlTx (selection_sql lives in the tasks mixin).
        tx = cast("SqlTx", self)
        inner = tx.selection_sql(AgentSelection(selector=freeze), params)
        outer = tx.selection_sql(reached, params)
        rows = self.all(
            f"SELECT a.id {outer} AND a.id IN (SELECT a.id {inner}) ORDER BY a.id", params
        )
        return len(rows), [r[0] for r in rows[:limit]]
