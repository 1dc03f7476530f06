"""Test support: store URLs for both backends and real role processes on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


FLEETCMD = [sys.executable, "-m", "fleetcmd.cli"]


class Role:
    """A real fleetcmd process (indexer, server, agent…) with its log file."""

    def __init__(
        self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Role:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            FLEETCMD + self.args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


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
