"""Real processes end to end: indexer + server + `fleetcmd agent`s; tasks filed at the
indexer, checked in each agent's state folder (agent-status) and in the task's final counts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetcmd.agent.cli import status_of
from fleetcmd.model.config import config_hash
from server.harness import ENROLLMENT_KEY, Server, task_final
from support import Indexer, Role, store_url_for, wait_until


def status(state_dir: Path) -> dict[str, Any]:
    """What `fleetcmd agent-status` prints (same function, without a process per call)."""
    return status_of(state_dir)


def status_cli(state_dir: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "fleetcmd.cli", "agent-status", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


class Fleet:
    def __init__(self, tmp: Path, store_url: str | None = None) -> None:
        self.tmp = tmp
        self.store_url = store_url  # default: a SQLite file in tmp
        self.roles: list[Role] = []
        self.indexer: Indexer | None = None
        self.server: Server | None = None

    def start(self) -> Fleet:
        if self.store_url is not None:
            self.indexer = Indexer(self.store_url, self.tmp / "indexer").start()
        else:
            with store_url_for("sqlite", self.tmp) as url:
                self.indexer = Indexer(url, self.tmp / "indexer").start()
        self.roles.append(self.indexer)
        self.server = Server(self.indexer, self.tmp / "server").start()
        self.roles.append(self.server)
        return self

    def agent(self, name: str, *extra: str) -> tuple[Role, Path]:
        assert self.server is not None
        state = self.tmp / name
        role = Role(
            name,
            [
                "agent",
                "--server",
                self.server.comms,
                "--enrollment-key",
                ENROLLMENT_KEY,
                "--name",
                name,
                "--state-dir",
                str(state),
                *extra,
            ],
            self.tmp,
        ).start()
        self.roles.append(role)
        wait_until(lambda: state.is_dir() and status(state)["id"], 30, what=f"{name} enrolled")
        return role, state

    def client(self) -> httpx.Client:
        assert self.indexer is not None
        return self.indexer.client()

    def stop(self) -> None:
        for r in reversed(self.roles):
            # Agents get SIGTERM (their clean stop is part of the test); the indexer and server
            # take ~10 s to drain on SIGTERM, which these tests do not need to pay for.
            r.kill(signal.SIGKILL if r in (self.indexer, self.server) else signal.SIGTERM)
        for r in self.roles:
            print(f"----- {r.name} log (tail) -----\n{r.log()[-3000:]}")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path).start()
    try:
        yield f
    finally:
        f.stop()


def run_task(c: httpx.Client, type_: str, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    r = c.post("/tasks", json={"type": type_, "params": params, **extra})
    assert r.status_code == 202, r.text
    return task_final(c, r.json()["data"]["id"], timeout=90)


def commands_of(c: httpx.Client, task: dict[str, Any]) -> list[dict[str, Any]]:
    """The task's agent-bound commands (children of an expansion, or first commands)."""
    items = c.get("/commands", params={"task_id": task["id"]}).json()["data"]["items"]
    return [x for x in items if x["target"]["type"] == "agent"]


# A small real policy: one check passes on any host, one fails.
POLICY = {
    "id": "cis-1",
    "version": "1",
    "name": "e2e",
    "checks": [
        {
            "id": "1",
            "title": "root folder",
            "condition": "all",
            "remediation": "-",
            "rules": [{"type": "dir_exists", "path": "/"}],
        },
        {
            "id": "2",
            "title": "no such file",
            "condition": "all",
            "remediation": "-",
            "rules": [{"type": "file_exists", "path": "/nonexistent/fleetcmd-e2e"}],
        },
    ],
}


@pytest.mark.req("R1", "R2", "R5", "R7", "C1", "C2", "C5", "C6", "C14")
def test_agents_apply_commands_end_to_end(fleet: Fleet) -> None:
    web = {"sca": {"enabled": True, "interval": 600}, "log_level": "info"}
    with fleet.client() as c:
        run_task(c, "group-configuration-change", {"group": "web", "configuration": web})
        (r1, s1), (r2, s2) = fleet.agent("agent-e2e-1"), fleet.agent("agent-e2e-2")
        ids = [status(s1)["id"], status(s2)["id"]]
        pids = [status(s1)["pid"], status(s2)["pid"]]

        # C1: group assignment, configuration attached, hash reported
        t = run_task(c, "group-assignment-change", {"agents": ids, "groups": ["web"]})
        assert t["status"] == "success" and t["counts"] == {"success": 2}, t
        for s in (s1, s2):
            st = status_cli(s)
            assert st["groups"] == ["web"] and st["config_hash"] == config_hash(web)

        # C6: an SCA policy for the group is stored by every agent
        t = run_task(
            c, "sca-policy-change", {"group": "web", "policy_id": "cis-1", "policy": POLICY}
        )
        assert t["counts"] == {"success": 2}, t
        assert status(s1)["sca_policies"] == ["cis-1"]
        # ...evaluated at once, its summary in the result and kept in the agent's state
        summary = {"pass": 1, "fail": 1, "na": 0, "score": 50}
        assert {x["result"]["data"]["summary"]["score"] for x in commands_of(c, t)} == {50}
        assert status(s1)["sca_results"]["cis-1"]["summary"] == summary

        # C2 + R5: a configuration disabling SCA is hot-applied and removes the policies
        off = {"sca": {"enabled": False}, "log_level": "debug"}
        t = run_task(c, "group-configuration-change", {"group": "web", "configuration": off})
        assert t["counts"] == {"success": 2}, t
        for s, pid in zip((s1, s2), pids, strict=True):
            st = status(s)
            assert st["sca_policies"] == [] and st["config_hash"] == config_hash(off)
            assert st["pid"] == pid  # R2: same process, no restart

        # C5: rename
        t = run_task(c, "agent-rename", {"agent": ids[0], "name": "renamed-e2e-1"})
        assert t["counts"] == {"success": 1}, t
        assert status(s1)["name"] == "renamed-e2e-1"

        # R7: a restarted agent asks for its assignment and configuration again
        r2.stop()
        _, s2 = fleet.agent("agent-e2e-2")
        wait_until(lambda: status(s2)["pid"], 20, what="agent 2 back")
        assert status(s2)["id"] == ids[1] and status(s2)["config_hash"] == config_hash(off)

        # C14: deletion: the agent answers, forgets its credentials and exits with 0
        t = run_task(c, "agent-deletion", {"agent": ids[0]})
        assert t["counts"] == {"success": 1}, t
        assert r1.proc is not None and r1.proc.wait(30) == 0
        st = status(s1)
        assert st["id"] is None and st["removed"] is True


@pytest.mark.req("R1", "R3")
def test_a_configuration_too_large_to_attach_is_fetched(fleet: Fleet) -> None:
    big = {
        "events": {"rules": ["x" * 100 for _ in range(1000)]},  # > 64 KiB attach limit
        "active_response": {"enabled": False},
    }
    with fleet.client() as c:
        run_task(c, "group-configuration-change", {"group": "big", "configuration": {}})
        role, s1 = fleet.agent("agent-e2e-4")
        aid = status(s1)["id"]
        run_task(c, "group-assignment-change", {"agents": [aid], "groups": ["big"]})
        t = run_task(c, "group-configuration-change", {"group": "big", "configuration": big})
        assert t["counts"] == {"success": 1}, t
        st = status(s1)
        assert st["config_hash"] == config_hash(big) and st["config"] == big
        assert "configuration not attached: fetching it for groups ['big']" in role.log()
