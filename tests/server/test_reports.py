"""The Management API's read routes for what the fleet reported (alerts, vulnerabilities, SCA
results, content status) and the dashboard pages that use them, under RBAC: a user scoped to
one group reads only its agents' documents. A real indexer and server; agents played with
httpx over the real Comms API (their events go through the engine's real rules)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from server.harness import (
    FakeAgent,
    dashboard_page,
    file_task,
    fleet,
    login,
    task_final,
)
from support import Indexer, wait_until

PW = "scoped-reader-password"
SUDO = {
    "id": 100500,
    "level": 8,
    "description": "sudo to root",
    "match": {"program": "sudo", "user": {"in": ["root"]}},
}


def scan(policy_id: str, verdicts: list[str]) -> dict[str, Any]:
    """An SCA scan event as the agent's SCA module sends it."""
    return {
        "module": "sca",
        "type": "sca",
        "policy_id": policy_id,
        "policy_version": "1",
        "policy_name": f"policy {policy_id}",
        "evaluated_at": "2025-01-01T00:00:00Z",
        "summary": {},
        "results": [
            {"id": str(i), "title": f"check {i}", "status": v, "reason": "because"}
            for i, v in enumerate(verdicts)
        ],
    }


def post_events(agent: FakeAgent, events: list[dict[str, Any]]) -> httpx.Response:
    return agent.http.post("/agents/events", json={"events": events})


def ids(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["data"]["items"]]


