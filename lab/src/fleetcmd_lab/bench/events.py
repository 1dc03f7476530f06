"""events (issue 18): what the event dispatcher pushes to a webhook subscriber, and what a
subscriber far behind costs the live path.

The backlog is made by real store operations: a group change fanned out to N seeded agents
(the command manager's expansion), then every child's result recorded in batches of 2,000 as
the server's bulker posts them; each recorded result writes its command's event, so N agents
give N events (+ the parent's and the task's). Then, with an indexer and a server running:

1. **push**: a webhook subscriber registered through the indexer's API from event 0; seconds
   from its registration until the receiver (`fleetcmd_lab.webhook.Sink`, in this process)
   holds every event of the store: events/s, batches, repeats, order.
2. **latency**: `bench latency` on the same store with no subscriber; again while a subscriber
   whose receiver answers each batch after `--slow-delay` seconds lags the whole backlog
   behind (its lag at the start and at the end of the run is printed); and again while a
   subscriber with a fast receiver catches up on the whole backlog (the dispatcher reading and
   sending at full speed beside the live path). Ratios to the run without a subscriber, and to
   the latency targets (SPEC §7)."""

from __future__ import annotations

import time
from typing import Any

from fleetcmd.indexer.command_manager import CommandManager
from fleetcmd.indexer.task_manager import TaskManager, TaskRequest
from fleetcmd.store.base import SqlStore
from fleetcmd.store.types import Result
from fleetcmd_lab.bench import fanout, latency
from fleetcmd_lab.bench.common import Cluster, report, scratch_store, work_dir
from fleetcmd_lab.webhook import Sink

RESULTS_PER_POST = 2000


def fill(store: SqlStore, agents: int) -> dict[str, Any]:
    """N agents, a group change to all of them, and every child's result: the events."""
    started = time.perf_counter()
    fanout.register(store, agents)
    task, _ = TaskManager(store).submit(
        TaskRequest(
            "group-configuration-change",
            {"group": fanout.GROUP, "configuration": {"labels": {"bench": "events"}}},
            user="bench",
        )
    )
    CommandManager(store, owner="bench").run_once()
    with store.reading() as tx:
        ids = [
            int(r[0])
            for r in tx.all(
                "SELECT id FROM commands WHERE task_id = :t AND target_type = 'agent' ORDER BY id",
                {"t": task.id},
            )
        ]
    for lo in range(0, len(ids), RESULTS_PER_POST):
        store.complete([Result(i, "success", 0, "ok", {}) for i in ids[lo : lo + RESULTS_PER_POST]])
    return {
        "fill_seconds": round(time.perf_counter() - started, 2),
        "commands": len(ids),
        "events": len(event_order(store)),
    }


def event_order(store: SqlStore) -> list[int]:
    """Every event id in the store, in the order a subscriber must get them (tx, id)."""
    with store.reading() as tx:
        return [int(r[0]) for r in tx.all("SELECT id FROM events ORDER BY tx, id")]


def in_order(arrived: list[int], order: list[int]) -> bool:
    """The first arrival of each id follows the store's order (repeats of a batch whose answer
    was lost may come later; they are not a reordering)."""
    rank = {e: i for i, e in enumerate(order)}
    seen: set[int] = set()
    last = -1
    for e in arrived:
        if e in seen or e not in rank:
            continue
        seen.add(e)
        if rank[e] < last:
            return False
        last = rank[e]
    return True


def push(store: SqlStore, d: str, batch: int, timeout: float = 900) -> dict[str, Any]:
    """Events/s from registration until the receiver holds every event of the store."""
    order = event_order(store)
    wanted = set(order)
    sink = Sink()
    cluster = Cluster(store.url, d)
    sub_id = None
    try:
        with cluster.client() as c:
            started = time.time()
            r = c.post(
                "/subscribers",
                json={
                    "subscriber": {
                        "name": "bench-push",
                        "kind": "webhook",
                        "url": sink.url,
                        "from_event": 0,
                        "options": {"batch": batch},
                    },
                    "user": "bench",
                },
            )
            r.raise_for_status()
            sub = r.json()["data"]
            sub_id = int(sub["id"])
            sink.secret = sub["secret"]
        deadline = time.monotonic() + timeout
        while not wanted <= sink.seen():
            if time.monotonic() > deadline:
                missing = len(wanted - sink.seen())
                raise TimeoutError(f"{missing} of {len(wanted)} events not pushed in {timeout}s")
            time.sleep(0.05)
        assert sink.last_at is not None
        seconds = sink.last_at - started
        got = sink.figures()
        with sink.lock:
            arrived = list(sink.ids)
    finally:
        cluster.stop()
        sink.close()
        if sub_id is not None:
            store.delete_subscriber(sub_id)
    return {
        "events": len(order),
        "seconds": round(seconds, 3),
        "events_per_second": round(len(order) / seconds),
        "batch_size": batch,
        "batches": got["batches"],
        "repeats": got["received"] - got["unique"],
        "bad_signatures": got["bad_signatures"],
        "in_order": in_order(arrived, order),
    }


