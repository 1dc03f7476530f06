"""backlog: the stream holds 1,000,000 finished commands (old tasks, as after months of use);
fan-out and latency are measured on an empty store and again on the full one (% slower;
target under 20 %). The fan-out leaves its children deleted behind it (dead rows until a
vacuum): the store's upkeep runs before latency is measured, as the indexer runs it within a
minute (on PostgreSQL without autovacuum it is what removes them). Then retention removes the
backlog in small batches while latency is measured again, to show that it does not block the
live path."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from fleetcmd.model.records import dumps
from fleetcmd.store.base import SqlStore
from fleetcmd_lab.bench import fanout, latency
from fleetcmd_lab.bench.common import report, scratch_store, work_dir

TARGET_SLOWER_PCT = 20.0
AGE_DAYS = 40
PER_TASK = 10_000

COMMAND_COLS = (
    "id, task_id, parent_id, source, username, target_type, target_id, action_name, "
    "action_args, timeout, expires_at, status, result_code, result_message, result_data, "
    "created_at, updated_at, sent_at, delivered_at, completed_at, attempts, expanded"
)
TASK_COLS = "id, type, params, source, username, status, created_at, updated_at, completed_at"


def fill(store: SqlStore, commands: int) -> float:
    """Bulk-write `commands` finished commands in tasks of PER_TASK (one parent each, the
    rest its children), with their count rows; returns the seconds it took."""
    started = time.perf_counter()
    sqlite = store.url.startswith("sqlite")
    t = time.time() - AGE_DAYS * 86400
    args = dumps({"groups": ["old"], "config_version": 1})
    with store._connection(write=True) as cur:
        (max_cmd,) = cur.execute("SELECT coalesce(max(id), 0) FROM commands").fetchone()
        (max_task,) = cur.execute("SELECT coalesce(max(id), 0) FROM tasks").fetchone()
    next_cmd, task_id = int(max_cmd) + 1, int(max_task)
    left = commands
    while left > 0:
        n = min(PER_TASK, left)
        left -= n
        task_id += 1
        parent = next_cmd
        next_cmd += n
        children = n - 1
        tasks = [
            (
                task_id,
                "group-configuration-change",
                dumps({"group": "old"}),
                "management-api",
                "bench",
                "success",
                t,
                t,
                t + 5,
            )
        ]
        rows = [
            (
                parent,
                task_id,
                None,
                "management-api",
                "bench",
                "indexer",
                "old",
                "group-configuration-change",
                args,
                60.0,
                t + 86400,
                "success",
                0,
                f"{children} success",
                dumps({"counts": {"success": children}}),
                t,
                t + 5,
                t,
                None,
                t + 5,
                1,
                1,
            )
        ] + [
            (
                parent + 1 + i,
                task_id,
                parent,
                "command-manager",
                "bench",
                "agent",
                f"old-{i:06d}",
                "apply-group-config",
                args,
                60.0,
                t + 86400,
                "success",
                0,
                "ok",
                "{}",
                t,
                t + 4,
                t + 1,
                t + 2,
                t + 4,
                1,
                0,
            )
            for i in range(children)
        ]
        progress = [("task", task_id, "success", children), ("parent", parent, "success", children)]
        with store._connection(write=True) as cur:
            if sqlite:
                cur.executemany(f"INSERT INTO tasks ({TASK_COLS}) VALUES ({_marks(9)})", tasks)
                cur.executemany(
                    f"INSERT INTO commands ({COMMAND_COLS}) VALUES ({_marks(22)})", rows
                )
                cur.executemany(
                    "INSERT INTO progress (scope, scope_id, status, n) VALUES (?, ?, ?, ?)",
                    progress,
                )
            else:
                for table, cols, data in (
                    ("tasks", TASK_COLS, tasks),
                    ("commands", COMMAND_COLS, rows),
                    ("progress", "scope, scope_id, status, n", progress),
                ):
                    with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                        for row in data:
                            copy.write_row(row)
    if not sqlite:
        with store._connection(write=True) as cur:
            for table in ("tasks", "commands"):
                cur.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
        # A 40-day-old backlog has been vacuumed many times over: without this, the "backlog"
        # measurement would time autovacuum's first pass over a million fresh rows (hint bits,
        # visibility map) running beside it on the same two cores, not the backlog itself.
        import psycopg
        from psycopg import sql as pgsql

        with psycopg.connect(store.conninfo, autocommit=True) as conn:  # type: ignore[attr-defined]
            for table in ("tasks", "commands", "progress"):
                conn.execute(
                    pgsql.SQL("VACUUM (ANALYZE) {}.{}").format(
                        pgsql.Identifier(store.schema),  # type: ignore[attr-defined]
                        pgsql.Identifier(table),
                    )
                )
            # ... and long since written out: without a checkpoint here, the fill's dirty
            # pages (hundreds of MB) are flushed during the fan-out measured next.
            # (not a superuser nor pg_checkpoint: no checkpoint, the fan-out figure carries it)
            with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
                conn.execute("CHECKPOINT")
    else:
        with store._connection(write=True) as cur:
            cur.execute("ANALYZE")
    return time.perf_counter() - started


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _pct(after: float, before: float) -> float:
    return round((after / before - 1) * 100, 1) if before > 0 else 0.0


def run(
    commands: int,
    agents: int,
    tasks: int,
    store_url: str | None,
    log_dir: str | None = None,
) -> dict[str, Any]:
    with work_dir(log_dir, "fleetcmd-backlog-") as d:
        base_fan = fanout.run(agents, store_url, quiet=True)["figures"]
        base_lat = latency.run(tasks, store_url, log_dir=d, quiet=True)["figures"]
        with scratch_store(store_url) as store:
            kind = store.url.split(":", 1)[0]
            fill_seconds = fill(store, commands)
            fan = fanout.run(agents, None, store=store, quiet=True)["figures"]
            kept = store.upkeep()
            lat = latency.run(tasks, None, log_dir=d, store=store, quiet=True)["figures"]
            # retention of the whole backlog, with the live path measured meanwhile
            outcome: dict[str, Any] = {}

            def purge() -> None:
                outcome["report"] = store.purge_finished(older_than=(AGE_DAYS - 1) * 86400)

            during = latency.run(tasks, None, log_dir=d, store=store, quiet=True, alongside=purge)[
                "figures"
            ]
            purged = outcome["report"]
        figures = {
            "backlog_commands": commands,
            "fill_seconds": round(fill_seconds, 2),
            "fanout_seconds_empty": base_fan["fanout_seconds"],
            "fanout_seconds_backlog": fan["fanout_seconds"],
            "fanout_slower_pct": _pct(fan["fanout_seconds"], base_fan["fanout_seconds"]),
            "latency_p50_ms_empty": base_lat["delivered_p50_ms"],
            "latency_p50_ms_backlog": lat["delivered_p50_ms"],
            "latency_p50_slower_pct": _pct(lat["delivered_p50_ms"], base_lat["delivered_p50_ms"]),
            "latency_p99_ms_empty": base_lat["delivered_p99_ms"],
            "latency_p99_ms_backlog": lat["delivered_p99_ms"],
            "latency_p99_slower_pct": _pct(lat["delivered_p99_ms"], base_lat["delivered_p99_ms"]),
            "upkeep_seconds": kept.seconds,
            "upkeep": "; ".join(kept.actions) or kept.skipped or "nothing to do",
            "target_slower_pct": TARGET_SLOWER_PCT,
            "retention_commands_removed": purged.commands,
            "retention_tasks_removed": purged.tasks,
            "retention_seconds": purged.seconds,
            "retention_batches": purged.batches,
            "latency_p50_ms_during_retention": during["delivered_p50_ms"],
            "latency_p99_ms_during_retention": during["delivered_p99_ms"],
            "latency_max_ms_during_retention": during["delivered_max_ms"],
            "latency_window_seconds_during_retention": during["measured_seconds"],
        }
        return report(
            "backlog", kind, {"commands": commands, "agents": agents, "tasks": tasks}, figures
        )
