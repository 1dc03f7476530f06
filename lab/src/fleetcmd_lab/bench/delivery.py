"""delivery: N simulated agents long-polling one server (from a separate load process); one
task to all of them; seconds until every result is recorded, commands/s, server RSS at peak."""

from __future__ import annotations

import time
from typing import Any

from fleetcmd_lab.bench.common import (
    Cluster,
    cpu_seconds,
    iso_ts,
    profiled,
    report,
    rss_mb,
    scratch_store,
    seed_agents,
    stage_times,
    start_simulator,
    wait_connected,
    work_dir,
)

GROUP = "bench"
TARGET_SECONDS = 10.0
TARGET_RSS_MB = 600


def run(
    agents: int, store_url: str | None, log_dir: str | None = None, profile: str | None = None
) -> dict[str, Any]:
    with scratch_store(store_url) as store, work_dir(log_dir, "fleetcmd-delivery-") as d:
        kind = store.url.split(":", 1)[0]
        seed_agents(store, agents, GROUP, "sim", f"{d}/creds.json")
        cluster = Cluster(store.url, d)
        sim = None
        try:
            sim = start_simulator(
                cluster.comms_urls,
                cluster.enrollment_key,
                agents,
                GROUP,
                f"{d}/creds.json",
                f"{d}/simulator.log",
                expect=agents,
            )
            ready = sim.read_event("ready")
            wait_connected(store, agents, "sim")
            procs = {"server": cluster.server_pids[0], "indexer": cluster.indexer_pid}
            procs["simulator"] = sim.proc.pid
            cpu0 = {k: cpu_seconds(p) for k, p in procs.items()}
            with profiled(procs, profile):
                started = time.monotonic()
                task_id = cluster.task(
                    "group-configuration-change", {"group": GROUP, "configuration": {"v": 1}}
                )
                task = cluster.wait_task(task_id, timeout=600, interval=0.05)
                observed = time.monotonic() - started
            cpu = {k: round(cpu_seconds(p) - cpu0[k], 2) for k, p in procs.items()}
            done = sim.read_event("done", timeout=60)
            stages = stage_times(store, task_id)
            seconds = iso_ts(task["completed_at"]) - iso_ts(task["created_at"])
            figures = {
                "seconds_to_all_results": round(seconds, 3),
                "seconds_observed_by_client": round(observed, 3),
                "commands_per_second": round(agents / seconds),
                "target_seconds": TARGET_SECONDS,
                "ratio_to_target": round(seconds / TARGET_SECONDS, 3),
                "server_rss_peak_mb": round(rss_mb(cluster.server_pids[0], peak=True), 1),
                "target_rss_mb": TARGET_RSS_MB,
                "rss_ratio_to_target": round(
                    rss_mb(cluster.server_pids[0], peak=True) / TARGET_RSS_MB, 3
                ),
                "cpu_seconds_server": cpu["server"],
                "cpu_seconds_indexer": cpu["indexer"],
                "cpu_seconds_simulator": cpu["simulator"],
                **stages,
                "task_status": task["status"],
                "counts": task["counts"],
                "results_at_agents": done["executed"],
                "duplicates_at_agents": done["duplicates"],
                "agent_errors": done["errors"],
                "setup_seconds": ready["setup_seconds"],
            }
            return report("delivery", kind, {"agents": agents}, figures)
        finally:
            if sim is not None:
                sim.stop()
            cluster.stop()
