"""A rolling upgrade with commands in flight (issue 19, docs/deployment.md "Upgrades"): the
topology of docs/deployment.md (two indexers, two servers, HAProxy, one PostgreSQL schema)
runs the previous release, real agents of that release connected; then each node is
restarted on this release, one at a time, indexers first, each just after a task to every
agent was filed. The first new indexer migrates the schema while the old one still serves;
every task ends `success`, no command is lost or run twice, and what only this release
has (a target preview, a selector) works once the nodes are upgraded.

The previous release is the source of the last landed build before this round's schema
changes, taken from this repository's history (`git archive`) and run with this checkout's
interpreter and libraries."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.harness import task_final
from support import REQUIRE_PG, need_haproxy, store_url_for, wait_until
from support.topology import ROOT, Topology, agents_by_node, commands, file_change

# Landed 3 Dec 2026 (stop 23): the schema at migration 0006, before selectors, approvals,
# target sets and the rest of this round.
PREVIOUS = "08de457e3017f5f07b6d60e2ef0dc06cde1c48a3"
AGENTS = 3


def previous_release(dest: Path) -> Path:
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{PREVIOUS}^{{commit}}"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not sha:
        message = f"the previous release {PREVIOUS[:7]} is not in this checkout's history"
        if REQUIRE_PG:  # CI runs from a clone of the repository: it must be there
            pytest.fail(message)
        pytest.skip(message)
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", sha, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topology]:
    need_haproxy()
    old = previous_release(tmp_path / "previous")
    with store_url_for("postgres", tmp_path) as url:
        t = Topology(tmp_path, url, old_src=old).start()
        try:
            yield t
        finally:
            t.stop()


def test_nodes_upgraded_one_at_a_time_with_commands_in_flight(topo: Topology) -> None:
    api = topo.admin()
    task_final(api, file_change(api, 0)["id"])
    for i in range(AGENTS):
        topo.agent(f"topo-{i}")
    names = set(topo.agents)
    wait_until(
        lambda: {n for n, node in agents_by_node(api).items() if node} >= names,
        60,
        what="every agent connected",
    )
    tasks = [task_final(api, file_change(api, 1)["id"], timeout=60)]
    for v, node in enumerate(("indexer1", "indexer2", "server1", "server2"), start=2):
        in_flight = file_change(api, v)
        topo.upgrade(node)
        api = topo.admin()
        done = task_final(api, in_flight["id"], timeout=120)
        assert done["status"] == "success", (node, done)
        tasks.append(done)
        if node == "indexer1":  # migrated, and the old indexer still serves beside it
            assert "new" not in topo.roles["indexer2"].name
    assert all("new" in topo.roles[n].name for n in ("indexer1", "indexer2", "server1"))

    # This release's own features, on the upgraded cluster, with the old agents.
    r = api.post(
        "/tasks/preview",
        json={"type": "vulnerability-rescan", "params": {"selector": "group = topo"}},
    )
    assert r.status_code == 200, r.text
    preview = r.json()["data"]
    assert preview["total"] == AGENTS
    r = api.post(
        "/tasks",
        json={
            "type": "vulnerability-rescan",
            "params": {"selector": "group = topo"},
            "preview_token": preview["preview_token"],
        },
    )
    assert r.status_code == 202, r.text
    tasks.append(task_final(api, r.json()["data"]["id"], timeout=120))

    runs = topo.runs()
    for task in tasks:
        assert task["status"] == "success", task
        cmds = commands(api, task["id"])
        assert len(cmds) == AGENTS, cmds  # none lost
        for c in cmds:
            assert runs[c["id"]] == 1, f"command {c['id']} ran {runs[c['id']]} times"
