"""Heartbeats through the Comms API to the stream, with real processes on both stores (issue
17.3): a fake agent that heartbeats a command makes it `running`, counted in its task; once it
stops, the indexer's sweeper ends it `timeout` "agent stopped reporting" within two
intervals. Another agent's heartbeat on it changes nothing; a bad body is a 422 saying why."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from server.harness import FakeAgent, file_task, fleet
from support import wait_until


def beat(agent: FakeAgent, beats: list[dict[str, Any]]) -> httpx.Response:
    return agent.http.post("/agents/commands/progress", json={"progress": beats})


def test_heartbeats_make_a_command_running_until_they_stop(store_url: str, tmp_path: Path) -> None:
    with fleet(store_url, tmp_path) as (_, [srv]):
        api = srv.admin()
        agent, other = FakeAgent(srv.comms, "long-1"), FakeAgent(srv.comms, "long-2")
        task = file_task(api, "vulnerability-rescan", {"agents": [agent.id]})
        (cmd,) = agent.poll()
        assert agent.ack([cmd["id"]]) == [cmd["id"]]

        def counts() -> dict[str, int]:
            return dict(api.get(f"/tasks/{task['id']}").json()["data"]["counts"])

        assert counts() == {"delivered": 1}
        r = beat(other, [{"id": cmd["id"], "interval": 1}])
        assert r.status_code == 200 and r.json()["data"] == {"running": [], "stopped": [cmd["id"]]}
        assert counts() == {"delivered": 1}  # not its command: nothing moved

        interval = 1.0
        for _ in range(3):
            r = beat(agent, [{"id": cmd["id"], "interval": interval}])
            assert r.status_code == 200, r.text
            assert r.json()["data"] == {"running": [cmd["id"]], "stopped": []}
            assert counts() == {"running": 1}
            time.sleep(interval / 2)
        last = time.monotonic()
        wait_until(lambda: counts() == {"timeout": 1}, 10, what="timed out")
        took = time.monotonic() - last
        assert took <= 2 * interval + 1.5, took  # two intervals, the sweeper's second, slack
        c = api.get(f"/commands/{cmd['id']}").json()["data"]
        assert c["status"] == "timeout" and c["result"]["message"] == "agent stopped reporting"
        r = beat(agent, [{"id": cmd["id"], "interval": interval}])
        assert r.json()["data"] == {"running": [], "stopped": [cmd["id"]]}
        late = agent.report([{"id": cmd["id"], "status": "success", "data": {}}])
        assert late[0]["outcome"] == "ignored: already timeout"

        for bad, why in (
            ({"progress": []}, "progress"),
            ({"progress": [{"id": cmd["id"], "interval": 0.01}]}, "interval"),
            ({"progress": [{"id": "x"}]}, "id"),
            ({"beats": []}, "progress"),
        ):
            r = agent.http.post("/agents/commands/progress", json=bad)
            assert r.status_code == 422 and why in r.text, (bad, r.text)
