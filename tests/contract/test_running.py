"""Long-running commands against the store, both backends (issue 17.3): a heartbeat moves a
delivered command to `running` (counted apart, its task in progress), every beat pushes its
staleness two intervals on, and the sweep, on a clock the test passes, ends one whose beats
stopped `timeout` "agent stopped reporting" long before its execution timeout."""

from __future__ import annotations

import time
from typing import Any

from fleetcmd.indexer.task_manager import TaskManager, TaskRequest
from fleetcmd.model.progress import OUTPUT_CHUNK, OUTPUT_MAX
from fleetcmd.store import Beat, ClaimFilter, Result
from fleetcmd.store.base import SqlStore
from fleetcmd.store.stream import STOPPED_REPORTING

HOUR = 3600.0


def delivered_task(store: SqlStore, agents: list[str], timeout: float = 6 * HOUR) -> int:
    """A rescan of `agents`, every command delivered (the agents hold them and run them)."""
    store.register_agents([{"id": a, "name": a, "groups": [], "status": "active"} for a in agents])
    task, _ = TaskManager(store).submit(
        TaskRequest("vulnerability-rescan", {"agents": agents}, user="bob", timeout=timeout)
    )
    got = store.claim("node-1", ClaimFilter("agent", target_ids=tuple(agents)), 10_000, 60)
    assert len(got) == len(agents)
    store.mark("node-1", [c.id for c in got], "sent")
    assert store.mark(None, [c.id for c in got], "delivered") == sorted(c.id for c in got)
    return task.id


def beat(store: SqlStore, beats: list[tuple[int, float]]) -> list[int]:
    """Heartbeat (id, interval) pairs; the ids running now."""
    return sorted(store.command_heartbeats([Beat(i, interval) for i, interval in beats]))


def ids_of(store: SqlStore, task_id: int) -> list[int]:
    return [c.id for c in store.list_commands(task_id=task_id, limit=10_000).items]


def test_a_command_whose_heartbeats_stop_ends_timeout_within_two_intervals(
    store: SqlStore,
) -> None:
    task_id = delivered_task(store, ["a-1", "a-2"])
    one, two = ids_of(store, task_id)
    interval = 5.0
    t0 = time.time()
    assert beat(store, [(one, interval)]) == [one]
    assert store.get_command(one).status == "running"
    task = store.get_task(task_id)
    assert task.counts == {"running": 1, "delivered": 1} and task.status == "in_progress"
    assert store.counts("task", task_id) == store.recount("task", task_id)
    # a repeated ack of a running command is still confirmed (the agent lost an answer)
    assert store.mark(None, [one], "delivered") == [one]

    # one interval late is not stale; beats keep it alive
    assert store.sweep(now=t0 + interval).total == 0
    assert beat(store, [(one, interval)]) == [one]
    assert store.sweep(now=time.time() + 1.9 * interval).stopped_reporting == 0
    # two intervals without a beat: ended, hours before its execution timeout
    report = store.sweep(now=time.time() + 2 * interval + 0.5)
    assert report.stopped_reporting == 1 and report.timed_out == 0
    c = store.get_command(one)
    assert c.status == "timeout" and c.result_message == STOPPED_REPORTING
    assert store.get_command(two).status == "delivered"  # never beat: its full timeout applies
    assert store.get_task(task_id).counts == {"timeout": 1, "delivered": 1}
    assert store.counts("task", task_id) == store.recount("task", task_id)

    # the agent comes back: its beat is answered "not running", its late result ignored
    assert beat(store, [(one, interval)]) == []
    late = store.complete([Result(one, "success", data={})])
    assert late == [{"id": one, "outcome": "ignored: already timeout"}]


def test_running_commands_finish_are_cancelled_or_time_out_in_full(store: SqlStore) -> None:
    task_id = delivered_task(store, ["b-1", "b-2", "b-3"], timeout=60)
    one, two, three = ids_of(store, task_id)
    assert beat(store, [(one, 10), (two, 10), (three, 10)]) == [one, two, three]
    assert store.complete([Result(one, "success", data={"ok": True})])[0]["outcome"] == "recorded"
    # the execution timeout still holds for a command that keeps beating
    report = store.sweep(now=time.time() + 61)
    assert report.timed_out == 2 and report.stopped_reporting == 0
    assert store.get_command(two).result_message == "no result within the execution timeout"
    task = store.get_task(task_id)
    assert task.status == "failure" and task.counts == {"success": 1, "timeout": 2}

    other = delivered_task(store, ["b-4"])
    (four,) = ids_of(store, other)
    beat(store, [(four, 10)])
    assert store.cancel_task(other) == 1
    assert store.get_command(four).status == "cancelled"
    assert beat(store, [(four, 10)]) == []


