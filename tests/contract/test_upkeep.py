"""Store upkeep (store.upkeep): on PostgreSQL, the tables autovacuum does not look after are
vacuumed once dead rows pile up, which takes the dead entries out of the indexes the claims
walk; one node at a time; on SQLite there is nothing to do."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fleetcmd.store import open_store
from fleetcmd.store.postgres import UPKEEP_LOCK, PostgresStore, upkeep_step
from support import store_url_for

DEAD = 8000


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[PostgresStore]:
    with store_url_for("postgres", tmp_path) as url:
        store = open_store(url)
        assert isinstance(store, PostgresStore)
        try:
            yield store
        finally:
            store.close()


def session(store: PostgresStore) -> psycopg.Connection[Any]:
    conn = psycopg.connect(store.conninfo, autocommit=True)
    conn.execute(f'SET search_path TO "{store.schema}"')
    return conn


def leave_dead_pending_rows(store: PostgresStore) -> None:
    """DEAD pending commands written and deleted, with autovacuum switched off for the table
    (whatever the server's own setting), so only upkeep can remove their index entries."""
    now = time.time()
    with session(store) as conn:
        conn.execute("ALTER TABLE commands SET (autovacuum_enabled = false)")
        conn.execute(
            "INSERT INTO tasks (type, params, source, username, status, created_at, updated_at) "
            "VALUES ('vulnerability-rescan', '{}', 'test', 'test', 'pending', %s, %s)",
            (now, now),
        )
        conn.execute(
            "INSERT INTO commands (task_id, source, username, target_type, target_id, "
            "action_name, action_args, timeout, expires_at, status, created_at, updated_at) "
            "SELECT (SELECT max(id) FROM tasks), 'test', 'test', 'agent', 'a-' || i, "
            "'vulnerability-rescan', '{}', 60, %s, 'pending', %s, %s "
            "FROM generate_series(1, %s) AS i",
            (now + 3600, now, now, DEAD),
        )
        conn.execute("DELETE FROM commands")
        conn.execute("SELECT pg_stat_force_next_flush()")  # counts visible to upkeep at once


def pending_index_pages(store: PostgresStore) -> int:
    """Pages a scan of the pending-command deadline index reads (every claim-side scan of
    pending commands reads those entries, dead or alive)."""
    with session(store) as conn:
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = off")
        (plan,) = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT count(*) FROM commands "
            "WHERE status IN ('pending', 'processing', 'sent') AND expires_at > 0"
        ).fetchone() or (None,)
    top = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    assert "commands_deadline" in json.dumps(top), top
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


def dead_rows(store: PostgresStore) -> tuple[int, Any]:
    with session(store) as conn:
        row = conn.execute(
            "SELECT n_dead_tup, last_vacuum FROM pg_stat_user_tables "
            "WHERE schemaname = %s AND relname = 'commands'",
            (store.schema,),
        ).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def test_upkeep_vacuums_the_dead_entries_out_of_the_claims_indexes(pg: PostgresStore) -> None:
    leave_dead_pending_rows(pg)
    before = pending_index_pages(pg)
    assert dead_rows(pg)[0] >= DEAD
    report = pg.upkeep()
    assert report.autovacuum is False and report.skipped == ""
    assert report.vacuumed.get("commands", 0) >= DEAD, report
    assert any(a.startswith("VACUUM (ANALYZE) commands") for a in report.actions)
    dead, last_vacuum = dead_rows(pg)
    assert dead < DEAD and last_vacuum is not None
    after = pending_index_pages(pg)
    assert before >= 10 and after <= 3, (before, after)
    # nothing left to do: a second pass vacuums nothing
    again = pg.upkeep()
    assert "commands" not in again.vacuumed and again.autovacuum is False


def test_upkeep_leaves_the_store_to_the_node_already_at_it(pg: PostgresStore) -> None:
    leave_dead_pending_rows(pg)
    with session(pg) as other:
        other.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (UPKEEP_LOCK, pg.schema))
        report = pg.upkeep()
        assert report.skipped and not report.vacuumed and not report.actions
    assert "commands" in pg.upkeep().vacuumed  # the lock went with the other session


def test_migration_sets_autovacuum_thresholds_for_the_stream(pg: PostgresStore) -> None:
    with session(pg) as conn:
        (opts,) = conn.execute(
            "SELECT reloptions FROM pg_class WHERE oid = 'commands'::regclass"
        ).fetchone() or (None,)
    assert "autovacuum_vacuum_scale_factor=0.02" in opts


@pytest.mark.parametrize(
    ("live", "dead", "changed", "step"),
    [
        (1_000_000, 200_000, 0, "vacuum"),  # autovacuum's default would still wait
        (1_000_000, 19_999, 0, None),
        (1_000_000, 20_000, 0, "vacuum"),
        (1_000, 4_999, 0, None),  # small tables: at least 5,000 dead rows
        (1_000_000, 0, 50_000, "analyze"),
        (1_000_000, 0, 49_999, None),
    ],
)
def test_upkeep_thresholds(live: int, dead: int, changed: int, step: str | None) -> None:
    assert upkeep_step(live, dead, changed) == step


def test_sqlite_upkeep_has_nothing_to_vacuum(tmp_path: Path) -> None:
    """SQLite drops index entries with their rows, and its statistics are left alone (see
    SqliteStore.upkeep): the pass says why it did nothing and changes nothing."""
    with store_url_for("sqlite", tmp_path) as url:
        store = open_store(url)
        try:
            store.register_agents(
                [{"id": f"a{i}", "name": f"h{i}", "groups": ["g"]} for i in range(50)]
            )
            report = store.upkeep()
            assert report.skipped and not report.actions and report.autovacuum is None
            with store.reading() as tx:
                stats = tx.one("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")
            assert stats == (0,)  # no statistics made: the planner keeps its estimates
        finally:
            store.close()


def test_the_indexer_keeps_the_store_and_wakes_for_it(
    pg: PostgresStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The indexer's loop vacuums on its first pass, then sleeps for its interval (an hour
    here) unless woken, as retention does after removing rows."""
    import asyncio

    from fleetcmd.indexer.app import IndexerOptions, create_app
    from fleetcmd.indexer.retention import upkeep_loop

    st = create_app(pg, IndexerOptions(token="t")).state.indexer
    vacuums = st.metrics.upkeep.labels(step="vacuum", table="commands")

    async def until(n: float) -> None:
        for _ in range(300):
            if vacuums._value.get() >= n:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"no vacuum number {n}")

    async def run() -> None:
        leave_dead_pending_rows(pg)
        loop = asyncio.create_task(upkeep_loop(st, interval=3600, first_after=0))
        try:
            await until(1)
            await asyncio.to_thread(leave_dead_pending_rows, pg)
            st.upkeep_due.set()
            await until(2)
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)

    with caplog.at_level("INFO", logger="fleetcmd.indexer.retention"):
        asyncio.run(run())
    text = caplog.text
    assert text.count("autovacuum is off") == 1 and "VACUUM (ANALYZE) commands" in text
