"""The embedded store: SQLite in WAL mode, one connection per thread, one writer at a time."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fleetcmd.errors import StoreUnavailable
from fleetcmd.model.records import dumps
from fleetcmd.store.base import (
    Moved,
    SqlStore,
    SqlTx,
    check_schema,
    migrations,
    schema_version,
)
from fleetcmd.store.types import UpkeepReport

SCHEMA_VERSION = schema_version("sqlite")


def _statements(script: str) -> Iterator[str]:
    """Split a script into statements (triggers keep their inner semicolons)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open: on some errors (a full disk, SQLITE_FULL)
    SQLite has rolled it back already, and a second ROLLBACK would hide the real error."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class SqliteTx(SqlTx):
    def in_list(self, column: str, param: str) -> str:
        return f"{column} IN (SELECT value FROM json_each(:{param}))"

    def list_param(self, values: Sequence[Any]) -> Any:
        return dumps(list(values))

    def by_target_first(self, column: str) -> str:
        return f"+{column}"

    def args_with_groups_sql(self) -> str:
        return "json_set(:args, '$.groups', json(a.groups))"

    def select_locked(
        self, where: str, params: dict[str, Any], limit: int | None, skip_locked: bool
    ) -> list[Moved]:
        # The transaction already holds SQLite's single write lock (BEGIN IMMEDIATE).
        # `+id`: order without letting the planner walk the whole table in id order to
        # avoid a sort; it then picks the index that matches `where` (the sweeper's partial
        # indexes scanned 1,000,000 finished rows every second, under the write lock).
        lim = f" LIMIT {int(limit)}" if limit else ""
        rows = self.all(
            f"SELECT id, status, parent_id, task_id, expanded FROM commands "
            f"WHERE {where} ORDER BY +id{lim}",
            params,
        )
        return [(int(r[0]), r[1], r[2], int(r[3]), int(r[4])) for r in rows]

    def update_returning(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return list(self.cur.execute(sql, params).fetchall())


class SqliteStore(SqlStore):
    tx_class = SqliteTx
    dialect = "sqlite"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        path = url.removeprefix("sqlite://")
        if path.startswith("/"):
            path = path[1:] if path.startswith("//") else path
        self.path = path or ":memory:"
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def sql(self, text: str) -> str:
        return text

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA cache_size=-65536")
            conn.execute("PRAGMA temp_store=MEMORY")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _connection(self, write: bool) -> Iterator[Any]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite store busy or unavailable: {exc}") from exc
        try:
            yield conn
        except sqlite3.OperationalError as exc:
            _rollback(conn)
            # e.g. "database or disk is full": a clear 503, not an internal error
            raise StoreUnavailable(f"SQLite write failed: {exc}") from exc
        except BaseException:
            _rollback(conn)
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            _rollback(conn)
            raise StoreUnavailable(f"SQLite commit failed: {exc}") from exc

    def migrate(self) -> int:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            check_schema(self.path, version, "sqlite")
            if version < 1:
                script = resources.files("fleetcmd.store").joinpath("sql/schema_sqlite.sql")
                for stmt in script.read_text().split(";"):
                    if stmt.strip() and "CREATE TABLE IF NOT EXISTS meta" not in stmt:
                        conn.execute(stmt)
                version = 1
            for number, step in migrations("sqlite"):
                if number > version:
                    for stmt in _statements(step):
                        conn.execute(stmt)
                    version = number
            conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(version),)
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return SCHEMA_VERSION

    def upkeep(self) -> UpkeepReport:
        """Nothing to do: SQLite removes index entries with their rows (no dead entries for the
        claims to walk), and the planner goes by its built-in estimates, the same every time,
        as long as nobody runs ANALYZE. Refreshing statistics here was tried (`PRAGMA
        optimize`): run while retention was deleting, it took the live path's p99 from 63 ms
        to 108-143 ms (docs/performance.md)."""
        return UpkeepReport(skipped="SQLite: nothing to vacuum")

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.ProgrammingError):
                    conn.close()
            self._all.clear()
        self._local = threading.local()
