"""Authorization over real HTTP, on both stores (issue 20, items 1, 3 and 5): a role scoped
to a group administers nothing, a delegated administrator grants only what it holds, `mode:
set` touches only groups the operator may update, and the node credential cannot file a task
in a person's name. The model itself is tested property by property in
tests/unit/test_rbac_policies.py."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from server.harness import JWT_KEY, FakeAgent, Server, file_task, fleet, login, task_final
from support import Indexer, store_url_for

PW = "correct-horse-battery"
WEB_ALL = {"actions": ["*"], "resources": ["agent:group:web", "group:id:web"]}
WEB_OPERATOR = {
    "actions": [
        "task:create",
        "task:read",
        "agent:read",
        "command:read",
        "group:read",
        "group:update",
    ],
    "resources": ["agent:group:web", "group:id:web"],
}


class Fleet:
    def __init__(self, idx: Indexer, srv: Server) -> None:
        self.idx = idx
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

    def role(self, name: str, *policies: dict[str, Any]) -> None:
        r = self.admin.put(f"/security/roles/{name}", json={"policies": list(policies)})
        assert r.status_code == 200, r.text

    def user(self, name: str, roles: list[str]) -> httpx.Client:
        r = self.admin.post("/security/users", json={"name": name, "password": PW, "roles": roles})
        assert r.status_code == 201, r.text
        return login(self.srv.api, name, PW)

    def node(self) -> httpx.Client:
        """The indexer, as a server node sees it: the node credential."""
        return self.idx.client()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def f(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp(f"authz-{request.param}")
    with store_url_for(request.param, tmp) as url, fleet(url, tmp) as (idx, [srv]):
        yield Fleet(idx, srv)


def _denied(r: httpx.Response) -> bool:
    return r.status_code == 403 and r.json()["error"] == "forbidden" and bool(r.json()["message"])


def _dashboard(api: str, name: str) -> httpx.Client:
    """A browser's session on the dashboard, by hand: the login form with its CSRF token."""
    c = httpx.Client(base_url=api, timeout=30)
    form = c.get("/app/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf, form.text
    r = c.post(
        "/app/login",
        data={"username": name, "password": PW, "csrf_token": csrf.group(1), "next": "/app/"},
    )
    assert r.status_code == 303, r.text
    return c


def test_a_group_operator_administers_nothing(f: Fleet) -> None:
    """Issue 20 item 1: `*` on one group's resources was an administrator in all but name."""
    f.role("web-all", WEB_ALL)
    web = f.user("weball", ["web-all"])
    assert web.get("/agents").status_code == 200  # its own group's work still works
    made = web.post(
        "/security/users", json={"name": "x-admin", "password": PW, "roles": ["administrator"]}
    )
    assert _denied(made), made.text
    assert f.admin.get("/security/users/x-admin").status_code == 404
    for method, path, body in (
        ("GET", "/audit", None),
        ("GET", "/security/users", None),
        ("GET", "/security/users/admin", None),
        ("GET", "/security/roles", None),
        ("GET", "/security/enrollment-keys", None),
        ("POST", "/security/enrollment-keys", {"description": "mine"}),
        ("GET", "/metrics", None),
        ("PUT", "/security/roles/web-more", {"policies": [WEB_ALL]}),
        ("PATCH", "/security/users/weball", {"disabled": False}),
    ):
        assert _denied(web.request(method, path, json=body)), (method, path)
    # The dashboard's session asks the same questions.
    dash = _dashboard(f.srv.api, "weball")
    assert dash.get("/app/").status_code == 200
    assert dash.get("/app/audit").status_code == 403
    assert "/app/audit" not in dash.get("/app/").text
    # `user:create` granted on an agent group is not granted on users either.
    f.role("web-hr", {"actions": ["user:create"], "resources": ["agent:group:web"]})
    hr = f.user("webhr", ["web-hr"])
    assert _denied(
        hr.post(
            "/security/users", json={"name": "x-admin2", "password": PW, "roles": ["administrator"]}
        )
    )
    denied = f.admin.get(
        "/audit", params={"actor": "weball", "action": "user.create", "outcome": "denied"}
    ).json()["data"]["items"]
    assert denied and denied[0]["details"]["permission"] == "user:create"


def test_a_delegated_administrator_grants_only_what_it_holds(f: Fleet) -> None:
    f.role(
        "web-admin",
        {"actions": ["user:*", "role:*"], "resources": ["user:id:web-*", "role:id:web-*"]},
        WEB_OPERATOR,
    )
    boss = f.user("web-boss", ["web-admin"])
    # Within: a role that is a part of its own, users named inside its resources.
    reader = {"actions": ["task:read", "agent:read"], "resources": ["agent:group:web"]}
    assert boss.put("/security/roles/web-reader", json={"policies": [reader]}).status_code == 200
    r = boss.post(
        "/security/users", json={"name": "web-carl", "password": PW, "roles": ["web-reader"]}
    )
    assert r.status_code == 201, r.text
    carl = login(f.srv.api, "web-carl", PW)
    assert {a["id"] for a in carl.get("/agents").json()["data"]["items"]} == {f.web1.id, f.web2.id}
    # Beyond: a broader role, a built-in one, a name outside, a role wider than its own.
    for roles in (["administrator"], ["operator"], ["readonly"], ["web-reader", "operator"]):
        r = boss.post("/security/users", json={"name": "web-eve", "password": PW, "roles": roles})
        assert _denied(r), (roles, r.text)
        assert "more than you hold" in r.json()["message"] and r.json()["details"]["beyond"]
    assert _denied(boss.post("/security/users", json={"name": "eve", "password": PW}))
    wide = {"actions": ["task:read"], "resources": ["agent:group:*"]}
    assert _denied(boss.put("/security/roles/web-wide", json={"policies": [wide]}))
    assert _denied(
        boss.put(
            "/security/roles/web-all2",
            json={"policies": [{"actions": ["*"], "resources": ["agent:group:web"]}]},
        )
    )  # `*` is more than it holds
    assert _denied(boss.put("/security/roles/other", json={"policies": [reader]}))
    # It may not touch users broader than itself (or outside its names).
    assert _denied(boss.patch("/security/users/admin", json={"disabled": True}))
    assert _denied(boss.put("/security/users/admin/password", json={"password": "x" * 12}))
    assert _denied(boss.patch("/security/users/web-carl", json={"roles": ["administrator"]}))
    assert boss.patch("/security/users/web-carl", json={"roles": []}).status_code == 200
    assert (
        f.admin.patch("/security/users/web-carl", json={"roles": ["operator"]}).status_code == 200
    )
    r = boss.put("/security/users/web-carl/password", json={"password": "taken-over-now"})
    assert _denied(r) and "web-carl" in r.json()["message"]
    # It reads only the users and roles it may.
    names = {u["name"] for u in boss.get("/security/users").json()["data"]["items"]}
    assert names == {"web-boss", "web-carl"}
    roles = {r["name"] for r in boss.get("/security/roles").json()["data"]["items"]}
    assert {"web-admin", "web-reader"} <= roles and all(n.startswith("web-") for n in roles)
    assert _denied(boss.get("/security/users/admin"))
    assert f.admin.get("/security/users/web-eve").status_code == 404


def test_mode_set_cannot_take_agents_out_of_a_group_it_may_not_touch(f: Fleet) -> None:
    """Issue 20 item 5: `set` to [web] on an agent in [web, shared] removes `shared`, which
    the web operator may not update: refused like the equivalent `mode: remove`."""
    f.role("web-op", WEB_OPERATOR)
    web = f.user("webop", ["web-op"])
    both = [f.web1.id, f.web2.id]
    for params in (
        {"agents": both, "groups": ["web"], "mode": "set"},
        {"from_group": "web", "groups": ["web"], "mode": "set"},
        {"agents": [f.web2.id], "groups": ["shared"], "mode": "remove"},
    ):
        r = web.post("/tasks", json={"type": "group-assignment-change", "params": params})
        assert _denied(r), (params, r.text)
        assert "shared" in r.json()["message"] and r.json()["details"]["groups"] == ["shared"]
    assert f.admin.get(f"/agents/{f.web2.id}").json()["data"]["groups"] == ["web", "shared"]
    # Setting what an agent already has inside the scope is fine.
    ok = web.post(
        "/tasks",
        json={
            "type": "group-assignment-change",
            "params": {"agents": [f.web1.id], "groups": ["web"]},
        },
    )
    assert ok.status_code == 202, ok.text
    assert task_final(f.admin, ok.json()["data"]["id"])["status"] == "success"


def _forged_proof(user: str, key: str = JWT_KEY, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode(
        {
            "sub": user,
            "gen": 0,
            "aud": "fleetcmd-user-proof",
            "iat": now,
            "exp": now + 600,
            **claims,
        },
        key,
        algorithm="HS256",
    )


def test_the_node_credential_cannot_file_a_task_in_a_persons_name(f: Fleet) -> None:
    """Issue 20 item 3: `POST /tasks` with the node credential and `user: admin` was recorded
    as admin's, with no audit record. Now it is the node's own, and audited."""
    node = f.node()
    rescan = {
        "type": "vulnerability-rescan",
        "params": {"agents": [f.web1.id]},
        "source": "management-api",
    }
    r = node.post("/tasks", json={**rescan, "user": "admin"})
    assert r.status_code == 202, r.text
    task = r.json()["data"]
    assert task["user"] == "node"
    [rec] = f.admin.get("/audit", params={"target": f"task:{task['id']}"}).json()["data"]["items"]
    assert (rec["actor"], rec["action"]) == ("node", "task.create")
    assert rec["details"]["claimed_user"] == "admin" and rec["details"]["credential"] == "node"
    # A service's name is kept (the engine, the content manager, `fleetcmd up`), audited too.
    r = node.post("/tasks", json={**rescan, "user": "fleetcmd-up"})
    assert r.json()["data"]["user"] == "fleetcmd-up"
    assert f.admin.get(
        "/audit", params={"target": f"task:{r.json()['data']['id']}", "actor": "fleetcmd-up"}
    ).json()["data"]["items"]
    assert f.admin.post("/security/users", json={"name": "node", "password": PW}).status_code == 422
    # A proof the node made itself (it holds the JWT key, not the indexer's) is refused,
    # and so is a token it mints for a person: it carries no proof the indexer issued.
    before = node.get("/tasks", params={"limit": 1}).json()["data"]["items"][0]["id"]
    for proof in (_forged_proof("admin"), _forged_proof("admin", "k" * 40), "not-a-jwt"):
        r = node.post("/tasks", json={**rescan, "user": "admin", "proof": proof})
        assert r.status_code == 401 and r.json()["error"] == "bad_user_proof", r.text
    now = int(time.time())
    minted = jwt.encode(
        {"sub": "admin", "aud": "fleetcmd-api", "iat": now, "exp": now + 600, "gen": 0},
        JWT_KEY,
        algorithm="HS256",
    )
    r = httpx.post(
        f"{f.srv.api}/tasks",
        json={"type": rescan["type"], "params": rescan["params"]},
        headers={"Authorization": f"Bearer {minted}"},
    )
    assert r.status_code == 401 and "proof" in r.json()["message"], r.text
    assert node.get("/tasks", params={"limit": 1}).json()["data"]["items"][0]["id"] == before
    # A real proof: only with the password, only for its user, revoked with the user.
    f.user("dora", ["operator"])
    assert node.post("/user-proofs", json={"user": "dora", "password": "wrong"}).status_code == 401
    assert node.post("/user-proofs", json={"user": "nobody", "password": PW}).status_code == 401
    proof = node.post("/user-proofs", json={"user": "dora", "password": PW}).json()["data"]["proof"]
    r = node.post("/tasks", json={**rescan, "user": "admin", "proof": proof})
    assert r.status_code == 401 and "dora" in r.json()["message"]
    kid = jwt.get_unverified_header(proof)["kid"]
    forged = jwt.encode(
        jwt.decode(proof, options={"verify_signature": False}),
        JWT_KEY,
        algorithm="HS256",
        headers={"kid": kid},
    )
    r = node.post("/tasks", json={**rescan, "user": "dora", "proof": forged})
    assert r.status_code == 401 and "does not verify" in r.json()["message"]
    r = node.post("/tasks", json={**rescan, "user": "dora", "proof": proof})
    assert r.status_code == 202 and r.json()["data"]["user"] == "dora"
    assert f.admin.patch("/security/users/dora", json={"roles": ["readonly"]}).status_code == 200
    r = node.post("/tasks", json={**rescan, "proof": proof})
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    # Users and roles: not written by the node, not changed without a person's proof.
    sneaky = {
        "type": "rbac-change",
        "params": {
            "changes": [
                {
                    "kind": "user",
                    "name": "evil",
                    "op": "create",
                    "set": {
                        "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$x$y",
                        "roles": ["administrator"],
                    },
                }
            ]
        },
    }
    assert _denied(node.post("/tasks", json=sneaky))
    for method, path in (
        ("PUT", "/indexes/rbac/users/evil"),
        ("PUT", "/indexes/rbac/users/admin"),
        ("PUT", "/indexes/rbac/roles/evil"),
        ("DELETE", "/indexes/rbac/users/admin"),
    ):
        r = node.request(method, path, json={"roles": ["administrator"]})
        assert _denied(r), (method, path, r.text)
    assert f.admin.get("/security/users/evil").status_code == 404
    # People's own tasks through the Management API carry their proof and their name.
    assert file_task(f.admin, "vulnerability-rescan", {"agents": [f.web1.id]})["user"] == "admin"
