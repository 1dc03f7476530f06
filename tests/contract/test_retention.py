"""Retention (store/retention.py): only finished tasks older than the cutoff leave, with their
commands and count rows; running tasks and recent ones keep every row and right counts."""

from __future__ import annotations

import time

import pytest

from fleetcmd.errors import NotFound
from fleetcmd.indexer.command_manager import CommandManager
from fleetcmd.indexer.task_manager import TaskManager, TaskRequest
from fleetcmd.store import ClaimFilter, Result
from fleetcmd.store.base import SqlStore


def change(store: SqlStore, version: int) -> int:
    task, _ = TaskManager(store).submit(
        TaskRequest("group-configuration-change", {"group": "web", "configuration": {"v": version}})
    )
    assert CommandManager(store).run_once() == 1
    return task.id


def finish(store: SqlStore, how_many: int | None = None) -> list[int]:
    """Claim the pending agent commands and post a success for `how_many` of them."""
    claimed = store.claim("server-1", ClaimFilter("agent"), 1000, 60)
    done = [c.id for c in claimed][:how_many]
    store.complete([Result(cid, "success", 0, "ok", None) for cid in done])
    return done


def rows(store: SqlStore, task_id: int) -> int:
    with store.reading() as tx:
        row = tx.one("SELECT count(*) FROM commands WHERE task_id = :t", {"t": task_id})
    return int(row[0]) if row else 0


def progress_rows(store: SqlStore, scope: str, scope_id: int) -> int:
    with store.reading() as tx:
        row = tx.one(
            "SELECT count(*) FROM progress WHERE scope = :s AND scope_id = :i",
            {"s": scope, "i": scope_id},
        )
    return int(row[0]) if row else 0


@pytest.fixture
def fleet(store: SqlStore) -> dict[str, int]:
    """setup (final, oldest), old (final), running (not final), recent (final, newest)."""
    setup = change(store, 0)  # creates the group: no agent yet, final at once
    store.register_agents(
        [{"id": f"a{i}", "name": f"host-{i}", "groups": ["web"]} for i in range(6)]
    )
    old = change(store, 1)
    finish(store)
    time.sleep(0.05)
    running = change(store, 2)
    finish(store, 3)
    time.sleep(0.05)
    recent = change(store, 3)
    finish(store)
    return {"setup": setup, "old": old, "running": running, "recent": recent}


def test_only_finished_tasks_older_than_the_cutoff_go(
    store: SqlStore, fleet: dict[str, int]
) -> None:
    old_task = store.get_task(fleet["old"])
    recent_task = store.get_task(fleet["recent"])
    assert old_task.completed_at is not None and recent_task.completed_at is not None
    assert store.get_task(fleet["running"]).completed_at is None
    old_parent = store.list_commands(task_id=fleet["old"], target_type="indexer").items[0].id
    before = {k: (rows(store, t), store.counts("task", t)) for k, t in fleet.items()}
    assert before["old"][0] == 7 and before["running"][0] == 7 and before["recent"][0] == 7
    assert progress_rows(store, "parent", old_parent) > 0

    # a cutoff between the old task's end and the recent one's, however fast this machine is
    cutoff = (old_task.completed_at + recent_task.completed_at) / 2
    report = store.purge_finished(older_than=60, now=cutoff + 60, batch=2)

    assert report.tasks == 2  # setup and old
    assert report.commands == before["setup"][0] + before["old"][0]
    assert report.batches > 2  # small batches, each its own transaction
    for gone in ("setup", "old"):
        with pytest.raises(NotFound):
            store.get_task(fleet[gone])
        assert rows(store, fleet[gone]) == 0
        assert store.counts("task", fleet[gone]) == {}
    assert progress_rows(store, "parent", old_parent) == 0
    for kept in ("running", "recent"):
        assert rows(store, fleet[kept]) == before[kept][0]
        assert store.counts("task", fleet[kept]) == before[kept][1]
        assert store.recount("task", fleet[kept]) == store.counts("task", fleet[kept])
    assert store.counts("task", fleet["running"]) == {"success": 3, "processing": 3}


def test_a_running_task_stays_whatever_its_age(store: SqlStore, fleet: dict[str, int]) -> None:
    report = store.purge_finished(older_than=0, now=time.time() + 3600)
    assert report.tasks == 3 and rows(store, fleet["running"]) == 7
    assert store.recount("task", fleet["running"]) == {"success": 3, "processing": 3}
    again = store.purge_finished(older_than=0, now=time.time() + 3600)
    assert (again.tasks, again.commands) == (0, 0)


def test_nothing_goes_when_every_task_is_younger(store: SqlStore, fleet: dict[str, int]) -> None:
    report = store.purge_finished(older_than=30 * 86400)
    assert (report.tasks, report.commands) == (0, 0)
    assert all(rows(store, t) for k, t in fleet.items() if k != "setup")


@pytest.mark.parametrize("days", [0.0, 1e-6])
def test_the_indexer_runs_retention_unless_told_to_keep_everything(
    store: SqlStore, fleet: dict[str, int], days: float
) -> None:
    import asyncio

    from fleetcmd.indexer.app import IndexerOptions, create_app
    from fleetcmd.indexer.retention import retention_loop

    st = create_app(store, IndexerOptions(token="t")).state.indexer
    time.sleep(0.2)  # every finished task is now older than 1e-6 days (0.09 s)

    async def run_for_a_while() -> None:
        loop = asyncio.create_task(retention_loop(st, days, interval=0.05, first_after=0))
        for _ in range(200):  # until the old tasks are gone (or a generous limit)
            await asyncio.sleep(0.05)
            if loop.done() or rows(store, fleet["recent"]) == 0:
                break
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)

    asyncio.run(run_for_a_while())
    kept = {k for k, t in fleet.items() if rows(store, t)}
    assert kept == ({"setup", "old", "running", "recent"} if not days else {"running"})
