"""Backups of a store and their restore into a fresh one.

SQLite: the online backup API (`sqlite3.Connection.backup`), a consistent copy taken while
the indexer keeps writing. PostgreSQL: `pg_dump` of the store's schema in the custom format,
restored by `pg_restore` in one transaction. The password never goes on a command line: it
reaches pg_dump and pg_restore in their environment (PGPASSWORD), the way libpq reads it."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetcmd.store.core import check_schema


class BackupError(RuntimeError):
    """A backup or restore that cannot be done; the message says why."""


@dataclass(frozen=True)
class Done:
    kind: str  # "sqlite" or "postgres"
    path: Path
    schema_version: int
    size: int


def _private(path: Path) -> None:
    """A backup holds what the store holds (credential hashes, audit records): owner only."""
    os.chmod(path, 0o600)


def _sqlite_path(url: str) -> str:
    from fleetcmd.store.sqlite import SqliteStore

    return SqliteStore(url).path


def _meta_version(conn: sqlite3.Connection) -> int:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError:
        return 0
    return int(row[0]) if row else 0


def backup(url: str, out: Path) -> Done:
    if out.exists():
        raise BackupError(f"{out} exists; a backup never overwrites a file")
    if url.startswith("sqlite:"):
        return _sqlite_backup(_sqlite_path(url), out)
    return _pg_backup(url, out)


def restore(url: str, source: Path) -> Done:
    if not source.is_file():
        raise BackupError(f"no backup at {source}")
    if url.startswith("sqlite:"):
        return _sqlite_restore(source, Path(_sqlite_path(url)))
    return _pg_restore(url, source)


def _sqlite_backup(path: str, out: Path) -> Done:
    if not Path(path).is_file():
        raise BackupError(f"no SQLite store at {path}")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        version = _meta_version(src)
        if version == 0:
            raise BackupError(f"{path} is no fleetcmd store (no schema version)")
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst, pages=4096)  # steps: writers are not held up for the whole copy
        finally:
            dst.close()
    finally:
        src.close()
    _private(tmp)
    os.replace(tmp, out)
    return Done("sqlite", out, version, out.stat().st_size)


def _sqlite_restore(source: Path, target: Path) -> Done:
    if target.exists() and target.stat().st_size > 0:
        raise BackupError(
            f"{target} exists: restore into a fresh store (move the old one away first)"
        )
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        version = _meta_version(src)
        if version == 0:
            raise BackupError(f"{source} is no fleetcmd SQLite backup")
        check_schema(str(source), version, "sqlite")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    _private(tmp)
    os.replace(tmp, target)  # the store appears whole or not at all
    return Done("sqlite", target, version, target.stat().st_size)


def _pg(url: str) -> tuple[str, str, dict[str, str]]:
    """conninfo without the password, the schema, and the environment carrying it."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from fleetcmd.store.postgres import split_url

    conninfo, schema = split_url(url)
    params: dict[str, Any] = conninfo_to_dict(conninfo)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**params), schema, env


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(f"{name} not found: install PostgreSQL's client (postgresql-client)")
    return path


def _run(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BackupError(f"{Path(argv[0]).name} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def _pg_version(conninfo: str, schema: str, env: dict[str, str]) -> int | None:
    import psycopg

    password = env.get("PGPASSWORD")
    with (
        psycopg.connect(conninfo, password=password)
        if password
        else psycopg.connect(conninfo) as conn
    ):
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        if not exists:
            return None
        row = conn.execute(
            f'SELECT value FROM "{schema}".meta WHERE key = %s', ("schema_version",)
        ).fetchone()
        return int(row[0]) if row else 0


def _pg_backup(url: str, out: Path) -> Done:
    conninfo, schema, env = _pg(url)
    version = _pg_version(conninfo, schema, env)
    if not version:
        raise BackupError(f"no fleetcmd store in schema {schema}")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    _run(
        [
            _tool("pg_dump"),
            "--format=custom",
            f"--schema={schema}",
            "--no-owner",
            "--no-privileges",
            f"--file={tmp}",
            f"--dbname={conninfo}",
        ],
        env,
    )
    _private(tmp)
    os.replace(tmp, out)
    return Done("postgres", out, version, out.stat().st_size)


_TOC_SCHEMA = re.compile(r"^\d+; \d+ \d+ SCHEMA - (\S+) ", re.MULTILINE)


def _pg_restore(url: str, source: Path) -> Done:
    conninfo, schema, env = _pg(url)
    listing = _run([_tool("pg_restore"), "--list", str(source)], env)
    found = _TOC_SCHEMA.findall(listing)
    if found != [schema]:
        raise BackupError(
            f"{source} holds schema {', '.join(found) or '(none)'}, not {schema}: a PostgreSQL "
            f"backup is restored under its own schema name, into a database where it does not "
            f"exist yet (name it with ?schema={found[0] if found else '…'})"
        )
    if _pg_version(conninfo, schema, env) is not None:
        raise BackupError(
            f"schema {schema} exists in that database: restore into a fresh one (another "
            f"database, or drop the schema first)"
        )
    _run(
        [
            _tool("pg_restore"),
            "--single-transaction",
            "--exit-on-error",
            "--no-owner",
            "--no-privileges",
            f"--dbname={conninfo}",
            str(source),
        ],
        env,
    )
    version = _pg_version(conninfo, schema, env) or 0
    check_schema(f"schema {schema}", version, "postgres")
    return Done("postgres", source, version, source.stat().st_size)
