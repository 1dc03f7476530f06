"""The indexer as a real process over loopback HTTP, on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support import Indexer, wait_until


@pytest.fixture
def indexer(store_url: str, tmp_path: Path) -> Iterator[Indexer]:
    idx = Indexer(store_url, tmp_path / "indexer").start()
    try:
        yield idx
    finally:
        idx.stop()


def submit(c: httpx.Client, type_: str, params: dict, **extra: object) -> dict:
    r = c.post("/tasks", json={"type": type_, "params": params, **extra})
    assert r.status_code == 202, r.text
    return r.json()["data"]


def task(c: httpx.Client, task_id: int) -> dict:
    r = c.get(f"/tasks/{task_id}")
    assert r.status_code == 200, r.text
    return r.json()["data"]


def final(c: httpx.Client, task_id: int, timeout: float = 30) -> dict:
    return wait_until(
        lambda: (t := task(c, task_id))["completed_at"] and t,
        timeout,
        what=f"task {task_id} to end",
    )


@pytest.mark.req("C1", "C2", "R6")
def test_group_changes_fan_out_to_three_pullers_exactly_once(indexer: Indexer) -> None:
    with indexer.client() as c:
        g = submit(
            c,
            "group-configuration-change",
            {"group": "web", "configuration": {"sca": {"enabled": True}}},
        )
        final(c, g["id"])
        r = c.post(
            "/agents",
            json={"agents": [{"id": f"a{i:04d}", "name": f"web-{i:04d}"} for i in range(1000)]},
        )
        assert r.status_code == 200, r.text
        assign = submit(
            c,
            "group-assignment-change",
            {"agents": [f"a{i:04d}" for i in range(1000)], "groups": ["web"]},
        )
        wait_until(lambda: task(c, assign["id"])["total"] == 1000, what="expansion")
        change = submit(
            c,
            "group-configuration-change",
            {"group": "web", "configuration": {"sca": {"enabled": False}}},
        )
        wait_until(lambda: task(c, change["id"])["total"] == 1000, what="expansion")

    got: dict[str, list[dict]] = {}
    lock = threading.Lock()

    def puller(name: str) -> None:
        with indexer.client() as pc:
            while True:
                r = pc.post(
                    "/pull", json={"owner": name, "target_type": "agent", "limit": 150, "wait": 1}
                )
                assert r.status_code == 200, r.text
                cmds = r.json()["data"]["commands"]
                if not cmds:
                    return
                with lock:
                    got.setdefault(name, []).extend(cmds)

    threads = [threading.Thread(target=puller, args=(f"server-{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [cmd for cmds in got.values() for cmd in cmds]
    assert len(everything) == 2000 and len({cmd["id"] for cmd in everything}) == 2000
    assert len(got) >= 2  # the work was actually shared
    sample = next(cmd for cmd in everything if cmd["task_id"] == change["id"])
    # R6: the merged configuration travels with the command as delivered, with its hash
    assert sample["action"]["args"]["config"] == {"sca": {"enabled": False}}
    assert len(sample["action"]["args"]["config_hash"]) == 64

    with indexer.client() as c:
        ids = [cmd["id"] for cmd in everything]
        by_owner = {cmd["id"]: owner for owner, cmds in got.items() for cmd in cmds}
        for owner in got:
            mine = [i for i in ids if by_owner[i] == owner]
            assert (
                c.post(
                    "/commands/mark", json={"owner": owner, "ids": mine, "status": "sent"}
                ).json()["data"]["refused"]
                == []
            )
        assert c.post("/commands/mark", json={"ids": ids, "status": "delivered"}).status_code == 200
        failing = {cmd["id"] for cmd in everything[:7] if cmd["task_id"] == assign["id"]}
        results = [
            {
                "id": i,
                "status": "failure" if i in failing else "success",
                "code": 1 if i in failing else 0,
                "message": "applied",
                "data": {"config_hash": sample["action"]["args"]["config_hash"]},
            }
            for i in ids
        ]
        r = c.post("/results", json={"results": results})
        assert r.status_code == 200
        assert {o["outcome"] for o in r.json()["data"]["results"]} == {"recorded"}
        # idempotent: the same batch again records nothing new
        again = c.post("/results", json={"results": results[:10]}).json()["data"]["results"]
        assert {o["outcome"] for o in again} == {"duplicate"}
        a = final(c, assign["id"])
        assert a["status"] == ("failure" if failing else "success")
        assert a["counts"] == {
            k: v for k, v in {"success": 1000 - len(failing), "failure": len(failing)}.items() if v
        }
        ch = final(c, change["id"])
        assert ch["status"] == "success" and ch["counts"] == {"success": 1000}
        agent = c.get("/agents/a0001").json()["data"]
        assert agent["groups"] == ["web"]
        assert agent["config_hash"] == sample["action"]["args"]["config_hash"]
        parents = c.get(
            "/commands", params={"task_id": change["id"], "target_type": "indexer"}
        ).json()["data"]["items"]
        parent = c.get(f"/commands/{parents[0]['id']}").json()["data"]
        assert parent["status"] == "success" and parent["counts"] == {"success": 1000}


@pytest.mark.req("R8")
def test_missed_deadlines_expire_and_silent_agents_time_out(indexer: Indexer) -> None:
    with indexer.client() as c:
        final(
            c, submit(c, "group-configuration-change", {"group": "web", "configuration": {}})["id"]
        )
        c.post(
            "/agents",
            json={
                "agents": [{"id": f"x{i}", "name": f"x{i}", "groups": ["web"]} for i in range(6)]
            },
        )
        t = submit(c, "agent-upgrade", {"group": "web", "version": "9.9"}, timeout=1, expires_in=2)
        cmds = c.post(
            "/pull", json={"owner": "s", "target_type": "agent", "limit": 2, "wait": 0}
        ).json()["data"]["commands"]
        ids = [cmd["id"] for cmd in cmds]
        c.post("/commands/mark", json={"owner": "s", "ids": ids, "status": "sent"})
        c.post("/commands/mark", json={"ids": ids, "status": "delivered"})
        done = final(c, t["id"], timeout=20)
        assert done["counts"] == {"timeout": 2, "expired": 4}
        assert done["status"] == "failure"
        listed = c.get("/commands", params={"task_id": t["id"], "status": "expired"}).json()
        assert all(
            cmd["result"]["message"] == "not delivered before its deadline"
            for cmd in listed["data"]["items"]
        )


def test_long_poll_wakes_up_when_a_command_is_written(indexer: Indexer) -> None:
    with indexer.client() as c:
        final(
            c, submit(c, "group-configuration-change", {"group": "web", "configuration": {}})["id"]
        )
        c.post("/agents", json={"agents": [{"id": "w1", "name": "w1", "groups": ["web"]}]})
        box: dict[str, float] = {}

        def wait() -> None:
            with indexer.client() as pc:
                started = time.monotonic()
                r = pc.post("/pull", json={"owner": "s", "target_type": "agent", "wait": 20})
                box["n"] = len(r.json()["data"]["commands"])
                box["t"] = time.monotonic() - started

        th = threading.Thread(target=wait)
        th.start()
        time.sleep(0.5)
        submit(c, "vulnerability-rescan", {"agents": ["w1"]})
        th.join(25)
        assert box["n"] == 1
        assert box["t"] < 5  # woken by the commit, not by the 20 s timeout


@pytest.mark.req("R4")
def test_bad_requests_get_a_4xx_that_says_why(indexer: Indexer) -> None:
    with indexer.client() as c:
        agents = [{"id": "a", "name": "a-host"}, {"id": "b", "name": "b-host"}]
        assert c.post("/agents", json={"agents": agents}).status_code == 200
        cases = [
            (
                {"type": "agent-rename", "params": {"agent": "a", "name": "b-host"}},
                409,
                "agent name 'b-host' is already used by agent b",
            ),
            ({"type": "agent-reboot", "params": {}}, 422, "removed"),
            ({"type": "restart", "params": {}}, 422, "removed"),
            ({"type": "teleport", "params": {}}, 422, "unknown task type"),
            ({"type": "agent-rename", "params": {"agent": "a"}}, 422, "name: Field required"),
            (
                {"type": "agent-rename", "params": {"agent": "ghost", "name": "x"}},
                422,
                "unknown agent",
            ),
            (
                {
                    "type": "group-assignment-change",
                    "params": {"agents": ["a"], "groups": ["nope!"]},
                },
                422,
                "group",
            ),
            ({"params": {}}, 422, "type"),
            (
                {
                    "type": "agent-package-new",
                    "source": "management-api",
                    "params": {"package": "p", "version": "1", "sha256": "0" * 64},
                },
                403,
                "content manager",
            ),
        ]
        for body, status, words in cases:
            r = c.post("/tasks", json=body)
            assert r.status_code == status, (body, r.text)
            assert words in r.json()["message"], (body, r.text)
        r = c.post("/tasks", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"] == "invalid_request"
        r = c.post("/pull", json={"owner": "s", "target_type": "toaster"})
        assert r.status_code == 422
        assert c.get("/tasks/123456").status_code == 404
        assert c.get("/tasks", params={"limit": 0}).status_code == 422
        assert httpx.get(f"{indexer.url}/tasks").status_code == 401
        assert (
            httpx.get(f"{indexer.url}/tasks", headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
        assert c.get("/tasks").json()["data"]["items"] == []  # nothing was written
        m = c.get("/metrics")
        assert m.status_code == 200 and "fleetcmd_pulls_waiting" in m.text


def test_blobs_are_addressed_by_their_sha256(indexer: Indexer) -> None:
    import hashlib

    data = b"\x00fleetcmd-agent-package\xff" * 100
    digest = hashlib.sha256(data).hexdigest()
    with indexer.client() as c:
        assert c.put(f"/blobs/{'0' * 64}", content=data).status_code == 422
        assert c.put(f"/blobs/{digest}", content=data).status_code == 200
        assert c.get(f"/blobs/{digest}").content == data
        assert c.get(f"/blobs/{'1' * 64}").status_code == 404


def test_audit_trail_is_append_only_over_http(indexer: Indexer) -> None:
    with indexer.client() as c:
        r = c.post(
            "/audit",
            json={
                "records": [
                    {
                        "actor": "alice",
                        "action": "user.login",
                        "outcome": "success",
                        "address": "127.0.0.1",
                        "details": {"via": "test"},
                    }
                ]
            },
        )
        assert r.status_code == 201, r.text
        [rid] = r.json()["data"]["ids"]
        page = c.get("/audit", params={"actor": "alice"}).json()["data"]
        assert [x["id"] for x in page["items"]] == [rid]
        # No route changes or deletes a record; the old document index is gone.
        for method, path in (
            ("PUT", f"/audit/{rid}"),
            ("DELETE", f"/audit/{rid}"),
            ("PATCH", "/audit"),
            ("DELETE", "/audit"),
        ):
            assert c.request(method, path, json={}).status_code in (404, 405), (method, path)
        for method in ("PUT", "DELETE"):
            r = c.request(method, "/indexes/audit/x", json={"outcome": "success"})
            assert r.status_code == 422 and "unknown index" in r.json()["message"]
        bad = c.post(
            "/audit",
            json={"records": [{"actor": "a", "action": "Bad Action", "outcome": "success"}]},
        )
        assert bad.status_code == 422 and bad.json()["error"]
        assert c.get("/audit", params={"actor": "alice"}).json()["data"]["items"][0]["details"] == {
            "via": "test"
        }
