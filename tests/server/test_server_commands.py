"""Server-bound commands: every registered server node applies its own copy."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from server.harness import Server, file_task, fleet, login, task_final
from support import wait_until


@pytest.mark.req("C13", "C15")
def test_two_servers_apply_server_config_change(store_url: str, tmp_path: Path) -> None:
    with fleet(store_url, tmp_path, servers=2) as (idx, nodes):
        api = nodes[0].admin()
        with idx.client() as ic:
            wait_until(
                lambda: (
                    {n["id"] for n in ic.get("/nodes").json()["data"]["items"]}
                    >= {n.node_id for n in nodes}
                ),
                timeout=15,
                what="both nodes registered",
            )
        task = file_task(
            api,
            "server-config-change",
            {"settings": {"log_level": "debug", "comms.max_poll_wait": 45}},
        )
        final = task_final(api, task["id"])
        assert final["status"] == "success", final
        items = api.get("/commands", params={"task_id": task["id"]}).json()["data"]["items"]
        assert sorted(c["target"]["id"] for c in items) == sorted(n.node_id for n in nodes)
        for c in items:
            assert c["status"] == "success"
            data = c["result"]["data"]
            assert data["node"] == c["target"]["id"]
            assert data["changed"]["comms.max_poll_wait"] == {"old": 60.0, "new": 45}
            assert data["changed"]["log_level"]["new"] == "debug"
        rbac_change_reaches_every_node(api, nodes)
        # Applied live on both: a second node reads the merged, stored settings on start.
        late = Server(idx, tmp_path / "late").start()
        try:
            assert "live configuration loaded (2 setting(s) changed)" in wait_until(
                lambda: ("live configuration" in late.log()) and late.log(), timeout=10
            )
        finally:
            late.stop()


def rbac_change_reaches_every_node(api: httpx.Client, nodes: list[Server]) -> None:
    """Row 15: a user made on one node is an rbac-change task with one command per node;
    each node refreshes its cache and reports it, so the user logs in on the other node, and
    a user disabled through the other node is refused on the first."""
    made = api.post(
        "/security/users", json={"name": "erin", "password": "erin-pw-12345", "roles": ["readonly"]}
    )
    assert made.status_code == 201, made.text
    [task] = api.get("/tasks", params={"type": "rbac-change", "limit": 1}).json()["data"]["items"]
    assert task_final(api, task["id"])["status"] == "success"
    items = api.get("/commands", params={"task_id": task["id"]}).json()["data"]["items"]
    assert sorted(c["target"]["id"] for c in items) == sorted(n.node_id for n in nodes)
    for c in items:
        assert c["result"]["data"]["node"] == c["target"]["id"]
        assert c["result"]["data"]["users"] >= 2  # admin and erin, in that node's cache
    erin = login(nodes[1].api, "erin", "erin-pw-12345")
    assert erin.get("/tasks").status_code == 200
    other = nodes[1].admin((nodes[0].data_dir / "admin.password").read_text().strip())
    assert other.patch("/security/users/erin", json={"disabled": True}).status_code == 200
    wait_until(
        lambda: (
            httpx.post(
                f"{nodes[0].api}/security/user/authenticate", auth=("erin", "erin-pw-12345")
            ).status_code
            == 401
        ),
        timeout=15,
        what="erin refused on the first node once disabled on the second",
    )


@pytest.mark.req("C12")
def test_bad_ruleset_refused_on_each_node_rules_kept(store_url: str, tmp_path: Path) -> None:
    """A ruleset that does not parse fails the node's command with the reason, and the
    node keeps serving (the rules in force are not replaced by nothing)."""
    with fleet(store_url, tmp_path) as (_, [srv]):
        api = srv.admin()
        task = file_task(api, "ruleset-update", {"version": "1", "rules": []})
        final = task_final(api, task["id"])
        assert final["status"] == "failure"
        [cmd] = api.get("/commands", params={"task_id": task["id"]}).json()["data"]["items"]
        assert cmd["target"]["id"] == srv.node_id
        message = cmd["result"]["message"]
        assert message.startswith("ruleset refused, rules in force kept"), message
        assert "rules" in message
        assert httpx.get(f"{srv.api}/health").json()["node"] == srv.node_id


def test_two_servers_starting_at_once_on_a_new_store_both_come_up(
    store_url: str, tmp_path: Path
) -> None:
    """Both create `admin` at the same moment; the indexer refuses the second write (the node
    credential may only create the first): that node must start all the same, and exactly
    one password file names the one admin (found by the multinode benchmark)."""
    from support import Indexer, Role, wait_http

    idx = Indexer(store_url, tmp_path / "indexer").start()
    nodes = [Server(idx, tmp_path / f"server{i}") for i in range(2)]
    try:
        for n in nodes:
            Role.start(n)
        for n in nodes:
            wait_http(f"{n.api}/health", proc=n.proc, timeout=30)
        made = [n for n in nodes if (n.data_dir / "admin.password").exists()]
        assert len(made) == 1, [n.log()[-2000:] for n in nodes]
        for n in nodes:  # the one admin logs in on either node
            password = (made[0].data_dir / "admin.password").read_text().strip()
            login(n.api, "admin", password).get("/tasks").raise_for_status()
    finally:
        for n in nodes:
            n.stop()
        idx.stop()
