"""The agent modules end to end with real processes (indexer, server, `fleetcmd agent`):
inventory on vulnerability-rescan (C8), active-response configuration and execution (C10,
C11), SCA content updates (C7) and upgrades with rollback (C3). Each asserts what the agent did
(its state folder), what the indexer recorded, and the task's final counts."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import fleetcmd
from fleetcmd.agent.state import StateDir
from fleetcmd.content.sample import SAMPLE_SOURCE
from server.harness import dashboard_page

from .packages import build_package, new_key, sign_package
from .test_e2e import POLICY, Fleet, commands_of, fleet, run_task, status

__all__ = ["fleet"]  # the fixture, shared with test_e2e


def join(fleet: Fleet, c: httpx.Client, name: str, group: str, *extra: str) -> tuple[str, Path]:
    run_task(c, "group-configuration-change", {"group": group, "configuration": {}})
    _, state = fleet.agent(name, *extra)
    aid = status(state)["id"]
    t = run_task(c, "group-assignment-change", {"agents": [aid], "groups": [group]})
    assert t["counts"] == {"success": 1}, t
    return aid, state


def results(c: httpx.Client, task: dict[str, Any]) -> list[dict[str, Any]]:
    return [x["result"] for x in commands_of(c, task)]


@pytest.mark.req("C8", "C10", "C11")
def test_rescan_and_active_response_end_to_end(fleet: Fleet) -> None:
    with fleet.client() as c:
        aid, state = join(fleet, c, "agent-mod-1", "web")

        # C8: the inventory is sent again at once; the indexer holds both sources
        t = run_task(c, "vulnerability-rescan", {"agents": [aid], "reason": "e2e"})
        assert t["status"] == "success" and t["counts"] == {"success": 1}, t
        sent = results(c, t)[0]["data"]
        assert sent["sent"]["python"] > 0 and sent["total"] == sum(sent["sent"].values())
        doc = c.get(f"/indexes/packages/{aid}").json()["data"]
        assert len(doc["packages"]) == sent["total"]
        assert {p["source"] for p in doc["packages"]} == set(sent["sent"])

        # C10: the definition is stored by the agent (and the bundled script is in its bin/)
        block_ip = json.loads((SAMPLE_SOURCE / "active-response" / "block-ip.json").read_text())
        t = run_task(
            c,
            "active-response-configuration",
            {"group": "web", "name": "block-ip", "definition": block_ip},
        )
        assert t["counts"] == {"success": 1}, t
        assert status(state)["active_responses"] == ["block-ip"]
        assert (state / "active-response" / "bin" / "block-ip").is_file()

        # C11: executed for real, exit code and output reported
        t = run_task(
            c,
            "active-response-execution",
            {
                "name": "block-ip",
                "arguments": ["198.51.100.23"],
                "target": {"agents": [aid]},
                "reason": "e2e",
            },
        )
        assert t["counts"] == {"success": 1}, t
        r = results(c, t)[0]
        assert r["data"]["exit_code"] == 0 and "198.51.100.23" in r["data"]["stdout"]
        assert (
            state / "active-response" / "lists" / "deny-ip.txt"
        ).read_text() == "198.51.100.23\n"

        # ...and an argument the definition does not allow is refused, nothing run
        t = run_task(
            c,
            "active-response-execution",
            {"name": "block-ip", "arguments": ["1.2.3.4; reboot"], "target": {"agents": [aid]}},
        )
        assert t["counts"] == {"failure": 1}, t
        assert "is not allowed by block-ip" in results(c, t)[0]["message"]
        assert (
            state / "active-response" / "lists" / "deny-ip.txt"
        ).read_text() == "198.51.100.23\n"


@pytest.mark.req("C7")
def test_sca_content_update_end_to_end(fleet: Fleet) -> None:
    with fleet.client() as c:
        _, state = join(fleet, c, "agent-mod-2", "web")
        t = run_task(
            c, "sca-policy-change", {"group": "web", "policy_id": "cis-1", "policy": POLICY}
        )
        assert t["counts"] == {"success": 1}, t
        assert status(state)["sca_results"]["cis-1"]["summary"]["fail"] == 1
        # the content manager's step "1- Update SCA index", then its task
        v2 = {**POLICY, "version": "2", "checks": POLICY["checks"][:1]}
        assert c.put("/indexes/sca/content/cis-1", json=v2).status_code == 200
        t = run_task(
            c,
            "sca-content-update",
            {"policy_id": "cis-1", "version": "2"},
            source="content-manager",
            user="content-manager",
        )
        assert t["counts"] == {"success": 1}, results(c, t)
        st = status(state)
        assert st["sca_results"]["cis-1"]["version"] == "2"
        assert st["sca_results"]["cis-1"]["summary"] == {
            "pass": 1,
            "fail": 0,
            "na": 0,
            "score": 100,
        }


@pytest.mark.req("C7")
def test_sca_content_too_large_to_attach_is_fetched(fleet: Fleet) -> None:
    """A policy over the attach limit travels as id + version; the agent fetches it from
    the Comms API (which serves only the indexed content) and stores that version."""
    with fleet.client() as c:
        _, state = join(fleet, c, "agent-mod-4", "db")
        t = run_task(
            c,
            "sca-policy-change",
            {"group": "db", "policy_id": "cis-big", "policy": {**POLICY, "id": "cis-big"}},
        )
        assert t["counts"] == {"success": 1}, t
        big = {**POLICY, "id": "cis-big", "version": "7", "description": "x" * 70_000}
        assert c.put("/indexes/sca/content/cis-big", json=big).status_code == 200
        t = run_task(
            c,
            "sca-content-update",
            {"policy_id": "cis-big", "version": "7"},
            source="content-manager",
            user="content-manager",
        )
        [cmd] = commands_of(c, t)
        assert t["counts"] == {"success": 1}, cmd
        assert cmd["result"]["data"]["previous_version"] == "1"
        assert status(state)["sca_results"]["cis-big"]["version"] == "7"
        # a version the index does not hold is refused by the agent, nothing replaced
        t = run_task(
            c,
            "sca-content-update",
            {"policy_id": "cis-big", "version": "8"},
            source="content-manager",
            user="content-manager",
        )
        assert t["counts"] == {"failure": 1}, t
        assert "nothing replaced" in results(c, t)[0]["message"]
        assert status(state)["sca_results"]["cis-big"]["version"] == "7"


@pytest.fixture
def store_fleet(store_url: str, tmp_path: Path) -> Iterator[Fleet]:
    """Like `fleet`, on each store."""
    f = Fleet(tmp_path, store_url).start()
    try:
        yield f
    finally:
        f.stop()


def sca_results_of(c: httpx.Client, aid: str) -> dict[str, Any]:
    r = c.get("/indexes/sca-results", params={"prefix": f"{aid}/"})
    assert r.status_code == 200, r.text
    return dict(r.json()["data"]["items"])


@pytest.mark.req("C6", "C7")
def test_sca_results_reach_the_index_the_api_and_the_dashboard(store_fleet: Fleet) -> None:
    """The agent's scan is written to `sca-results/<agent>/<policy>` (score, counts, each
    check's verdict) and the next scan of that policy replaces it."""
    fleet = store_fleet
    assert fleet.server is not None
    with fleet.client() as c:
        aid, state = join(fleet, c, "agent-sca-1", "web")
        t = run_task(
            c, "sca-policy-change", {"group": "web", "policy_id": "cis-1", "policy": POLICY}
        )
        assert t["counts"] == {"success": 1}, t
        docs = sca_results_of(c, aid)  # stored before the agent's events were answered
        assert list(docs) == [f"{aid}/cis-1"]
        doc = docs[f"{aid}/cis-1"]
        assert (doc["agent"], doc["policy_id"], doc["policy_name"], doc["policy_version"]) == (
            aid,
            "cis-1",
            "e2e",
            "1",
        )
        assert (
            doc["passed"],
            doc["failed"],
            doc["not_applicable"],
            doc["total"],
            doc["score"],
        ) == (1, 1, 0, 2, 50)
        assert {ch["id"]: ch["status"] for ch in doc["checks"]} == {"1": "passed", "2": "failed"}
        failed = next(ch for ch in doc["checks"] if ch["id"] == "2")
        assert "/nonexistent/fleetcmd-e2e" in failed["reason"]
        assert doc["scanned_at"] and doc["received_at"] > 0
        assert status(state)["sca_results"]["cis-1"]["summary"]["score"] == doc["score"]

        # a new version of the policy: the latest scan replaces the previous one
        v2 = {**POLICY, "version": "2", "checks": POLICY["checks"][:1]}
        assert c.put("/indexes/sca/content/cis-1", json=v2).status_code == 200
        t = run_task(
            c,
            "sca-content-update",
            {"policy_id": "cis-1", "version": "2"},
            source="content-manager",
            user="content-manager",
        )
        assert t["counts"] == {"success": 1}, results(c, t)
        docs = sca_results_of(c, aid)
        assert list(docs) == [f"{aid}/cis-1"]
        doc = docs[f"{aid}/cis-1"]
        assert (
            doc["policy_version"],
            doc["passed"],
            doc["failed"],
            doc["total"],
            doc["score"],
        ) == ("2", 1, 0, 1, 100)

    # operators read them on the Management API and on the agent's dashboard page
    with fleet.server.admin() as api:
        r = api.get("/sca-results", params={"agent": aid})
        assert r.status_code == 200, r.text
        [item] = r.json()["data"]["items"]
        assert item["id"] == f"{aid}/cis-1" and item["score"] == 100
        page = dashboard_page(api, f"/app/agents/{aid}")
    assert page.status_code == 200, page.text
    assert "No SCA results" not in page.text
    assert "e2e" in page.text and "100 %" in page.text


