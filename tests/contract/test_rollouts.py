"""Rollouts against the store, both backends: the task and command managers stage the waves,
the scheduler releases them, agents are played by claims and results on the stream."""

from __future__ import annotations

from typing import Any

import pytest

from fleetcmd.errors import Conflict, InvalidParams
from fleetcmd.indexer import rollouts
from fleetcmd.indexer.command_manager import CommandManager
from fleetcmd.indexer.rollouts import RolloutScheduler
from fleetcmd.indexer.task_manager import TaskManager, TaskRequest
from fleetcmd.store import ClaimFilter, Result
from fleetcmd.store.base import SqlStore


def fleet(
    store: SqlStore, n: int, group: str = "web", offline: set[str] | None = None
) -> list[str]:
    ids = [f"a{i:03d}" for i in range(n)]
    store.register_agents(
        [
            {
                "id": i,
                "name": f"host-{i}",
                "groups": [group],
                "version": "1.0.0",
                "status": "disconnected" if i in (offline or set()) else "active",
            }
            for i in ids
        ]
    )
    return ids


def play(store: SqlStore, online: list[str], failing: set[str] = frozenset()) -> list[str]:
    """Online agents take what is claimable for them and answer; returns who got a command."""
    got = store.claim("node-1", ClaimFilter("agent", target_ids=tuple(online)), 10_000, 60)
    if not got:
        return []
    store.mark("node-1", [c.id for c in got], "sent")
    store.mark(None, [c.id for c in got], "delivered")
    store.complete(
        [Result(c.id, "failure" if c.target_id in failing else "success", data={}) for c in got]
    )
    return [c.target_id for c in got]


def progress(store: SqlStore, task_id: int) -> dict[str, Any]:
    return rollouts.progress(store, task_id)


def submit(store: SqlStore, type_: str, params: dict[str, Any], rollout: dict[str, Any]) -> int:
    task, _ = TaskManager(store).submit(TaskRequest(type_, params, rollout=rollout))
    CommandManager(store).run_once()
    return task.id


def test_canary_then_waves_in_order_and_counts_kept(store: SqlStore) -> None:
    ids = fleet(store, 10)
    policy = {"canary": {"agents": ["a007"]}, "waves": {"size": 4}}
    task_id = submit(store, "agent-upgrade", {"group": "web", "version": "2.0.0"}, policy)
    sched = RolloutScheduler(store)
    p = progress(store, task_id)
    assert [w["size"] for w in p["waves"]] == [1, 4, 4, 1]
    assert p["waves"][0]["canary"] is True
    assert play(store, ids) == []  # nothing released before the scheduler runs
    order: list[list[str]] = []
    for _ in range(20):
        sched.run_once()
        got = play(store, ids)
        if got:
            order.append(sorted(got))
    assert order[0] == ["a007"]
    assert order[1:] == [
        ["a000", "a001", "a002", "a003"],
        ["a004", "a005", "a006", "a008"],
        ["a009"],
    ]
    sched.run_once()
    p = progress(store, task_id)
    assert p["state"] == "completed"
    assert p["totals"]["succeeded"] == 10
    task = store.get_task(task_id)
    assert task.status == "success" and task.counts == store.recount("task", task_id)
    cmd = store.list_commands(task_id=task_id, target_id="a003").items[0]
    assert cmd.action_args["from_version"] == "1.0.0"


def test_threshold_pauses_then_rollback_sends_the_previous_configuration(store: SqlStore) -> None:
    ids = fleet(store, 12)
    TaskManager(store).submit(
        TaskRequest("group-configuration-change", {"group": "web", "configuration": {"v": 1}})
    )
    CommandManager(store).run_once()
    play(store, ids)
    policy = {
        "canary": {"count": 2},
        "waves": {"size": 5},
        "error_threshold": {"percent": 10},
        "on_trip": "rollback",
    }
    task_id = submit(
        store, "group-configuration-change", {"group": "web", "configuration": {"v": 2}}, policy
    )
    sched = RolloutScheduler(store)
    for _ in range(3):
        sched.run_once()
        play(store, ids, failing={"a003"})  # one failure in wave 1 of 5: 1/7 > 10%
    sched.run_once()
    p = progress(store, task_id)
    assert p["state"] == "rolled_back"
    assert p["reason"].startswith("error threshold tripped")
    assert p["waves"][2]["succeeded"] == 0 and p["waves"][2]["cancelled"] == 5
    rb = p["rollback_task_id"]
    assert rollouts.progress(store, rb) == {"task_id": rb, "rollback_of": task_id}
    rb_cmds = store.list_commands(task_id=rb).items
    assert sorted(c.target_id for c in rb_cmds) == ["a000", "a001", "a002", "a004", "a005", "a006"]
    assert store.get_group("web").configuration == {"v": 1}
    play(store, ids)
    assert store.get_task(rb).counts == {"success": 6}
    audit = store.list_audit(target=f"task:{task_id}").items
    assert [(a["actor"], a["action"]) for a in reversed(audit)] == [
        ("fleetcmd", "rollout.trip"),
        ("fleetcmd", "rollout.rollback"),
    ]


