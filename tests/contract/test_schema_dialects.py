"""The two schema dialects stay in step: after every migration, SQLite and PostgreSQL hold the
same tables, the same columns in each, and the same named indexes. A migration written for one
dialect only fails here (unless it is listed below, with why)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetcmd.store import open_store
from support import need_pg, store_url_for

# Present in one dialect only, on purpose.
ONLY_POSTGRES: dict[str, str] = {}


def sqlite_shape(url: str) -> tuple[dict[str, set[str]], set[str]]:
    store = open_store(url)
    try:
        with store.reading() as tx:
            tables = [
                r[0]
                for r in tx.all(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'",
                    {},
                )
            ]
            columns = {t: {r[1] for r in tx.all(f"PRAGMA table_info({t})", {})} for t in tables}
            indexes = {
                r[0]
                for r in tx.all(
                    "SELECT name FROM sqlite_master WHERE type = 'index' "
                    "AND name NOT LIKE 'sqlite_autoindex%'",
                    {},
                )
            }
    finally:
        store.close()
    return columns, indexes


def postgres_shape(url: str) -> tuple[dict[str, set[str]], set[str]]:
    store = open_store(url)
    try:
        with store.reading() as tx:
            columns: dict[str, set[str]] = {}
            for table, column in tx.all(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema()",
                {},
            ):
                columns.setdefault(table, set()).add(column)
            indexes = {
                r[0]
                for r in tx.all(
                    "SELECT i.indexname FROM pg_indexes i WHERE i.schemaname = current_schema() "
                    "AND NOT EXISTS (SELECT 1 FROM pg_constraint c "
                    "WHERE c.conname = i.indexname)",
                    {},
                )
            }
    finally:
        store.close()
    return columns, indexes


def test_sqlite_and_postgres_schemas_hold_the_same_tables_columns_and_indexes(
    tmp_path: Path,
) -> None:
    need_pg()
    with store_url_for("sqlite", tmp_path) as s_url, store_url_for("postgres", tmp_path) as p_url:
        s_cols, s_idx = sqlite_shape(s_url)
        p_cols, p_idx = postgres_shape(p_url)
    for table in ONLY_POSTGRES:
        p_cols.pop(table, None)
    assert sorted(set(s_cols) ^ set(p_cols)) == [], "tables in one dialect only"
    differing = {
        t: {
            "sqlite only": sorted(s_cols[t] - p_cols[t]),
            "postgres only": sorted(p_cols[t] - s_cols[t]),
        }
        for t in s_cols
        if s_cols[t] != p_cols[t]
    }
    assert differing == {}, "columns differ"
    assert {"sqlite only": sorted(s_idx - p_idx), "postgres only": sorted(p_idx - s_idx)} == {
        "sqlite only": [],
        "postgres only": [],
    }, "indexes differ"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_migrated_store_reports_the_newest_schema_version(kind: str, tmp_path: Path) -> None:
    if kind == "postgres":
        need_pg()
    sql = Path(open_store.__code__.co_filename).parent / "sql"
    newest = max(int(p.name.split("_", 1)[0]) for p in sql.glob("0*.sql"))
    with store_url_for(kind, tmp_path) as url:
        store = open_store(url)
        try:
            with store.reading() as tx:
                row = tx.one("SELECT value FROM meta WHERE key = 'schema_version'", {})
        finally:
            store.close()
    assert row is not None and int(row[0]) == newest
