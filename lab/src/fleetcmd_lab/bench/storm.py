"""storm: N simulated agents (default 10,000) long-polling one server; a task to all of them
is in flight when the server is SIGKILLed and started again at once, so the whole fleet
reconnects together and its results come back in the same rush.

What an operator needs to know from it: how long until every agent polls again, whether the
server stayed responsive meanwhile (`/health` on both APIs and an authenticated Management API
list, probed every 0.25 s), how many requests the fleet sent per agent while it was down and
coming back (a retry storm shows up as a large number), how much memory the restarted server
took, and that nothing was lost (the task ends with every command a success, every agent
executed its command).

The simulated agents back off like `fleetcmd agent` (full jitter, Retry-After honoured).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from fleetcmd_lab.bench.common import (
    Cluster,
    cpu_seconds,
    report,
    rss_mb,
    scratch_store,
    seed_agents,
    stage_times,
    start_simulator,
    wait_connected,
    work_dir,
)
from fleetcmd_lab.bench.latency import pct

GROUP = "storm"
PROBE_INTERVAL = 0.25


def _connected(client: httpx.Client, comms: str) -> int:
    """Agents polling the node now, from its own gauge (set when /metrics is scraped)."""
    for line in client.get(f"{comms}/metrics", timeout=5).text.splitlines():
        if line.startswith("fleetcmd_server_connected_agents "):
            return int(float(line.split()[1]))
    raise RuntimeError("the server's /metrics has no fleetcmd_server_connected_agents")


def _timed(client: httpx.Client, url: str) -> float | None:
    """Seconds a GET took, None when it failed or answered an error."""
    t0 = time.monotonic()
    try:
        r = client.get(url, timeout=5)
    except httpx.HTTPError:
        return None
    return time.monotonic() - t0 if r.status_code < 400 else None


def run(
    agents: int,
    store_url: str | None,
    log_dir: str | None = None,
    kill_at: float = 0.5,
    timeout: float = 600,
) -> dict[str, Any]:
    """`kill_at`: the fraction of results recorded when the server is killed (0: as soon
    as the task is accepted)."""
    with scratch_store(store_url) as store, work_dir(log_dir, "fleetcmd-storm-") as d:
        kind = store.url.split(":", 1)[0]
        seed_agents(store, agents, GROUP, "sim", f"{d}/creds.json")
        cluster = Cluster(store.url, d)
        comms, mgmt = cluster.comms_urls[0], cluster.management_urls[0]
        sim = None
        node = httpx.Client(headers={"Authorization": f"Bearer {cluster.token}"})
        try:
            sim = start_simulator(
                comms.split(),
                cluster.enrollment_key,
                agents,
                GROUP,
                f"{d}/creds.json",
                f"{d}/simulator.log",
                duration=timeout + 600,
            )
            sim.read_event("ready")
            wait_connected(store, agents, "sim")
            task_id = cluster.task(
                "group-configuration-change", {"group": GROUP, "configuration": {"storm": 1}}
            )
            # Kill the server with part of the fleet's results in and the rest in flight.
            with cluster.client() as c:
                while True:
                    task = c.get(f"/tasks/{task_id}").json()["data"]
                    done = int(task["counts"].get("success", 0))
                    if done >= agents * kill_at or task["completed_at"]:
                        break
                    time.sleep(0.02)
            before = (sim.events_named("progress") or [{"requests": 0, "errors": 0}])[-1]
            killed = time.monotonic()
            cluster.restart_server(0)
            pid = cluster.server_pids[0]

            health: list[float] = []
            manage: list[float] = []
            unanswered = 0
            listening = back = None
            most = 0
            admin = None
            while time.monotonic() - killed < timeout:
                t = _timed(node, f"{comms}/health")
                if t is None:
                    # refused before it listens again: that is the restart, not an unanswered probe
                    unanswered += listening is not None
                else:
                    if listening is None:
                        listening = time.monotonic() - killed
                    health.append(t)
                if listening is not None:
                    if admin is None:
                        admin = _login(d, mgmt)
                    m = _timed(admin, f"{mgmt}/agents?limit=50")
                    if m is None:
                        unanswered += 1
                    else:
                        manage.append(m)
                    with_metrics = _connected(node, comms)
                    most = max(most, with_metrics)
                    if back is None and with_metrics >= agents:
                        back = time.monotonic() - killed
                if back is not None:
                    break
                time.sleep(PROBE_INTERVAL)
            left = timeout - (time.monotonic() - killed)
            task = cluster.wait_task(task_id, timeout=max(1.0, left))
            finished = time.monotonic() - killed
            time.sleep(1.2)  # the simulator reports its counters at least once a second
            after = (sim.events_named("progress") or [before])[-1]
            done_event = sim.finish()
            if admin is not None:
                admin.close()
            figures = {
                "killed_with_results_in": done,
                "restart_seconds_to_listening": _round(listening),
                "reconnect_seconds_all_polling": _round(back),
                "agents_polling_at_most": most,
                "task_final_seconds_after_kill": round(finished, 2),
                "health_p50_ms": round(pct(health, 50) * 1000, 1) if health else 0.0,
                "health_max_ms": round(max(health, default=0) * 1000, 1),
                "management_list_p50_ms": round(pct(manage, 50) * 1000, 1) if manage else 0.0,
                "management_list_max_ms": round(max(manage, default=0) * 1000, 1),
                "probes_unanswered": unanswered,
                # every request from the kill until the task was final, the task's own acks and
                # results included: 2-4 per agent is the work itself, more is retrying
                "requests_per_agent_kill_to_final": round(
                    (after["requests"] - before["requests"]) / agents, 2
                ),
                "failed_requests_per_agent": round(
                    (after["errors"] - before["errors"]) / agents, 2
                ),
                "server_rss_peak_mb": round(rss_mb(pid, peak=True), 1),
                "server_cpu_seconds_after_restart": round(cpu_seconds(pid), 2),
                "task_status": task["status"],
                "counts": task["counts"],
                "results_at_agents": done_event["executed"],
                "commands_handed_twice": done_event["duplicates"],
                **stage_times(store, task_id),  # seconds after the task was accepted
            }
            return report("storm", kind, {"agents": agents, "kill_at": kill_at}, figures)
        finally:
            node.close()
            if sim is not None:
                sim.stop()
            cluster.stop()


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _login(d: str, mgmt: str) -> httpx.Client:
    """A Management API session as the bootstrap administrator of server 0."""
    from pathlib import Path

    password = Path(f"{d}/server-0/admin.password").read_text().strip()
    r = httpx.post(f"{mgmt}/security/user/authenticate", auth=("admin", password), timeout=30)
    r.raise_for_status()
    return httpx.Client(headers={"Authorization": f"Bearer {r.json()['data']['token']}"})
