"""latency: one connected agent, N sequential small tasks on an idle system: p50 / p99 / max
from task accepted to the agent holding the command (the simulated agent's own clock when
the long-poll answer reached it) and to the result recorded (the store's completed_at)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from fleetcmd.store.base import SqlStore
from fleetcmd_lab.bench.common import (
    Cluster,
    iso_ts,
    profiled,
    report,
    scratch_store,
    seed_agents,
    start_simulator,
    wait_connected,
    work_dir,
)

GROUP = "lat"
TARGET_P50_MS = 50.0
TARGET_P99_MS = 250.0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def measure(
    cluster: Cluster, sim: Any, store: SqlStore, agent_id: str, tasks: int
) -> tuple[list[float], list[float]]:
    """Submit `tasks` one after another; per task: ms to the agent, ms to the result."""
    delivered, recorded = [], []
    with cluster.client() as c:
        for _ in range(tasks):
            r = c.post(
                "/tasks", json={"type": "vulnerability-rescan", "params": {"agents": [agent_id]}}
            )
            r.raise_for_status()
            task = r.json()["data"]
            task_id, accepted = int(task["id"]), iso_ts(task["created_at"])
            while True:
                event = sim.read_event("command", timeout=60)
                if event["task_id"] == task_id:
                    break
            delivered.append((event["at"] - accepted) * 1000)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with store.reading() as tx:
                    row = tx.one(
                        "SELECT max(completed_at), count(*) FROM commands "
                        "WHERE task_id = :id AND target_type = 'agent'",
                        {"id": task_id},
                    )
                if row and row[1] and row[0] is not None:
                    recorded.append((float(row[0]) - accepted) * 1000)
                    break
                time.sleep(0.002)
            else:
                raise TimeoutError(f"no result for task {task_id} in 60 s")
    return delivered, recorded


def figures_of(delivered: list[float], recorded: list[float]) -> dict[str, Any]:
    p50, p99 = statistics.median(delivered), pct(delivered, 99)
    return {
        "delivered_p50_ms": round(p50, 1),
        "delivered_p99_ms": round(p99, 1),
        "delivered_max_ms": round(max(delivered), 1),
        "result_p50_ms": round(statistics.median(recorded), 1),
        "result_p99_ms": round(pct(recorded, 99), 1),
        "result_max_ms": round(max(recorded), 1),
        "target_p50_ms": TARGET_P50_MS,
        "target_p99_ms": TARGET_P99_MS,
        "ratio_p50_to_target": round(p50 / TARGET_P50_MS, 3),
        "ratio_p99_to_target": round(p99 / TARGET_P99_MS, 3),
    }


def run(
    tasks: int,
    store_url: str | None,
    log_dir: str | None = None,
    profile: str | None = None,
    store: SqlStore | None = None,
    quiet: bool = False,
    alongside: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """With `store`, run against that (already filled) store instead of a scratch one; with
    `alongside`, run that in a thread during the measured tasks (e.g. retention)."""
    if store is not None:
        with work_dir(log_dir, "fleetcmd-latency-") as d:
            return _run(store, tasks, d, profile, quiet, alongside)
    with scratch_store(store_url) as scratch, work_dir(log_dir, "fleetcmd-latency-") as d:
        return _run(scratch, tasks, d, profile, quiet, alongside)


def _run(
    store: SqlStore,
    tasks: int,
    d: str,
    profile: str | None,
    quiet: bool,
    alongside: Callable[[], Any] | None,
) -> dict[str, Any]:
    kind = store.url.split(":", 1)[0]
    prefix = f"lat{int(time.time() * 1000) % 100000}"
    seed_agents(store, 1, GROUP, prefix, f"{d}/creds.json")
    cluster = Cluster(store.url, d)
    sim = None
    try:
        sim = start_simulator(
            cluster.comms_urls,
            cluster.enrollment_key,
            1,
            GROUP,
            f"{d}/creds.json",
            f"{d}/simulator.log",
            prefix=prefix,
            trace=True,
        )
        sim.read_event("ready")
        wait_connected(store, 1, prefix)
        agent_id = f"{prefix}000000"
        measure(cluster, sim, store, agent_id, min(10, tasks))  # warm-up, not counted
        procs = {"server": cluster.server_pids[0], "indexer": cluster.indexer_pid}
        side: dict[str, float] = {}

        def timed() -> None:
            assert alongside is not None
            started = time.monotonic()
            alongside()
            side["seconds"] = time.monotonic() - started

        worker = threading.Thread(target=timed) if alongside else None
        with profiled(procs, profile):
            started = time.monotonic()
            if worker is not None:
                worker.start()
            delivered, recorded = measure(cluster, sim, store, agent_id, tasks)
            measured = time.monotonic() - started
        figures = figures_of(delivered, recorded)
        if worker is not None:
            worker.join()
            figures["alongside_seconds"] = round(side.get("seconds", 0.0), 2)
            figures["measured_seconds"] = round(measured, 2)
        return report("latency", kind, {"tasks": tasks}, figures, quiet=quiet)
    finally:
        if sim is not None:
            sim.stop()
        cluster.stop()
