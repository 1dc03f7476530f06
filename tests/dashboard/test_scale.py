"""How long the dashboard's pages take with 100,000 agents and a 100,000-command task.

Skipped unless FLEETCMD_DASHBOARD_SCALE=1 (it registers 100,000 agents: about a minute on
this 2-core machine). Prints each page's median time and the slowest; the number goes in
docs/dashboard.md."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest

from dashboard.harness import dash_fleet, dashboard_session
from server.harness import file_task
from support import wait_until

AGENTS = int(os.environ.get("FLEETCMD_DASHBOARD_SCALE_AGENTS", "100000"))
RUNS = 5

pytestmark = pytest.mark.skipif(
    os.environ.get("FLEETCMD_DASHBOARD_SCALE") != "1",
    reason="set FLEETCMD_DASHBOARD_SCALE=1 to measure at scale",
)


def test_pages_with_100k_agents_and_a_100k_command_task(tmp_path: Path) -> None:
    with dash_fleet(tmp_path, real_agents=0) as fleet:
        t0 = time.monotonic()
        fleet.register(
            [
                {
                    "id": f"agent{i:07d}",
                    "name": f"agent-{i:07d}",
                    "groups": ["big"],
                    "version": f"4.{i % 7}.0",
                }
                for i in range(AGENTS)
            ]
        )
        registered = time.monotonic() - t0
        task = file_task(
            fleet.api,
            "group-configuration-change",
            {"group": "big", "configuration": {"log_level": "info"}},
        )
        wait_until(
            lambda: fleet.api.get(f"/tasks/{task['id']}").json()["data"]["total"] == AGENTS,
            timeout=120,
            what="the task expanded",
        )
        client = dashboard_session(fleet.url, "admin", fleet.admin_password)
        commands = fleet.api.get("/commands", params={"task_id": task["id"], "limit": 1000}).json()[
            "data"
        ]
        deep = commands["next_cursor"]
        last = f"agent{AGENTS - 1:07d}"
        pages = {
            "overview": "/app/",
            "tasks": "/app/tasks",
            "task detail": f"/app/tasks/{task['id']}",
            "task, page 21": f"/app/tasks/{task['id']}?cursor={deep}&trail=~",
            "task, pending filter": f"/app/tasks/{task['id']}?status=pending",
            "task, failures (none)": f"/app/tasks/{task['id']}?status=failure",
            "task, one agent": f"/app/tasks/{task['id']}?target_id={last}",
            "command": f"/app/commands/{commands['items'][-1]['id']}",
            "agents": "/app/agents",
            "agents, search": "/app/agents?search=agent-00999",
            "agents, never connected": "/app/agents?status=never_connected",
            "agent detail": f"/app/agents/{last}",
            "groups": "/app/groups",
            "group detail": "/app/groups/big",
            "new group configuration": "/app/tasks/new/group-configuration-change",
        }
        timings: dict[str, float] = {}
        for name, path in pages.items():
            samples = []
            for _ in range(RUNS):
                start = time.perf_counter()
                r = client.get(path)
                samples.append(time.perf_counter() - start)
                assert r.status_code == 200, (path, r.status_code, r.text[:300])
            timings[name] = statistics.median(samples)
        slowest = max(timings, key=lambda k: timings[k])
        print(
            f"\n{AGENTS:,} agents registered in {registered:.1f} s; task {task['id']} has "
            f"{AGENTS:,} commands"
        )
        for name, seconds in sorted(timings.items(), key=lambda kv: -kv[1]):
            print(f"  {name:28s} {seconds * 1000:8.1f} ms (median of {RUNS})")
        print(f"slowest page: {slowest} at {timings[slowest] * 1000:.0f} ms")
        assert timings[slowest] < 3.0, timings
