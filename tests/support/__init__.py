"""Test support: store URLs for both backends and real role processes on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetcmd.launch import Process, clean_env, fleetcmd_argv, free_port, wait_url

PG_DSN = os.environ.get("FLEETCMD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = bool(os.environ.get("CI")) or os.environ.get("FLEETCMD_REQUIRE_PG") == "1"


def pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_DSN, connect_timeout=3):
            return True
    except Exception:
        return False


def need_pg() -> None:
    if not pg_available():
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required here (CI) but {PG_DSN} is unreachable")
        pytest.skip(f"PostgreSQL not reachable at {PG_DSN} (set FLEETCMD_TEST_PG)")


def need_haproxy() -> str:
    """Debian's HAProxy (`make packages` installs it); missing: a failure in CI, else a skip."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("haproxy is required here (CI): `make test` installs Debian's haproxy")
        pytest.skip("haproxy not installed (apt-get install haproxy, or `make packages`)")
    return found


@contextmanager
def store_url_for(kind: str, tmp: Path) -> Iterator[str]:
    """A store URL of its own: a SQLite file in `tmp`, or a fresh PostgreSQL schema."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'fleetcmd.db'}"
        return
    need_pg()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    url = f"{PG_DSN}?schema={schema}"
    try:
        yield url
    finally:
        import psycopg

        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Until `url` answers anything but a 5xx (fleetcmd.launch.wait_url)."""
    wait_url(url, timeout, proc, accept=lambda status: status < 500, interval=0.05)


FLEETCMD = fleetcmd_argv()


class Role(Process):
    """A real fleetcmd process (indexer, server, agent…) with its log file, started by the
    product's launcher (fleetcmd.launch)."""

    def __init__(
        self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        log = log_dir / f"{name}.log"
        super().__init__(name, fleetcmd_argv(*args), log, clean_env(**(env or {})))
        self.args = args

    def start(self, wait: float = 60.0) -> Role:
        super().start(wait)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """`sig` (SIGKILL by default); after SIGTERM or SIGINT, SIGKILL if not ended in 10 s."""
        if sig == signal.SIGKILL:
            super().kill()
        elif sig in (signal.SIGTERM, signal.SIGINT):
            self.stop(10.0, sig)
        else:
            self.send(sig)


class Indexer(Role):
    def __init__(
        self,
        store_url: str,
        data_dir: Path,
        token: str = "test-node-token",
        port: int | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.token = token
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            f"indexer-{self.port}",
            [
                "indexer",
                "--port",
                str(self.port),
                "--store",
                store_url,
                "--data-dir",
                str(data_dir),
                "--log-level",
                "info",
                *(extra or []),
            ],
            data_dir,
            env={"FLEETCMD_TOKEN": token},
        )

    def start(self) -> Indexer:
        super().start()
        wait_http(f"{self.url}/health", proc=self.proc)
        return self

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, timeout=30.0, headers={"Authorization": f"Bearer {self.token}"}
        )


def wait_until(
    predicate: Any, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def copy_logs(roles: list[Role], dest: Path) -> None:
    for r in roles:
        if r.log_path.exists():
            shutil.copy(r.log_path, dest / r.log_path.name)
