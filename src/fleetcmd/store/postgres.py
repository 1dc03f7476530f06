"""The distributed store: PostgreSQL through psycopg 3 and a connection pool.

Claims use `FOR UPDATE SKIP LOCKED`, so any number of indexer processes can claim from one
stream without waiting on each other; commits that add claimable work `NOTIFY`, and every
process `LISTEN`s so waiting pullers wake at once instead of polling.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql as pgsql
from psycopg_pool import ConnectionPool

from fleetcmd.errors import StoreUnavailable
from fleetcmd.store.base import (
    Moved,
    SqlStore,
    SqlTx,
    check_schema,
    migrations,
    schema_version,
)
from fleetcmd.store.types import UpkeepReport

log = logging.getLogger("fleetcmd.store.postgres")

SCHEMA_VERSION = schema_version("postgres")
CHANNEL = "fleetcmd_commands"
# Upkeep: one node at a time per store (an advisory lock keyed by the schema), on the tables
# whose indexes the live path walks or whose statistics steer its plans.
UPKEEP_LOCK = 7261935
UPKEEP_TABLES = ("commands", "progress", "tasks", "agents", "agent_groups")
UPKEEP_MIN_ROWS = 5000
VACUUM_RATIO = 0.02
ANALYZE_RATIO = 0.05
_PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@lru_cache(maxsize=2048)
def to_pyformat(text: str) -> str:
    return _PLACEHOLDER.sub(r"%(\1)s", text)


def split_url(url: str) -> tuple[str, str]:
    """Take our own `schema=` query parameter out of a PostgreSQL URL."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema", "public")
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise ValueError(f"bad schema name {schema!r}")
    return urlunsplit(parts._replace(query=urlencode(query))), schema


