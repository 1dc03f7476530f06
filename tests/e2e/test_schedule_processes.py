"""Exactly-once filing of schedule occurrences by real indexer processes: two indexers on one
PostgreSQL schema race for every occurrence of an RRULE in Europe/Paris across the autumn
change of offset, one of them is killed and restarted between occurrences and the other
while both race for a due one, then both are down for three nights and the missed policy
files one task on their return. The indexers read a test clock the test moves
(`FLEETCMD_SCHEDULER_CLOCK`): no real hours go by."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleetcmd.store import open_store
from fleetcmd.store.base import SqlStore
from support import Indexer, store_url_for, wait_until


def at(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    with store_url_for("postgres", tmp_path) as url:
        yield url


def handled(store: SqlStore, sid: int) -> list[tuple[float, str, int | None]]:
    return sorted(
        (o["occurrence_at"], o["outcome"], o["task_id"]) for o in store.schedule_occurrences(sid)
    )


def test_two_indexers_and_restarts_file_each_occurrence_once(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = tmp_path / "clock"
    clock.write_text(str(at(2026, 10, 22, 12)))
    monkeypatch.setenv("FLEETCMD_SCHEDULER_CLOCK", str(clock))
    store = open_store(pg_url)
    store.migrate()
    store.register_agents(
        [{"id": f"a{i}", "name": f"h{i}", "groups": ["web"], "status": "active"} for i in range(4)]
    )
    one = Indexer(pg_url, tmp_path / "one").start()
    two = Indexer(pg_url, tmp_path / "two").start()
    try:
        with one.client() as c:
            r = c.post(
                "/schedules",
                json={
                    "name": "nightly",
                    "task": {"type": "vulnerability-rescan", "params": {"group": "web"}},
                    "rrule": "FREQ=DAILY;BYHOUR=2;BYMINUTE=30",
                    "tz": "Europe/Paris",
                    "start": "2026-10-23T02:30",
                    "missed": "run-once",
                },
            )
            assert r.status_code == 201, r.text
            sid = r.json()["data"]["id"]
            bad = c.post("/schedules", json={"name": "x", "task": {"type": "nope"}, "tz": "X/Y"})
            assert bad.status_code == 422 and "time zone" in bad.text
        expected = [
            at(2026, 10, 23, 0, 30),
            at(2026, 10, 24, 0, 30),
            at(2026, 10, 25, 0, 30),  # 02:30 CEST, the first of the two 02:30s that night
            at(2026, 10, 26, 1, 30),  # 02:30 CET
            at(2026, 10, 27, 1, 30),
        ]
        for n, occurrence in enumerate(expected, 1):
            # a little before (nothing is filed), then just after
            clock.write_text(str(occurrence - 30))
            if n == 3:
                two.kill(signal.SIGKILL)  # killed between occurrences, restarted at once
                two.start()
            clock.write_text(str(occurrence + 1))
            if n == 4:  # killed while both race for the due occurrence, restarted at once
                time.sleep(0.1)
                one.kill(signal.SIGKILL)
                one.start()
            wait_until(lambda n=n: len(handled(store, sid)) >= n, 20, what=f"occurrence {n}")
        # both indexers keep looking for a while: nothing more is filed
        time.sleep(1.0)
        got = handled(store, sid)
        assert [(a, o) for a, o, _ in got] == [(a, "filed") for a in expected]
        tasks = [t for _, _, t in got]
        assert len(set(tasks)) == 5 and None not in tasks
        with store.reading() as tx:
            rows = tx.all(
                "SELECT schedule_id, occurrence_at FROM tasks WHERE schedule_id IS NOT NULL "
                "ORDER BY id"
            )
        assert [float(r[1]) for r in rows] == expected  # each task linked to its occurrence
        assert store.get_schedule(sid)["filed"] == 5

        # every indexer down for three nights, then back: one task, late, and it says so
        one.stop()
        two.stop()
        clock.write_text(str(at(2026, 10, 30, 12)))
        one.start()
        two.start()
        wait_until(lambda: len(handled(store, sid)) == 6, 20, what="the missed occurrences")
        last_at, outcome, task_id = handled(store, sid)[-1]
        assert (last_at, outcome) == (at(2026, 10, 30, 1, 30), "filed-late") and task_id
        occ = max(store.schedule_occurrences(sid), key=lambda o: o["occurrence_at"])
        assert "3 occurrence(s)" in occ["message"] and "filed once on return" in occ["message"]
        records = store.list_audit(action="schedule.occurrence").items
        assert sorted(r["details"]["outcome"] for r in records) == ["filed"] * 5 + ["filed-late"]
        with one.client() as c:
            shown = c.get(f"/schedules/{sid}").json()["data"]
        assert shown["next"][0]["at"] == "2026-10-31T01:30:00Z"
        assert len(shown["next"]) == 5 and len(shown["occurrences"]) == 6
    finally:
        for idx in (one, two):
            idx.stop()
            print(f"----- {idx.name} -----\n{idx.log()[-3000:]}")
        store.close()
