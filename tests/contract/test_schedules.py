"""Schedules and freezes against the store, both backends, on a clock the test moves: the
scheduler files each occurrence once (two schedulers on one store, a restart between), across
a change of offset, and by its missed policy; freezes refuse, and an override is audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fleetcmd.errors import Conflict, Forbidden, InvalidParams
from fleetcmd.indexer import freezes
from fleetcmd.indexer.scheduler import Scheduler
from fleetcmd.indexer.task_manager import TaskManager, TaskRequest
from fleetcmd.model.schedules import FreezeIn, ScheduleIn
from fleetcmd.store import open_store
from fleetcmd.store.base import SqlStore

PARIS_DAILY = "FREQ=DAILY;BYHOUR=2;BYMINUTE=30"


class Clock:
    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, at: datetime) -> None:
        self.now = at.timestamp()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def fleet(store: SqlStore, n: int = 3, group: str = "web") -> list[str]:
    ids = [f"a{i:02d}" for i in range(n)]
    store.register_agents(
        [{"id": i, "name": f"h-{i}", "groups": [group], "status": "active"} for i in ids]
    )
    return ids


def rescan(**kw: Any) -> dict[str, Any]:
    return {
        "name": "nightly rescan",
        "task": {"type": "vulnerability-rescan", "params": {"group": "web"}},
        **kw,
    }


def occurrences(store: SqlStore, sid: int) -> list[tuple[str, str, int | None]]:
    rows = sorted(store.schedule_occurrences(sid), key=lambda o: o["occurrence_at"])
    return [
        (
            datetime.fromtimestamp(o["occurrence_at"], UTC).strftime("%m-%dT%H:%MZ"),
            o["outcome"],
            o["task_id"],
        )
        for o in rows
    ]


def scheduled_tasks(store: SqlStore) -> list[int]:
    return [t.id for t in store.list_tasks(limit=1000).items if t.type == "vulnerability-rescan"]


def test_dst_occurrences_once_with_two_schedulers_and_a_restart(store_url: str) -> None:
    """Europe/Paris, 02:30 every night across the last Sunday of October 2026 (CEST → CET on
    the 25th, when 02:30 happens twice): one task per night, at 00:30Z before the change and
    01:30Z after, whichever of two schedulers looks, and after one of them restarts."""
    clock = Clock(utc(2026, 10, 22, 12))
    one, two = open_store(url := store_url), open_store(store_url)
    try:
        fleet(one)
        a, b = Scheduler(TaskManager(one), clock), Scheduler(TaskManager(two), clock)
        sid = a.create(
            ScheduleIn.model_validate(
                rescan(rrule=PARIS_DAILY, tz="Europe/Paris", start="2026-10-23T02:30")
            ),
            "alice",
            "management-api",
            None,
            True,
        )["id"]
        shown = a.show(sid)
        assert [n["at"] for n in shown["next"]] == [
            "2026-10-23T00:30:00Z",
            "2026-10-24T00:30:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-26T01:30:00Z",
            "2026-10-27T01:30:00Z",
        ]
        assert shown["next"][2]["local"] == "2026-10-25T02:30:00+02:00"
        assert shown["next"][3]["local"] == "2026-10-26T02:30:00+01:00"
        for hour in range(0, 24 * 5 * 4):  # every 15 minutes through five nights
            clock.now = utc(2026, 10, 22, 12).timestamp() + hour * 900
            (a if hour % 2 else b).run_once()
            (b if hour % 2 else a).run_once()
            if hour == 200:  # a scheduler "restarts": a new store and scheduler, same rows
                two.close()
                two = open_store(url)
                b = Scheduler(TaskManager(two), clock)
        got = occurrences(one, sid)
        assert [(at, outcome) for at, outcome, _ in got] == [
            ("10-23T00:30Z", "filed"),
            ("10-24T00:30Z", "filed"),
            ("10-25T00:30Z", "filed"),
            ("10-26T01:30Z", "filed"),
            ("10-27T01:30Z", "filed"),
        ]
        tasks = [t for _, _, t in got]
        assert sorted(tasks) == sorted(scheduled_tasks(one))  # type: ignore[type-var]
        assert len(set(tasks)) == 5
        row = one.get_schedule(sid)
        assert row["filed"] == 5
        # each task was filed as the creator, and reached the group's agents
        for tid in tasks:
            assert tid is not None
            task = one.get_task(tid)
            assert task.user == "alice" and sum(task.counts.values()) == 3
    finally:
        one.close()
        two.close()


def test_spring_gap_reads_0230_as_0330_summer_time(store: SqlStore) -> None:
    clock = Clock(utc(2026, 3, 27))
    fleet(store)
    s = Scheduler(TaskManager(store), clock)
    view = s.create(
        ScheduleIn.model_validate(
            rescan(rrule=PARIS_DAILY, tz="Europe/Paris", start="2026-03-28T02:30")
        ),
        "alice",
        "management-api",
        None,
        True,
    )
    assert [n["local"] for n in view["next"][:3]] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:30:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]


@pytest.mark.parametrize("policy", ["run-once", "skip"])
def test_missed_occurrences_by_policy(store: SqlStore, policy: str) -> None:
    """Every scheduler was down for three nights: `run-once` files one task, late, and says
    so; `skip` files none and says so; both are audited, and the next night is on time."""
    clock = Clock(utc(2026, 11, 1, 12))
    fleet(store)
    s = Scheduler(TaskManager(store), clock)
    sid = s.create(
        ScheduleIn.model_validate(rescan(rrule="FREQ=DAILY;BYHOUR=3", missed=policy)),
        "alice",
        "management-api",
        None,
        True,
    )["id"]
    clock.set(utc(2026, 11, 4, 12))  # nights of the 2nd, 3rd and 4th went by
    s.run_once()
    got = occurrences(store, sid)
    assert len(got) == 1
    at, outcome, task_id = got[0]
    assert at == "11-04T03:00Z"
    occ = store.schedule_occurrences(sid)[0]
    assert "3 occurrence(s)" in occ["message"]
    if policy == "run-once":
        assert outcome == "filed-late" and task_id is not None
        assert "filed once on return" in occ["message"]
        assert scheduled_tasks(store) == [task_id]
    else:
        assert outcome == "skipped" and task_id is None
        assert scheduled_tasks(store) == []
    audit = store.list_audit(action="schedule.occurrence").items
    assert [r["details"]["outcome"] for r in audit] == [outcome]
    clock.set(utc(2026, 11, 5, 3, 0, 5))
    s.run_once()
    assert occurrences(store, sid)[-1][:2] == ("11-05T03:00Z", "filed")


def test_pause_resume_delete_and_one_shot(store: SqlStore) -> None:
    clock = Clock(utc(2026, 11, 1, 12))
    fleet(store)
    s = Scheduler(TaskManager(store), clock)
    sid = s.create(
        ScheduleIn.model_validate(rescan(rrule="FREQ=HOURLY")), "bob", "management-api", None, True
    )["id"]
    assert s.pause(sid)["status"] == "paused"
    with pytest.raises(Conflict):
        s.pause(sid)
    clock.set(utc(2026, 11, 1, 18, 30))
    s.run_once()
    assert occurrences(store, sid) == []  # nothing while paused
    resumed = s.resume(sid)
    assert resumed["next_at"] == "2026-11-01T19:00:00Z"  # the pause's hours are not filed
    s.delete(sid)
    with pytest.raises(Exception, match="not found"):
        s.show(sid)
    # a one-shot task at a time (`not_before`)
    one = s.create(
        ScheduleIn.model_validate(rescan(start="2026-11-01T20:00", tz="Europe/Paris")),
        "bob",
        "management-api",
        None,
        True,
    )
    assert one["next_at"] == "2026-11-01T19:00:00Z" and len(one["next"]) == 1
    clock.set(utc(2026, 11, 1, 19, 0, 1))
    s.run_once()
    s.run_once()
    assert [o[1] for o in occurrences(store, one["id"])] == ["filed"]
    assert store.get_schedule(one["id"])["status"] == "done"
    with pytest.raises(InvalidParams, match="in the past"):
        s.create(
            ScheduleIn.model_validate(rescan(start="2026-01-01T00:00")),
            "bob",
            "management-api",
            None,
            True,
        )


def test_bad_schedules_are_refused() -> None:
    for bad in (
        rescan(rrule="FREQ=SOMETIMES"),
        rescan(rrule="DTSTART:20260101T000000\nRRULE:FREQ=DAILY"),
        rescan(tz="Mars/Olympus"),
        rescan(start="tomorrow"),
        rescan(start="2026-10-25T02:30+02:00"),
        rescan(rrule="FREQ=SECONDLY"),
    ):
        with pytest.raises(ValueError):
            ScheduleIn.model_validate(bad)


def test_an_occurrence_refused_at_filing_is_recorded(store: SqlStore) -> None:
    """Checked as at filing: the group went away, so the occurrence is refused, said so, and
    the schedule goes on."""
    clock = Clock(utc(2026, 11, 1, 12))
    fleet(store)
    s = Scheduler(TaskManager(store), clock)
    sid = s.create(
        ScheduleIn.model_validate(
            rescan(
                rrule="FREQ=HOURLY",
                task={"type": "vulnerability-rescan", "params": {"agents": ["a00"]}},
            )
        ),
        "bob",
        "management-api",
        None,
        True,
    )["id"]
    with store.transaction() as tx:
        tx.remove_agent("a00")
    clock.set(utc(2026, 11, 1, 12, 0, 1))
    s.run_once()
    ((_, outcome, task_id),) = occurrences(store, sid)
    assert outcome == "refused" and task_id is None
    assert "unknown agent" in store.schedule_occurrences(sid)[0]["message"]
    assert store.get_schedule(sid)["next_at"] == utc(2026, 11, 1, 13).timestamp()
    audit = store.list_audit(action="schedule.occurrence").items
    assert audit[0]["outcome"] == "denied"


def test_freeze_refuses_and_override_is_audited(store: SqlStore) -> None:
    fleet(store, 2, "payment")
    fleet_web = [f"w{i}" for i in range(2)]
    store.register_agents(
        [{"id": i, "name": i, "groups": ["web"], "status": "active"} for i in fleet_web]
    )
    tm = TaskManager(store)
    now = datetime.now(UTC)
    freezes.create(
        store,
        FreezeIn(
            name="payment freeze",
            selector="group = payment",
            starts_at=now - timedelta(days=1),
            ends_at=now + timedelta(days=1),
            reason="year end",
        ),
        "carol",
    )
    with pytest.raises(Forbidden, match="payment freeze") as refused:
        tm.submit(TaskRequest("vulnerability-rescan", {"group": "payment"}, user="bob"))
    assert refused.value.details["freezes"][0]["agents"] == 2
    with pytest.raises(Forbidden):
        tm.submit(TaskRequest("vulnerability-rescan", {"all": True}, user="bob"))
    # agents outside the freeze are not held back
    web, _ = tm.submit(TaskRequest("vulnerability-rescan", {"group": "web"}, user="bob"))
    assert sum(web.counts.values()) == 2
    task, _ = tm.submit(
        TaskRequest("vulnerability-rescan", {"group": "payment"}, user="dave", override_freeze=True)
    )
    assert sum(task.counts.values()) == 2
    (record,) = store.list_audit(action="freeze.override").items
    assert record["actor"] == "dave" and record["details"]["freezes"][0]["name"] == "payment freeze"
    # a freeze that has ended holds nothing back
    fid = store.list_freezes()[0]["id"]
    freezes.delete(store, fid)
    tm.submit(TaskRequest("vulnerability-rescan", {"group": "payment"}, user="bob"))


def test_a_holding_freeze_holds_commands_until_it_ends(store: SqlStore) -> None:
    """Mode `hold`: the task is filed; its commands to frozen agents wait `held` and the
    others go at once; when the freeze ends (here: deleted) the held ones become pending.
    A type whose commands the command manager writes later cannot be held: refused."""
    from fleetcmd.indexer.windows import WindowGate

    fleet(store, 2, "payment")
    store.register_agents([{"id": "w0", "name": "w0", "groups": ["web"], "status": "active"}])
    now = datetime.now(UTC)
    freeze = freezes.create(
        store,
        FreezeIn(
            name="payment hold",
            selector="group = payment",
            starts_at=now - timedelta(minutes=1),
            ends_at=now + timedelta(hours=1),
            mode="hold",
        ),
        "carol",
    )
    tm = TaskManager(store)
    gate = WindowGate(store)
    task, _ = tm.submit(TaskRequest("vulnerability-rescan", {"all": True}, user="bob"))
    assert task.counts == {"held": 3}
    gate.run_once()
    by_agent = {c.target_id: c.status for c in store.list_commands(task_id=task.id).items}
    assert by_agent == {"a00": "held", "a01": "held", "w0": "pending"}
    with pytest.raises(Forbidden, match="payment hold"):
        tm.submit(
            TaskRequest(
                "group-configuration-change",
                {"group": "payment", "configuration": {"x": 1}},
                user="bob",
            )
        )
    freezes.delete(store, freeze["id"])
    gate.run_once()
    assert store.get_task(task.id).counts == {"pending": 3}
