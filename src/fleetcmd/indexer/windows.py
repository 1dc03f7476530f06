"""Maintenance windows: when each window is open, and the gate that holds and releases the
commands of tasks that require them.

A window is an RRULE in a zone (its openings, wall-clock times as for schedules) and a
duration, over the agents a selector matches. The gate, one step per pass: a window open now
releases the held commands of its agents (`pending` until it closes); a window that closed
sends the undelivered ones back to `held`, counting a missed window, or ends them `expired`,
by the task's `window` policy ("next" or "expire"); held commands past their delivery
deadline end `expired`. An agent offline through a whole window therefore gets its command
in the next window it is online in, counted "missed window", never failed. Commands already
claimed or sent when their window closes go on: they are being handed over.

The gate also lifts holding freezes: held commands of a task a freeze held become pending as
soon as no current freeze covers their agent (freezes are spans of wall-clock time).

Time is the scheduler's clock (a test clock in tests, `indexer/scheduler.py`); the gate
sleeps until the next opening or closing, woken when a window or a windowed task is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from fleetcmd.errors import InvalidParams, NotFound
from fleetcmd.model import selectors
from fleetcmd.model.schedules import Recurrence, WindowIn, iso_local, iso_utc
from fleetcmd.store.base import SqlStore

log = logging.getLogger("fleetcmd.windows")

MAX_SLEEP = 60.0
POLICIES = ("next", "expire")
FREEZE = "freeze"  # how a holding freeze's task is recorded (store/windows.py)
# A windowed task's commands may wait days for a weekly window: their default deadline.
DEFAULT_HELD_DEADLINE = 7 * 86400.0


def _recurrence(w: dict[str, Any]) -> Recurrence:
    return Recurrence(w["rrule"], w["start_local"], w["tz"])


def current(w: dict[str, Any], now: float) -> tuple[float, float] | None:
    """(opened, closes) of the window's opening that spans `now`, if any."""
    found, _ = _recurrence(w).between(now - w["duration"], now, limit=1)
    if not found:
        return None
    return found[-1], found[-1] + w["duration"]


def view(w: dict[str, Any], now: float, upcoming: int = 5) -> dict[str, Any]:
    rec = _recurrence(w)
    span = current(w, now)
    return {
        **w,
        "created_at": iso_utc(w["created_at"]),
        "open": span is not None,
        "closes_at": iso_utc(span[1]) if span else None,
        "next": [
            {"opens": iso_local(t, rec.tz), "closes": iso_local(t + w["duration"], rec.tz)}
            for t in rec.upcoming(now, upcoming)
        ],
    }


class WindowGate:
    def __init__(self, store: SqlStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def create(self, body: WindowIn, user: str) -> dict[str, Any]:
        with self.store.transaction() as tx:
            wid = tx.insert_window(
                {
                    "name": body.name,
                    "selector": body.selector,
                    "rrule": body.rrule,
                    "start": Recurrence(body.rrule, body.start, body.tz).start.isoformat(),
                    "tz": body.tz,
                    "duration": body.duration,
                    "user": user,
                }
            )
        return next(w for w in self.list() if w["id"] == wid)

    def list(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [view(w, now) for w in self.store.list_windows()]

    def delete(self, window_id: int) -> None:
        with self.store.transaction() as tx:
            if not tx.delete_window(window_id):
                raise NotFound(f"maintenance window {window_id} not found")

    def run_once(self) -> float:
        """One pass (one transaction); answers how long to sleep until the next boundary."""
        now = self.clock()
        wake = now + MAX_SLEEP
        with self.store.transaction() as tx:
            released = 0
            for w in tx.windows():
                span = current(w, now)
                if span is not None:
                    released += tx.open_window(selectors.parse(w["selector"]), span[1])
                    wake = min(wake, span[1])
                nxt = _recurrence(w).next_after(now)
                if nxt is not None:
                    wake = min(wake, nxt)
            frozen = tx.freezes_at(tx.now)
            released += tx.release_unfrozen([selectors.parse(f["selector"]) for f in frozen])
            for f in frozen:
                wake = min(wake, now + max(0.0, f["ends_at"] - tx.now))
            again, ended = tx.close_windows(now)
            expired = tx.expire_held()
        if released or again or ended or expired:
            log.info(
                "windows: %d released, %d held again (missed window), %d expired at close, "
                "%d expired while held",
                released,
                again,
                ended,
                expired,
            )
        return max(0.0, wake - self.clock())


def check_request(window: str | None, by_task_manager: bool, rollout: Any) -> None:
    if window is None:
        return
    if window not in POLICIES:
        raise InvalidParams(f"'window' is one of {', '.join(POLICIES)}")
    if not by_task_manager:
        raise InvalidParams(
            "only agent-bound task types (commands written per agent) can wait for windows"
        )
    if rollout is not None:
        raise InvalidParams("a task runs in waves (rollout) or in windows, not both")
