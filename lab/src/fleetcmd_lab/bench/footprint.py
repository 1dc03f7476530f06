"""agent footprint: one real `fleetcmd agent` process connected and idle for N seconds (5
minutes by default), then N configuration changes to its group applied one after another:
idle and peak RSS, CPU seconds idle and while applying (from /proc)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from fleetcmd.launch import Process, fleetcmd_argv
from fleetcmd_lab.bench.common import (
    Cluster,
    cpu_seconds,
    report,
    rss_mb,
    scratch_store,
    work_dir,
)

GROUP = "footprint"
TARGET_IDLE_RSS_MB = 40.0
TARGET_IDLE_CPU_PCT = 1.0


def _agent_id(state_dir: str, timeout: float = 120) -> str:
    """The agent's id once it enrolled and applied its group configuration (from
    `fleetcmd agent-status`, which reads the state folder)."""
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            fleetcmd_argv("agent-status", "--state-dir", state_dir),
            capture_output=True,
            text=True,
        )
        if out.returncode == 0:
            with_id = json.loads(out.stdout)
            if with_id.get("id") and with_id.get("config_hash"):
                return str(with_id["id"])
        time.sleep(0.5)
    raise TimeoutError("the agent did not enroll")


def run(
    idle: float, changes: int, store_url: str | None, log_dir: str | None = None
) -> dict[str, Any]:
    with scratch_store(store_url) as store, work_dir(log_dir, "fleetcmd-footprint-") as d:
        kind = store.url.split(":", 1)[0]
        cluster = Cluster(store.url, d)
        agent = None
        try:
            cluster.wait_task(
                cluster.task(
                    "group-configuration-change", {"group": GROUP, "configuration": {"v": 0}}
                )
            )
            state = f"{d}/agent-state"
            agent = Process(
                "agent",
                fleetcmd_argv(
                    "agent",
                    "--server",
                    cluster.comms_urls[0],
                    "--enrollment-key",
                    cluster.enrollment_key,
                    "--name",
                    "footprint-agent",
                    "--state-dir",
                    state,
                    "--groups",
                    GROUP,
                    "--log-level",
                    "warning",
                ),
                Path(d) / "agent.log",
            ).start()
            agent_id = _agent_id(state)
            # settled: enrolled, start-up inventory and configuration done, long-polling
            with cluster.client() as c:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    a = c.get(f"/agents/{agent_id}").json()["data"]
                    if a.get("status") == "active":
                        break
                    time.sleep(0.5)
            time.sleep(min(5.0, idle))
            cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
            samples = []
            while time.monotonic() - t0 < idle:
                samples.append(rss_mb(agent.pid))
                time.sleep(min(1.0, idle / 10))
            idle_cpu = cpu_seconds(agent.pid) - cpu0
            idle_seconds = time.monotonic() - t0
            idle_rss = rss_mb(agent.pid)
            peak_idle = rss_mb(agent.pid, peak=True)
            cpu1, t1 = cpu_seconds(agent.pid), time.monotonic()
            for v in range(1, changes + 1):
                task = cluster.task(
                    "group-configuration-change",
                    {"group": GROUP, "configuration": {"v": v, "sca": {"enabled": v % 2 == 0}}},
                )
                done = cluster.wait_task(task, timeout=120, interval=0.01)
                if done["status"] != "success":
                    raise RuntimeError(f"configuration change {v}: {done['status']}")
            change_cpu = cpu_seconds(agent.pid) - cpu1
            change_seconds = time.monotonic() - t1
            figures = {
                "idle_rss_mb": round(idle_rss, 1),
                "idle_rss_max_sampled_mb": round(max(samples, default=idle_rss), 1),
                "idle_cpu_seconds": round(idle_cpu, 3),
                "idle_cpu_pct_of_core": round(idle_cpu / idle_seconds * 100, 3),
                "peak_rss_mb": round(rss_mb(agent.pid, peak=True), 1),
                "peak_rss_before_changes_mb": round(peak_idle, 1),
                "changes_cpu_seconds": round(change_cpu, 3),
                "changes_seconds": round(change_seconds, 2),
                "cpu_ms_per_change": round(change_cpu / max(changes, 1) * 1000, 1),
                "rss_after_changes_mb": round(rss_mb(agent.pid), 1),
                "target_idle_rss_mb": TARGET_IDLE_RSS_MB,
                "target_idle_cpu_pct": TARGET_IDLE_CPU_PCT,
                "rss_ratio_to_target": round(idle_rss / TARGET_IDLE_RSS_MB, 3),
                "threads": len(os.listdir(f"/proc/{agent.pid}/task")),
            }
            return report("footprint", kind, {"idle_seconds": idle, "changes": changes}, figures)
        finally:
            if agent is not None:
                agent.stop(10)
            cluster.stop()
