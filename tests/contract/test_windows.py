"""Maintenance windows against the store, both backends, on a clock the test moves: a task
that requires windows holds its commands (`held`, counted apart from pending) until the
agent's window opens; one not delivered before the window closes waits for the next window
(counted "missed window", never a failure) or ends `expired`, by the task's policy."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fleetcmd.errors import InvalidParams
from fleetcmd.indexer.task_manager import TaskManager, TaskRequest
from fleetcmd.indexer.windows import WindowGate
from fleetcmd.model.schedules import WindowIn
from fleetcmd.store import ClaimFilter, Result
from fleetcmd.store.base import SqlStore

# Sundays 02:00-04:00 in Paris; 25 October 2026 is the night summer time ends.
SUNDAYS = {"rrule": "FREQ=WEEKLY;BYDAY=SU;BYHOUR=2;BYMINUTE=0", "tz": "Europe/Paris"}


class Clock:
    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, at: datetime) -> None:
        self.now = at.timestamp()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def setup(store: SqlStore) -> None:
    store.register_agents(
        [
            {"id": i, "name": i, "groups": [g], "status": "active"}
            for i, g in (("web-1", "web"), ("web-2", "web"), ("db-1", "db"))
        ]
    )


def deliver(store: SqlStore, online: list[str]) -> list[str]:
    """The online agents take what is claimable for them and succeed."""
    got = store.claim("node-1", ClaimFilter("agent", target_ids=tuple(online)), 100, 60)
    if got:
        store.mark("node-1", [c.id for c in got], "sent")
        store.mark(None, [c.id for c in got], "delivered")
        store.complete([Result(c.id, "success", data={}) for c in got])
    return sorted(c.target_id for c in got)


def status_of(store: SqlStore, task_id: int) -> dict[str, str]:
    return {c.target_id: c.status for c in store.list_commands(task_id=task_id, limit=100).items}


def report(store: SqlStore, task_id: int) -> dict[str, Any]:
    r = store.task_window_report(task_id)
    assert r is not None
    return r


def test_a_window_opens_and_closes_around_held_commands(store: SqlStore) -> None:
    setup(store)
    clock = Clock(utc(2026, 10, 24, 12))  # a Saturday
    gate = WindowGate(store, clock)
    w = gate.create(
        WindowIn(name="web sunday", selector="group = web", duration=7200, **SUNDAYS), "ops"
    )
    assert w["next"][0] == {
        "opens": "2026-10-25T02:00:00+02:00",
        "closes": "2026-10-25T03:00:00+01:00",  # two hours: the clocks went back at 03:00
    }
    tm = TaskManager(store)
    task, _ = tm.submit(
        TaskRequest("vulnerability-rescan", {"group": "web"}, user="bob", window="next")
    )
    assert task.counts == {"held": 2} and task.status == "pending"
    gate.run_once()
    assert deliver(store, ["web-1", "web-2"]) == []  # held: nothing is claimable
    clock.set(utc(2026, 10, 25, 0, 30))  # 02:30 CEST: open
    assert gate.run_once() == 60.0  # the longest sleep; it closes in 90 minutes
    assert store.get_task(task.id).counts == {"pending": 2}
    assert deliver(store, ["web-1"]) == ["web-1"]  # web-2 is offline all through the window
    clock.set(utc(2026, 10, 25, 1, 59, 30))
    assert gate.run_once() == pytest.approx(30)  # wakes when the window closes
    clock.set(utc(2026, 10, 25, 2, 0))  # 03:00 CET: closed
    gate.run_once()
    assert status_of(store, task.id) == {"web-1": "success", "web-2": "held"}
    r = report(store, task.id)
    assert (r["held"], r["missed_window"], r["counts"].get("failure", 0)) == (1, 1, 0)
    assert store.get_task(task.id).status == "in_progress"
    clock.set(utc(2026, 10, 31, 12))
    gate.run_once()
    assert deliver(store, ["web-2"]) == []  # between windows
    clock.set(utc(2026, 11, 1, 1, 5))  # next Sunday 02:05 CET
    gate.run_once()
    assert deliver(store, ["web-2"]) == ["web-2"]
    final = store.get_task(task.id)
    assert final.status == "success" and final.counts == {"success": 2}
    assert report(store, task.id)["missed_window"] == 1  # its own count, not a failure


def test_expire_policy_and_agents_outside_windows(store: SqlStore) -> None:
    setup(store)
    clock = Clock(utc(2026, 11, 1, 0, 30))  # Sunday 01:30 CET, before the window
    gate = WindowGate(store, clock)
    gate.create(WindowIn(name="web", selector="group = web", duration=3600, **SUNDAYS), "ops")
    tm = TaskManager(store)
    task, _ = tm.submit(
        TaskRequest("vulnerability-rescan", {"all": True}, user="bob", window="expire")
    )
    assert task.counts == {"held": 3}
    clock.set(utc(2026, 11, 1, 1, 10))
    gate.run_once()
    # db-1 has no window: it stays held (until its delivery deadline)
    assert status_of(store, task.id) == {"web-1": "pending", "web-2": "pending", "db-1": "held"}
    deliver(store, ["web-1", "db-1"])
    clock.set(utc(2026, 11, 1, 2, 0))
    gate.run_once()
    got = status_of(store, task.id)
    assert got == {"web-1": "success", "web-2": "expired", "db-1": "held"}
    (cmd,) = [
        c for c in store.list_commands(task_id=task.id, limit=10).items if c.target_id == "web-2"
    ]
    assert "maintenance window closed" in cmd.result_message
    # past its delivery deadline (the wall clock), a held command ends expired
    with store.transaction() as tx:
        tx.ex(
            "UPDATE commands SET expires_at = :t WHERE task_id = :id",
            {"t": tx.now - 1, "id": task.id},
        )
    gate.run_once()
    assert status_of(store, task.id)["db-1"] == "expired"
    assert store.get_task(task.id).status == "expired"


def test_windowed_tasks_are_agent_bound_and_cancellable(store: SqlStore) -> None:
    setup(store)
    tm = TaskManager(store)
    with pytest.raises(InvalidParams, match="agent-bound"):
        tm.submit(
            TaskRequest(
                "group-configuration-change",
                {"group": "web", "configuration": {}},
                window="next",
            )
        )
    with pytest.raises(InvalidParams, match="one of"):
        tm.submit(TaskRequest("vulnerability-rescan", {"group": "web"}, window="later"))
    task, _ = tm.submit(TaskRequest("vulnerability-rescan", {"group": "web"}, window="next"))
    store.cancel_task(task.id)
    assert store.get_task(task.id).status == "cancelled"
    assert set(status_of(store, task.id).values()) == {"cancelled"}
    for bad in (
        {"rrule": "FREQ=DAILY", "duration": 0},
        {"rrule": "FREQ=DAILY", "duration": 60, "selector": "group ="},
    ):
        with pytest.raises(ValueError):
            WindowIn.model_validate({"name": "x", "selector": "all", **bad})
