"""The store: one interface (`SqlStore`, `SqlTx` in store/base.py), two backends chosen by URL."""

from __future__ import annotations

from fleetcmd.model.targets import AgentSelection
from fleetcmd.store.base import SqlStore
from fleetcmd.store.types import (
    Beat,
    ClaimFilter,
    Fanout,
    NewCommand,
    Output,
    Result,
    SweepReport,
)


def open_store(url: str, migrate: bool = True) -> SqlStore:
    """`sqlite:///path/to/file.db` (embedded, the default) or `postgresql://…[?schema=name]`."""
    store: SqlStore
    if url.startswith("sqlite:"):
        from fleetcmd.store.sqlite import SqliteStore

        store = SqliteStore(url)
    elif url.startswith(("postgresql:", "postgres:")):
        from fleetcmd.store.postgres import PostgresStore

        store = PostgresStore(url)
    else:
        raise ValueError(f"unsupported store URL {url!r}: use sqlite:///PATH or postgresql://…")
    if migrate:
        try:
            store.migrate()  # SchemaTooNew: a newer release migrated it; stop before writing
        except BaseException:
            store.close()
            raise
        store.backfill_version_keys()
    return store


__all__ = [
    "AgentSelection",
    "Beat",
    "ClaimFilter",
    "Fanout",
    "NewCommand",
    "Output",
    "Result",
    "SqlStore",
    "SweepReport",
    "open_store",
]