def walk(api: httpx.Client, path: str, limit: int) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(50):
        r = api.get(path, params={"limit": limit, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert len(data["items"]) <= limit
        seen += [i["id"] for i in data["items"]]
        cursor = data["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError(f"{path}: no end of pages")


def alerts_in_index(idx: Indexer) -> dict[str, Any]:
    with idx.client() as ic:
        return dict(ic.get("/indexes/alerts").json()["data"]["items"])


def test_reports_are_read_on_the_api_scoped_to_the_agents_a_user_may_see(
    store_url: str, tmp_path: Path
) -> None:
    with fleet(store_url, tmp_path) as (idx, [srv]):
        admin = srv.admin()
        for g in ("web", "db"):
            task_final(
                admin,
                file_task(admin, "group-configuration-change", {"group": g, "configuration": {}})[
                    "id"
                ],
            )
        rules = file_task(admin, "ruleset-update", {"version": "1", "rules": [SUDO]})
        assert task_final(admin, rules["id"])["status"] == "success"
        web = [FakeAgent(srv.comms, f"web-{i}", ["web"]) for i in (1, 2)]
        db = FakeAgent(srv.comms, "db-1", ["db"])
        everyone = [*web, db]

        for n, agent in enumerate(everyone):
            sudo = {
                "program": "sudo",
                "user": "root",
                "command": "/bin/sh",
                "timestamp": time.time() + n,
            }
            r = post_events(
                agent, [scan("cis-1", ["passed", "failed"]), scan("cis-2", ["passed"]), sudo]
            )
            assert r.status_code == 200, r.text
        with idx.client() as ic:  # as the engine writes them after matching an inventory
            for agent in everyone:
                doc = {
                    "agent": agent.id,
                    "cve_version": "v1",
                    "packages_scanned": 3,
                    "counts": {"high": 1},
                    "findings": [],
                    "updated_at": time.time(),
                }
                assert ic.put(f"/indexes/vulnerabilities/{agent.id}", json=doc).is_success
            feed = {
                "feed": "sample",
                "status": "applied",
                "applied_serial": 3,
                "items": 12,
                "polled_at": time.time(),
                "applied": ["sca:cis-1@1"],
                "refused": [],
                "errors": [],
            }
            assert ic.put("/indexes/content-status/sample", json=feed).is_success
        wait_until(lambda: len(alerts_in_index(idx)) == 3, timeout=20, what="three alerts")

        r = admin.put(
            "/security/roles/web-readers",
            json={
                "policies": [
                    {
                        "actions": ["agent:read", "task:read", "command:read", "group:read"],
                        "resources": ["agent:group:web", "group:id:web"],
                    }
                ]
            },
        )
        assert r.status_code == 200, r.text
        r = admin.post(
            "/security/users", json={"name": "webreader", "password": PW, "roles": ["web-readers"]}
        )
        assert r.status_code == 201, r.text
        scoped = login(srv.api, "webreader", PW)
        web_ids = sorted(a.id for a in web)

        # administrators see every agent's documents
        assert sorted(ids(admin.get("/vulnerabilities"))) == sorted(a.id for a in everyone)
        assert len(ids(admin.get("/alerts"))) == 3
        sca_ids = sorted(f"{a.id}/{p}" for a in everyone for p in ("cis-1", "cis-2"))
        assert walk(admin, "/sca-results", 4) == sca_ids
        assert walk(admin, "/sca-results", 1) == sca_ids

        # a user scoped to `web` sees only web's agents, on every route and every page
        assert sorted(ids(scoped.get("/vulnerabilities"))) == web_ids
        assert sorted(a.split("/")[0] for a in ids(scoped.get("/alerts"))) == web_ids
        web_sca = sorted(f"{a}/{p}" for a in web_ids for p in ("cis-1", "cis-2"))
        assert walk(scoped, "/sca-results", 100) == web_sca
        assert walk(scoped, "/sca-results", 1) == web_sca
        for route in ("/alerts", "/vulnerabilities", "/sca-results"):
            r = scoped.get(route, params={"agent": db.id})
            assert r.status_code == 403, r.text
            assert r.json()["error"] == "forbidden"
            for unknown in ("no-such-agent", "summary", "removed"):  # the last two: routes
                assert admin.get(route, params={"agent": unknown}).status_code == 404
            r = admin.get(route, params={"agent": "../x"})
            assert r.status_code == 422 and "bad agent id" in r.json()["message"]
        assert ids(admin.get("/sca-results", params={"agent": db.id})) == [
            f"{db.id}/cis-1",
            f"{db.id}/cis-2",
        ]
        assert ids(scoped.get("/vulnerabilities", params={"agent": web[0].id})) == [web[0].id]

        # one SCA document per agent and policy, with what the checks said
        [doc] = [
            i
            for i in admin.get("/sca-results", params={"agent": db.id}).json()["data"]["items"]
            if i["policy_id"] == "cis-1"
        ]
        assert (doc["agent"], doc["passed"], doc["failed"], doc["score"], doc["total"]) == (
            db.id,
            1,
            1,
            50,
            2,
        )
        assert [c["status"] for c in doc["checks"]] == ["passed", "failed"]

        # alerts: one agent's, the newest first on request
        r = admin.get("/alerts", params={"agent": web[0].id, "order": "desc"})
        [alert] = r.json()["data"]["items"]
        assert alert["rule"]["id"] == 100500 and alert["agent"] == {"id": web[0].id}

        # content status concerns every agent: administrators only
        r = admin.get("/content/status")
        assert r.status_code == 200, r.text
        [status] = r.json()["data"]["items"]
        assert (status["feed"], status["status"], status["applied_serial"]) == (
            "sample",
            "applied",
            3,
        )
        r = scoped.get("/content/status")
        assert r.status_code == 403 and "every agent" in r.json()["message"]

        # the dashboard reads through the same functions
        page = dashboard_page(scoped, "/app/alerts")
        assert page.status_code == 200, page.text
        assert all(a.id in page.text for a in web) and db.id not in page.text
        assert dashboard_page(scoped, f"/app/agents/{db.id}").status_code == 403
        page = dashboard_page(admin, f"/app/agents/{db.id}")
        assert "policy cis-1" in page.text and "50 %" in page.text and "sudo to root" in page.text
        assert "Content feeds" in dashboard_page(admin, "/app/").text
        assert "Content feeds" not in dashboard_page(scoped, "/app/").text


def test_a_bad_sca_scan_is_refused_whole_and_nothing_is_stored_or_queued(
    store_url: str, tmp_path: Path
) -> None:
    with fleet(store_url, tmp_path) as (idx, [srv]):
        admin = srv.admin()
        rules = file_task(admin, "ruleset-update", {"version": "1", "rules": [SUDO]})
        assert task_final(admin, rules["id"])["status"] == "success"
        agent = FakeAgent(srv.comms, "web-1")
        sudo = {"program": "sudo", "user": "root", "command": "/bin/sh"}
        bad = scan("cis-1", ["passed"])
        bad["results"][0]["status"] = "maybe"
        r = post_events(agent, [sudo, scan("cis-2", ["passed"]), bad])
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["error"] == "invalid_request"
        assert "events.2.results.0.status" in body["message"], body
        r = post_events(agent, [{**scan("../etc", ["passed"])}])
        assert r.status_code == 422 and "events.0.policy_id" in r.json()["message"]
        time.sleep(1.0)  # the engine would have raised the sudo alert by now
        assert alerts_in_index(idx) == {}
        assert ids(admin.get("/sca-results")) == []

        r = post_events(agent, [sudo, scan("cis-2", ["passed"])])  # the agent sends it again
        assert r.status_code == 200, r.text
        assert ids(admin.get("/sca-results")) == [f"{agent.id}/cis-2"]
        wait_until(lambda: len(alerts_in_index(idx)) == 1, timeout=20, what="the sudo alert")
