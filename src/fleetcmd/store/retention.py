"""Retention: finished tasks older than a configured age leave the store, with their commands
and count rows, so the commands stream does not grow without end.

It works per task: a task goes once it is final (`completed_at` set, no active command left)
and finished before the cutoff; its commands go first, in small batches, each batch one short
transaction, so claims, results and fan-outs never wait long behind it; the task row, its
count rows and its rollout rows go last, in one transaction. Killed midway, the next pass
finds the same task (still final, still old) and carries on. Tasks still running are never
touched, whatever their age, so every remaining task keeps counts that match its rows.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fleetcmd.model.status import ACTIVE, FINAL
from fleetcmd.store.types import PurgeReport

if TYPE_CHECKING:
    from fleetcmd.store.base import SqlStore, SqlTx

FINAL_SQL = "(" + ", ".join(f"'{s}'" for s in sorted(FINAL)) + ")"
ACTIVE_SQL = "(" + ", ".join(f"'{s}'" for s in sorted(ACTIVE)) + ")"
# A pause between batches: SQLite's waiting writers poll for its single write lock, and a
# back-to-back loop of short transactions would starve them.
BATCH_PAUSE = 0.02
# Tables keyed by task id besides `tasks` and `commands`; absent ones are skipped.
TASK_TABLES = ("rollout_waves", "rollouts")


def candidates(store: SqlStore, cutoff: float, after: int, limit: int) -> list[int]:
    """Ids of final tasks finished before `cutoff`, with no active command counted."""
    with store.reading() as tx:
        rows = tx.all(
            "SELECT id FROM tasks WHERE id > :after AND completed_at IS NOT NULL "
            "AND completed_at < :cutoff AND NOT EXISTS (SELECT 1 FROM progress p "
            "WHERE p.scope = 'task' AND p.scope_id = tasks.id "
            f"AND p.status IN {ACTIVE_SQL} AND p.n > 0) ORDER BY id LIMIT :limit",
            {"after": after, "cutoff": cutoff, "limit": limit},
        )
    return [int(r[0]) for r in rows]


def purge_task(store: SqlStore, task_id: int, cutoff: float, batch: int) -> tuple[int, int, bool]:
    """Delete one task's final commands in batches, then the task; returns (commands deleted,
    batches, whether the task itself went)."""
    deleted = batches = 0
    while True:
        with store.transaction() as tx:
            rows = tx.all(
                "SELECT id, expanded FROM commands WHERE task_id = :t "
                f"AND status IN {FINAL_SQL} ORDER BY id LIMIT :n",
                {"t": task_id, "n": batch},
            )
            if rows:
                ids = [int(r[0]) for r in rows]
                parents = [int(r[0]) for r in rows if r[1]]
                tx.ex(
                    f"DELETE FROM commands WHERE {tx.in_list('id', 'ids')}",
                    {"ids": tx.list_param(ids)},
                )
                tx.ex(
                    f"DELETE FROM command_output WHERE {tx.in_list('command_id', 'ids')}",
                    {"ids": tx.list_param(ids)},
                )
                if parents:
                    tx.ex(
                        "DELETE FROM progress WHERE scope = 'parent' AND "
                        f"{tx.in_list('scope_id', 'ids')}",
                        {"ids": tx.list_param(parents)},
                    )
        if rows:
            deleted += len(rows)
            batches += 1
        if len(rows) < batch:
            break
        time.sleep(BATCH_PAUSE)
    with store.transaction() as tx:
        left = tx.one("SELECT count(*) FROM commands WHERE task_id = :t", {"t": task_id})
        still = tx.one(
            "SELECT 1 FROM tasks WHERE id = :t AND completed_at IS NOT NULL "
            "AND completed_at < :cutoff",
            {"t": task_id, "cutoff": cutoff},
        )
        if (left and int(left[0])) or still is None:
            return deleted, batches, False  # something still lives in it: keep the task
        tx.ex("DELETE FROM progress WHERE scope = 'task' AND scope_id = :t", {"t": task_id})
        for table in TASK_TABLES:
            if _has_table(tx, table):
                tx.ex(f"DELETE FROM {table} WHERE task_id = :t", {"t": task_id})
        tx.ex("DELETE FROM tasks WHERE id = :t", {"t": task_id})
    return deleted, batches + 1, True


def _has_table(tx: SqlTx, name: str) -> bool:
    if tx.store.url.startswith("sqlite"):
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :n"
    else:
        sql = (
            "SELECT 1 FROM information_schema.tables "
            "WHERE table_name = :n AND table_schema = current_schema()"
        )
    return tx.one(sql, {"n": name}) is not None


def purge(
    store: SqlStore, older_than: float, now: float | None = None, batch: int = 2000
) -> PurgeReport:
    """Remove every task finished more than `older_than` seconds before `now`, with its
    commands and counts (see the module docstring)."""
    started = time.perf_counter()
    cutoff = (time.time() if now is None else now) - older_than
    report = PurgeReport()
    after = 0
    while True:
        ids = candidates(store, cutoff, after, 100)
        if not ids:
            break
        for task_id in ids:
            commands, batches, gone = purge_task(store, task_id, cutoff, batch)
            report.commands += commands
            report.batches += batches
            report.tasks += int(gone)
        after = ids[-1]
    report.seconds = round(time.perf_counter() - started, 3)
    return report
