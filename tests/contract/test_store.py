"""The store contract: every backend passes the same suite (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import replace

import pytest

from fleetcmd.errors import Conflict, InvalidParams, NotFound
from fleetcmd.indexer.command_manager import CommandManager
from fleetcmd.indexer.parts import PARTS
from fleetcmd.indexer.task_manager import TaskManager, TaskRequest
from fleetcmd.store import ClaimFilter, Result
from fleetcmd.store.base import SqlStore


def agents(store: SqlStore, n: int, group: str = "web", prefix: str = "a") -> list[str]:
    ids = [f"{prefix}{i:05d}" for i in range(n)]
    store.register_agents([{"id": i, "name": f"host-{i}", "groups": [group]} for i in ids])
    return ids


def group(store: SqlStore, name: str, config: dict | None = None) -> None:
    TaskManager(store).submit(
        TaskRequest("group-configuration-change", {"group": name, "configuration": config or {}})
    )
    CommandManager(store).run_once()


def fan_out(store: SqlStore, n: int, **kw: object) -> int:
    group(store, "web")
    agents(store, n)
    task, _ = TaskManager(store).submit(
        TaskRequest("group-configuration-change", {"group": "web", "configuration": {"v": 2}}, **kw)
    )  # type: ignore[arg-type]
    assert CommandManager(store).run_once() == 1
    return task.id


def test_four_concurrent_claimers_claim_each_command_exactly_once(store: SqlStore) -> None:
    task_id = fan_out(store, 10_000)
    seen: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        try:
            while True:
                got = store.claim(name, ClaimFilter("agent"), 250, 60)
                if not got:
                    return
                with lock:
                    seen.extend(c.id for c in got)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"c{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(seen) == 10_000 and len(set(seen)) == 10_000
    assert store.counts("task", task_id) == {"processing": 10_000}
    assert store.recount("task", task_id) == {"processing": 10_000}


def test_a_lapsed_lease_returns_the_command_to_be_claimed_again(store: SqlStore) -> None:
    task_id = fan_out(store, 3)
    first = store.claim("dead-server", ClaimFilter("agent"), 10, lease=1)
    assert len(first) == 3
    assert store.claim("other", ClaimFilter("agent"), 10, 60) == []
    report = store.sweep(now=time.time() + 2)
    assert report.lease_lapsed == 3
    again = store.claim("other", ClaimFilter("agent"), 10, 60)
    assert sorted(c.id for c in again) == sorted(c.id for c in first)
    assert all(c.attempts == 2 and c.lease_owner == "other" for c in again)
    # the zombie can no longer mark what it lost
    assert store.mark("dead-server", [c.id for c in first], "sent") == []
    assert store.renew("dead-server", [c.id for c in first], 60) == []
    assert store.counts("task", task_id) == {"processing": 3}


def test_a_restarted_node_takes_back_what_its_previous_run_held(store: SqlStore) -> None:
    task_id = fan_out(store, 6)
    old = store.claim("node-a#1111", ClaimFilter("agent"), 4, lease=600)
    assert store.mark("node-a#1111", [c.id for c in old[:2]], "sent") == sorted(
        c.id for c in old[:2]
    )
    mine = store.claim("node-a#2222", ClaimFilter("agent"), 1, lease=600)
    other = store.claim("node-ab#3333", ClaimFilter("agent"), 1, lease=600)  # a longer name
    assert store.release_previous("node-a#2222") == 4  # claimed and sent, both back
    assert store.counts("task", task_id) == {"pending": 4, "processing": 2}
    assert store.recount("task", task_id) == {"pending": 4, "processing": 2}
    # the previous run lost the right to mark or renew; the new run and other nodes kept theirs
    assert store.mark("node-a#1111", [c.id for c in old], "sent") == []
    assert store.renew("node-a#1111", [c.id for c in old], 60) == []
    assert store.renew("node-a#2222", [mine[0].id], 60) == [mine[0].id]
    assert store.renew("node-ab#3333", [other[0].id], 60) == [other[0].id]
    again = store.claim("node-a#2222", ClaimFilter("agent"), 10, lease=600)
    assert sorted(c.id for c in again) == sorted(c.id for c in old)
    assert store.release_previous("node-a#2222") == 0
    with pytest.raises(InvalidParams):
        store.release_previous("node-a")


def test_a_silent_nodes_commands_go_back_before_their_leases_lapse(store: SqlStore) -> None:
    """A server node whose heartbeat stopped: its undelivered agent commands (claimed or
    `sent`) are pending again at the next sweep, long before its 600-s leases lapse; a node
    that heartbeats keeps its own, and one silent for longer than the horizon is left to its
    leases."""
    task_id = fan_out(store, 6)
    t0 = time.time()
    for node in ("node-a", "node-ab", "node-old"):
        store.heartbeat(node, None, {})
    dead = store.claim("node-a#1", ClaimFilter("agent"), 3, lease=600)
    assert store.mark("node-a#1", [dead[0].id], "sent") == [dead[0].id]
    alive = store.claim("node-ab#1", ClaimFilter("agent"), 2, lease=600)  # a longer name
    old = store.claim("node-old#1", ClaimFilter("agent"), 1, lease=600)
    with store.transaction() as tx:  # node-a last heard 20 s ago, node-old two hours ago
        tx.ex("UPDATE nodes SET heartbeat_at = :t WHERE id = 'node-a'", {"t": t0 - 20})
        tx.ex("UPDATE nodes SET heartbeat_at = :t WHERE id = 'node-old'", {"t": t0 - 7200})
    assert store.sweep(now=t0, silent_after=30).node_silent == 0  # not silent long enough
    report = store.sweep(now=t0, silent_after=15)
    assert report.node_silent == 3 and report.silent_nodes == {"node-a": 3}
    assert report.lease_lapsed == 0
    assert store.counts("task", task_id) == {"pending": 3, "processing": 3}
    # the silent node lost the right to mark or renew; the others kept theirs
    assert store.mark("node-a#1", [c.id for c in dead], "sent") == []
    assert store.renew("node-a#1", [c.id for c in dead], 60) == []
    assert store.renew("node-ab#1", [c.id for c in alive], 60) == sorted(c.id for c in alive)
    assert store.renew("node-old#1", [old[0].id], 60) == [old[0].id]
    again = store.claim("node-ab#1", ClaimFilter("agent"), 10, lease=600)
    assert sorted(c.id for c in again) == sorted(c.id for c in dead)
    assert store.sweep(now=t0, silent_after=15).node_silent == 0


def test_an_agent_that_moved_to_another_node_takes_its_claimed_commands_along(
    store: SqlStore,
) -> None:
    """A command node-a claimed for an agent, undelivered, goes back to the stream when the
    agent is reported polling node-b (a load balancer moved it), so node-b can claim it;
    a report from the node the agent is on already changes nothing."""
    task_id = fan_out(store, 3)
    ids = [a.id for a in store.list_agents(limit=10).items]
    store.update_agents([{"id": i, "node": "node-a", "status": "active"} for i in ids])
    held = store.claim("node-a#1", ClaimFilter("agent", node="node-a"), 10, lease=600)
    assert len(held) == 3
    assert store.mark("node-a#1", [held[0].id], "sent") == [held[0].id]
    store.update_agents([{"id": i, "node": "node-a"} for i in ids])  # still there
    assert store.counts("task", task_id) == {"processing": 2, "sent": 1}
    moved = held[0].target_id, held[1].target_id
    store.update_agents([{"id": i, "node": "node-b"} for i in moved])
    assert store.counts("task", task_id) == {"pending": 2, "processing": 1}
    again = store.claim("node-b#1", ClaimFilter("agent", node="node-b"), 10, lease=600)
    assert sorted(c.id for c in again) == sorted(c.id for c in held[:2])
    assert store.mark("node-a#1", [held[1].id], "sent") == []  # node-a lost it
    assert store.renew("node-a#1", [held[2].id], 60) == [held[2].id]  # not the one it kept


def test_an_exception_mid_expansion_leaves_no_child_and_no_parent_change(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    group(store, "web")
    agents(store, 50)
    task, _ = TaskManager(store).submit(
        TaskRequest("group-configuration-change", {"group": "web", "configuration": {"v": 9}})
    )
    before_group = store.get_group("web")
    part = PARTS["group-configuration-change"]
    real = part.expand
    assert real is not None

    def crash(tx, cmd, spec, prm):  # type: ignore[no-untyped-def]
        real(tx, cmd, spec, prm)  # writes the index change and all 50 children...
        raise RuntimeError("power cut")  # ...then dies before committing

    monkeypatch.setitem(PARTS, "group-configuration-change", replace(part, expand=crash))
    cm = CommandManager(store, owner="cm-1", lease=1)
    assert cm.run_once() == 1
    assert store.list_commands(task_id=task.id, target_type="agent").items == []
    parent = store.list_commands(task_id=task.id).items[0]
    assert parent.status == "processing" and not parent.expanded
    assert store.get_group("web").version == before_group.version
    assert store.counts("task", task.id) == {"processing": 1}
    # the lease lapses, another command manager picks it up and finishes the job
    monkeypatch.setitem(PARTS, "group-configuration-change", part)
    store.sweep(now=time.time() + 2)
    assert CommandManager(store, owner="cm-2").run_once() == 1
    assert store.counts("task", task.id) == {"pending": 50}
    assert store.get_group("web").version == before_group.version + 1


def test_counts_follow_every_move_and_the_parent_rolls_up(store: SqlStore) -> None:
    task_id = fan_out(store, 20)
    cmds = store.claim("s", ClaimFilter("agent"), 20, 60)
    ids = [c.id for c in cmds]
    assert store.mark("s", ids[:15], "sent") == ids[:15]
    assert store.mark("s", ids[:12], "delivered") == ids[:12]
    out = store.complete(
        [Result(i, "success", data={"config_hash": "x"}) for i in ids[:10]]
        + [Result(ids[10], "failure", 3, "disk full")]
    )
    assert Counter(o["outcome"] for o in out) == {"recorded": 11}
    assert (
        store.counts("task", task_id)
        == store.recount("task", task_id)
        == {"success": 10, "failure": 1, "delivered": 1, "sent": 3, "processing": 5}
    )
    parent = store.get_command(cmds[0].parent_id or 0)
    assert store.counts("parent", parent.id) == store.recount("parent", parent.id)
    assert store.get_task(task_id).status == "in_progress"
    # a repeated result is idempotent; a different late one does not overwrite
    again = store.complete([Result(ids[0], "success"), Result(ids[10], "success")])
    assert [o["outcome"] for o in again] == ["duplicate", "ignored: already failure"]
    store.complete([Result(i, "success") for i in ids[11:]])
    task = store.get_task(task_id)
    assert task.status == "failure" and task.counts == {"success": 19, "failure": 1}
    parent = store.get_command(parent.id)
    assert parent.status == "failure" and parent.result_data == {
        "counts": {"success": 19, "failure": 1}
    }


def test_undelivered_commands_expire_and_delivered_ones_time_out(store: SqlStore) -> None:
    task_id = fan_out(store, 4, timeout=5, expires_in=10)
    cmds = store.claim("s", ClaimFilter("agent"), 2, 60)
    store.mark("s", [cmds[0].id], "sent")
    store.mark("s", [cmds[0].id], "delivered")
    report = store.sweep(now=time.time() + 6)  # past the execution timeout, not the deadline
    assert (report.timed_out, report.expired) == (1, 0)
    report = store.sweep(now=time.time() + 11)  # past the delivery deadline
    assert report.expired == 3
    task = store.get_task(task_id)
    assert task.counts == {"timeout": 1, "expired": 3}
    assert task.status == "failure"
    assert store.claim("s", ClaimFilter("agent"), 10, 60) == []


def test_cancel_stops_every_live_command_of_the_task(store: SqlStore) -> None:
    task_id = fan_out(store, 30)
    cmds = store.claim("s", ClaimFilter("agent"), 5, 60)
    store.complete([Result(cmds[0].id, "success")])
    assert store.cancel_task(task_id) == 29
    task = store.get_task(task_id)
    assert task.status == "cancelled" and task.counts == {"success": 1, "cancelled": 29}
    assert [o["outcome"] for o in store.complete([Result(cmds[1].id, "success")])] == [
        "ignored: already cancelled"
    ]
    with pytest.raises(NotFound):
        store.cancel_task(999_999)


def test_idempotency_key_returns_the_same_task_and_writes_nothing(store: SqlStore) -> None:
    group(store, "web")
    agents(store, 5)
    tm = TaskManager(store)
    req = TaskRequest("agent-upgrade", {"group": "web", "version": "2.0"}, idempotency_key="k1")
    first, created = tm.submit(req)
    again, created_again = tm.submit(req)
    assert created and not created_again and first.id == again.id
    assert len(store.list_commands(task_id=first.id).items) == 5
    with pytest.raises(Conflict):
        tm.submit(
            TaskRequest("agent-upgrade", {"group": "web", "version": "3.0"}, idempotency_key="k1")
        )


def test_task_references_are_checked_before_anything_is_written(store: SqlStore) -> None:
    agents(store, 2, group="default")
    tm = TaskManager(store)
    with pytest.raises(InvalidParams, match="unknown agent"):
        tm.submit(TaskRequest("agent-rename", {"agent": "nope", "name": "x"}))
    with pytest.raises(InvalidParams, match="group 'ghost' does not exist"):
        tm.submit(
            TaskRequest("group-assignment-change", {"agents": ["a00000"], "groups": ["ghost"]})
        )
    assert store.list_tasks().items == []


def test_group_assignment_sends_each_agent_its_full_group_list(store: SqlStore) -> None:
    group(store, "web", {"a": 1})
    group(store, "db", {"b": 2})
    ids = agents(store, 3)
    tm = TaskManager(store)
    task, _ = tm.submit(
        TaskRequest("group-assignment-change", {"agents": ids[:2], "groups": ["db"], "mode": "add"})
    )
    CommandManager(store).run_once()
    children = store.list_commands(task_id=task.id, target_type="agent").items
    assert sorted(c.target_id for c in children) == ids[:2]
    assert all(c.action_args["groups"] == ["web", "db"] for c in children)
    assert store.get_agent(ids[0]).groups == ["web", "db"]
    assert store.get_agent(ids[2]).groups == ["web"]
    assert store.get_group("db").members == 2
    merged, h = store.merged_config(["web", "db"])
    assert merged == {"a": 1, "b": 2} and len(h) == 64
    # deleting a group removes it from every agent and tells each its new full list
    task, _ = tm.submit(TaskRequest("group-assignment-change", {"delete_group": "db"}))
    CommandManager(store).run_once()
    children = store.list_commands(task_id=task.id, target_type="agent").items
    assert len(children) == 2 and all(c.action_args["groups"] == ["web"] for c in children)
    with pytest.raises(NotFound):
        store.get_group("db")


def test_rename_and_deletion_change_the_agents_index(store: SqlStore) -> None:
    group(store, "web")
    ids = agents(store, 2)
    tm, cm = TaskManager(store), CommandManager(store)
    tm.submit(TaskRequest("agent-rename", {"agent": ids[0], "name": "db-primary"}))
    cm.run_once()
    assert store.get_agent(ids[0]).name == "db-primary"
    task, _ = tm.submit(TaskRequest("agent-deletion", {"agent": ids[1]}))
    cm.run_once()
    assert store.get_agent(ids[1]).status == "removed"
    assert [
        c.target_id for c in store.list_commands(task_id=task.id, target_type="agent").items
    ] == [ids[1]]
    assert store.list_agents().items[0].id == ids[0] and len(store.list_agents().items) == 1


def test_a_rename_to_a_taken_name_is_refused_up_front(store: SqlStore) -> None:
    group(store, "web")
    ids = agents(store, 2)
    tm, cm = TaskManager(store), CommandManager(store)
    before = len(store.list_tasks().items)
    with pytest.raises(Conflict, match=f"'host-{ids[1]}' is already used by agent {ids[1]}"):
        tm.submit(TaskRequest("agent-rename", {"agent": ids[0], "name": f"host-{ids[1]}"}))
    assert len(store.list_tasks().items) == before  # nothing written
    # its own name is no clash
    task, _ = tm.submit(TaskRequest("agent-rename", {"agent": ids[0], "name": f"host-{ids[0]}"}))
    cm.run_once()
    assert store.counts("task", task.id) == {"pending": 1}  # the agent's command


def test_two_renames_to_one_free_name_race_and_the_second_fails_in_its_transaction(
    store: SqlStore,
) -> None:
    group(store, "web")
    ids = agents(store, 2)
    tm, cm = TaskManager(store), CommandManager(store)
    tm.submit(TaskRequest("agent-rename", {"agent": ids[0], "name": "db-primary"}))
    second, _ = tm.submit(TaskRequest("agent-rename", {"agent": ids[1], "name": "db-primary"}))
    while cm.run_once():
        pass
    assert store.get_agent(ids[0]).name == "db-primary"
    assert store.get_task(second.id).status == "failure"  # names are unique
    parent = store.list_commands(task_id=second.id).items[0]
    assert f"already used by agent {ids[0]}" in (parent.result_message or "")
    assert store.get_agent(ids[1]).name == f"host-{ids[1]}"


def test_documents_are_paged_in_id_order_under_an_exact_prefix(store: SqlStore) -> None:
    ids = ["a1/p1", "a1/p2", "a1/p3", "a10/p1", "a1x", "b2/p1"]
    with store.transaction() as tx:
        for i, doc_id in enumerate(ids):
            tx.put_document("sca-results", doc_id, {"n": i})
        tx.put_document("alerts", "a1/p9", {"other": "index"})

    def walk(prefix: str, limit: int, descending: bool = False) -> list[str]:
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page = store.document_page("sca-results", prefix, cursor, limit, descending)
            assert len(page.items) <= limit
            seen += [i["id"] for i in page.items]
            cursor = page.next_cursor
            if cursor is None:
                return seen

    assert walk("", 2) == sorted(ids)
    assert walk("a1/", 2) == ["a1/p1", "a1/p2", "a1/p3"]  # not a10/ nor a1x
    assert walk("a1/", 3) == ["a1/p1", "a1/p2", "a1/p3"]  # a full last page ends the walk
    assert walk("a1/", 1, descending=True) == ["a1/p3", "a1/p2", "a1/p1"]
    assert walk("", 4, descending=True) == sorted(ids, reverse=True)
    assert walk("zz", 5) == []
    first = store.document_page("sca-results", "a1/", None, 1).items[0]
    assert first == {"id": "a1/p1", "document": {"n": 0}}


def test_listing_is_cursor_paginated(store: SqlStore) -> None:
    task_id = fan_out(store, 25)
    seen, cursor = [], None
    while True:
        page = store.list_commands(task_id=task_id, target_type="agent", cursor=cursor, limit=10)
        seen.extend(c.id for c in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == 25 == len(set(seen)) and seen == sorted(seen)


def test_two_command_managers_never_expand_the_same_command(store: SqlStore) -> None:
    group(store, "web")
    agents(store, 10)
    tm = TaskManager(store)
    tasks = [
        tm.submit(
            TaskRequest("group-configuration-change", {"group": "web", "configuration": {"n": i}})
        )[0].id
        for i in range(20)
    ]
    managers = [CommandManager(store, owner=f"cm-{i}", batch=2) for i in range(2)]

    def work(cm: CommandManager) -> None:
        while cm.run_once():
            pass

    threads = [threading.Thread(target=work, args=(cm,)) for cm in managers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(cm.stats.expanded for cm in managers) == 20
    for tid in tasks:
        assert store.counts("task", tid) == {"pending": 10}
    assert store.get_group("web").version == 21


def test_agent_names_are_unique_and_a_clash_is_a_conflict(store: SqlStore) -> None:
    store.register_agents([{"id": "a1", "name": "web-1"}])
    with pytest.raises(Conflict, match="already used by agent a1"):
        store.register_agents([{"id": "a2", "name": "web-1"}])
    store.register_agents([{"id": "a1", "name": "web-1", "version": "2"}])  # same agent: update
    assert store.get_agent("a1").version == "2"


def test_audit_is_append_only_with_filters_and_pages(store: SqlStore) -> None:
    base = time.time()
    rows = [
        {"actor": "alice", "action": "user.login", "outcome": "success", "at": base},
        {
            "actor": "bob",
            "action": "user.login",
            "outcome": "failure",
            "at": base + 1,
            "address": "10.0.0.7",
        },
        {
            "actor": "alice",
            "action": "task.create",
            "outcome": "success",
            "at": base + 2,
            "target": "task:1",
            "details": {"type": "rbac-change"},
        },
        {"actor": "alice", "action": "task.cancel", "outcome": "denied", "at": base + 3},
    ]
    ids = store.append_audit(rows)
    assert ids == sorted(ids) and len(set(ids)) == 4
    everything = store.list_audit().items
    assert [r["id"] for r in everything] == ids[::-1]  # newest first
    assert everything[1]["details"] == {"type": "rbac-change"}
    assert [r["actor"] for r in store.list_audit(outcome="failure").items] == ["bob"]
    assert store.list_audit(actor="bob").items[0]["address"] == "10.0.0.7"
    assert [r["action"] for r in store.list_audit(action="task.*").items] == [
        "task.cancel",
        "task.create",
    ]
    assert [r["id"] for r in store.list_audit(since=base + 1, until=base + 3).items] == [
        ids[2],
        ids[1],
    ]
    first = store.list_audit(limit=3)
    assert len(first.items) == 3 and first.next_cursor is not None
    rest = store.list_audit(limit=3, cursor=first.next_cursor)
    assert [r["id"] for r in rest.items] == [ids[0]] and rest.next_cursor is None
    # Not even the store's own connection may rewrite history.
    for sql in ("UPDATE audit SET outcome = 'success'", "DELETE FROM audit"):
        with pytest.raises(Exception, match="append-only"), store.transaction() as tx:
            tx.ex(sql)
    assert len(store.list_audit().items) == 4


def test_values_the_database_cannot_hold_are_bad_input(store: SqlStore) -> None:
    """Found by fuzzing: they used to escape as driver errors (500s)."""
    with pytest.raises((InvalidParams, NotFound)):
        store.get_command(2**70)
    with pytest.raises((InvalidParams, NotFound)):
        store.get_task(-(2**70))
    try:
        page = store.list_agents(search="nul\x00byte")
    except InvalidParams as exc:
        assert "cannot be stored" in exc.message
    else:
        assert page.items == []
