"""fanout: a group change to N agents; seconds from task accepted to all N children and the
parent update committed, against a raw bulk insert of the same rows through the same driver."""

from __future__ import annotations

import time
from typing import Any

from fleetcmd.indexer.command_manager import CommandManager
from fleetcmd.indexer.task_manager import TaskManager, TaskRequest
from fleetcmd.model.records import dumps
from fleetcmd.store.base import SqlStore
from fleetcmd_lab.bench.common import report, scratch_store

GROUP = "bench"


def register(store: SqlStore, n: int) -> float:
    started = time.perf_counter()
    batch = 50_000
    for lo in range(0, n, batch):
        store.register_agents(
            [
                {
                    "id": f"agent-{i:07d}",
                    "name": f"host-{i:07d}",
                    "groups": [GROUP],
                    "version": "1.0.0",
                }
                for i in range(lo, min(n, lo + batch))
            ]
        )
    return time.perf_counter() - started


def raw_insert(
    store: SqlStore, task_id: int, parent_id: int, n: int, args: dict[str, Any]
) -> float:
    """The reference: the same rows built in Python and bulk-inserted in one transaction
    (executemany on SQLite, COPY on PostgreSQL: each driver's fastest bulk path)."""
    now = time.time()
    started = time.perf_counter()
    rows = [
        (
            task_id,
            parent_id,
            "command-manager",
            "bench",
            "agent",
            f"agent-{i:07d}",
            "apply-group-config",
            dumps({**args, "groups": [GROUP]}),
            60.0,
            now + 86400,
            "pending",
            now,
            now,
        )
        for i in range(n)
    ]
    cols = (
        "task_id, parent_id, source, username, target_type, target_id, action_name, "
        "action_args, timeout, expires_at, status, created_at, updated_at"
    )
    with store._connection(write=True) as cur:
        if store.url.startswith("sqlite"):
            cur.executemany(
                f"INSERT INTO commands ({cols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        else:
            with cur.copy(f"COPY commands ({cols}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
    return time.perf_counter() - started


def _remove_task(store: SqlStore, task_id: int) -> None:
    """Leave a shared store as it was: the run's commands (and the reference rows) go."""
    with store._connection(write=True) as cur:
        sql = store.sql
        cur.execute(
            sql(
                "DELETE FROM progress WHERE scope = 'parent' AND scope_id IN "
                "(SELECT id FROM commands WHERE task_id = :t AND expanded = 1)"
            ),
            {"t": task_id},
        )
        cur.execute(sql("DELETE FROM commands WHERE task_id = :t"), {"t": task_id})
        cur.execute(
            sql("DELETE FROM progress WHERE scope = 'task' AND scope_id = :t"), {"t": task_id}
        )
        cur.execute(sql("DELETE FROM tasks WHERE id = :t"), {"t": task_id})
        if not store.url.startswith("sqlite") and cur.connection.info.server_version >= 150000:
            # the deleted rows are counted as dead at once (not up to a second later), so a
            # store upkeep run next sees them
            cur.execute("SELECT pg_stat_force_next_flush()")


def run(
    agents: int, store_url: str | None, store: SqlStore | None = None, quiet: bool = False
) -> dict[str, Any]:
    """With `store`, run in that (already filled) store instead of a scratch one."""
    if store is not None:
        line = _run(store, agents, quiet)
        _remove_task(store, line["figures"]["task_id"])
        return line
    with scratch_store(store_url) as scratch:
        return _run(scratch, agents, quiet)


def _run(store: SqlStore, agents: int, quiet: bool) -> dict[str, Any]:
    kind = store.url.split(":", 1)[0]
    reg_seconds = register(store, agents)
    tm, cm = TaskManager(store), CommandManager(store, owner="bench")
    started = time.perf_counter()
    task, _ = tm.submit(
        TaskRequest(
            "group-configuration-change",
            {"group": GROUP, "configuration": {"sca": {"enabled": True}}},
            user="bench",
        )
    )
    accepted = time.perf_counter()
    handled = cm.run_once()
    done = time.perf_counter()
    counts = store.counts("task", task.id)
    assert handled == 1 and counts.get("pending") == agents, counts
    parent = store.list_commands(task_id=task.id, target_type="indexer").items[0]
    fanout = done - accepted
    raw = raw_insert(store, task.id, parent.id, agents, parent.action_args)
    figures = {
        "submit_seconds": round(accepted - started, 4),
        "fanout_seconds": round(fanout, 4),
        "rows_per_second": round(agents / fanout),
        "raw_insert_seconds": round(raw, 4),
        "ratio_to_raw": round(fanout / raw, 3),
        "target_seconds": 3.0,
        "target_ratio": 2.0,
        "register_seconds": round(reg_seconds, 2),
        "children": counts.get("pending", 0),
        "task_id": task.id,
    }
    return report("fanout", kind, {"agents": agents}, figures, quiet=quiet)
