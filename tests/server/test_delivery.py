"""Commands reach agents through the Comms API and every result is recorded."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fleetcmd.model.config import config_hash
from server.harness import FakeAgent, file_task, fleet, task_final
from support import wait_until


@pytest.mark.req("C2", "R2", "R6")
def test_group_configuration_change_reaches_three_agents(store_url: str, tmp_path: Path) -> None:
    with fleet(store_url, tmp_path) as (_, [srv]):
        api = srv.admin()
        first = file_task(
            api,
            "group-configuration-change",
            {"group": "web", "configuration": {"log": {"level": "info"}}},
        )
        task_final(api, first["id"])
        agents = [FakeAgent(srv.comms, f"web-{i}", ["web"]) for i in range(3)]
        for a in agents:
            assert a.enrollment["groups"] == ["web"]
            assert a.poll(wait=0) == []  # connects: the agent is now active on this node

        config = {"log": {"level": "debug"}, "sca": {"enabled": False}}
        task = file_task(
            api, "group-configuration-change", {"group": "web", "configuration": config}
        )
        got: dict[str, list[dict]] = {}

        def run(agent: FakeAgent) -> None:
            got[agent.id] = agent.run_once(wait=20)

        threads = [threading.Thread(target=run, args=(a,)) for a in agents]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for a in agents:
            [cmd] = got[a.id]
            assert cmd["action"]["name"] == "apply-group-config"
            assert cmd["task_id"] == task["id"]
            assert cmd["action"]["args"]["config_hash"] == config_hash(config)
        final = task_final(api, task["id"])
        assert final["status"] == "success", final
        assert final["counts"] == {"success": 3}  # counts are over the agent commands
        listed = api.get("/commands", params={"task_id": task["id"], "target_type": "agent"})
        items = listed.json()["data"]["items"]
        assert sorted(c["target"]["id"] for c in items) == sorted(a.id for a in agents)
        assert all(c["status"] == "success" for c in items)
        # Agents index carries what they reported.
        for a in agents:
            doc = api.get(f"/agents/{a.id}").json()["data"]
            assert doc["config_hash"] == config_hash(config)
            assert doc["status"] == "active"


def test_duplicate_results_are_idempotent(store_url: str, tmp_path: Path) -> None:
    with fleet(store_url, tmp_path) as (_, [srv]):
        api = srv.admin()
        task_final(
            api,
            file_task(
                api, "group-configuration-change", {"group": "db", "configuration": {"a": 1}}
            )["id"],
        )
        agent = FakeAgent(srv.comms, "db-1", ["db"])
        agent.poll(wait=0)
        task = file_task(
            api, "group-configuration-change", {"group": "db", "configuration": {"a": 2}}
        )
        [cmd] = agent.run_once(wait=20)
        same = {
            "id": cmd["id"],
            "status": "success",
            "code": 0,
            "message": "ok",
            "data": {"groups": ["db"], "config_hash": cmd["action"]["args"]["config_hash"]},
        }
        assert agent.report([same, same]) == [{"id": cmd["id"], "outcome": "duplicate"}] * 2
        late = {"id": cmd["id"], "status": "failure", "code": 1, "message": "late repeat"}
        [answer] = agent.report([late])
        assert answer["outcome"].startswith("ignored: already success")
        # A repeated ack after the result confirms nothing: there is nothing left to run.
        assert agent.ack([cmd["id"]]) == []
        final = task_final(api, task["id"])
        assert final["status"] == "success"
        doc = api.get(f"/commands/{cmd['id']}").json()["data"]
        assert doc["status"] == "success" and doc["result"]["message"] == "ok"
        # Someone else's command id is not this agent's to answer.
        other = FakeAgent(srv.comms, "db-2", ["db"])
        [answer] = other.report([{"id": cmd["id"], "status": "failure"}])
        assert answer["outcome"].startswith("ignored")


def test_command_waits_for_a_disconnected_agent(store_url: str, tmp_path: Path) -> None:
    with fleet(store_url, tmp_path) as (_, [srv]):
        api = srv.admin()
        task_final(
            api,
            file_task(
                api, "group-configuration-change", {"group": "edge", "configuration": {"v": 1}}
            )["id"],
        )
        agent = FakeAgent(srv.comms, "edge-1", ["edge"])
        agent.poll(wait=1)  # connected, poll window 1 s: silent for > 2 s means away
        wait_until(
            lambda: api.get(f"/agents/{agent.id}").json()["data"]["status"] == "active",
            timeout=10,
            what="agent active",
        )
        wait_until(
            lambda: api.get(f"/agents/{agent.id}").json()["data"]["node"] == "",
            timeout=10,
            what="agent detached from the node after going away",
        )
        task = file_task(
            api, "group-configuration-change", {"group": "edge", "configuration": {"v": 2}}
        )

        def child_status() -> str | None:
            items = api.get(
                "/commands", params={"task_id": task["id"], "target_type": "agent"}
            ).json()["data"]["items"]
            return items[0]["status"] if items else None

        wait_until(lambda: child_status() == "pending", timeout=10, what="child written")
        # The agent is away: the command waits in the stream, it is not claimed.
        import time

        time.sleep(1.5)
        assert child_status() == "pending"
        [cmd] = agent.run_once(wait=20)  # comes back: delivered at once
        assert cmd["action"]["args"]["config"] == {"v": 2}
        assert task_final(api, task["id"])["status"] == "success"


def test_a_server_killed_holding_commands_hands_them_on_when_it_restarts(
    store_url: str, tmp_path: Path
) -> None:
    """SIGKILL after a command was handed but before the ack: the restarted node (same node
    id, new incarnation) takes back its predecessor's lease at start instead of waiting out
    the 60-s lease, and the agent gets the command again (at-least-once; its journal makes
    the second hand harmless)."""
    with fleet(store_url, tmp_path) as (_, [srv]):
        api = srv.admin()
        task_final(
            api,
            file_task(
                api, "group-configuration-change", {"group": "crash", "configuration": {"v": 1}}
            )["id"],
        )
        agent = FakeAgent(srv.comms, "crash-1", ["crash"])
        agent.poll(wait=0.5)
        task = file_task(
            api, "group-configuration-change", {"group": "crash", "configuration": {"v": 2}}
        )
        [first] = agent.poll(wait=20)  # handed, never acked
        srv.kill(signal.SIGKILL)
        srv.start()
        api = srv.admin()
        started = time.monotonic()
        again: list[dict[str, Any]] = []
        while not again and time.monotonic() - started < 30:  # well inside the 60-s lease
            again = agent.run_once(wait=5)
        assert [c["id"] for c in again] == [first["id"]], "not handed again after the restart"
        assert task_final(api, task["id"])["status"] == "success"
        assert "handed back 1 command(s)" in srv.log()