def test_offline_agents_neither_block_nor_count_and_get_it_on_return(store: SqlStore) -> None:
    ids = fleet(store, 6, offline={"a001", "a004"})
    online = [i for i in ids if i not in ("a001", "a004")]
    policy = {"waves": {"size": 3}, "error_threshold": {"count": 1}}
    task_id = submit(store, "agent-upgrade", {"group": "web", "version": "2.0.0"}, policy)
    sched = RolloutScheduler(store)
    for _ in range(6):
        sched.run_once()
        play(store, online)
    sched.run_once()
    p = progress(store, task_id)
    assert p["state"] == "running"
    assert [w["offline_waiting"] for w in p["waves"]] == [1, 1]
    assert p["totals"]["succeeded"] == 4 and p["totals"]["failed"] == 0
    store.update_agents([{"id": "a001", "status": "active"}])
    assert play(store, ["a001"]) == ["a001"]
    sched.run_once()
    assert progress(store, task_id)["waves"][0]["offline_waiting"] == 0
    store.sweep(now=store.get_task(task_id).created_at + 2 * 86400)  # a004 never came back
    sched.run_once()
    p = progress(store, task_id)
    assert p["state"] == "completed" and p["totals"]["expired"] == 1
    assert store.get_task(task_id).status == "expired"


def test_pause_holds_back_resume_continues_abort_cancels(store: SqlStore) -> None:
    ids = fleet(store, 6)
    task_id = submit(
        store, "agent-upgrade", {"group": "web", "version": "2"}, {"waves": {"size": 2}}
    )
    sched = RolloutScheduler(store)
    sched.run_once()
    out = rollouts.control(store, task_id, "pause", "alice", "management-api")
    assert out["state"] == "paused" and out["waves"][0]["pending"] == 2
    sched.run_once()
    assert play(store, ids) == []
    with pytest.raises(Conflict):
        rollouts.control(store, task_id, "pause", "alice", "management-api")
    rollouts.control(store, task_id, "resume", "alice", "management-api")
    sched.run_once()
    assert len(play(store, ids)) == 2
    rollouts.control(store, task_id, "abort", "bob", "management-api", reason="enough")
    p = progress(store, task_id)
    assert p["state"] == "aborted" and p["totals"]["cancelled"] == 4
    assert store.get_task(task_id).status == "cancelled"
    audit = store.list_audit(target=f"task:{task_id}").items
    assert [(a["action"], a["actor"]) for a in reversed(audit)] == [
        ("rollout.pause", "alice"),
        ("rollout.resume", "alice"),
        ("rollout.abort", "bob"),
    ]
    assert audit[0]["details"]["cancelled"] == 4


def test_max_in_flight_caps_releases(store: SqlStore) -> None:
    ids = fleet(store, 5)
    task_id = submit(
        store,
        "agent-upgrade",
        {"group": "web", "version": "2"},
        {"waves": {"size": 5}, "max_in_flight": 2},
    )
    RolloutScheduler(store).run_once()
    assert progress(store, task_id)["waves"][0]["in_flight"] == 2
    assert len(play(store, ids)) == 2


