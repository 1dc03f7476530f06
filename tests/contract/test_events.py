"""The outbox (issue 18.1), both stores: every final command, task status, audit record, new
alert and agent-status change leaves one event in the transaction of the change (and none
when it rolls back); a subscriber reads them in order from its cursor, filtered, with their
bodies; replay moves the cursor back; on PostgreSQL an event of a transaction still running
is not read yet, and nothing that commits late is stepped over."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from fleetcmd.indexer.command_manager import CommandManager
from fleetcmd.indexer.task_manager import TaskManager, TaskRequest
from fleetcmd.store import ClaimFilter, Result
from fleetcmd.store.base import SqlStore


def walk(store: SqlStore, sub_id: int, batch: int = 1000, settle: bool = True) -> list[dict]:
    """Read and advance to the end. `settle`: on PostgreSQL, also wait out write transactions
    of other sessions on the cluster (other tests) that hold the read horizon back."""
    sub = store.subscriber(sub_id, with_secret=True)
    position = (sub["cursor"]["tx"], sub["cursor"]["id"])
    out: list[dict] = []
    deadline = time.monotonic() + 20
    while True:
        events, last = store.read_events(position, batch, sub["filters"])
        if last is None:
            if settle and store.lag(position) and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            return out
        out += events
        assert store.lease_subscriber(sub_id, "me", 30)
        assert store.advance(sub_id, "me", last, len(events))
        position = last


def subscribe(store: SqlStore, name: str, **filters: object) -> int:
    doc = {"name": name, "kind": "webhook", "url": "http://127.0.0.1:1/x", "filters": filters}
    sub = store.create_subscriber({**doc, "from_time": 0}, "admin")
    assert sub["secret"] and len(sub["secret"]) >= 32
    return int(sub["id"])


def test_changes_leave_events_in_their_transaction_and_subscribers_read_them(
    store: SqlStore,
) -> None:
    store.register_agents(
        [{"id": f"a{i}", "name": f"host-{i}", "groups": ["web"]} for i in range(5)]
    )
    everything = subscribe(store, "all")
    failures = subscribe(store, "failures", kinds=["command"], statuses=["failure"])
    audits = subscribe(store, "logins", kinds=["audit"], actions=["user.*"])
    task, _ = TaskManager(store).submit(
        TaskRequest("group-configuration-change", {"group": "web", "configuration": {"v": 1}})
    )
    assert CommandManager(store).run_once() == 1
    claimed = store.claim("node#1", ClaimFilter("agent"), 10, 60)
    ids = sorted(c.id for c in claimed)
    store.mark("node#1", ids, "sent")
    store.mark("node#1", ids, "delivered")
    store.complete(
        [Result(ids[0], "failure", 3, "disk full", {"why": "full"})]
        + [Result(i, "success", 0, "ok", {}) for i in ids[1:]]
    )
    store.complete([Result(ids[0], "failure", 3, "disk full", {})])  # a repeat: no event
    store.append_audit(
        [
            {"actor": "admin", "action": "user.login", "outcome": "success"},
            {"actor": "admin", "action": "task.create", "outcome": "success"},
        ]
    )
    for _ in range(2):  # the second is a rewrite of the same alert: no new event
        with store.transaction() as tx:
            tx.put_document("alerts", "a1/1-100-x", {"rule": {"id": 100, "level": 10}})
    store.update_agents([{"id": "a1", "status": "active", "node": "n1"}])
    store.update_agents([{"id": "a1", "status": "active", "last_seen": time.time()}])  # same
    store.sweep(now=time.time() + 120, disconnect_after=60)  # a1 stopped polling

    events = walk(store, everything)
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    by_kind: dict[str, list[dict]] = {}
    for e in events:
        by_kind.setdefault(e["kind"], []).append(e)
    commands = by_kind["command"]
    # five children and the parent, each once, with its result as the API has it
    assert len(commands) == 6 and len({e["subject"] for e in commands}) == 6
    failed = [e for e in commands if e["type"] == "failure"]
    assert failed[0]["data"]["result"] == {
        "code": 3,
        "message": "disk full",
        "data": {"why": "full"},
    }
    assert "args" not in failed[0]["data"]["action"]
    statuses = [e["type"] for e in by_kind["task"] if e["subject"] == str(task.id)]
    assert statuses[0] == "pending" and statuses[-1] in ("failure", "partial")
    assert all(a != b for a, b in itertools.pairwise(statuses))
    assert by_kind["task"][-1]["data"]["type"] == "group-configuration-change"
    assert [e["type"] for e in by_kind["audit"]] == ["user.login", "task.create"]
    assert by_kind["audit"][0]["data"]["actor"] == "admin"
    assert [e["subject"] for e in by_kind["alert"]] == ["a1/1-100-x"]
    assert by_kind["alert"][0]["data"]["rule"]["level"] == 10
    assert [(e["subject"], e["type"], e["data"]) for e in by_kind["agent"]] == [
        ("a1", "active", {"previous": "never_connected"}),
        ("a1", "disconnected", {"previous": "active"}),
    ]
    assert walk(store, everything) == []  # the cursor is durable: nothing twice

    only_failures = walk(store, failures)
    # the failed child, then its parent (rolled up to failure in the same transaction)
    assert [e["subject"] for e in only_failures] == [str(ids[0]), str(claimed[0].parent_id)]
    assert [e["data"]["action"] for e in walk(store, audits)] == ["user.login"]

    # Replay from a point: the cursor goes back to just before that event.
    store.set_subscriber_state(everything, "active", from_event=commands[2]["id"])
    again = walk(store, everything)
    assert again == [e for e in events if e["id"] >= commands[2]["id"]]
    assert store.subscriber(everything)["delivered"] == len(events) + len(again)

    # A rolled-back change leaves no event.
    before = store.lag((0, 0))
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.append_audit({"actor": "x", "action": "user.login", "outcome": "success"})
        raise RuntimeError("rolled back")
    assert store.lag((0, 0)) == before


def test_a_bulk_final_move_writes_its_events_in_bulk(store: SqlStore) -> None:
    n = 20_500  # more than one 20,000-id chunk
    store.register_agents(
        [{"id": f"b{i:05d}", "name": f"b-{i}", "groups": ["big"]} for i in range(n)]
    )
    task, _ = TaskManager(store).submit(
        TaskRequest("group-configuration-change", {"group": "big", "configuration": {"v": 1}})
    )
    CommandManager(store).run_once()
    start = store.lag((0, 0))
    t0 = time.perf_counter()
    assert store.cancel_task(task.id) == n
    cancelled = time.perf_counter() - t0
    with store.reading() as tx:
        row = tx.one(
            "SELECT count(*), count(DISTINCT subject) FROM events "
            "WHERE kind = 'command' AND type = 'cancelled' AND task_id = :t",
            {"t": task.id},
        )
    assert row == (n + 1, n + 1)  # the children and the parent
    assert store.lag((0, 0)) - start >= n + 1
    print(f"cancel of {n} commands with their events: {cancelled:.2f}s")


def test_postgres_reads_no_event_of_a_transaction_still_running(store: SqlStore) -> None:
    if store.dialect != "postgres":
        pytest.skip("SQLite has one writer at a time: ids commit in order")
    sub = subscribe(store, "ordered")
    started, release = threading.Event(), threading.Event()

    def slow_writer() -> None:
        with store.transaction() as tx:
            tx.append_audit({"actor": "slow", "action": "user.login", "outcome": "success"})
            started.set()
            release.wait(10)

    t = threading.Thread(target=slow_writer)
    t.start()
    assert started.wait(10)
    store.append_audit([{"actor": "fast", "action": "user.login", "outcome": "success"}])
    # The fast record committed, but the slow one (a lower id) has not: neither is read yet,
    # so the cursor cannot step over the slow one.
    assert walk(store, sub, settle=False) == []
    release.set()
    t.join()
    assert [e["data"]["actor"] for e in walk(store, sub)] == ["slow", "fast"]


def test_old_events_every_subscriber_passed_are_pruned(store: SqlStore) -> None:
    store.append_audit([{"actor": "a", "action": "user.login", "outcome": "success"}] * 7)
    behind = subscribe(store, "behind")  # from the start: nothing read yet
    assert store.prune_events(time.time() + 1, batch=2) == 0  # held by its cursor
    assert len(walk(store, behind)) == 7
    assert store.prune_events(time.time() + 1, batch=2) == 7
    assert store.lag((0, 0)) == 0


def test_one_dispatcher_holds_a_subscriber_and_only_it_moves_the_cursor(store: SqlStore) -> None:
    store.append_audit([{"actor": "a", "action": "user.login", "outcome": "success"}])
    sub = subscribe(store, "leased")
    assert store.lease_subscriber(sub, "indexer-1", 30)
    assert not store.lease_subscriber(sub, "indexer-2", 30)  # held
    cursor = store.subscriber(sub)["cursor"]
    deadline = time.monotonic() + 20  # PostgreSQL: other sessions' writes hold the horizon
    while True:
        events, last = store.read_events((cursor["tx"], cursor["id"]), 10, {})
        if events or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert events and last is not None
    start = store.subscriber(sub)["cursor"]
    assert not store.advance(sub, "indexer-2", last, len(events))  # fenced
    assert store.subscriber(sub)["cursor"] == start
    assert store.delivery_failed(sub, "indexer-2", "not mine", 1) == 0
    assert store.subscriber(sub)["state"] == "active"
    # failures in a row pause it; a resume forgets them and drops the lease
    assert store.delivery_failed(sub, "indexer-1", "HTTP 500", 2) == 1
    assert store.delivery_failed(sub, "indexer-1", "HTTP 500", 2) == 2
    paused = store.subscriber(sub)
    assert paused["state"] == "paused" and paused["last_error"] == "HTTP 500"
    assert not store.lease_subscriber(sub, "indexer-1", 30)  # a paused one is not delivered
    resumed = store.set_subscriber_state(sub, "active")
    assert resumed["failures"] == 0 and resumed["owner"] is None
    assert store.lease_subscriber(sub, "indexer-2", 30)
    assert store.advance(sub, "indexer-2", last, len(events))
    # an indexer that stops hands its subscribers over at once
    store.release_subscribers("indexer-2")
    assert store.lease_subscriber(sub, "indexer-3", 0.01)
    time.sleep(0.05)
    assert store.lease_subscriber(sub, "indexer-1", 30)  # the lease lapsed