def test_only_delivered_commands_run_and_many_beats_are_one_write(store: SqlStore) -> None:
    agents = [f"c-{i:04d}" for i in range(1500)]
    task_id = delivered_task(store, agents)
    ids = ids_of(store, task_id)
    # an undelivered command (sent, never acked) does not become running
    store.register_agents([{"id": "c-late", "name": "c-late", "groups": [], "status": "active"}])
    late, _ = TaskManager(store).submit(
        TaskRequest("vulnerability-rescan", {"agents": ["c-late"]}, user="bob")
    )
    (late_id,) = ids_of(store, late.id)
    beats = [(i, 10.0) for i in ids] + [(late_id, 10.0), (ids[0], 20.0), (10**12, 10.0)]
    assert beat(store, beats) == ids
    assert store.get_command(late_id).status == "pending"
    assert store.get_task(task_id).counts == {"running": 1500}
    assert store.counts("task", task_id) == store.recount("task", task_id)
    # the last beat of an id counts: ids[0] promised 20 s, the others 10 s
    report = store.sweep(now=time.time() + 25)
    assert report.stopped_reporting == 1499
    assert store.get_command(ids[0]).status == "running"


def test_output_chunks_are_kept_in_order_and_bounded(store: SqlStore) -> None:
    task_id = delivered_task(store, ["d-1", "d-2"])
    one, two = ids_of(store, task_id)

    def send(cid: int, *chunks: tuple[int, str], **progress: Any) -> int:
        return store.command_heartbeats([Beat(cid, 10, output=tuple(chunks), **progress)])[cid]

    # out of order within a beat is sorted; a gap waits (the agent sends it again)
    assert send(one, (1, "b"), (0, "a"), percent=10, message="starting") == 2
    assert send(one, (3, "d")) == 2  # 2 missing: 3 is not taken
    assert send(one, (2, "c"), (3, "d"), (1, "b")) == 4  # a repeat of 1 is ignored
    got = store.command_output(one)
    assert [(o.seq, o.data) for o in got] == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
    assert [o.seq for o in store.command_output(one, after=1)] == [2, 3]
    c = store.get_command(one)
    assert (c.progress_percent, c.progress_message) == (10, "starting")
    assert (c.output_chunks, c.output_bytes) == (4, 4)
    # a beat without progress keeps the last one reported
    send(one, (4, "e"))
    c = store.get_command(one)
    assert (c.progress_percent, c.progress_message) == (10, "starting")
    send(one, percent=55.5, message="verifying")
    assert store.get_command(one).to_json()["progress"]["percent"] == 55.5

    # bounded: the chunk that crosses the limit is cut (on a character), later ones dropped
    big = "é" * (OUTPUT_CHUNK // 2)  # 8 KiB of UTF-8 per chunk
    seq, n = 0, 0
    while seq < 200:
        n = send(two, *[(s, big) for s in range(seq, seq + 8)])
        seq += 8
    c = store.get_command(two)
    assert c.output_bytes <= OUTPUT_MAX and c.output_bytes > OUTPUT_MAX - len(big.encode())
    assert n == c.output_chunks == len(store.command_output(two, limit=1000))
    assert (
        "".join(o.data for o in store.command_output(two, limit=1000)).encode()
        == ((big * c.output_chunks).encode()[: c.output_bytes])
    )

    # a final command takes no more output
    store.complete([Result(one, "success", data={})])
    assert store.command_heartbeats([Beat(one, 10, output=((5, "late"),))]) == {}
    assert len(store.command_output(one)) == 5


def test_retention_takes_a_command_s_output_with_it(store: SqlStore) -> None:
    old = delivered_task(store, ["e-1"])
    (cid,) = ids_of(store, old)
    store.command_heartbeats([Beat(cid, 10, output=((0, "kept until the task goes\n"),))])
    store.complete([Result(cid, "success", data={})])
    kept = delivered_task(store, ["e-2"])
    (other,) = ids_of(store, kept)
    store.command_heartbeats([Beat(other, 10, output=((0, "still running\n"),))])
    assert len(store.command_output(cid)) == 1
    report = store.purge_finished(older_than=60, now=time.time() + 120, batch=10)
    assert report.tasks == 1
    assert store.command_output(cid) == []
    assert [o.data for o in store.command_output(other)] == ["still running\n"]