@pytest.mark.parametrize(
    ("rollout", "field"),
    [
        ({"canary": {"count": 1, "percent": 5}}, "rollout.canary"),
        ({"waves": {"size": "150%"}}, "rollout.waves.size"),
        ({"waves": {"size": 0}}, "rollout.waves.size"),
        ({"error_threshold": {}}, "rollout.error_threshold"),
        ({"on_trip": "rollback"}, "rollout"),
        ({"max_in_flight": 0}, "rollout.max_in_flight"),
        ({"surprise": 1}, "rollout.surprise"),
    ],
)
def test_bad_policies_are_refused_with_the_field(
    store: SqlStore, rollout: dict[str, Any], field: str
) -> None:
    fleet(store, 1)
    with pytest.raises(InvalidParams) as exc:
        TaskManager(store).submit(
            TaskRequest("agent-upgrade", {"group": "web", "version": "2"}, rollout=rollout)
        )
    assert any(e["field"] == field for e in exc.value.details["errors"]), exc.value.details


def test_rollouts_refused_for_server_tasks_and_rollback_for_irreversible(store: SqlStore) -> None:
    fleet(store, 1)
    with pytest.raises(InvalidParams, match="server nodes"):
        TaskManager(store).submit(TaskRequest("rbac-change", {}, rollout={}))
    with pytest.raises(InvalidParams, match="has none"):
        TaskManager(store).submit(
            TaskRequest(
                "vulnerability-rescan",
                {"group": "web"},
                rollout={"error_threshold": {"count": 1}, "on_trip": "rollback"},
            )
        )


def test_rollback_inverses_for_upgrade_sca_and_active_response(store: SqlStore) -> None:
    ids = fleet(store, 4)
    store.update_agents([{"id": "a003", "version": "0.9.0"}])
    sched = RolloutScheduler(store)

    def run_and_roll_back(type_: str, params: dict[str, Any]) -> list[Any]:
        task_id = submit(store, type_, params, {"waves": {"size": 2}})
        for _ in range(4):
            sched.run_once()
            play(store, ids[:3])  # a003 stays offline
        out = rollouts.control(store, task_id, "rollback", "carol", "management-api")
        assert out["state"] == "rolled_back" and out["totals"]["cancelled"] == 1
        rb = out["rollback_task_id"]
        assert store.get_task(rb).params["rollback_of"] == task_id
        return sorted(store.list_commands(task_id=rb).items, key=lambda c: c.target_id)

    cmds = run_and_roll_back("agent-upgrade", {"group": "web", "version": "2.0.0"})
    assert [(c.target_id, c.action_args["version"]) for c in cmds] == [
        ("a000", "1.0.0"),
        ("a001", "1.0.0"),
        ("a002", "1.0.0"),
    ]

    cmds = run_and_roll_back(
        "sca-policy-change", {"group": "web", "policy_id": "cis", "policy": {"checks": []}}
    )
    assert cmds[0].action_args == {"policy_id": "cis", "policy": None, "delete": True}
    assert store.list_documents("sca", "web/") == {}

    definition = {"command": "block-ip", "allowed": ["1.2.3.4"]}
    TaskManager(store).submit(
        TaskRequest(
            "active-response-configuration",
            {"group": "web", "name": "block", "definition": definition},
        )
    )
    play(store, ids)
    cmds = run_and_roll_back(
        "active-response-configuration", {"group": "web", "name": "block", "enabled": False}
    )
    assert {c.action_name for c in cmds} == {"ar-config"} and len(cmds) == 3
    assert cmds[0].action_args["definition"] == definition and cmds[0].action_args["enabled"]
    assert store.get_document("active-response", "web/block") == definition


def test_an_agent_that_succeeds_after_the_rollback_gets_the_inverse_too(store: SqlStore) -> None:
    ids = fleet(store, 3)
    task_id = submit(
        store, "agent-upgrade", {"group": "web", "version": "2"}, {"waves": {"size": 3}}
    )
    sched = RolloutScheduler(store)
    sched.run_once()
    play(store, ids[:2])
    [slow] = store.claim("node-1", ClaimFilter("agent", target_ids=(ids[2],)), 10, 60)
    store.mark(None, [slow.id], "delivered")  # a002 is running it when the rollback comes
    out = rollouts.control(store, task_id, "rollback", "dave", "management-api")
    rb = out["rollback_task_id"]
    assert sorted(c.target_id for c in store.list_commands(task_id=rb).items) == ids[:2]
    store.complete([Result(slow.id, "success", data={})])
    sched.run_once()
    sched.run_once()
    assert sorted(c.target_id for c in store.list_commands(task_id=rb).items) == ids
    assert store.get_task(rb).counts == {"pending": 3}
