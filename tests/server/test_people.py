"""People on the Management API: tokens, users, roles scoped to resources, the targets of a
task, narrowed lists, login throttling and the audit trail — on both stores."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from server.harness import JWT_KEY, FakeAgent, Server, file_task, fleet, login, task_final
from support import store_url_for

PW = "correct-horse-battery"


class Fleet:
    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.admin = srv.admin()
        for g in ("web", "db", "shared"):
            task_final(
                self.admin,
                file_task(
                    self.admin,
                    "group-configuration-change",
                    {"group": g, "configuration": {"g": g}},
                )["id"],
            )
        self.web1 = FakeAgent(srv.comms, "web-1", ["web"])
        self.web2 = FakeAgent(srv.comms, "web-2", ["web", "shared"])
        self.db1 = FakeAgent(srv.comms, "db-1", ["db", "shared"])

    def user(self, name: str, roles: list[str], password: str = PW) -> httpx.Client:
        r = self.admin.post(
            "/security/users", json={"name": name, "password": password, "roles": roles}
        )
        assert r.status_code == 201, r.text
        return login(self.srv.api, name, password)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def f(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp(f"people-{request.param}")
    with store_url_for(request.param, tmp) as url, fleet(url, tmp) as (_, [srv]):
        yield Fleet(srv)


def _token(client: httpx.Client) -> str:
    return client.headers["Authorization"].removeprefix("Bearer ")


def test_tokens_missing_bad_expired_are_401(f: Fleet) -> None:
    anon = httpx.Client(base_url=f.srv.api)
    assert anon.get("/agents").status_code == 401
    assert anon.get("/agents", headers={"Authorization": "Bearer x.y.z"}).status_code == 401
    now = int(time.time())
    expired = jwt.encode(
        {"sub": "admin", "aud": "fleetcmd-api", "iat": now - 3600, "exp": now - 60, "gen": 0},
        JWT_KEY,
        algorithm="HS256",
    )
    r = anon.get("/agents", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.json()["message"]
    forged = jwt.encode(
        {"sub": "admin", "aud": "fleetcmd-api", "iat": now, "exp": now + 600, "gen": 0},
        "another-key-of-the-same-length-as-ours",
        algorithm="HS256",
    )
    assert anon.get("/agents", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    # A token naming the right user but an old generation is refused too.
    stale = jwt.encode(
        {"sub": "admin", "aud": "fleetcmd-api", "iat": now, "exp": now + 600, "gen": 99},
        JWT_KEY,
        algorithm="HS256",
    )
    r = anon.get("/agents", headers={"Authorization": f"Bearer {stale}"})
    assert r.status_code == 401 and "revoked" in r.json()["message"]


def test_each_default_role_is_denied_what_it_lacks(f: Fleet) -> None:
    reader = f.user("ro-user", ["readonly"])
    operator = f.user("op-user", ["operator"])
    for client in (reader, operator):
        assert client.get("/agents").status_code == 200
        assert client.get("/tasks").status_code == 200
        for method, path, body in (
            ("POST", "/security/users", {"name": "x1", "password": PW, "roles": []}),
            ("GET", "/security/users", None),
            ("GET", "/audit", None),
            ("PUT", "/security/roles/r1", {"policies": [{"actions": ["task:read"]}]}),
            ("PATCH", "/security/users/admin", {"disabled": True}),
        ):
            r = client.request(method, path, json=body)
            assert r.status_code == 403 and r.json()["error"] == "forbidden", (method, path)
    r = reader.post(
        "/tasks", json={"type": "agent-rename", "params": {"agent": f.web1.id, "name": "renamed"}}
    )
    assert r.status_code == 403
    assert reader.post("/tasks/1/cancel").status_code == 403
    task = operator.post(
        "/tasks", json={"type": "vulnerability-rescan", "params": {"agents": [f.web1.id]}}
    )
    assert task.status_code == 202, task.text
    assert operator.post(f"/tasks/{task.json()['data']['id']}/cancel").status_code == 200
    # Nobody may smuggle user changes through a plain rbac-change task.
    sneaky = f.admin.post(
        "/tasks",
        json={
            "type": "rbac-change",
            "params": {
                "changes": [
                    {"kind": "user", "name": "op-user", "set": {"roles": ["administrator"]}}
                ]
            },
        },
    )
    assert sneaky.status_code == 403
    assert f.admin.get("/security/users/op-user").json()["data"]["roles"] == ["operator"]


def test_user_lifecycle_revokes_tokens_and_files_rbac_change(f: Fleet) -> None:
    before = len(
        f.admin.get("/tasks", params={"type": "rbac-change", "limit": 1000}).json()["data"]["items"]
    )
    carol = f.user("carol", ["readonly"])
    assert carol.get("/tasks").status_code == 200
    # A role change: her token stops working, a new login has the new rights.
    r = f.admin.patch("/security/users/carol", json={"roles": ["operator"]})
    assert r.status_code == 200 and r.json()["data"]["roles"] == ["operator"]
    assert carol.get("/tasks").status_code == 401
    carol = login(f.srv.api, "carol", PW)
    assert (
        carol.post(
            "/tasks", json={"type": "agent-rename", "params": {"agent": f.web1.id, "name": "web-1"}}
        ).status_code
        == 202
    )
    # Her own password change (with the current one) revokes her tokens too.
    r = carol.put(
        "/security/users/carol/password",
        json={"password": "another-long-pw", "current_password": "wrong"},
    )
    assert r.status_code == 422
    r = carol.put(
        "/security/users/carol/password",
        json={"password": "another-long-pw", "current_password": PW},
    )
    assert r.status_code == 200, r.text
    assert carol.get("/tasks").status_code == 401
    assert (
        httpx.post(f"{f.srv.api}/security/user/authenticate", auth=("carol", PW)).status_code == 401
    )
    carol = login(f.srv.api, "carol", "another-long-pw")
    # Disabled: token refused at once, login refused.
    assert f.admin.patch("/security/users/carol", json={"disabled": True}).status_code == 200
    r = carol.get("/tasks")
    assert r.status_code == 401
    assert (
        httpx.post(
            f"{f.srv.api}/security/user/authenticate", auth=("carol", "another-long-pw")
        ).status_code
        == 401
    )
    # Bad input is a clear 4xx.
    assert (
        f.admin.post("/security/users", json={"name": "carol", "password": PW}).status_code == 409
    )
    assert (
        f.admin.post("/security/users", json={"name": "dave", "password": "short"}).status_code
        == 422
    )
    assert (
        f.admin.post(
            "/security/users", json={"name": "dave", "password": PW, "roles": ["no-such-role"]}
        ).status_code
        == 422
    )
    assert f.admin.patch("/security/users/admin", json={"disabled": True}).status_code == 409
    # Each change was an rbac-change task by admin (or carol), final on every node, no hash.
    tasks = f.admin.get("/tasks", params={"type": "rbac-change", "limit": 1000}).json()["data"][
        "items"
    ]
    mine = tasks[: len(tasks) - before]
    assert len(mine) == 4 and {t["user"] for t in mine} == {"admin", "carol"}
    for t in mine:
        assert task_final(f.admin, t["id"])["status"] == "success"
        for change in t["params"]["changes"]:
            assert change["set"].get("password_hash", "<redacted>") == "<redacted>"


def _scoped(f: Fleet) -> httpx.Client:
    r = f.admin.put(
        "/security/roles/web-operator",
        json={
            "description": "operates the web servers only",
            "policies": [
                {
                    "actions": [
                        "task:create",
                        "task:read",
                        "task:cancel",
                        "agent:read",
                        "command:read",
                        "group:read",
                        "group:update",
                    ],
                    "resources": ["agent:group:web", "group:id:web"],
                }
            ],
        },
    )
    assert r.status_code == 200, r.text
    return f.user("webop", ["web-operator"])


def test_operator_scoped_to_web_cannot_reach_outside(f: Fleet) -> None:
    web = _scoped(f)
    # Allowed: its own agents, by id and by group.
    ok = web.post(
        "/tasks",
        json={"type": "vulnerability-rescan", "params": {"agents": [f.web1.id, f.web2.id]}},
    )
    assert ok.status_code == 202, ok.text
    assert (
        web.post(
            "/tasks",
            json={
                "type": "group-configuration-change",
                "params": {"group": "web", "configuration": {"v": 2}},
            },
        ).status_code
        == 202
    )
    # Refused: an agent outside by id, a group whose members reach outside, all agents,
    # a group it may not update, a server-wide task.
    refused = [
        ("vulnerability-rescan", {"agents": [f.web1.id, f.db1.id]}),
        ("vulnerability-rescan", {"group": "shared"}),
        ("agent-upgrade", {"all": True, "version": "9.9.9"}),
        ("agent-rename", {"agent": f.db1.id, "name": "mine-now"}),
        ("group-configuration-change", {"group": "db", "configuration": {}}),
        ("group-assignment-change", {"agents": [f.web1.id], "groups": ["web", "db"]}),
        ("ruleset-update", {"version": "2"}),
    ]
    for type_, params in refused:
        r = web.post("/tasks", json={"type": type_, "params": params})
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (type_, r.text)
    # Reading: by id, by group, by listing.
    assert web.get(f"/agents/{f.web1.id}").status_code == 200
    assert web.get(f"/agents/{f.db1.id}").status_code == 403
    listed = {a["id"] for a in web.get("/agents").json()["data"]["items"]}
    assert listed == {f.web1.id, f.web2.id}
    assert {
        a["id"] for a in web.get("/agents", params={"group": "shared"}).json()["data"]["items"]
    } == {f.web2.id}
    assert [g["name"] for g in web.get("/groups").json()["data"]["items"]] == ["web"]
    assert web.get("/groups/db").status_code == 403
    summary = web.get("/agents/summary").json()["data"]
    assert summary["total"] == 2 and "db" not in summary["by_group"]
    # Tasks and commands: only those whose whole reach is web.
    db_task = file_task(f.admin, "vulnerability-rescan", {"agents": [f.db1.id]})
    visible = {t["id"] for t in web.get("/tasks", params={"limit": 1000}).json()["data"]["items"]}
    assert ok.json()["data"]["id"] in visible and db_task["id"] not in visible
    assert web.get(f"/tasks/{db_task['id']}").status_code == 403
    assert web.post(f"/tasks/{db_task['id']}/cancel").status_code == 403
    assert web.get("/commands", params={"task_id": db_task["id"]}).json()["data"]["items"] == []
    [cmd] = f.admin.get("/commands", params={"task_id": db_task["id"]}).json()["data"]["items"]
    assert web.get(f"/commands/{cmd['id']}").status_code == 403
    assert (
        len(
            web.get("/commands", params={"task_id": ok.json()["data"]["id"]}).json()["data"][
                "items"
            ]
        )
        == 2
    )


def test_brute_force_logins_are_slowed(f: Fleet) -> None:
    f.user("victim", ["readonly"])
    codes = [
        httpx.post(
            f"{f.srv.api}/security/user/authenticate", auth=("victim", f"guess-{i}")
        ).status_code
        for i in range(6)
    ]
    assert codes[:5] == [401] * 5 and codes[5] in (401, 429)
    # Now even the right password waits: refused with a delay to honour.
    r = httpx.post(f"{f.srv.api}/security/user/authenticate", auth=("victim", PW))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"] == "too_many_requests"
    # Another user from the same address is not locked out by this one.
    assert login(f.srv.api, "admin", (f.srv.data_dir / "admin.password").read_text().strip())
    throttled = f.admin.get("/audit", params={"actor": "victim", "outcome": "throttled"})
    assert throttled.json()["data"]["items"]


def _story(f: Fleet, actor: str) -> list[tuple[str, str, str | None]]:
    items: list[dict[str, Any]] = f.admin.get(
        "/audit", params={"actor": actor, "limit": 1000}
    ).json()["data"]["items"]
    return [(i["action"], i["outcome"], i["target"]) for i in reversed(items)]


def test_audit_trail_tells_the_whole_story(f: Fleet) -> None:
    f.user("erin", ["operator"])
    assert (
        httpx.post(
            f"{f.srv.api}/security/user/authenticate", auth=("erin", "wrong-password")
        ).status_code
        == 401
    )
    erin = login(f.srv.api, "erin", PW)
    task = erin.post(
        "/tasks", json={"type": "vulnerability-rescan", "params": {"agents": [f.web1.id]}}
    ).json()["data"]
    assert erin.post(f"/tasks/{task['id']}/cancel").status_code == 200
    assert erin.post("/tasks", json={"type": "no-such-type", "params": {}}).status_code == 422
    assert erin.get("/audit").status_code == 403
    assert f.admin.patch("/security/users/erin", json={"roles": ["readonly"]}).status_code == 200
    story = _story(f, "erin")
    assert story == [
        ("user.login", "success", None),  # f.user() logs in once
        ("user.login", "failure", None),
        ("user.login", "success", None),
        ("task.create", "success", f"task:{task['id']}"),
        ("task.cancel", "success", f"task:{task['id']}"),
        ("task.create", "failure", None),
    ]
    admin_story = _story(f, "admin")
    assert ("user.create", "success", "user:erin") in admin_story
    assert admin_story[-1] == ("user.assign", "success", "user:erin")
    [last] = f.admin.get("/audit", params={"actor": "admin", "limit": 1}).json()["data"]["items"]
    assert last["address"] == "127.0.0.1" and last["node"] == f.srv.node_id
    assert last["details"]["before"]["roles"] == ["operator"]
    assert last["details"]["after"] == {"roles": ["readonly"]}
    # Filters and pages.
    since = f.admin.get("/audit", params={"action": "task.*", "actor": "erin"}).json()["data"]
    assert {i["action"] for i in since["items"]} == {"task.create", "task.cancel"}
    page1 = f.admin.get("/audit", params={"limit": 2}).json()["data"]
    page2 = f.admin.get("/audit", params={"limit": 2, "cursor": page1["next_cursor"]}).json()[
        "data"
    ]
    assert page1["items"][-1]["id"] > page2["items"][0]["id"]
    window = f.admin.get("/audit", params={"since": time.time() + 60}).json()["data"]
    assert window["items"] == []
    # No API changes or deletes a record.
    rid = page1["items"][0]["id"]
    for method, path in (
        ("PUT", f"/audit/{rid}"),
        ("DELETE", f"/audit/{rid}"),
        ("DELETE", "/audit"),
        ("PATCH", "/audit"),
    ):
        assert f.admin.request(method, path, json={}).status_code in (404, 405)
    assert f.admin.get("/audit", params={"limit": 1}).json()["data"]["items"][0]["id"] >= rid
