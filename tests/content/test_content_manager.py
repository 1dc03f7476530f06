"""The content manager against a real indexer process, with the feed over HTTP on loopback:
0- download content, 1- update the content index, 2- file the unattended task (rows 4, 7, 8,
9, 10, 12), once per item version, and never with content it cannot verify."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetcmd.content.feed import MANIFEST, open_feed
from fleetcmd.content.indexer_api import IndexerApi, IndexerError
from fleetcmd.content.manager import ContentManager, PollReport
from fleetcmd.model import content_signing as signing
from support import FLEETCMD, Indexer, free_port

from .conftest import FeedServer, Publisher

BASELINE = "sca/debian12-baseline.yaml"


@pytest.fixture
def indexer(store_url: str, tmp_path: Path) -> Iterator[Indexer]:
    idx = Indexer(store_url, tmp_path / "indexer").start()
    try:
        yield idx
    finally:
        idx.stop()


@pytest.fixture
def sqlite_indexer(tmp_path: Path) -> Iterator[Indexer]:
    idx = Indexer(f"sqlite:///{tmp_path / 'idx.db'}", tmp_path / "indexer").start()
    try:
        yield idx
    finally:
        idx.stop()


def manager(idx: Indexer, feed: str, trusted: signing.TrustedKeys, state: Path) -> ContentManager:
    return ContentManager(IndexerApi(idx.url, idx.token), open_feed(feed), trusted, state)


def doc(c: httpx.Client, index: str, doc_id: str) -> Any:
    r = c.get(f"/indexes/{index}/{doc_id}")
    return r.json()["data"] if r.status_code == 200 else None


def refusal(c: httpx.Client, target: str) -> Any:
    """The details of the newest `content.refuse` audit record about `target`."""
    r = c.get(
        "/audit", params={"actor": "content-manager", "action": "content.refuse", "target": target}
    )
    r.raise_for_status()
    [first, *_] = r.json()["data"]["items"]
    assert first["outcome"] == "refused"
    return first["details"]


def cm_tasks(c: httpx.Client) -> list[dict[str, Any]]:
    r = c.get("/tasks", params={"source": "content-manager", "limit": 1000})
    r.raise_for_status()
    return sorted(r.json()["data"]["items"], key=lambda t: t["id"])


def of_type(tasks: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [t for t in tasks if t["type"] == type_]


def fleet(c: httpx.Client) -> None:
    """Two agents in group `web` that uses the baseline policy and has `block-ip` enabled
    (an older definition), one agent in `db` with neither."""
    r = c.post(
        "/agents",
        json={
            "agents": [
                {"id": "a1", "name": "web-1", "groups": ["web"]},
                {"id": "a2", "name": "web-2", "groups": ["web"]},
                {"id": "a3", "name": "db-1", "groups": ["db"]},
            ]
        },
    )
    r.raise_for_status()
    c.put("/indexes/sca/web/debian12-baseline", json={"id": "debian12-baseline"}).raise_for_status()
    old = {"name": "block-ip", "version": "0.9", "executable": "block-ip", "timeout": 5}
    c.put("/indexes/active-response/web/block-ip", json=old).raise_for_status()


@pytest.mark.req("C4", "C7", "C9", "C10", "C12")
def test_http_feed_fills_the_indexes_and_files_each_unattended_task_once(
    indexer: Indexer, publisher: Publisher, feed_server: FeedServer, tmp_path: Path
) -> None:
    c = indexer.client()
    fleet(c)
    m1 = publisher.publish()
    state = tmp_path / "cm" / "content-state.json"
    cm = manager(indexer, feed_server.url, publisher.public(), state)

    report = cm.poll_once()
    assert report.status == "applied", report.to_json()
    assert not report.refused and not report.errors
    assert len(report.applied) == len(m1.items) == 13

    # 1- the content indexes
    policy = doc(c, "sca", "content/debian12-baseline")
    assert policy["version"] == "1.0.0" and policy["checks"][0]["rules"]
    assert policy["sha256"] == publisher.item(m1, "sca:debian12-baseline").sha256
    cve = doc(c, "cve", "CVE-2023-4911")
    assert cve["package"] == "libc6" and cve["ecosystem"] == "debian" and cve["sample"] is True
    assert cve["affected"] == [{"introduced": "2.34-1", "fixed": "2.36-9+deb12u3"}]
    rules = doc(c, "ruleset", "rules")
    assert rules["version"] == "1.0.0"
    brute = next(r for r in rules["rules"] if r["id"] == 100101)
    assert brute["level"] == 10 and brute["active_response"]["name"] == "firewall-drop"
    assert doc(c, "active-response", "content/block-ip")["executable"] == "block-ip"
    pkg_item = publisher.item(m1, "agent-package:fleetcmd")
    pkg = doc(c, "agent-packages", f"fleetcmd-{pkg_item.version}")
    assert pkg["sha256"] == pkg_item.sha256 and pkg["signature"] == pkg_item.signature
    blob = c.get(f"/blobs/{pkg_item.sha256}")
    assert blob.status_code == 200 and hashlib.sha256(blob.content).hexdigest() == pkg_item.sha256

    # 2- the unattended tasks, each from the content manager
    tasks = cm_tasks(c)
    assert {t["source"] for t in tasks} == {"content-manager"}
    assert {t["user"] for t in tasks} == {"content-manager"}
    assert [t["params"] for t in of_type(tasks, "agent-package-new")] == [
        {"package": "fleetcmd", "version": pkg_item.version, "sha256": pkg_item.sha256}
    ]
    assert sorted(t["params"]["policy_id"] for t in of_type(tasks, "sca-content-update")) == [
        "debian12-baseline",
        "debian12-sshd",
    ]
    cve_tasks = of_type(tasks, "cve-content-update")
    assert [t["params"] for t in cve_tasks] == [{"version": f"fleetcmd-sample-{m1.serial}"}]
    rescans = of_type(tasks, "vulnerability-rescan")
    assert len(rescans) == 1 and rescans[0]["params"]["all"] is True
    assert [t["params"] for t in of_type(tasks, "ruleset-update")] == [
        {"version": "1.0.0", "rules": None}
    ]
    # Row 10 only for the group that has the definition enabled (not for `db`, nor "content").
    ar = of_type(tasks, "active-response-configuration")
    assert [(t["params"]["group"], t["params"]["name"]) for t in ar] == [("web", "block-ip")]
    assert ar[0]["params"]["definition"]["version"] == "1.0.0"
    assert doc(c, "active-response", "web/block-ip")["version"] == "1.0.0"
    assert doc(c, "active-response", "db/block-ip") is None
    # The agent-bound ones reached the agents of the groups using the content.
    baseline = next(
        t
        for t in of_type(tasks, "sca-content-update")
        if t["params"]["policy_id"] == "debian12-baseline"
    )
    cmds = c.get("/commands", params={"task_id": baseline["id"]}).json()["data"]["items"]
    assert sorted(x["target"]["id"] for x in cmds) == ["a1", "a2"]
    assert {x["action"]["name"] for x in cmds} == {"sca-content"}
    rescan_cmds = c.get("/commands", params={"task_id": rescans[0]["id"]}).json()["data"]["items"]
    assert sorted(x["target"]["id"] for x in rescan_cmds) == ["a1", "a2", "a3"]
    assert len(tasks) == 7

    # The content status is kept in the indexer.
    status = doc(c, "content-status", "fleetcmd-sample")
    assert status["applied_serial"] == m1.serial and status["status"] == "applied"

    # Polling again: the manifest is not even downloaded (ETag), nothing is filed.
    again = cm.poll_once()
    assert again.status == "unchanged" and not again.tasks
    assert feed_server.requests[-1] == ("/" + MANIFEST, 304)
    # A restart that lost its local state re-reads everything and files nothing new.
    state.unlink()
    fresh = manager(indexer, feed_server.url, publisher.public(), state).poll_once()
    assert fresh.status == "applied" and fresh.applied == []
    assert fresh.tasks and not fresh.new_tasks
    assert len(cm_tasks(c)) == 7

    # A version bump files the next task, and only that one.
    publisher.bump(BASELINE, 'version: "1.0.0"', 'version: "1.0.1"')
    m2 = publisher.publish()
    bumped = cm.poll_once()
    assert bumped.applied == ["sca:debian12-baseline@1.0.1"], bumped.to_json()
    assert [(t.type, t.params) for t in bumped.new_tasks] == [
        ("sca-content-update", {"policy_id": "debian12-baseline", "version": "1.0.1"})
    ]
    assert doc(c, "sca", "content/debian12-baseline")["version"] == "1.0.1"
    assert len(cm_tasks(c)) == 8
    assert doc(c, "content-status", "fleetcmd-sample")["applied_serial"] == m2.serial


def _applied_once(
    idx: Indexer, publisher: Publisher, tmp_path: Path, serial: int | None = None
) -> ContentManager:
    publisher.publish(serial)
    cm = manager(idx, str(publisher.out), publisher.public(), tmp_path / "cm" / "state.json")
    assert cm.poll_once().status == "applied"
    return cm


@pytest.mark.req("C7", "C9")
def test_tampered_item_is_refused_while_the_rest_applies(
    sqlite_indexer: Indexer, publisher: Publisher, tmp_path: Path
) -> None:
    c = sqlite_indexer.client()
    cm = _applied_once(sqlite_indexer, publisher, tmp_path)
    before = len(cm_tasks(c))

    publisher.bump(BASELINE, 'version: "1.0.0"', 'version: "1.0.1"')
    publisher.bump("cve/CVE-2023-5678.json", '"version": "1"', '"version": "2"')
    m2 = publisher.publish()
    item = publisher.item(m2, "sca:debian12-baseline")
    target = publisher.out / item.path
    target.write_bytes(target.read_bytes().replace(b"chmod 644", b"chmod 666"))

    report = cm.poll_once()
    assert report.status == "refused"
    assert [(r.item, r.version) for r in report.refused] == [("sca:debian12-baseline", "1.0.1")]
    assert "sha256" in report.refused[0].reason
    assert report.applied == ["cve:CVE-2023-5678@2"]
    # the old policy stays; the good CVE change went through with its tasks
    assert doc(c, "sca", "content/debian12-baseline")["version"] == "1.0.0"
    assert doc(c, "cve", "CVE-2023-5678")["version"] == "2"
    assert sorted(t.type for t in report.new_tasks) == [
        "cve-content-update",
        "vulnerability-rescan",
    ]
    assert len(cm_tasks(c)) == before + 2
    audit = refusal(c, f"{m2.serial}-sca:debian12-baseline")
    assert audit["version"] == "1.0.1" and "sha256" in audit["reason"]


@pytest.mark.req("C7")
def test_tampered_or_foreign_manifest_is_refused_entirely(
    sqlite_indexer: Indexer, publisher: Publisher, tmp_path: Path
) -> None:
    c = sqlite_indexer.client()
    cm = _applied_once(sqlite_indexer, publisher, tmp_path, serial=5)
    before = len(cm_tasks(c))

    # A manifest edited after signing (a version changed to point at older content).
    path = publisher.out / MANIFEST
    body = json.loads(path.read_text())
    body["serial"] += 1
    body["items"][0]["version"] = "9.9.9"
    path.write_text(json.dumps(body))
    report = cm.poll_once()
    assert report.status == "refused" and report.refused[0].item == "manifest"
    assert "signature" in report.refused[0].reason and not report.applied and not report.tasks
    assert refusal(c, f"{body['serial']}-manifest")["reason"]

    # A well-formed feed signed by a key that is not trusted.
    publisher.bump(BASELINE, 'version: "1.0.0"', 'version: "1.0.1"')
    other = tmp_path / "other.key"
    signing.generate_key(other)
    foreign = Publisher(publisher.src, publisher.out, other)
    foreign.publish(serial=body["serial"] + 1)
    report = cm.poll_once()
    assert report.status == "refused" and "not trusted" in report.refused[0].reason

    # An older serial signed with the right key is a rollback.
    publisher.publish(serial=3)
    report = cm.poll_once()
    assert report.status == "refused" and "rollback" in report.refused[0].reason
    assert "older than the applied serial 5" in report.refused[0].reason

    assert doc(c, "sca", "content/debian12-baseline")["version"] == "1.0.0"
    assert len(cm_tasks(c)) == before


def test_key_rotation_accepts_either_trusted_key(
    sqlite_indexer: Indexer, publisher: Publisher, tmp_path: Path
) -> None:
    new_key = tmp_path / "new.key"
    signing.generate_key(new_key)
    trusted = signing.TrustedKeys(
        (
            signing.load_public(str(signing.pub_path(publisher.key))),
            signing.load_public(signing.public_base64(signing.load_private(new_key).public_key())),
        )
    )
    cm = manager(sqlite_indexer, str(publisher.out), trusted, tmp_path / "state.json")
    publisher.publish()
    assert cm.poll_once().status == "applied"
    publisher.bump(BASELINE, 'version: "1.0.0"', 'version: "1.0.1"')
    Publisher(publisher.src, publisher.out, new_key).publish()
    report: PollReport = cm.poll_once()
    assert report.status == "applied" and report.applied == ["sca:debian12-baseline@1.0.1"]


def test_content_manager_command_uses_the_sample_feed_by_default(
    sqlite_indexer: Indexer, tmp_path: Path
) -> None:
    """`fleetcmd content-manager --once` as `fleetcmd up` would run it: sample feed, dev key."""
    data = tmp_path / "data"
    cmd = [
        *FLEETCMD,
        "content-manager",
        "--indexer",
        sqlite_indexer.url,
        "--data-dir",
        str(data),
        "--once",
    ]
    env = {**os.environ, "FLEETCMD_TOKEN": sqlite_indexer.token}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout[out.stdout.index("{") :])
    assert report["status"] == "applied" and report["feed"] == "fleetcmd-sample"
    assert stat.S_IMODE(os.stat(data / "cti-dev.key").st_mode) == 0o600
    assert json.loads((data / "content-state.json").read_text())["serial"] == 1
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    report = json.loads(again.stdout[again.stdout.index("{") :])
    # rebuilt with the next serial, same content: nothing applied, nothing filed
    assert report["serial"] == 2 and report["applied"] == [] and report["tasks"] == []


@pytest.mark.req("C9")
def test_index_written_but_task_not_filed_is_completed_on_the_next_poll(
    sqlite_indexer: Indexer, publisher: Publisher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash (or an indexer outage) between "1- update index" and "2- generate task" must
    not lose the task: the item is marked done only when both happened."""
    c = sqlite_indexer.client()
    publisher.publish()
    cm = manager(sqlite_indexer, str(publisher.out), publisher.public(), tmp_path / "s.json")

    def outage(*_: Any) -> Any:
        raise IndexerError("POST /tasks: connection refused")

    monkeypatch.setattr(cm.indexer, "submit_task", outage)
    first = cm.poll_once()
    assert first.status == "error" and first.errors and not first.tasks
    assert doc(c, "cve", "CVE-2023-4911") is not None and cm_tasks(c) == []

    monkeypatch.undo()
    second = cm.poll_once()
    # What the first poll indexed is not written again (an outage stops the rest of a batch).
    assert second.status == "applied" and first.applied
    assert not set(second.applied) & set(first.applied)
    assert sorted(t.type for t in second.new_tasks) == [
        "agent-package-new",
        "cve-content-update",
        "ruleset-update",
        "sca-content-update",
        "sca-content-update",
        "vulnerability-rescan",
    ]
    assert cm.poll_once().status == "unchanged"


def test_unreachable_indexer_is_an_error_retried_later(
    sqlite_indexer: Indexer, publisher: Publisher, tmp_path: Path
) -> None:
    publisher.publish()
    state = tmp_path / "s.json"
    down = ContentManager(
        IndexerApi(f"http://127.0.0.1:{free_port()}", "t"),
        open_feed(str(publisher.out)),
        publisher.public(),
        state,
    )
    report = down.poll_once()
    assert report.status == "error" and report.errors
    up = manager(sqlite_indexer, str(publisher.out), publisher.public(), state)
    assert up.poll_once().status == "applied"