class PostgresTx(SqlTx):
    def in_list(self, column: str, param: str) -> str:
        return f"{column} = ANY(:{param})"

    def list_param(self, values: Sequence[Any]) -> Any:
        return list(values)

    def args_with_groups_sql(self) -> str:
        return (
            "(CAST(:args AS jsonb) || jsonb_build_object('groups', CAST(a.groups AS jsonb)))::text"
        )

    def select_locked(
        self, where: str, params: dict[str, Any], limit: int | None, skip_locked: bool
    ) -> list[Moved]:
        lim = f" LIMIT {int(limit)}" if limit else ""
        lock = " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"
        rows = self.all(
            f"SELECT id, status, parent_id, task_id, expanded FROM commands "
            f"WHERE {where} ORDER BY id{lim}{lock}",
            params,
        )
        return [(int(r[0]), r[1], r[2], int(r[3]), int(r[4])) for r in rows]

    def update_returning(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return list(self.cur.execute(to_pyformat(sql), params).fetchall())


class PostgresStore(SqlStore):
    tx_class = PostgresTx
    dialect = "postgres"
    for_update = " FOR UPDATE"
    bad_input = (OverflowError, psycopg.DataError)

    def __init__(self, url: str, pool_size: int = 10) -> None:
        super().__init__(url)
        self.conninfo, self.schema = split_url(url)
        self._pool = ConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=pool_size,
            open=True,
            configure=self._configure,
            kwargs={"autocommit": False},
            timeout=30,
        )
        self._listener: threading.Thread | None = None
        self._stopping = threading.Event()

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(self.schema)))
        conn.commit()

    def sql(self, text: str) -> str:
        return to_pyformat(text)

    @contextmanager
    def _connection(self, write: bool) -> Iterator[Any]:
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                yield cur
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL unavailable: {exc}") from exc

    def horizon_sql(self) -> str:
        # The oldest transaction still running: every event of an older one has committed.
        return "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"

    def _publish(self, tx: SqlTx) -> None:
        for target in sorted(tx.notifications):
            tx.cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, target))

    def _wake(self, target_type: str) -> None:
        # Other processes hear the NOTIFY; this one wakes its own waiters at once as well.
        super()._wake(target_type)

    def subscribe(self, callback: Any) -> None:
        super().subscribe(callback)
        if self._listener is None:
            self._listener = threading.Thread(target=self._listen, name="pg-listen", daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not self._stopping.is_set():
                        for note in conn.notifies(timeout=1.0):
                            super()._wake(note.payload)
            except psycopg.Error as exc:
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
                self._stopping.wait(1.0)

    def migrate(self) -> int:
        with psycopg.connect(self.conninfo, autocommit=False) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(7261934)")
            conn.execute(
                pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(pgsql.Identifier(self.schema))
            )
            conn.execute(
                pgsql.SQL("SET LOCAL search_path TO {}").format(pgsql.Identifier(self.schema))
            )
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            check_schema(f"schema {self.schema}", version, "postgres")
            if version < 1:
                script = resources.files("fleetcmd.store").joinpath("sql/schema_postgres.sql")
                for stmt in script.read_text().split(";"):
                    if stmt.strip() and "CREATE TABLE IF NOT EXISTS meta" not in stmt:
                        conn.execute(stmt)
                version = 1
            for number, step in migrations("postgres"):
                if number > version:
                    conn.execute(step.encode())  # several statements, no parameters
                    version = number
            conn.execute(
                "INSERT INTO meta VALUES ('schema_version', %s) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value",
                (str(version),),
            )
            conn.commit()
        return SCHEMA_VERSION

    def upkeep(self) -> UpkeepReport:
        """Vacuum and analyze the tables autovacuum does not look after.

        A command's every status change leaves a dead row version, and its entries in the
        pending-command indexes stay until a vacuum removes them; a claim walks them all.
        Where the server's autovacuum is on (and not switched off for the table) it does this
        itself, at the thresholds migration 5 sets for our busiest tables; where it is off,
        this does the same, at autovacuum's pace (`vacuum_cost_delay`), so the live path keeps
        its share of the machine. See `upkeep_step` for when."""
        started = time.perf_counter()
        report = UpkeepReport()
        try:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                self._upkeep(conn, report)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL unavailable: {exc}") from exc
        report.seconds = round(time.perf_counter() - started, 3)
        return report

    def _upkeep(self, conn: psycopg.Connection[Any], report: UpkeepReport) -> None:
        rows = conn.execute(
            "SELECT s.relname, s.n_live_tup, s.n_dead_tup, s.n_mod_since_analyze, "
            "current_setting('autovacuum') = 'on' AND NOT coalesce(c.reloptions::text "
            "~* 'autovacuum_enabled=(false|off|no|0)', false) "
            "FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid "
            "WHERE s.schemaname = %s AND s.relname = ANY(%s) ORDER BY s.relname",
            (self.schema, list(UPKEEP_TABLES)),
        ).fetchall()
        report.autovacuum = all(bool(r[4]) for r in rows)
        todo = [
            (name, step, int(dead))
            for name, live, dead, changed, covered in rows
            if not covered and (step := upkeep_step(int(live), int(dead), int(changed)))
        ]
        if not todo:
            return
        (locked,) = conn.execute(
            "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (UPKEEP_LOCK, self.schema)
        ).fetchone() or (False,)
        if not locked:
            report.skipped = "another node is keeping this store"
            return
        try:
            conn.execute("SET vacuum_cost_delay = '2ms'")  # autovacuum's default pace
            for name, step, dead in todo:
                table = pgsql.Identifier(self.schema, name)
                began = time.perf_counter()
                if step == "vacuum":
                    conn.execute(pgsql.SQL("VACUUM (ANALYZE) {}").format(table))
                    report.vacuumed[name] = dead
                    what = f"VACUUM (ANALYZE) {name}: {dead} dead rows"
                else:
                    conn.execute(pgsql.SQL("ANALYZE {}").format(table))
                    what = f"ANALYZE {name}"
                report.analyzed.append(name)
                report.actions.append(f"{what} ({time.perf_counter() - began:.2f}s)")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (UPKEEP_LOCK, self.schema))

    def drop_schema(self) -> None:
        """Tests and benchmarks only: remove this store's schema and everything in it."""
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(
                pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(pgsql.Identifier(self.schema))
            )

    def close(self) -> None:
        self._stopping.set()
        self._pool.close()
        if self._listener is not None:
            self._listener.join(timeout=3)


def upkeep_step(live: int, dead: int, changed: int) -> str | None:
    """What a table needs: "vacuum" once its dead rows reach 2 % of its live ones, "analyze"
    once the rows changed since its statistics reach 5 % (either at least 5,000), else None.
    Autovacuum's defaults are 20 % and 10 %: on a stream of a million finished commands they
    leave 200,000 dead entries in the indexes of pending commands that every claim walks."""
    if dead >= max(UPKEEP_MIN_ROWS, VACUUM_RATIO * live):
        return "vacuum"
    if changed >= max(UPKEEP_MIN_ROWS, ANALYZE_RATIO * live):
        return "analyze"
    return None


def check_available(conninfo: str) -> None:
    try:
        with psycopg.connect(conninfo, connect_timeout=3):
            pass
    except psycopg.Error as exc:
        raise StoreUnavailable(f"cannot reach PostgreSQL: {exc}") from exc
