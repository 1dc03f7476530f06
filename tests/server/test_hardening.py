"""Issue 20, items 2 and 7 (deep documents, colliding ids, names with a trailing newline,
the indexer's schema), with real processes on both stores: every edge refuses what no reader
could serialize, data stored before the limit breaks no view, and no retry writes a task
twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dashboard.harness import dashboard_session
from fleetcmd.errors import TooDeep
from fleetcmd.indexer.task_manager import TaskManager, TaskRequest
from fleetcmd.model.catalog import Target
from fleetcmd.model.nesting import MAX_DEPTH
from fleetcmd.store import NewCommand, open_store
from server.harness import FakeAgent, Server, file_task, fleet, task_final
from support import Indexer, store_url_for, wait_until


def nested(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep ({"x": 1} is one)."""
    doc: dict[str, Any] = {"x": 1}
    for _ in range(depth - 1):
        doc = {"a": doc}
    return doc


class Fleet:
    def __init__(self, url: str, idx: Indexer, srv: Server) -> None:
        self.url = url
        self.idx = idx
        self.srv = srv
        self.api = srv.admin()
        self.node = idx.client()

    def tasks(self) -> list[dict[str, Any]]:
        r = self.node.get("/tasks", params={"limit": 1000})
        assert r.status_code == 200, r.text
        return list(r.json()["data"]["items"])


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp(f"hardening-{request.param}")
    with store_url_for(request.param, tmp) as url, fleet(url, tmp) as (idx, [srv]):
        f = Fleet(url, idx, srv)
        for group in ("web", "edge", "legacy"):
            task_final(
                f.api,
                file_task(
                    f.api, "group-configuration-change", {"group": group, "configuration": {"x": 1}}
                )["id"],
            )
        yield f