def publish(
    c: httpx.Client, key: Path, version: str, data: bytes, signature: str | None = None
) -> None:
    """What the content manager stores for an agent package: the blob and its record."""
    sha, sig = sign_package(key, "fleetcmd", version, data)
    assert c.put(f"/blobs/{sha}", content=data).status_code == 200
    record = {
        "name": "fleetcmd",
        "version": version,
        "size": len(data),
        "sha256": sha,
        "signature": signature or sig,
    }
    assert c.put(f"/indexes/agent-packages/fleetcmd-{version}", json=record).status_code == 200


@pytest.mark.req("C3")
def test_agent_upgrade_end_to_end(fleet: Fleet, tmp_path: Path) -> None:
    key = tmp_path / "feed.key"
    pub = new_key(key)
    good = build_package(tmp_path, "0.1.1").read_bytes()
    crash = build_package(tmp_path, "0.1.2", "crash").read_bytes()
    with fleet.client() as c:
        aid, state = join(fleet, c, "agent-mod-3", "web", "--trust-key", str(pub))
        try:
            # a package whose record carries another package's signature: refused
            publish(
                c, key, "0.1.4", good, signature=sign_package(key, "fleetcmd", "0.1.4", crash)[1]
            )
            t = run_task(c, "agent-upgrade", {"agents": [aid], "version": "0.1.4"})
            assert t["counts"] == {"failure": 1}, t
            assert "upgrade refused, nothing changed" in results(c, t)[0]["message"]
            assert status(state)["version"] == fleetcmd.__version__

            # success: downloaded from the Comms API, verified, switched, version reported
            publish(c, key, "0.1.1", good)
            t = run_task(
                c, "agent-upgrade", {"agents": [aid], "version": "0.1.1", "package": "fleetcmd"}
            )
            assert t["status"] == "success" and t["counts"] == {"success": 1}, results(c, t)
            assert results(c, t)[0]["data"] == {
                "version": "0.1.1",
                "previous": fleetcmd.__version__,
            }
            assert status(state)["version"] == "0.1.1"
            assert c.get(f"/agents/{aid}").json()["data"]["version"] == "0.1.1"

            # a version that dies at start: rolled back to 0.1.1, the command a failure
            publish(c, key, "0.1.2", crash)
            t = run_task(c, "agent-upgrade", {"agents": [aid], "version": "0.1.2"})
            assert t["counts"] == {"failure": 1}, t
            message = results(c, t)[0]["message"]
            assert "upgrade to 0.1.2 rolled back to 0.1.1" in message, message
            st = status(state)
            assert st["version"] == "0.1.1" and st["upgrade"]["last"]["state"] == "rolled-back"
            assert c.get(f"/agents/{aid}").json()["data"]["version"] == "0.1.1"
        finally:
            pid = StateDir(state).running_pid()
            if pid is not None:  # the version the watchdog restarted is no child of the test
                os.kill(pid, signal.SIGTERM)
