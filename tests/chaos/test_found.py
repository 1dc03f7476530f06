"""Regressions for what the chaos runs found, each at the smallest scale that shows it, on both
stores (the SQLite-only one says why)."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from fleetcmd.errors import StoreUnavailable
from fleetcmd.indexer.command_manager import CommandManager
from fleetcmd.indexer.task_manager import TaskManager, TaskRequest
from fleetcmd.store import ClaimFilter, open_store
from fleetcmd.store.base import SqlStore
from server.harness import FakeAgent, fleet
from support import wait_until


def fan_out(store: SqlStore, n: int) -> int:
    tm, cm = TaskManager(store), CommandManager(store)
    tm.submit(TaskRequest("group-configuration-change", {"group": "web", "configuration": {}}))
    cm.run_once()
    store.register_agents(
        [{"id": f"a{i}", "name": f"host-{i}", "groups": ["web"]} for i in range(n)]
    )
    task, _ = tm.submit(
        TaskRequest("group-configuration-change", {"group": "web", "configuration": {"v": 2}})
    )
    assert cm.run_once() == 1
    return task.id


def test_a_zombie_node_cannot_mark_delivered_what_another_node_holds(store: SqlStore) -> None:
    """SIGSTOP of a server past its lease: another node claimed its commands; the zombie's
    stale acknowledgement is refused, the owner's is taken."""
    fan_out(store, 2)
    first = store.claim("zombie", ClaimFilter("agent"), 10, 5)
    assert len(first) == 2
    assert sorted(store.mark("zombie", [c.id for c in first], "sent")) == [c.id for c in first]
    store.sweep(now=time.time() + 6)  # the zombie's leases lapse while it sleeps
    held = store.claim("live", ClaimFilter("agent"), 1, 60)
    assert len(held) == 1
    assert store.mark("live", [held[0].id], "sent") == [held[0].id]
    lapsed = next(c.id for c in first if c.id != held[0].id)
    # the zombie wakes: what another node holds is refused; what nobody holds (pending, its
    # lease lapsed) the agent has all the same, so that one is taken
    assert store.mark("zombie", [held[0].id, lapsed], "delivered") == [lapsed]
    assert store.get_command(held[0].id).status == "sent"
    assert store.mark("live", [held[0].id], "delivered") == [held[0].id]


def test_a_node_detaches_an_agent_only_while_it_is_attached_to_it(store: SqlStore) -> None:
    """A zombie releasing its 'away' agents must not detach them from the node they moved
    to (they would wait unclaimed until that node's next refresh)."""
    store.register_agents([{"id": "a1", "name": "host-1", "groups": []}])
    store.update_agents([{"id": "a1", "node": "n2", "status": "active"}])
    store.update_agents([{"id": "a1", "node": "", "status": "disconnected", "if_node": "n1"}])
    agent = store.get_agent("a1")
    assert (agent.node, agent.status) == ("n2", "active")
    store.update_agents([{"id": "a1", "node": "", "status": "disconnected", "if_node": "n2"}])
    agent = store.get_agent("a1")
    assert (agent.node, agent.status) == ("", "disconnected")


@pytest.mark.parametrize("store_kind", ["sqlite"])
def test_a_full_sqlite_disk_is_a_clear_error_and_recovers(tmp_path: Path, store_kind: str) -> None:
    """SQLite only: a full disk (SQLITE_FULL, here through max_page_count) raised a raw
    `OperationalError` that a failing ROLLBACK then hid ('no transaction is active'): a 500.
    Now it is StoreUnavailable (503) naming the cause; nothing half-written; writes work
    again once there is room."""
    db = tmp_path / "full.db"
    store = open_store(f"sqlite:///{db}")
    try:
        fan_out(store, 1)
        conn = store._conn()
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        conn.execute(f"PRAGMA max_page_count = {pages}")
        big = [
            {"id": f"b{i}", "name": f"big-{i}" + "x" * 500, "groups": ["web"]} for i in range(2000)
        ]
        with pytest.raises(StoreUnavailable, match="full"):
            store.register_agents(big)
        assert not conn.in_transaction
        assert store.list_agents(limit=10).items[0].id == "a0"
        conn.execute("PRAGMA max_page_count = 1073741823")
        assert store.register_agents(big) == 2000
    finally:
        store.close()
    check = sqlite3.connect(db)
    try:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        check.close()


def test_results_posted_to_a_node_that_did_not_hand_them_are_all_recorded(
    store_url: str, tmp_path: Path
) -> None:
    """After a server restart (or a fail-over) agents post results for commands another node
    handed them. The node looked each id up with one request, at most 100 per post: the rest
    were answered 'ignored' (the agent then drops them: lost), and thousands of agents at once
    exhausted its connections to the indexer. Now they are looked up in batches, all of them."""
    with fleet(store_url, tmp_path, servers=2) as (idx, nodes):
        agent = FakeAgent(nodes[0].comms, "found-results-1")
        with idx.client() as c:
            for _ in range(120):
                r = c.post(
                    "/tasks",
                    json={"type": "vulnerability-rescan", "params": {"agents": [agent.id]}},
                )
                assert r.status_code == 202, r.text
        got: dict[int, dict[str, object]] = {}

        def polled() -> bool:
            for cmd in agent.poll(wait=2):
                got[int(cmd["id"])] = cmd
            return len(got) >= 120

        wait_until(polled, timeout=120, what="120 commands handed")
        agent.ack(sorted(got))
        other = httpx.post(
            f"{nodes[1].comms}/agents/results",
            headers={"Authorization": agent.http.headers["Authorization"]},
            json={
                "results": [
                    {"id": cid, "status": "success", "code": 0, "message": "ok", "data": {}}
                    for cid in sorted(got)
                ]
            },
            timeout=60,
        )
        assert other.status_code == 200, other.text
        outcomes = Counter(o["outcome"] for o in other.json()["data"]["results"])
        assert outcomes == {"recorded": 120}, outcomes
