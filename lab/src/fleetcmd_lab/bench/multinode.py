"""multi-node (PostgreSQL): 2 indexer processes and 2 server processes share one PostgreSQL
schema; simulated agents are split across the servers; several group changes are filed
back to back, alternately through each indexer. Every command id an agent is handed is
recorded: duplicates (an id handed twice to an agent) and losses (a command without a
success) must both be zero; throughput is commands recorded per second."""

from __future__ import annotations

from typing import Any

import httpx

from fleetcmd_lab.bench.common import (
    Cluster,
    iso_ts,
    report,
    scratch_store,
    seed_agents,
    start_simulator,
    wait_connected,
    work_dir,
)

GROUP = "bench"


def run(
    agents: int,
    tasks: int,
    store_url: str,
    log_dir: str | None = None,
    servers: int = 2,
    indexers: int = 2,
) -> dict[str, Any]:
    if not store_url.startswith(("postgresql:", "postgres:")):
        raise ValueError("multi-node needs PostgreSQL: pass --store postgresql://…")
    with scratch_store(store_url) as store, work_dir(log_dir, "fleetcmd-multinode-") as d:
        kind = store.url.split(":", 1)[0]
        seed_agents(store, agents, GROUP, "sim", f"{d}/creds.json")
        cluster = Cluster(store.url, d, servers=servers, indexers=indexers)
        sim = None
        try:
            expected = agents * tasks
            sim = start_simulator(
                cluster.comms_urls,
                cluster.enrollment_key,
                agents,
                GROUP,
                f"{d}/creds.json",
                f"{d}/simulator.log",
                expect=expected,
            )
            ready = sim.read_event("ready")
            wait_connected(store, agents, "sim")
            ids = []
            headers = {"Authorization": f"Bearer {cluster.token}"}
            for i in range(tasks):
                url = cluster.indexer_urls[i % len(cluster.indexer_urls)]
                r = httpx.post(
                    f"{url}/tasks",
                    json={
                        "type": "group-configuration-change",
                        "params": {"group": GROUP, "configuration": {"v": i + 1}},
                    },
                    headers=headers,
                    timeout=60,
                )
                r.raise_for_status()
                ids.append(int(r.json()["data"]["id"]))
            finished = [cluster.wait_task(t, timeout=600, interval=0.1) for t in ids]
            done = sim.read_event("done", timeout=120)
            first = min(iso_ts(t["created_at"]) for t in finished)
            last = max(iso_ts(t["completed_at"]) for t in finished)
            successes = sum(int(t["counts"].get("success", 0)) for t in finished)
            with store.reading() as tx:
                by_node = tx.all(
                    "SELECT a.node, count(*) FROM commands c JOIN agents a "
                    "ON a.id = c.target_id WHERE c.target_type = 'agent' AND "
                    f"c.task_id IN ({', '.join(str(t) for t in ids)}) GROUP BY a.node"
                )
            figures = {
                "commands_expected": expected,
                "results_recorded": successes,
                "losses": expected - successes,
                "duplicates_at_agents": done["duplicates"],
                "results_posted_by_agents": done["executed"],
                "seconds": round(last - first, 3),
                "commands_per_second": round(expected / max(last - first, 1e-6)),
                "commands_by_server": {str(k): int(n) for k, n in by_node},
                "task_statuses": sorted({t["status"] for t in finished}),
                "agent_errors": done["errors"],
                "setup_seconds": ready["setup_seconds"],
            }
            return report(
                "multinode",
                kind,
                {"agents": agents, "tasks": tasks, "servers": servers, "indexers": indexers},
                figures,
            )
        finally:
            if sim is not None:
                sim.stop()
            cluster.stop()
