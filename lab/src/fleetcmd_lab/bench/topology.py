"""topology (PostgreSQL): the multi-host topology of docs/deployment.md at scale. Two indexers
and two server nodes on one PostgreSQL schema behind Debian's HAProxy (deploy/haproxy.cfg);
simulated agents reach the servers only through HAProxy, and the servers the indexers.

Three group changes, each to every agent, and how long until every result is recorded:
1. all nodes up (the balancer's cost beside `bench multinode`);
2. the server node holding the most agents SIGKILLed just after the task is filed: its agents
   go through HAProxy to the other node, and the commands it held are handed on when it has
   been silent for the indexer's `node_silent_after`;
3. then an indexer SIGKILLed just after the next task is filed.
Losses (commands without a success) must be zero; `handed_again` counts command ids an agent
was offered twice (the dead node's offer and the survivor's), which the agent's journal makes
harmless; the agents say how many they ran."""

from __future__ import annotations

import time
from typing import Any

from fleetcmd_lab.bench.common import (
    Cluster,
    report,
    scratch_store,
    seed_agents,
    start_simulator,
    wait_connected,
    work_dir,
)

GROUP = "bench"


def run(agents: int, store_url: str, log_dir: str | None = None) -> dict[str, Any]:
    if not store_url.startswith(("postgresql:", "postgres:")):
        raise ValueError("the topology needs PostgreSQL: pass --store postgresql://…")
    with scratch_store(store_url) as store, work_dir(log_dir, "fleetcmd-topology-") as d:
        seed_agents(store, agents, GROUP, "sim", f"{d}/creds.json")
        cluster = Cluster(store.url, d, servers=2, indexers=2, balancer=True)
        sim = None
        try:
            sim = start_simulator(
                cluster.comms_urls,  # HAProxy's address only
                cluster.enrollment_key,
                agents,
                GROUP,
                f"{d}/creds.json",
                f"{d}/simulator.log",
                expect=3 * agents,
            )
            ready = sim.read_event("ready")
            wait_connected(store, agents, "sim")
            figures: dict[str, Any] = {"setup_seconds": ready["setup_seconds"]}

            def by_node() -> dict[str, int]:
                with store.reading() as tx:
                    rows = tx.all(
                        "SELECT node, count(*) FROM agents WHERE id LIKE :p GROUP BY node",
                        {"p": "sim%"},
                    )
                return {str(n): int(c) for n, c in rows}

            def change(v: int, then: Any = None) -> dict[str, Any]:
                started = time.monotonic()
                task_id = cluster.task(
                    "group-configuration-change",
                    {"group": GROUP, "configuration": {"v": v}},
                )
                if then is not None:
                    then()
                t = cluster.wait_task(task_id, timeout=600, interval=0.1)
                counts = t["counts"]
                return {
                    "seconds": round(time.monotonic() - started, 2),
                    "status": t["status"],
                    "losses": agents - int(counts.get("success", 0)),
                }

            figures["all_up"] = change(1)
            nodes = by_node()
            figures["agents_by_node_before"] = nodes
            victim = max(range(2), key=lambda i: nodes.get(f"bench-server-{i}", 0))
            figures["server_killed"] = {
                **change(2, then=cluster.servers[victim].kill),
                "node": f"bench-server-{victim}",
            }
            figures["agents_by_node_after"] = by_node()
            indexer = cluster.roles[0]  # the first indexer started
            figures["indexer_killed"] = change(3, then=indexer.kill)
            done = sim.read_event("done", timeout=120)
            figures.update(
                losses=sum(
                    figures[k]["losses"] for k in ("all_up", "server_killed", "indexer_killed")
                ),
                handed_again=done["duplicates"],
                results_posted_by_agents=done["executed"],
                agent_errors=done["errors"],
            )
            return report("topology", "postgresql", {"agents": agents}, figures)
        finally:
            if sim is not None:
                sim.stop()
            cluster.stop()