def test_deep_documents_are_refused_at_every_edge_and_nothing_is_written(system: Fleet) -> None:
    """The issue's numbers: ~250 deep was accepted (252-254: a 503 and two tasks written per
    request), 300+ answered 503; now both are a 422 that writes nothing."""
    api, before = system.api, len(system.tasks())
    for depth in (250, 253, 300, 5000):  # 5000: past what a client's encoder can write
        text = '{"a":' * depth + "1" + "}" * depth
        r = api.post(
            "/tasks",
            headers={"content-type": "application/json"},
            content=(
                '{"type": "group-configuration-change", "params": {"group": "web", '
                f'"configuration": {text}}}}}'
            ),
        )
        assert r.status_code == 422, (depth, r.status_code, r.text[:300])
        assert r.json()["error"] == "too_deep" and str(MAX_DEPTH) in r.json()["message"]
    # The indexer's own edge: a node credential files nothing deeper either.
    r = system.node.post(
        "/tasks",
        json={
            "type": "group-configuration-change",
            "params": {"group": "web", "configuration": nested(300)},
        },
    )
    assert r.status_code == 422 and r.json()["error"] == "too_deep", r.text[:300]
    r = system.node.put("/indexes/alerts/deep", json=nested(300))
    assert r.status_code == 422 and r.json()["error"] == "too_deep"
    # The dashboard's JSON fields do not pass through a JSON edge.
    dash = dashboard_session(
        system.srv.api, "admin", (system.srv.data_dir / "admin.password").read_text().strip()
    )
    form = dash.get("/app/tasks/new/group-configuration-change").text
    csrf = form.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    for depth in (300, 5000):
        text = '{"a":' * depth + "1" + "}" * depth
        r = dash.post(
            "/app/tasks/new/group-configuration-change",
            data={"csrf_token": csrf, "group": "web", "configuration": text},
        )
        assert r.status_code == 422 and "nested deeper than" in r.text, (depth, r.status_code)
    assert len(system.tasks()) == before

    # The agents' edge: the fast path (results) and FastAPI's routes (events) alike.
    agent = FakeAgent(system.srv.comms, "deep-sender", ["web"])
    r = agent.http.post(
        "/agents/results", json={"results": [{"id": 1, "status": "success", "data": nested(300)}]}
    )
    assert r.status_code == 422 and r.json()["error"] == "too_deep", r.text[:300]
    r = agent.http.post("/agents/events", json={"events": [nested(300)]})
    assert r.status_code == 422 and r.json()["error"] == "too_deep", r.text[:300]
    # Size stays bounded as before (413), on both paths.
    big = b'{"results": [' + b'{"id": 1, "status": "success"},' * 60_000 + b"{}]}"
    r = agent.http.post(
        "/agents/results", content=big, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"


def test_a_document_at_the_limit_is_filed_delivered_and_read(system: Fleet) -> None:
    """The limit is on the request: a configuration as deep as it allows is stored, read
    back on every view and delivered (inside the deeper envelopes of the replies)."""
    agent = FakeAgent(system.srv.comms, "at-the-limit", ["edge"])
    deepest = nested(MAX_DEPTH - 2)  # {"type", "params": {"configuration": ...}}
    r = system.api.post(
        "/tasks",
        json={
            "type": "group-configuration-change",
            "params": {"group": "edge", "configuration": deepest},
        },
    )
    assert r.status_code == 202, r.text[:300]
    task = r.json()["data"]
    # Filed without a key, it crossed to the indexer with one the server made.
    assert task["idempotency_key"].startswith("hop:") and r.json()["created"] is True
    wait_until(
        lambda: [c for c in agent.run_once(wait=2) if c["action"]["args"].get("config") == deepest],
        timeout=30,
        what="the deepest configuration delivered",
    )
    assert task_final(system.api, task["id"])["status"] == "success"
    assert (
        system.api.get(f"/tasks/{task['id']}").json()["data"]["params"]["configuration"] == deepest
    )
    assert system.api.get("/groups/edge").json()["data"]["configuration"] == deepest
    assert system.api.get("/commands", params={"task_id": task["id"]}).status_code == 200
    assert (
        system.api.post(
            "/tasks",
            json={
                "type": "group-configuration-change",
                "params": {"group": "edge", "configuration": nested(MAX_DEPTH - 1)},
            },
        ).status_code
        == 422
    )


def test_data_stored_before_the_limit_breaks_no_view(system: Fleet) -> None:
    """Tasks, a group configuration and commands nested 250 and 300 deep, written to the
    store as the old code wrote them: every view answers (the value shown as a marker), the
    commands end `failure` once instead of failing every pull for ever, and the agent's
    other commands still arrive."""
    agent = FakeAgent(system.srv.comms, "legacy-1", ["legacy"])  # polls once rows exist
    store = open_store(system.url)
    task_ids = []
    try:
        for depth in (250, 300):
            deep = nested(depth)
            with store.transaction() as tx:
                tid = tx.insert_task(
                    "group-configuration-change",
                    {"group": "legacy", "configuration": deep},
                    "management-api",
                    "admin",
                    None,
                )
                h, version = tx.put_group_config("legacy", deep, tid)
                tx.insert_commands(
                    tid,
                    "command-manager",
                    "admin",
                    60,
                    tx.now + 3600,
                    [
                        NewCommand(
                            Target.AGENT,
                            agent.id,
                            "apply-group-config",
                            {
                                "groups": ["legacy"],
                                "group": "legacy",
                                "version": version,
                                "group_config_hash": h,
                            },
                        ),
                        NewCommand(
                            Target.AGENT,
                            agent.id,
                            "ar-execute",
                            {"name": "block", "arguments": [deep]},
                        ),
                    ],
                )
            task_ids.append(tid)
    finally:
        store.close()

    api = system.api
    agent.poll(wait=0)  # connecting, the agent has its commands claimed for it at once
    for tid in task_ids:
        final = task_final(api, tid)
        assert final["status"] == "failure" and final["counts"] == {"failure": 2}, final
        assert "unreadable" in final["params"]
        items = api.get("/commands", params={"task_id": tid}).json()["data"]["items"]
        assert {c["status"] for c in items} == {"failure"}
        assert all(c["result"]["message"].startswith("not delivered:") for c in items), items
    page = api.get("/tasks", params={"limit": 1000})
    assert page.status_code == 200 and {t["id"] for t in page.json()["data"]["items"]} >= set(
        task_ids
    )
    group = api.get("/groups/legacy")
    assert group.status_code == 200 and "unreadable" in group.json()["data"]["configuration"]
    # The agent is not fed the marker as a configuration, and its next commands arrive.
    init = agent.http.get("/agents/init")
    assert init.status_code == 422 and init.json()["error"] == "too_deep"
    later = file_task(
        api, "group-configuration-change", {"group": "legacy", "configuration": {"fixed": True}}
    )
    wait_until(
        lambda: any(
            c["action"]["args"].get("config") == {"fixed": True} for c in agent.run_once(wait=2)
        ),
        timeout=30,
        what="next command",
    )
    assert task_final(api, later["id"])["status"] == "success"
    # A pull of the indexer answers, and claims nothing it refused before.
    r = system.node.post("/pull", json={"owner": "probe#1", "target_type": "agent", "wait": 0})
    assert r.status_code == 200 and r.json()["data"]["commands"] == []
    dash = dashboard_session(
        system.srv.api, "admin", (system.srv.data_dir / "admin.password").read_text().strip()
    )
    for path in ("/app/", "/app/tasks", f"/app/tasks/{task_ids[0]}", "/app/groups/legacy"):
        assert dash.get(path).status_code == 200, path
    assert "pull failed" not in system.srv.log()


def test_removed_and_summary_are_not_agent_ids(system: Fleet) -> None:
    """They are indexer routes beside /agents/{id}: 404, not 500 (and a kept connection)."""
    api = system.api
    for _ in range(2):
        r = api.get("/agents/removed")
        assert r.status_code == 404 and r.json()["error"] == "not_found", r.text
    assert api.get("/agents/summary").json()["data"]["total"] >= 0
    dash = dashboard_session(
        system.srv.api, "admin", (system.srv.data_dir / "admin.password").read_text().strip()
    )
    for path in ("/app/agents/removed", "/app/agents/summary"):
        assert dash.get(path).status_code == 404, path


def test_names_with_a_trailing_newline_are_refused(system: Fleet) -> None:
    api = system.api
    r = api.post(
        "/security/users",
        json={"name": "admin\n", "password": "pw-0123456789", "roles": ["readonly"]},
    )
    assert r.status_code == 422, r.text
    assert "admin\n" not in [u["name"] for u in api.get("/security/users").json()["data"]["items"]]
    for group in ("content\n", "web\n"):
        r = api.post(
            "/tasks",
            json={
                "type": "group-configuration-change",
                "params": {"group": group, "configuration": {}},
            },
        )
        assert r.status_code == 422 and r.json()["error"] == "invalid_params", r.text
    agent = FakeAgent(system.srv.comms, "newline-rename", ["web"])
    r = api.post(
        "/tasks", json={"type": "agent-rename", "params": {"agent": agent.id, "name": "renamed\n"}}
    )
    assert r.status_code == 422, r.text
    r = system.node.post("/nodes/server-x%0A/heartbeat", json={})
    assert r.status_code == 422, r.text


def test_the_indexer_schema_needs_the_node_credential(system: Fleet) -> None:
    anon = httpx.Client(base_url=system.idx.url, timeout=10)
    assert anon.get("/openapi.json").status_code == 401
    for page in ("/docs", "/redoc"):
        assert anon.get(page).status_code == 404
    schema = system.node.get("/openapi.json")
    assert schema.status_code == 200 and "/tasks" in schema.json()["paths"]


def test_the_task_manager_refuses_deep_params_in_process(tmp_path: Path) -> None:
    """Below the HTTP edges too (a caller in the indexer's process): what is stored is what
    every reader can serialize."""
    with store_url_for("sqlite", tmp_path) as url:
        store = open_store(url)
        try:
            with pytest.raises(TooDeep):
                TaskManager(store).submit(
                    TaskRequest(
                        "group-configuration-change",
                        {"group": "web", "configuration": nested(MAX_DEPTH)},
                    )
                )
            assert store.list_tasks(limit=10).items == []
        finally:
            store.close()
