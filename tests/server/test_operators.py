"""Operators' control over real HTTP, on both stores (issue 16): selectors and labels, a
preview whose counts are what the task then reaches and whose frozen set ignores agents that
match later, a scoped user's selector narrowed to their scope, re-runs on exactly the failed
agents, and approvals (nothing reaches an agent before, the requester may not approve, a
rejection and an expiry end the task with their own status), every step audited."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from server.harness import FakeAgent, Server, fleet, login, task_final
from support import Indexer, store_url_for, wait_until

PW = "correct-horse-battery"


class Fleet:
    def __init__(self, idx: Indexer, srv: Server) -> None:
        self.idx = idx
        self.srv = srv
        self.admin = srv.admin()
        for g in ("web", "db"):
            r = self.admin.post(
                "/tasks",
                json={
                    "type": "group-configuration-change",
                    "params": {"group": g, "configuration": {"g": g}},
                },
            )
            task_final(self.admin, r.json()["data"]["id"])
        self.agents = {
            "web-1": FakeAgent(srv.comms, "web-1", ["web"]),
            "web-2": FakeAgent(srv.comms, "web-2", ["web"]),
            "db-1": FakeAgent(srv.comms, "db-1", ["db"]),
        }
        for name, env in (("web-1", "prod"), ("web-2", "dev"), ("db-1", "prod")):
            r = self.admin.put(
                f"/agents/{self.agents[name].id}/labels", json={"labels": {"env": env}}
            )
            assert r.status_code == 200, r.text
        self.users: dict[str, httpx.Client] = {}

    def user(self, name: str, roles: list[str]) -> httpx.Client:
        if name not in self.users:
            r = self.admin.post(
                "/security/users", json={"name": name, "password": PW, "roles": roles}
            )
            assert r.status_code == 201, r.text
            self.users[name] = login(self.srv.api, name, PW)
        return self.users[name]

    def drain(self) -> None:
        """Every agent answers what it holds (success), so tests start from quiet agents."""
        for a in self.agents.values():
            while a.run_once(wait=0.2):
                pass


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def f(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp(f"ops-{request.param}")
    with store_url_for(request.param, tmp) as url, fleet(url, tmp) as (idx, [srv]):
        fl = Fleet(idx, srv)
        fl.drain()
        yield fl


def reached(api: httpx.Client, task_id: int) -> set[str]:
    r = api.get("/commands", params={"task_id": task_id, "limit": 1000})
    assert r.status_code == 200, r.text
    return {c["target"]["id"] for c in r.json()["data"]["items"] if c["target"]["type"] == "agent"}


def ids(f: Fleet, *names: str) -> set[str]:
    return {f.agents[n].id for n in names}


def test_a_selector_reaches_what_it_matches_and_a_bad_one_is_a_positioned_422(f: Fleet) -> None:
    r = f.admin.post(
        "/tasks",
        json={
            "type": "vulnerability-rescan",
            "params": {"selector": "label.env = prod and name = *-1"},
        },
    )
    assert r.status_code == 202, r.text
    task = r.json()["data"]
    assert task["frozen_targets"] is True
    assert reached(f.admin, task["id"]) == ids(f, "web-1", "db-1")
    r = f.admin.post(
        "/tasks",
        json={
            "type": "vulnerability-rescan",
            "params": {"selector": "group = web and (version < 2"},
        },
    )
    assert r.status_code == 422, r.text
    [err] = r.json()["details"]["errors"] if "details" in r.json() else r.json()["errors"]
    assert (err["line"], err["column"]) == (1, 29) and "')'" in err["expected"]
    r = f.admin.put(f"/agents/{f.agents['web-1'].id}/labels", json={"labels": {"bad key": "x"}})
    assert r.status_code == 422
    assert f.admin.get(f"/agents/{f.agents['web-1'].id}").json()["data"]["labels"] == {
        "env": "prod"
    }
    f.drain()


def test_preview_counts_what_the_task_then_reaches_and_the_set_stays_frozen(f: Fleet) -> None:
    params = {"selector": "group = web", "reason": "preview"}
    r = f.admin.post("/tasks/preview", json={"type": "vulnerability-rescan", "params": params})
    assert r.status_code == 200, r.text
    p = r.json()["data"]
    assert p["total"] == 2 and p["by_group"] == {"web": 2} and p["excluded_by_rbac"] == 0
    assert sum(p["by_status"].values()) == 2 and {a["id"] for a in p["first_page"]} == ids(
        f, "web-1", "web-2"
    )
    f.agents["web-3"] = FakeAgent(f.srv.comms, "web-3", ["web"])  # matches from now on
    body = {"type": "vulnerability-rescan", "params": params, "preview_token": p["preview_token"]}
    other = f.user("second-admin", ["administrator"])
    assert other.post("/tasks", json=body).status_code == 403  # someone else's preview
    r = f.admin.post("/tasks", json=body)
    assert r.status_code == 202, r.text
    task = r.json()["data"]
    assert reached(f.admin, task["id"]) == ids(f, "web-1", "web-2")
    assert f.admin.post("/tasks", json=body).status_code == 409  # a token files one task
    changed = {**body, "params": {**params, "reason": "another"}}
    assert f.admin.post("/tasks", json=changed).status_code in (409, 422)
    f.drain()


def test_a_scoped_users_selector_is_narrowed_to_their_scope(f: Fleet) -> None:
    r = f.admin.put(
        "/security/roles/web-ops",
        json={
            "policies": [
                {
                    "actions": ["task:create", "task:read", "agent:read", "command:read"],
                    "resources": ["agent:group:web"],
                }
            ]
        },
    )
    assert r.status_code == 200, r.text
    web = f.user("web-op", ["web-ops"])
    params = {"selector": "label.env = prod"}
    r = web.post("/tasks/preview", json={"type": "vulnerability-rescan", "params": params})
    assert r.status_code == 200, r.text
    p = r.json()["data"]
    assert {a["id"] for a in p["first_page"]} == ids(f, "web-1") and p["excluded_by_rbac"] == 1
    r = web.post("/tasks", json={"type": "vulnerability-rescan", "params": params})
    assert r.status_code == 202, r.text
    assert reached(f.admin, r.json()["data"]["id"]) == ids(f, "web-1")
    f.drain()


def run_with(f: Fleet, outcome: dict[str, str]) -> None:
    """Each named agent answers what it holds with the given status (others: success)."""
    for name, agent in f.agents.items():
        commands = agent.poll(wait=1.0)
        if not commands:
            continue
        agent.ack([c["id"] for c in commands])
        agent.report(
            [
                {"id": c["id"], "status": outcome.get(name, "success"), "message": "x"}
                for c in commands
            ]
        )


def test_rerun_reaches_exactly_the_agents_that_failed(f: Fleet) -> None:
    r = f.admin.post("/tasks", json={"type": "vulnerability-rescan", "params": {"group": "web"}})
    first = r.json()["data"]
    run_with(f, {"web-2": "failure"})
    done = task_final(f.admin, first["id"])
    assert done["status"] == "failure"
    r = f.admin.post(f"/tasks/{first['id']}/rerun", json={"statuses": ["failure"]})
    assert r.status_code == 202, r.text
    again = r.json()["data"]
    assert again["rerun_of"] == first["id"] and again["type"] == first["type"]
    assert again["params"] == first["params"]
    assert reached(f.admin, again["id"]) == ids(f, "web-2")
    f.drain()
    r = f.admin.post(f"/tasks/{again['id']}/rerun", json={"statuses": ["failure"]})
    assert r.status_code == 422  # nothing failed this time
    readonly = f.user("reader", ["readonly"])
    assert readonly.post(f"/tasks/{first['id']}/rerun", json={}).status_code == 403


def test_rerun_reaches_exactly_the_agents_that_timed_out_or_expired(f: Fleet) -> None:
    """web-1 answers, web-2 takes its command and never answers (timeout), db-1 never asks
    (expired): a re-run for timeout and expired reaches web-2 and db-1, not web-1."""
    r = f.admin.post(
        "/tasks",
        json={
            "type": "vulnerability-rescan",
            "params": {"all": True},
            "timeout": 1.5,
            "expires_in": 1.5,
        },
    )
    assert r.status_code == 202, r.text
    first = r.json()["data"]
    for name in ("web-1", "web-2"):
        agent = f.agents[name]
        commands = agent.poll(wait=1.0)
        assert len(commands) == 1, commands
        agent.ack([c["id"] for c in commands])
        if name == "web-1":
            agent.report([{"id": c["id"], "status": "success", "message": "x"} for c in commands])
    task_final(f.admin, first["id"])
    r = f.admin.get("/commands", params={"task_id": first["id"], "limit": 1000})
    by_agent = {
        c["target"]["id"]: c["status"]
        for c in r.json()["data"]["items"]
        if c["target"]["type"] == "agent"
    }
    mine = {f.agents[n].id: by_agent[f.agents[n].id] for n in ("web-1", "web-2", "db-1")}
    assert mine == {
        f.agents["web-1"].id: "success",
        f.agents["web-2"].id: "timeout",
        f.agents["db-1"].id: "expired",
    }

    def ended(*statuses: str) -> set[str]:  # other tests' idle agents expired too
        return {a for a, s in by_agent.items() if s in statuses}

    r = f.admin.post(f"/tasks/{first['id']}/rerun", json={"statuses": ["timeout", "expired"]})
    assert r.status_code == 202, r.text
    again = r.json()["data"]
    assert again["rerun_of"] == first["id"]
    assert reached(f.admin, again["id"]) == ended("timeout", "expired") >= ids(f, "web-2", "db-1")
    r = f.admin.post(f"/tasks/{first['id']}/rerun", json={"statuses": ["expired"]})
    assert reached(f.admin, r.json()["data"]["id"]) == ended("expired")
    assert f.agents["web-1"].id not in ended("timeout", "expired")
    f.drain()


def test_an_unapproved_task_never_reaches_an_agent(f: Fleet) -> None:
    policy = {"rules": [{"task_types": ["vulnerability-rescan"], "min_agents": 2, "within": 3600}]}
    r = f.admin.put("/approval-policy", json=policy)
    assert r.status_code == 200, r.text
    approver = f.user("approver-1", ["approver"])
    try:
        # The administrator holds every permission, and still waits.
        r = f.admin.post("/tasks", json={"type": "vulnerability-rescan", "params": {"all": True}})
        held = r.json()["data"]
        assert held["status"] == "awaiting-approval" and held["approval"]["required"] == 1
        assert all(not a.poll(wait=0.5) for a in f.agents.values())
        assert reached(f.admin, held["id"]) == set()
        r = f.admin.post(f"/tasks/{held['id']}/approve", json={})
        assert r.status_code == 403  # the requester may not approve
        queue = approver.get("/approvals").json()["data"]["items"]
        assert [t["id"] for t in queue] == [held["id"]]
        r = approver.post(f"/tasks/{held['id']}/approve", json={})
        assert r.status_code == 200, r.text
        assert r.json()["data"]["status"] in ("pending", "in_progress")
        assert reached(f.admin, held["id"]) == {a.id for a in f.agents.values()}
        assert approver.post(f"/tasks/{held['id']}/approve", json={}).status_code == 409
        f.drain()
        assert task_final(f.admin, held["id"])["status"] == "success"

        # Under the threshold: filed at once.
        r = f.admin.post(
            "/tasks",
            json={"type": "vulnerability-rescan", "params": {"agents": [f.agents["db-1"].id]}},
        )
        assert r.json()["data"]["status"] in ("pending", "in_progress")  # not held
        f.drain()

        r = f.admin.post(
            "/tasks", json={"type": "vulnerability-rescan", "params": {"group": "web"}}
        )
        rejected = r.json()["data"]
        assert approver.post(f"/tasks/{rejected['id']}/reject", json={}).status_code == 422
        r = approver.post(f"/tasks/{rejected['id']}/reject", json={"reason": "not today"})
        assert r.json()["data"]["status"] == "rejected"
        assert r.json()["data"]["approval"]["reason"] == "not today"
        assert all(not a.poll(wait=0.3) for a in f.agents.values())

        r = f.admin.put(
            "/approval-policy",
            json={"rules": [{"task_types": ["vulnerability-*"], "targets_all": True, "within": 1}]},
        )
        r = f.admin.post(
            "/tasks", json={"type": "vulnerability-rescan", "params": {"selector": "all"}}
        )
        lapsed = r.json()["data"]
        assert lapsed["status"] == "awaiting-approval"

        def ended() -> dict[str, Any] | None:
            t = f.admin.get(f"/tasks/{lapsed['id']}").json()["data"]
            return t if t["status"] != "awaiting-approval" else None

        assert wait_until(ended, timeout=15)["status"] == "approval-expired"
        assert approver.post(f"/tasks/{lapsed['id']}/approve", json={}).status_code == 409
        assert all(not a.poll(wait=0.3) for a in f.agents.values())

        actions = [
            e["action"]
            for e in f.admin.get("/audit", params={"limit": 200}).json()["data"]["items"]
        ]
        for step in ("approval-policy.update", "task.approve", "task.reject", "agent.labels"):
            assert step in actions, step
    finally:
        f.admin.put("/approval-policy", json={"rules": []})
    time.sleep(0)
