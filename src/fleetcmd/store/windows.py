"""Maintenance windows: the window rows, and the moves of commands held for them.

A task that requires windows has its agent commands `held` (never claimed) when it is
written; a window that opens moves the held commands of the agents it covers to `pending`,
noting when it closes; a close moves those still undelivered back to `held` (counting a
missed window) or ends them `expired`, by the task's policy. Every move goes through the
guarded status moves and counts of `core`, so `held` is counted apart from `pending`.
"""

from __future__ import annotations

from typing import Any

from fleetcmd.model.selectors import Expr
from fleetcmd.model.status import Status
from fleetcmd.store.core import StoreCore, TxCore
from fleetcmd.store.selectors import Compiler

WINDOW_COLS = "id, name, selector, rrule, start_local, tz, duration, username, created_at"
CLOSED_EXPIRED = "not delivered before its maintenance window closed"
HELD_EXPIRED = "held for a maintenance window until its delivery deadline"
FREEZE = "freeze"  # the policy of a task a holding freeze held (not a window policy)


def window_from_row(r: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": int(r[0]),
        "name": r[1],
        "selector": r[2],
        "rrule": r[3],
        "start_local": r[4],
        "tz": r[5],
        "duration": float(r[6]),
        "user": r[7],
        "created_at": float(r[8]),
    }


class WindowsTx(TxCore):
    def insert_window(self, fields: dict[str, Any]) -> int:
        row = self.one(
            f"INSERT INTO maintenance_windows ({WINDOW_COLS.removeprefix('id, ')}) VALUES "
            "(:name, :selector, :rrule, :start, :tz, :duration, :user, :now) RETURNING id",
            {**fields, "now": self.now},
        )
        assert row is not None
        self.notify("window")
        return int(row[0])

    def delete_window(self, window_id: int) -> bool:
        cur = self.ex("DELETE FROM maintenance_windows WHERE id = :id", {"id": window_id})
        self.notify("window")
        return int(cur.rowcount) == 1

    def windows(self) -> list[dict[str, Any]]:
        rows = self.all(f"SELECT {WINDOW_COLS} FROM maintenance_windows ORDER BY id")
        return [window_from_row(r) for r in rows]

    def hold_for_windows(self, task_id: int, policy: str) -> int:
        """The task's agent commands wait for their agents' windows (written with the task)."""
        self.ex(
            "INSERT INTO task_windows (task_id, policy) VALUES (:t, :p)",
            {"t": task_id, "p": policy},
        )
        rows, _ = self.move(
            "task_id = :t AND target_type = 'agent' AND expanded = 0 AND status = 'pending'",
            {"t": task_id},
            Status.HELD,
        )
        self.notify("window")
        return len(rows)

    def open_window(self, covers: Expr, closes_at: float) -> int:
        """Held commands of the agents `covers` matches become claimable until `closes_at`
        (those of windowed tasks: a freeze's hold is lifted by `release_unfrozen`)."""
        params: dict[str, Any] = {"_closes": closes_at, "_freeze": FREEZE}
        agents = f"SELECT a.id FROM agents a WHERE {Compiler(self, params).where(covers)}"
        rows, _ = self.move(
            f"status = 'held' AND target_type = 'agent' AND target_id IN ({agents}) "
            "AND task_id IN (SELECT task_id FROM task_windows WHERE policy <> :_freeze)",
            params,
            Status.PENDING,
            sets=", window_closes_at = :_closes",
        )
        if rows:
            self.notify("agent")
        return len(rows)

    def release_unfrozen(self, current: list[Expr]) -> int:
        """Commands a holding freeze held whose agents no current freeze covers: pending."""
        params: dict[str, Any] = {"_policy": FREEZE}
        where = (
            "status = 'held' AND target_type = 'agent' "
            "AND task_id IN (SELECT task_id FROM task_windows WHERE policy = :_policy)"
        )
        for expr in current:
            frozen = f"SELECT a.id FROM agents a WHERE {Compiler(self, params).where(expr)}"
            where += f" AND target_id NOT IN ({frozen})"
        rows, _ = self.move(where, params, Status.PENDING)
        if rows:
            self.notify("agent")
        return len(rows)

    def close_windows(self, now: float) -> tuple[int, int]:
        """Commands whose window closed before delivery: back to held (a missed window) or
        expired, by their task's policy. Returns (held again, expired)."""
        due = (
            "status = 'pending' AND window_closes_at IS NOT NULL AND window_closes_at <= :_at "
            "AND task_id IN (SELECT task_id FROM task_windows WHERE policy = :_policy)"
        )
        again, _ = self.move(
            due,
            {"_at": now, "_policy": "next"},
            Status.HELD,
            sets=", window_closes_at = NULL, windows_missed = windows_missed + 1",
        )
        ended, _ = self.move(
            due,
            {"_at": now, "_policy": "expire", "_msg": CLOSED_EXPIRED},
            Status.EXPIRED,
            sets=", window_closes_at = NULL, windows_missed = windows_missed + 1, "
            "completed_at = :_now, result_message = :_msg",
        )
        return len(again), len(ended)

    def expire_held(self) -> int:
        """Held commands past their delivery deadline end `expired` (on the wall clock, as
        the sweeper's other deadlines)."""
        rows, _ = self.move(
            "status = 'held' AND expires_at < :_t",
            {"_t": self.now, "_msg": HELD_EXPIRED},
            Status.EXPIRED,
            sets=", completed_at = :_now, result_message = :_msg",
        )
        return len(rows)


class WindowsStore(StoreCore):
    def list_windows(self) -> list[dict[str, Any]]:
        with self.reading() as tx:
            return tx.windows()

    def task_window_report(self, task_id: int) -> dict[str, Any] | None:
        """How a windowed task's commands stand: its policy, held, and the agents that
        missed at least one window (their own count, never a failure)."""
        with self.reading() as tx:
            row = tx.one("SELECT policy FROM task_windows WHERE task_id = :t", {"t": task_id})
            if row is None:
                return None
            counts = tx.counts("task", task_id)
            missed = tx.one(
                "SELECT count(*), coalesce(sum(windows_missed), 0) FROM commands "
                "WHERE task_id = :t AND windows_missed > 0",
                {"t": task_id},
            )
        return {
            "policy": row[0],
            "held": counts.get("held", 0),
            "pending": counts.get("pending", 0),
            "missed_window": int(missed[0]) if missed else 0,
            "windows_missed": int(missed[1]) if missed else 0,
            "counts": counts,
        }
