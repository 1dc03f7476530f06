"""The engine and the content commands end to end: a real indexer and a real server, agents
played with httpx over the real Comms API (rows 4, 8, 9, 11, 12 on the server side)."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetcmd.model import content_signing as signing
from server.harness import FakeAgent, file_task, fleet, task_final
from support import Indexer, wait_until

SSH = {"program": "sshd", "message": {"regex": "(Failed password|Invalid user)"}}
BRUTE_FORCE = {
    "id": 100101,
    "level": 10,
    "description": "sshd: brute force from one address",
    "groups": ["sshd", "attack"],
    "match": SSH,
    "threshold": {"count": 4, "window": 120, "group_by": ["srcip"]},
    "active_response": {"name": "block-ip", "target": "agent", "arguments": ["{srcip}"]},
}
SUDO = {
    "id": 100500,
    "level": 8,
    "description": "sudo to root",
    "match": {"program": "sudo", "user": {"in": ["root"]}},
}


def failed_login(ip: str, n: int) -> dict[str, Any]:
    return {
        "program": "sshd",
        "message": f"Failed password for root from {ip} port {n}",
        "srcip": ip,
        "timestamp": time.time() + n / 1000,
    }


def post_events(agent: FakeAgent, events: list[dict[str, Any]]) -> None:
    r = agent.http.post("/agents/events", json={"events": events})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["accepted"] == len(events)


def alerts_of(idx: Indexer, agent_id: str) -> dict[str, Any]:
    with idx.client() as ic:
        return dict(
            ic.get("/indexes/alerts", params={"prefix": f"{agent_id}/"}).json()["data"]["items"]
        )


def unattended(idx: Indexer, type_: str, params: dict[str, Any], key: str) -> dict[str, Any]:
    """A task as the content manager files it (rows 4 and 9 are unattended only)."""
    with idx.client() as ic:
        r = ic.post(
            "/tasks",
            json={
                "type": type_,
                "params": params,
                "source": "content-manager",
                "user": "content-manager",
                "idempotency_key": key,
            },
        )
    assert r.status_code == 202, r.text
    return dict(r.json()["data"])


def only_command(api: httpx.Client, task_id: int) -> dict[str, Any]:
    [cmd] = api.get("/commands", params={"task_id": task_id}).json()["data"]["items"]
    return dict(cmd)


@pytest.mark.req("C11", "C12")
def test_event_burst_fires_alert_and_active_response_reaches_the_agent(
    store_url: str, tmp_path: Path
) -> None:
    with fleet(store_url, tmp_path) as (idx, [srv]):
        api = srv.admin()
        loaded = task_final(
            api,
            file_task(api, "ruleset-update", {"version": "1.0.0", "rules": [BRUTE_FORCE]})["id"],
        )
        assert loaded["status"] == "success", loaded
        agent = FakeAgent(srv.comms, "web-1")
        bystander = FakeAgent(srv.comms, "web-2")
        assert agent.poll(wait=0) == [] and bystander.poll(wait=0) == []

        # Three failures: below the threshold. A fourth from another address: still nothing.
        post_events(agent, [failed_login("203.0.113.7", i) for i in range(3)])
        post_events(agent, [failed_login("198.51.100.1", 9)])
        time.sleep(1.0)
        assert alerts_of(idx, agent.id) == {}
        # The fourth from the same address within the window fires, and so do the next four
        # (alert again, response throttled within the rule's window).
        post_events(agent, [failed_login("203.0.113.7", 3)])
        post_events(agent, [failed_login("203.0.113.7", 10 + i) for i in range(4)])

        alerts = wait_until(
            lambda: len(alerts_of(idx, agent.id)) >= 2 and alerts_of(idx, agent.id),
            timeout=20,
            what="two alerts",
        )
        first, second = (alerts[k] for k in sorted(alerts, key=lambda k: alerts[k]["timestamp"]))
        assert first["rule"] == {
            "id": 100101,
            "level": 10,
            "groups": ["sshd", "attack"],
            "description": "sshd: brute force from one address",
        }
        assert first["agent"] == {"id": agent.id}
        assert first["threshold"]["events"] == 4
        assert first["threshold"]["group"] == {"srcip": "203.0.113.7"}
        assert first["event"]["srcip"] == "203.0.113.7"
        assert first["ruleset_version"] == "1.0.0"
        response = first["active_response"]
        assert response["status"] == "filed" and response["arguments"] == ["203.0.113.7"]
        assert second["active_response"]["status"] == "throttled"

        # Row 11: the task, filed by the engine, expanded by the command manager to the
        # sending agent only, reaches its long-poll.
        task = api.get(f"/tasks/{response['task_id']}").json()["data"]
        assert task["type"] == "active-response-execution"
        assert (task["source"], task["user"]) == ("engine", "engine")
        assert task["params"]["target"]["agents"] == [agent.id]
        assert task["params"]["reason"].startswith("rule 100101:")
        engine_tasks = api.get("/tasks", params={"source": "engine"}).json()["data"]["items"]
        assert [t["id"] for t in engine_tasks] == [task["id"]]  # throttled: filed once

        [cmd] = wait_until(lambda: agent.poll(wait=5), timeout=30, what="ar-execute delivered")
        assert cmd["action"]["name"] == "ar-execute"
        assert cmd["task_id"] == task["id"] and cmd["source"] == "command-manager"
        assert cmd["action"]["args"]["name"] == "block-ip"
        assert cmd["action"]["args"]["arguments"] == ["203.0.113.7"]
        agent.ack([cmd["id"]])
        agent.report(
            [
                {
                    "id": cmd["id"],
                    "status": "success",
                    "code": 0,
                    "message": "blocked",
                    "data": {"exit_code": 0, "output": "added 203.0.113.7"},
                }
            ]
        )
        final = task_final(api, task["id"])
        assert final["status"] == "success" and final["counts"] == {"success": 1}
        assert bystander.poll(wait=1) == []
        assert alerts_of(idx, bystander.id) == {}


@pytest.mark.req("C12")
def test_ruleset_update_reloads_rules_and_a_broken_ruleset_keeps_the_old_ones(
    store_url: str, tmp_path: Path
) -> None:
    with fleet(store_url, tmp_path) as (idx, [srv]):
        api = srv.admin()
        agent = FakeAgent(srv.comms, "db-1")
        sudo = {"program": "sudo", "user": "root", "command": "/bin/sh"}

        v1 = task_final(
            api, file_task(api, "ruleset-update", {"version": "1", "rules": [BRUTE_FORCE]})["id"]
        )
        assert v1["status"] == "success", v1
        post_events(agent, [sudo])
        time.sleep(1.0)
        assert alerts_of(idx, agent.id) == {}  # no rule for sudo yet

        v2 = file_task(api, "ruleset-update", {"version": "2", "rules": [BRUTE_FORCE, SUDO]})
        assert task_final(api, v2["id"])["status"] == "success"
        data = only_command(api, v2["id"])["result"]["data"]
        assert (data["version"], data["rules"], data["previous"]) == ("2", 2, "1")
        post_events(agent, [sudo])  # the new rule fires, without a restart
        [alert] = wait_until(
            lambda: list(alerts_of(idx, agent.id).values()), timeout=20, what="sudo alert"
        ).__iter__()
        assert alert["rule"]["id"] == 100500 and alert["ruleset_version"] == "2"

        broken = {**SUDO, "id": 100501, "match": {"program": {"regex": "(unclosed"}}}
        v3 = file_task(api, "ruleset-update", {"version": "3", "rules": [broken]})
        final = task_final(api, v3["id"])
        assert final["status"] == "failure"
        result = only_command(api, v3["id"])["result"]
        assert "ruleset refused, rules in force kept" in result["message"]
        assert "bad regex" in result["message"]
        assert (result["data"]["version"], result["data"]["rules"]) == ("2", 2)
        post_events(agent, [{**sudo, "command": "/bin/bash"}])  # version 2 still in force
        wait_until(lambda: len(alerts_of(idx, agent.id)) == 2, timeout=20, what="2nd alert")

        # A restart reads the broken index document and falls back to the last good ruleset.
        srv.stop()
        srv.start()
        assert "running the last good ruleset 2" in srv.log()


def cve(ident: str, package: str, ecosystem: str, fixed: str, severity: str) -> dict[str, Any]:
    return {
        "id": ident,
        "version": "1",
        "package": package,
        "ecosystem": ecosystem,
        "affected": [{"introduced": "0", "fixed": fixed}],
        "severity": severity,
        "summary": f"[TEST DATA] {package} before {fixed}",
        "sha256": "00" * 32,
    }


@pytest.mark.req("C8", "C9")
def test_cve_content_update_reloads_and_rematches_inventories(
    store_url: str, tmp_path: Path
) -> None:
    with fleet(store_url, tmp_path) as (idx, [srv]):
        api = srv.admin()
        agent = FakeAgent(srv.comms, "host-1")
        assert agent.poll(wait=0) == []
        inventory = [
            {"name": "libc6", "version": "2.36-9+deb12u1", "source": "dpkg"},
            {"name": "openssl", "version": "3.0.11-1~deb12u2", "source": "dpkg"},
            {"name": "Jinja2", "version": "3.1.2", "source": "python"},
            {"name": "bash", "version": "5.2.15-2+b7", "source": "dpkg"},
        ]
        r = agent.http.post("/agents/inventory", json={"packages": inventory})
        assert r.status_code == 200, r.text

        def findings() -> list[dict[str, Any]] | None:
            with idx.client() as ic:
                doc = ic.get(f"/indexes/vulnerabilities/{agent.id}")
            return doc.json()["data"]["findings"] if doc.status_code == 200 else None

        wait_until(lambda: findings() is not None, timeout=20, what="first scan")
        assert findings() == []  # no CVE data yet

        with idx.client() as ic:
            for record in (
                cve("CVE-2023-4911", "libc6", "debian", "2.36-9+deb12u3", "high"),
                cve(
                    "CVE-2023-5678", "openssl", "debian", "3.0.11-1~deb12u2", "medium"
                ),  # fixed in exactly the installed version
                cve("CVE-2024-22195", "jinja2", "pypi", "3.1.3", "medium"),
                cve("CVE-2022-3715", "bash", "debian", "5.2.15-2+b1", "low"),
            ):
                assert ic.put(f"/indexes/cve/{record['id']}", json=record).status_code == 200
        task = unattended(idx, "cve-content-update", {"version": "test-2"}, "cve-test-2")
        final = task_final(api, task["id"])
        assert final["status"] == "success", final
        data = only_command(api, task["id"])["result"]["data"]
        assert data["version"] == "test-2" and data["records"] == 4
        assert data["agents_rematched"] == 1 and data["findings"] == 2
        got = findings()
        assert got is not None
        assert [
            (f["cve"], f["package"], f["installed"], f["fixed"], f["severity"]) for f in got
        ] == [
            ("CVE-2023-4911", "libc6", "2.36-9+deb12u1", "2.36-9+deb12u3", "high"),
            ("CVE-2024-22195", "Jinja2", "3.1.2", "3.1.3", "medium"),
        ]

        # Row 8: a rescan makes the agent re-send its inventory; the engine re-matches it.
        rescan = unattended(idx, "vulnerability-rescan", {"all": True, "reason": "test"}, "rs")
        [cmd] = wait_until(lambda: agent.poll(wait=5), timeout=30, what="rescan delivered")
        assert cmd["action"]["name"] == "vulnerability-rescan"
        agent.ack([cmd["id"]])
        patched = [
            {**p, "version": "2.36-9+deb12u3"} if p["name"] == "libc6" else p for p in inventory
        ]
        assert agent.http.post("/agents/inventory", json={"packages": patched}).status_code == 200
        agent.report(
            [
                {
                    "id": cmd["id"],
                    "status": "success",
                    "code": 0,
                    "message": "sent",
                    "data": {"packages": len(patched)},
                }
            ]
        )
        assert task_final(api, rescan["id"])["status"] == "success"
        wait_until(
            lambda: [f["cve"] for f in findings() or []] == ["CVE-2024-22195"],
            timeout=20,
            what="libc6 finding gone after the rescan",
        )


def publish_package(
    idx: Indexer,
    name: str,
    version: str,
    content: bytes,
    key: Ed25519PrivateKey,
    size: int | None = None,
) -> dict[str, Any]:
    """What the content manager stores for an agent package: the blob and its record."""
    digest = hashlib.sha256(content).hexdigest()
    record = {
        "name": name,
        "version": version,
        "sha256": digest,
        "size": len(content) if size is None else size,
        "signature": signing.sign(
            key, signing.item_statement("agent-package", name, version, digest)
        ),
        "feed": "test",
        "serial": 1,
    }
    with idx.client() as ic:
        assert ic.put(f"/blobs/{digest}", content=content).status_code == 200
        assert ic.put(f"/indexes/agent-packages/{name}-{version}", json=record).status_code == 200
    return record


@pytest.mark.req("C4")
def test_agent_package_new_fetches_verifies_and_serves_the_package(
    store_url: str, tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    content = b"fleetcmd agent package \x00\x01" * 5000
    with fleet(store_url, tmp_path) as (idx, [srv]):
        api = srv.admin()
        record = publish_package(idx, "fleetcmd", "9.9.9", content, key)
        task = unattended(
            idx,
            "agent-package-new",
            {"package": "fleetcmd", "version": "9.9.9", "sha256": record["sha256"]},
            "pkg-9.9.9",
        )
        final = task_final(api, task["id"])
        assert final["status"] == "success", final
        data = only_command(api, task["id"])["result"]["data"]
        assert {k: data[k] for k in ("name", "version", "sha256", "size")} == {
            "name": "fleetcmd",
            "version": "9.9.9",
            "sha256": record["sha256"],
            "size": len(content),
        }
        assert (srv.data_dir / "packages" / "fleetcmd-9.9.9.pkg").read_bytes() == content

        agent = FakeAgent(srv.comms, "upgrader")
        for name in ("fleetcmd-9.9.9.tar.gz", "fleetcmd-9.9.9"):
            r = agent.http.get(f"/agents/packages/{name}")
            assert r.status_code == 200, r.text
            assert r.content == content
            assert r.headers["x-package-sha256"] == hashlib.sha256(r.content).hexdigest()
            # What the agent checks: the CTI signature over the package statement.
            key.public_key().verify(
                base64.b64decode(r.headers["x-package-signature"]),
                signing.item_statement(
                    "agent-package", "fleetcmd", "9.9.9", r.headers["x-package-sha256"]
                ),
            )

        # Not fetched by a task yet: fetched from the indexer on the first download.
        later = publish_package(idx, "fleetcmd", "10.0.0", b"newer build", key)
        r = agent.http.get("/agents/packages/fleetcmd-10.0.0.tar.gz")
        assert r.status_code == 200 and r.content == b"newer build"
        assert r.headers["x-package-sha256"] == later["sha256"]

        # A record whose size does not match its bytes is refused, and nothing is stored.
        publish_package(idx, "fleetcmd", "6.6.6", b"tampered", key, size=3)
        bad = unattended(
            idx,
            "agent-package-new",
            {
                "package": "fleetcmd",
                "version": "6.6.6",
                "sha256": hashlib.sha256(b"tampered").hexdigest(),
            },
            "pkg-6.6.6",
        )
        assert task_final(api, bad["id"])["status"] == "failure"
        assert "more than the 3 bytes" in only_command(api, bad["id"])["result"]["message"]
        assert not (srv.data_dir / "packages" / "fleetcmd-6.6.6.pkg").exists()
        assert agent.http.get("/agents/packages/fleetcmd-6.6.6").status_code == 502

        # Unknown packages are a JSON 404; names that try to leave the folder are refused.
        r = agent.http.get("/agents/packages/fleetcmd-0.0.1.tar.gz")
        assert r.status_code == 404 and r.json()["error"] == "package_not_found"
        (srv.data_dir / "packages" / "secret.json").write_text("{}")
        for raw in (
            "..%2F..%2Fadmin.password",
            "..%2Fsecret",
            "%2E%2E",
            "..",
            "fleetcmd-9.9.9..tar.gz",
            "a%00b",
        ):
            r = agent.http.get(f"/agents/packages/{raw}")
            assert r.status_code in (400, 404), (raw, r.status_code)
            assert r.headers["content-type"].startswith("application/json"), raw
            assert b"admin" not in r.content or r.json()["error"], raw
        # Without an agent token there is no download at all.
        assert httpx.get(f"{srv.comms}/agents/packages/fleetcmd-9.9.9").status_code == 401
