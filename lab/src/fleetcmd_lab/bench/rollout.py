"""rollout: N simulated agents (a separate load process on the real Comms API) and one group
change rolled out with a canary, waves, a pause between waves and a spread inside each; how
closely each wave's actual start and length matched what the policy asked for."""

from __future__ import annotations

import tempfile
import time
from itertools import pairwise
from typing import Any

from fleetcmd_lab.bench.common import Cluster, report, scratch_store, start_simulator

GROUP = "bench"


def run(
    agents: int,
    store_url: str | None,
    wave_percent: float = 25.0,
    pause: float = 2.0,
    spread: float = 3.0,
    canary_percent: float = 1.0,
) -> dict[str, Any]:
    policy = {
        "canary": {"percent": canary_percent},
        "waves": {"size": f"{wave_percent:g}%", "pause": pause, "spread": spread},
    }
    with (
        scratch_store(store_url) as store,
        tempfile.TemporaryDirectory(prefix="fleetcmd-rollout-") as d,
    ):
        kind = store.url.split(":", 1)[0]
        url = store.url
        store.close()
        cluster = Cluster(url, d)
        sim = None
        try:
            cluster.wait_task(
                cluster.task(
                    "group-configuration-change", {"group": GROUP, "configuration": {"v": 0}}
                )
            )
            sim = start_simulator(
                cluster.comms_urls,
                cluster.enrollment_key,
                agents,
                GROUP,
                f"{d}/creds.json",
                f"{d}/simulator.log",
                duration=1800,
            )
            # The agents run until the end (stopping at the last command received could cut
            # a result short); the simulator's events are drained by its own thread.
            sim.read_event("ready")
            time.sleep(1.5)  # connection state reaches the indexer in batches
            started = time.monotonic()
            task_id = cluster.task(
                "group-configuration-change",
                {"group": GROUP, "configuration": {"v": 1}},
                rollout=policy,
            )
            task = cluster.wait_task(task_id, timeout=900, interval=0.1)
            seconds = time.monotonic() - started
            with cluster.client() as c:
                ro = c.get(f"/tasks/{task_id}/rollout").json()["data"]
            waves = ro["waves"]
            # A wave should start `pause` after the previous one settled, and take about
            # `spread` (its last commands are released at the end of the spread).
            start_lags = [
                w["started_at"] - (prev["settled_at"] + pause) for prev, w in pairwise(waves)
            ]
            lengths = [w["settled_at"] - w["started_at"] for w in waves]
            figures = {
                "seconds_to_completion": round(seconds, 3),
                "rollout_state": ro["state"],
                "task_status": task["status"],
                "succeeded": ro["totals"]["succeeded"],
                "waves": len(waves),
                "wave_sizes": [w["size"] for w in waves],
                "start_lag_max_s": round(max(start_lags, default=0.0), 3),
                "start_lag_mean_s": round(sum(start_lags) / max(1, len(start_lags)), 3),
                "wave_length_vs_spread_s": [round(x - spread, 3) for x in lengths[1:]],
                "canary_length_s": round(lengths[0], 3) if lengths else 0.0,
            }
            return report(
                "rollout",
                kind,
                {"agents": agents, "policy": policy},
                figures,
            )
        finally:
            if sim is not None:
                sim.stop()
            cluster.stop()
