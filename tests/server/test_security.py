"""Who may do what: agents on the Comms API, people on the Management API; bad input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fleetcmd.server.rbac import hash_password
from server.harness import FakeAgent, Server, file_task, fleet, login, task_final
from support import store_url_for, wait_until


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One SQLite fleet shared by this module's tests (they do not interfere)."""
    tmp = tmp_path_factory.mktemp("security")
    with store_url_for("sqlite", tmp) as url, fleet(url, tmp) as (_, [srv]):
        api = srv.admin()
        task_final(
            api,
            file_task(
                api, "group-configuration-change", {"group": "web", "configuration": {"x": 1}}
            )["id"],
        )
        task_final(
            api,
            file_task(
                api, "group-configuration-change", {"group": "db", "configuration": {"y": 2}}
            )["id"],
        )
        yield srv


@pytest.mark.req("R3")
def test_group_configuration_only_for_own_groups(one: Server) -> None:
    agent = FakeAgent(one.comms, "cfg-1", ["web"])
    r = agent.http.get("/agents/groups/web/configuration")
    assert r.status_code == 200
    assert r.json()["data"]["config"] == {"x": 1} and r.json()["data"]["group"] == "web"
    r = agent.http.get("/agents/groups/db/configuration")
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert agent.http.get("/agents/configuration", params={"groups": "web"}).status_code == 200
    assert agent.http.get("/agents/configuration", params={"groups": "web,db"}).status_code == 403
    init = agent.http.get("/agents/init").json()["data"]
    assert init["groups"] == ["web"] and init["config"] == {"x": 1} and init["name"] == "cfg-1"


def test_enrollment_rules(one: Server) -> None:
    comms = httpx.Client(base_url=one.comms)
    bad = comms.post(
        "/agents/enroll", json={"enrollment_key": "nope", "name": "x1", "version": "1"}
    )
    assert bad.status_code == 401 and bad.json()["error"] == "unauthorized"
    FakeAgent(one.comms, "taken")
    dup = comms.post(
        "/agents/enroll",
        json={"enrollment_key": "test-enrollment-key", "name": "taken", "version": "1"},
    )
    assert dup.status_code == 409
    lost = FakeAgent(one.comms, "lost-groups", ["web", "nosuch"])
    assert lost.enrollment["groups"] == [] and "nosuch" in lost.enrollment["warnings"][0]
    wrong = comms.post("/agents/authenticate", json={"id": lost.id, "secret": "wrong"})
    assert wrong.status_code == 401


@pytest.mark.req("C14")
def test_removed_agent_cannot_authenticate(one: Server) -> None:
    api = one.admin()
    agent = FakeAgent(one.comms, "doomed", ["web"])
    agent.poll(wait=0)
    wait_until(
        lambda: api.get(f"/agents/{agent.id}").json()["data"]["node"] == one.node_id,
        timeout=10,
        what="agent attached",
    )
    task = file_task(api, "agent-deletion", {"agent": agent.id})
    [cmd] = wait_until(lambda: agent.run_once(wait=5), timeout=30, what="delete command")
    assert cmd["action"]["name"] == "delete"
    assert task_final(api, task["id"])["status"] == "success"
    r = agent.authenticate()
    assert r.status_code == 403 and r.json()["error"] == "agent_removed"
    # Its still-unexpired token stops working too.
    r = agent.http.get("/agents/commands", params={"wait": 0})
    assert r.status_code == 403 and r.json()["error"] == "agent_removed"


