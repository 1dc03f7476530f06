"""Upgrades and backups (issue 19.5), on both stores, with real processes: a node refuses a
schema newer than it knows; `fleetcmd store backup` taken while the indexer runs, restored
by `fleetcmd store restore` into a fresh store, holds every task, command and result."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from fleetcmd.store import open_store
from fleetcmd.store.base import schema_version
from support import FLEETCMD, PG_DSN, Indexer, wait_until


def fleetcmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLEETCMD, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FLEETCMD_TOKEN": "backup-test-token"},
    )


def submit(c: httpx.Client, type_: str, params: dict[str, Any], **extra: Any) -> int:
    r = c.post("/tasks", json={"type": type_, "params": params, **extra})
    assert r.status_code == 202, r.text
    return int(r.json()["data"]["id"])


def final(c: httpx.Client, task_id: int) -> None:
    wait_until(
        lambda: c.get(f"/tasks/{task_id}").json()["data"]["completed_at"],
        30,
        what=f"task {task_id} to end",
    )


def fill(c: httpx.Client) -> None:
    """Tasks finished with results (some failures), and one still in flight."""
    final(c, submit(c, "group-configuration-change", {"group": "web", "configuration": {}}))
    agents = [{"id": f"b{i:03d}", "name": f"b-{i:03d}", "groups": ["web"]} for i in range(40)]
    assert c.post("/agents", json={"agents": agents}).status_code == 200
    for version in ("1.1", "1.2"):
        tid = submit(c, "agent-upgrade", {"group": "web", "version": version})
        cmds = wait_until(
            lambda tid=tid: [
                x
                for x in c.post(
                    "/pull", json={"owner": "s", "target_type": "agent", "limit": 500, "wait": 1}
                ).json()["data"]["commands"]
                if x["task_id"] == tid
            ],
            20,
            what="commands to pull",
        )
        ids = [x["id"] for x in cmds]
        assert len(ids) == 40
        c.post("/commands/mark", json={"owner": "s", "ids": ids, "status": "sent"})
        c.post("/commands/mark", json={"ids": ids, "status": "delivered"})
        results = [
            {
                "id": i,
                "status": "failure" if n % 7 == 0 else "success",
                "code": 1 if n % 7 == 0 else 0,
                "message": f"upgraded to {version}" if n % 7 else "no space left",
                "data": {"n": n},
            }
            for n, i in enumerate(ids)
        ]
        assert c.post("/results", json={"results": results}).status_code == 200
        final(c, tid)
    submit(c, "vulnerability-rescan", {"group": "web"})  # in flight at the backup


def everything(c: httpx.Client) -> dict[int, Any]:
    """Every task with its counts and every command with its status and result."""
    tasks = c.get("/tasks", params={"limit": 1000}).json()["data"]["items"]
    out = {}
    for t in tasks:
        cmds = c.get("/commands", params={"task_id": t["id"], "limit": 5000}).json()["data"]
        out[t["id"]] = {
            "type": t["type"],
            "status": t["status"],
            "counts": t.get("counts"),
            "commands": sorted(
                (x["id"], x["target"]["id"], x["status"], x.get("result")) for x in cmds["items"]
            ),
        }
    return out


@pytest.fixture
def fresh_url(store_kind: str, tmp_path: Path) -> Iterator[str]:
    """Where to restore: a SQLite file not yet there, or a PostgreSQL database of its own
    (a backup keeps its schema's name)."""
    if store_kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'restored' / 'fleetcmd.db'}"
        return
    import psycopg

    db = f"restore_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        yield urlunsplit(urlsplit(PG_DSN)._replace(path=f"/{db}"))
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def with_schema(url: str, of: str) -> str:
    """`url` with the schema of `of` (PostgreSQL); SQLite URLs as they are."""
    return url if url.startswith("sqlite") else f"{url}?schema={of.split('schema=')[1]}"


def test_backup_while_running_then_restore_into_a_fresh_store(
    store_url: str, fresh_url: str, tmp_path: Path
) -> None:
    idx = Indexer(store_url, tmp_path / "one", token="backup-test-token").start()
    try:
        with idx.client() as c:
            fill(c)
            before = everything(c)
        out = tmp_path / "fleetcmd.backup"
        done = fleetcmd("store", "backup", str(out), "--store", store_url)  # indexer still up
        assert done.returncode == 0, done.stderr
        assert f"schema version {schema_version(idx_dialect(store_url))}" in done.stdout
    finally:
        idx.stop()
    assert out.stat().st_mode & 0o077 == 0
    again = fleetcmd("store", "backup", str(out), "--store", store_url)
    assert again.returncode == 2 and "never overwrites" in again.stderr

    target = with_schema(fresh_url, store_url)
    restored = fleetcmd("store", "restore", str(out), "--store", target)
    assert restored.returncode == 0, restored.stderr
    twice = fleetcmd("store", "restore", str(out), "--store", target)
    assert twice.returncode == 2 and "fresh" in twice.stderr, twice.stderr

    idx2 = Indexer(target, tmp_path / "two", token="backup-test-token").start()
    try:
        with idx2.client() as c:
            after = everything(c)
    finally:
        idx2.stop()
    assert len(before) == 4 and sum(len(t["commands"]) for t in before.values()) >= 121
    assert after == before


def idx_dialect(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgres"


def test_a_node_refuses_a_schema_newer_than_it_knows(store_url: str, tmp_path: Path) -> None:
    """A store a newer release migrated: the indexer and `store backup`'s restore stop with
    a message naming both versions, and write nothing."""
    known = schema_version(idx_dialect(store_url))
    open_store(store_url).close()  # migrated to this release
    _set_version(store_url, known + 1)
    r = fleetcmd("indexer", "--store", store_url, "--data-dir", str(tmp_path / "d"), "--port", "1")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"schema version {known + 1}, newer than {known}" in r.stderr, r.stderr
    assert "never an older one" in r.stderr
    assert _version(store_url) == known + 1  # untouched


def _sql(url: str, statement: str, *params: object) -> Any:
    """The test reaches into the store as an older/newer release would (no product API
    writes a future schema version)."""
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite://"))
        with conn:
            row = conn.execute(statement.replace("%s", "?"), params).fetchone()
        conn.close()
        return row
    import psycopg

    base, schema = url.split("?schema=")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        cur = conn.execute(statement, params)
        return cur.fetchone() if cur.description else None


def _set_version(url: str, version: int) -> None:
    _sql(url, "UPDATE meta SET value = %s WHERE key = 'schema_version'", str(version))


def _version(url: str) -> int:
    return int(_sql(url, "SELECT value FROM meta WHERE key = 'schema_version'")[0])
