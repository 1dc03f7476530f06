"""Target sets on both stores, through the task and command managers: a preview's counts are
what the task then reaches, for a type the task manager fans out and for one the command
manager expands later (active-response-execution); an agent that matches after the preview
is not swept in; an approval holds an expansion too; expired previews leave the store."""

from __future__ import annotations

import time

import pytest

from fleetcmd.errors import Conflict, Forbidden, NotFound
from fleetcmd.indexer.approvals import Approvals
from fleetcmd.indexer.command_manager import CommandManager
from fleetcmd.indexer.task_manager import TaskManager, TaskRequest
from fleetcmd.model.approvals import POLICY_DOC, POLICY_INDEX
from fleetcmd.store.base import SqlStore


def agents(store: SqlStore, *names: str, group: str = "web") -> None:
    store.register_agents(
        [{"id": n, "name": n, "groups": [group], "version": "1.0"} for n in names]
    )


def reached(store: SqlStore, task_id: int) -> set[str]:
    page = store.list_commands(task_id=task_id, target_type="agent", limit=1000)
    return {c.target_id for c in page.items}


@pytest.mark.parametrize(
    ("type_", "params"),
    [
        ("vulnerability-rescan", {"selector": "group = web"}),
        (
            "active-response-execution",
            {"name": "block", "target": {"selector": "group = web"}, "arguments": []},
        ),
    ],
)
def test_a_preview_freezes_what_the_task_reaches(
    store: SqlStore, type_: str, params: dict[str, object]
) -> None:
    agents(store, "w1", "w2")
    agents(store, "d1", group="db")
    tm = TaskManager(store)
    out = tm.preview(TaskRequest(type_, params, user="ann"), ttl=60)
    assert out["total"] == 2 and out["by_group"] == {"web": 2}
    assert out["by_status"] == {"never_connected": 2} and out["by_version"] == {"1.0": 2}
    agents(store, "w3")  # matches from now on
    with pytest.raises(Forbidden):
        tm.submit(TaskRequest(type_, params, user="bob", preview_token=out["preview_token"]))
    task, _ = tm.submit(TaskRequest(type_, params, user="ann", preview_token=out["preview_token"]))
    CommandManager(store, owner="t").run_once()
    assert reached(store, task.id) == {"w1", "w2"}
    # Without a preview, the selector is evaluated when the task is filed.
    later, _ = tm.submit(TaskRequest(type_, params, user="ann"))
    CommandManager(store, owner="t").run_once()
    assert reached(store, later.id) == {"w1", "w2", "w3"}


def test_an_approval_holds_an_expansion_and_releases_it(store: SqlStore) -> None:
    agents(store, "w1", "w2")
    with store.transaction() as tx:
        tx.put_document(POLICY_INDEX, POLICY_DOC, {"rules": [{"task_types": ["active-*"]}]})
    tm = TaskManager(store)
    params = {"name": "block", "target": {"group": "web"}}
    task, _ = tm.submit(TaskRequest("active-response-execution", params, user="ann"))
    assert task.status == "awaiting-approval"
    assert CommandManager(store, owner="t").run_once() == 0
    assert store.list_commands(task_id=task.id).items == []
    agents(store, "w3")  # joins the group while the task waits: not approved, not reached
    with pytest.raises(Forbidden):
        Approvals(tm).decide(task.id, "ann", "approved")
    approved = Approvals(tm).decide(task.id, "bob", "approved")
    assert approved.status == "pending" and approved.approval
    assert approved.approval["approved_by"] == ["bob"]
    CommandManager(store, owner="t").run_once()
    assert reached(store, task.id) == {"w1", "w2"}


def test_expired_previews_leave_the_store(store: SqlStore) -> None:
    agents(store, "w1")
    tm = TaskManager(store)
    out = tm.preview(TaskRequest("vulnerability-rescan", {"group": "web"}, user="ann"), ttl=1)
    assert store.purge_target_sets(now=time.time() + 5) == 1
    with pytest.raises(NotFound):
        tm.submit(
            TaskRequest(
                "vulnerability-rescan",
                {"group": "web"},
                user="ann",
                preview_token=out["preview_token"],
            )
        )


def test_a_held_task_cancelled_ends_cancelled_and_cannot_be_approved(store: SqlStore) -> None:
    agents(store, "w1")
    with store.transaction() as tx:
        tx.put_document(POLICY_INDEX, POLICY_DOC, {"rules": [{"task_types": ["*-rescan"]}]})
    tm = TaskManager(store)
    task, _ = tm.submit(TaskRequest("vulnerability-rescan", {"group": "web"}, user="ann"))
    assert task.status == "awaiting-approval"
    store.cancel_task(task.id)
    assert store.get_task(task.id).status == "cancelled"
    with pytest.raises(Conflict):
        Approvals(tm).decide(task.id, "bob", "approved")
    assert store.list_commands(task_id=task.id).items == []