@pytest.mark.req("R4")
def test_management_auth_and_roles(one: Server) -> None:
    anon = httpx.Client(base_url=one.api)
    assert anon.get("/tasks").status_code == 401
    assert anon.get("/health").json()["status"] == "ok"
    assert (
        httpx.post(f"{one.api}/security/user/authenticate", auth=("admin", "wrong")).status_code
        == 401
    )
    forged = anon.get("/tasks", headers={"Authorization": "Bearer not.a.jwt"})
    assert forged.status_code == 401 and forged.json()["error"] == "unauthorized"
    # An agent token does not open the Management API.
    agent = FakeAgent(one.comms, "nosy")
    assert (
        anon.get(
            "/tasks", headers={"Authorization": agent.http.headers["Authorization"]}
        ).status_code
        == 401
    )

    api = one.admin()
    # The node credential cannot write users; a read-only user made by the API is counted by
    # a plain rbac-change task.
    idx = httpx.Client(
        base_url=_indexer_url(one), headers={"Authorization": f"Bearer {one.env['FLEETCMD_TOKEN']}"}
    )
    r = idx.put(
        "/indexes/rbac/users/reader",
        json={"password_hash": hash_password("pw-reader"), "roles": ["readonly"]},
    )
    assert r.status_code == 403 and "rbac-change" in r.json()["message"]
    assert (
        api.post(
            "/security/users",
            json={"name": "reader", "password": "pw-reader-10", "roles": ["readonly"]},
        ).status_code
        == 201
    )
    task = file_task(api, "rbac-change", {"reason": "new reader"})
    final = task_final(api, task["id"])
    assert final["status"] == "success"
    [cmd] = api.get("/commands", params={"task_id": task["id"]}).json()["data"]["items"]
    assert cmd["result"]["data"]["users"] == 2
    reader = login(one.api, "reader", "pw-reader-10")
    assert reader.get("/tasks").status_code == 200
    assert reader.get("/agents").status_code == 200
    denied = reader.post("/tasks", json={"type": "rbac-change", "params": {}})
    assert denied.status_code == 403 and denied.json()["error"] == "forbidden"
    assert reader.get("/metrics").status_code == 200

    refused = api.post("/tasks", json={"type": "agent-reboot", "params": {}})
    assert refused.status_code == 422
    assert refused.json()["error"] == "removed_command" and "reboot" in refused.json()["message"]
    unknown = api.post("/tasks", json={"type": "no-such-task", "params": {}})
    assert unknown.status_code == 422 and unknown.json()["error"] == "unknown_task_type"
    assert api.get("/tasks/999999").status_code == 404
    assert "fleetcmd_server_connected_agents" in api.get("/metrics").text
    assert api.get("/openapi.json").json()["paths"]["/tasks"]


def test_bad_bodies_get_json_4xx(one: Server) -> None:
    api = one.admin()
    agent = FakeAgent(one.comms, "sloppy")
    cases = [
        (api.post("/tasks", json={"type": "rbac-change", "params": {}, "extra": 1}), 422),
        (
            api.post("/tasks", content=b"{not json", headers={"content-type": "application/json"}),
            422,
        ),
        (api.post("/tasks", json={"type": "group-configuration-change", "params": {}}), 422),
        (api.post("/tasks", content=b"x" * (2 * 1024 * 1024)), 413),
        (agent.http.post("/agents/commands/ack", json={"ids": ["a"]}), 422),
        (agent.http.post("/agents/results", json={"results": [{"id": 1, "status": "maybe"}]}), 422),
        (agent.http.post("/agents/events", json={"events": "no"}), 422),
        (agent.http.get("/agents/commands", params={"wait": 999}), 422),
        (agent.http.post("/agents/enroll", json={"name": "../x"}), 422),
        (agent.http.post("/agents/inventory", content=b"y" * (2 * 1024 * 1024)), 413),
    ]
    for resp, status in cases:
        assert resp.status_code == status, (resp.request.url, resp.text)
        body = resp.json()
        assert body["error"] and body["message"], body
    ok = agent.http.post(
        "/agents/inventory",
        json={"packages": [{"name": "openssl", "version": "3.0.2", "source": "deb"}]},
    )
    assert ok.json()["data"] == {"accepted": 1}
    assert agent.http.post("/agents/events", json={"events": [{"rule": 1}]}).json()["data"] == {
        "accepted": 1
    }


def _indexer_url(srv: Server) -> str:
    return srv.args[srv.args.index("--indexer") + 1]


def test_tokens_needed_on_comms(one: Server, tmp_path: Path) -> None:
    anon = httpx.Client(base_url=one.comms)
    for path in ("/agents/commands", "/agents/init", "/agents/groups/web/configuration"):
        r = anon.get(path)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert anon.get("/metrics").status_code == 401


def test_task_cli(one: Server) -> None:
    import json
    import subprocess

    from support import FLEETCMD

    common = ["--api", one.api, "--data-dir", str(one.data_dir)]
    out = subprocess.run(
        [*FLEETCMD, "task", "create", "rbac-change", "-p", "reason=cli", *common],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    assert task["user"] == "admin" and task["source"] == "management-api"
    watch = subprocess.run(
        [*FLEETCMD, "task", "watch", str(task["id"]), *common],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert watch.returncode == 0, watch.stderr
    assert f"task {task['id']}: success" in watch.stdout
    bad = subprocess.run(
        [*FLEETCMD, "task", "create", "agent-restart", *common],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "removed" in bad.stderr
    listing = subprocess.run(
        [*FLEETCMD, "task", "list", *common], capture_output=True, text=True, timeout=60
    )
    assert listing.returncode == 0 and "rbac-change" in listing.stdout