def behind(store: SqlStore, d: str, tasks: int, batch: int, delay: float) -> dict[str, Any]:
    """`bench latency` while a subscriber starts at event 0; its receiver answers each batch
    after `delay` seconds (0: as fast as it can, catching up meanwhile)."""
    sink = Sink()
    sink.answer(delay=delay)
    name = "bench-slow" if delay else "bench-catching-up"
    sub = store.create_subscriber(
        {
            "name": name,
            "kind": "webhook",
            "url": sink.url,
            "from_event": 0,
            "options": {"batch": batch, "timeout": max(10.0, delay * 4)},
        },
        "bench",
    )
    sink.secret = sub["secret"]
    try:
        lag_start = store.lag((sub["cursor"]["tx"], sub["cursor"]["id"]))
        figures = latency.run(tasks, None, log_dir=d, store=store, quiet=True)["figures"]
        cursor = store.subscriber(int(sub["id"]))["cursor"]
        figures["subscriber_lag_at_start"] = lag_start
        figures["subscriber_lag_at_end"] = store.lag((cursor["tx"], cursor["id"]))
        figures["subscriber_received"] = sink.figures()["received"]
        figures["receiver_delay_s"] = delay
    finally:
        sink.close()
        store.delete_subscriber(int(sub["id"]))
    return figures


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 else 0.0


def run(
    agents: int,
    tasks: int,
    store_url: str | None,
    batch: int = 200,
    slow_delay: float = 1.0,
    catch_up: bool = True,
    log_dir: str | None = None,
) -> dict[str, Any]:
    with scratch_store(store_url) as store, work_dir(log_dir, "fleetcmd-events-") as d:
        kind = store.url.split(":", 1)[0]
        made = fill(store, agents)
        pushed = push(store, d, batch)
        alone = latency.run(tasks, None, log_dir=d, store=store, quiet=True)["figures"]
        slow = behind(store, d, tasks, batch, slow_delay)
        fast = behind(store, d, tasks, batch, 0.0) if catch_up else None
        figures: dict[str, Any] = {
            **made,
            "push": pushed,
            "latency_p50_ms_no_subscriber": alone["delivered_p50_ms"],
            "latency_p99_ms_no_subscriber": alone["delivered_p99_ms"],
            "latency_p50_ms_slow_subscriber": slow["delivered_p50_ms"],
            "latency_p99_ms_slow_subscriber": slow["delivered_p99_ms"],
            "ratio_p50_slow_to_none": _ratio(slow["delivered_p50_ms"], alone["delivered_p50_ms"]),
            "ratio_p99_slow_to_none": _ratio(slow["delivered_p99_ms"], alone["delivered_p99_ms"]),
            "slow_subscriber_lag_start_end": [
                slow["subscriber_lag_at_start"],
                slow["subscriber_lag_at_end"],
            ],
            "target_p50_ms": latency.TARGET_P50_MS,
            "target_p99_ms": latency.TARGET_P99_MS,
            "ratio_p50_slow_to_target": slow["ratio_p50_to_target"],
            "ratio_p99_slow_to_target": slow["ratio_p99_to_target"],
            "result_p50_ms_no_subscriber": alone["result_p50_ms"],
            "result_p50_ms_slow_subscriber": slow["result_p50_ms"],
        }
        if fast is not None:
            figures.update(
                {
                    "latency_p50_ms_catching_up": fast["delivered_p50_ms"],
                    "latency_p99_ms_catching_up": fast["delivered_p99_ms"],
                    "ratio_p50_catching_up_to_none": _ratio(
                        fast["delivered_p50_ms"], alone["delivered_p50_ms"]
                    ),
                    "ratio_p99_catching_up_to_none": _ratio(
                        fast["delivered_p99_ms"], alone["delivered_p99_ms"]
                    ),
                    "catching_up_lag_start_end": [
                        fast["subscriber_lag_at_start"],
                        fast["subscriber_lag_at_end"],
                    ],
                    "catching_up_received": fast["subscriber_received"],
                }
            )
        params = {"agents": agents, "tasks": tasks, "batch": batch, "slow_delay": slow_delay}
        return report("events", kind, params, figures)
