"""Helpers shared by the benchmarks: scratch stores and printing figures."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fleetcmd.launch import Process, clean_env, fleetcmd_argv, free_port, stop_all, wait_url
from fleetcmd.store import open_store
from fleetcmd.store.base import SqlStore


@contextmanager
def scratch_store(url: str | None) -> Iterator[SqlStore]:
    """A store of its own for one run: a temp SQLite file, or a fresh PostgreSQL schema."""
    if url is None or url.startswith("sqlite"):
        with tempfile.TemporaryDirectory(prefix="fleetcmd-bench-") as d:
            store = open_store(url if url and url != "sqlite" else f"sqlite:///{d}/bench.db")
            try:
                yield store
            finally:
                store.close()
        return
    sep = "&" if "?" in url else "?"
    schema = f"bench_{os.getpid()}_{int(time.time())}"
    store = open_store(f"{url}{sep}schema={schema}", migrate=False)
    from fleetcmd.store.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    store.migrate()
    try:
        yield store
    finally:
        store.close()
        store.drop_schema()


@contextmanager
def work_dir(log_dir: str | None, prefix: str) -> Iterator[str]:
    """Where a run keeps its processes' logs: a temporary folder, or `log_dir` kept after."""
    if log_dir:
        path = os.path.join(log_dir, f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}")
        os.makedirs(path, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield d


def report(
    name: str,
    store_kind: str,
    params: dict[str, Any],
    figures: dict[str, Any],
    console: Console | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Print the table and the JSON line (unless `quiet`: a part of a bigger scenario)."""
    line = {"name": name, "store": store_kind, "params": params, "figures": figures}
    if quiet:
        return line
    console = console or Console()
    table = Table(title=f"bench {name} ({store_kind})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in {**params, **figures}.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)
    print(json.dumps(line), flush=True)
    return line


def rss_mb(pid: int, peak: bool = False) -> float:
    """Resident memory of a process in MB (VmHWM: its peak so far)."""
    key = "VmHWM:" if peak else "VmRSS:"
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Cluster:
    """An indexer and N server processes on loopback (fleetcmd.launch), for benchmarks that
    need real roles."""

    def __init__(
        self,
        store_url: str,
        data_dir: str,
        servers: int = 1,
        indexers: int = 1,
        log_level: str = "warning",
        balancer: bool = False,
    ) -> None:
        """`balancer`: Debian's HAProxy in front, running deploy/haproxy.cfg (two servers and
        two indexers): agents reach the servers through it (`comms_urls` is its address) and
        the servers reach the indexers through it."""
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            # a benchmark stopped with SIGTERM (e.g. by `timeout`) still stops its cluster:
            # SystemExit runs the callers' `finally: cluster.stop()`
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        self.dir = data_dir
        self.token = "bench-node-token"
        self.enrollment_key = "bench-enrollment-key"
        self.roles: list[Process] = []
        self.servers: list[Process] = []
        env = clean_env(
            FLEETCMD_TOKEN=self.token,
            FLEETCMD_ENROLLMENT_KEY=self.enrollment_key,
            # every server node shares one token-signing key
            FLEETCMD_JWT_KEY="bench-jwt-key-" + "0" * 32,
        )
        self.balancer = balancer
        try:
            self._launch(env, store_url, data_dir, servers, indexers, log_level)
        except BaseException:
            self.stop()  # a role that did not come up must not leave the others running
            raise

    def _launch(
        self,
        env: dict[str, str],
        store_url: str,
        data_dir: str,
        servers: int,
        indexers: int,
        log_level: str,
    ) -> None:
        self.indexer_urls: list[str] = []
        for i in range(indexers):
            port = free_port()
            self.indexer_urls.append(f"http://127.0.0.1:{port}")
            self._start(
                f"indexer-{i}",
                [
                    "indexer",
                    "--port",
                    str(port),
                    "--store",
                    store_url,
                    "--data-dir",
                    f"{data_dir}/indexer-{i}",
                    # indexers of one store share one command-signing key
                    "--command-key",
                    f"{data_dir}/command-signing.key",
                    "--log-level",
                    log_level,
                    # benchmarks run retention themselves (backlog), never behind their back
                    "--retention-days",
                    "0",
                ],
                env,
            )
        for role, url in zip(self.roles, self.indexer_urls, strict=True):
            wait_url(f"{url}/health", 60, role)
        self.comms_urls: list[str] = []
        self.management_urls: list[str] = []
        ports = [(free_port(), free_port()) for _ in range(servers)]
        for comms, mgmt in ports:
            self.comms_urls.append(f"http://127.0.0.1:{comms}")
            self.management_urls.append(f"http://127.0.0.1:{mgmt}")
        pull_from = self.indexer_urls
        if self.balancer:
            pull_from = [self._start_balancer(ports)]
        for i, (comms, mgmt) in enumerate(ports):
            server = self._start(
                f"server-{i}",
                [
                    "server",
                    "--indexer",
                    pull_from[i % len(pull_from)],
                    "--comms-port",
                    str(comms),
                    "--management-port",
                    str(mgmt),
                    "--data-dir",
                    f"{data_dir}/server-{i}",
                    "--node-id",
                    f"bench-server-{i}",
                    # the simulated fleet connects from one address
                    "--enroll-rate",
                    "0",
                    "--auth-rate",
                    "0",
                    "--log-level",
                    log_level,
                ],
                env,
            )
            self.servers.append(server)
        for server, *urls in zip(self.servers, self.comms_urls, self.management_urls, strict=True):
            for url in urls:
                wait_url(f"{url}/health", 60, server)
        self.indexer = self.indexer_urls[0]
        if self.balancer:
            self.server_comms_urls = self.comms_urls
            self.comms_urls = [self.balanced_comms]
            self.indexer = self.balanced_indexer
            self._wait_balanced()

    def _wait_balanced(self, timeout: float = 30.0) -> None:
        """Until HAProxy sends requests to both server nodes (it takes a node in after two
        good checks; without an Authorization header it goes round robin)."""
        import httpx

        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        while time.monotonic() < deadline and len(seen) < len(self.servers):
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                r = httpx.get(f"{self.balanced_comms}/health", timeout=2)
                if r.status_code == 200:
                    seen.add(r.json()["node"])
            time.sleep(0.1)
        if len(seen) < len(self.servers):
            raise RuntimeError(f"HAProxy sends requests to {sorted(seen)} only")

    def _start_balancer(self, servers: list[tuple[int, int]]) -> str:
        """HAProxy with the shipped configuration, the addresses given through its
        environment; returns the indexer address it serves."""
        import shutil

        exe = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
        if exe is None:
            raise RuntimeError("the balancer needs Debian's haproxy (make packages)")
        if len(servers) != 2 or len(self.indexer_urls) != 2:
            raise ValueError("deploy/haproxy.cfg names two servers and two indexers")
        config = Path(__file__).resolve().parents[4] / "deploy" / "haproxy.cfg"
        comms, management, indexer = free_port(), free_port(), free_port()
        env = clean_env(
            FLEETCMD_COMMS_BIND=f"127.0.0.1:{comms}",
            FLEETCMD_MANAGEMENT_BIND=f"127.0.0.1:{management}",
            FLEETCMD_INDEXER_BIND=f"127.0.0.1:{indexer}",
            FLEETCMD_MAXCONN="9000",  # this host allows 20,000 open files a process
        )
        for i, url in enumerate(self.indexer_urls, start=1):
            env[f"FLEETCMD_INDEXER{i}"] = url.removeprefix("http://")
        for i, (c, m) in enumerate(servers, start=1):
            env[f"FLEETCMD_SERVER{i}_COMMS"] = f"127.0.0.1:{c}"
            env[f"FLEETCMD_SERVER{i}_MANAGEMENT"] = f"127.0.0.1:{m}"
        env.pop("FLEETCMD_TLS_PEM", None)  # plain HTTP: the simulator speaks no TLS
        log = Path(self.dir) / "haproxy.log"
        lb = Process("haproxy", [exe, "-db", "-f", str(config)], log, env, many_files=True)
        self.roles.append(lb.start())
        self.balanced_comms = f"http://127.0.0.1:{comms}"
        self.balanced_indexer = f"http://127.0.0.1:{indexer}"
        wait_url(f"{self.balanced_indexer}/health", 30, lb)
        return self.balanced_indexer

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> Process:
        """Started, not waited for: the roles of one kind come up side by side."""
        log = Path(self.dir) / f"{name}.log"
        role = Process(name, fleetcmd_argv(*args), log, env, many_files=True).start()
        self.roles.append(role)
        return role

    @property
    def server_pids(self) -> list[int]:
        return [s.pid for s in self.servers]

    @property
    def indexer_pid(self) -> int:
        return self.roles[0].pid

    def restart_server(self, i: int = 0) -> None:
        """SIGKILL server i and start it again at once on the same ports (a crash and its
        supervisor's restart); returns when the process is started, not when it listens."""
        self.servers[i].kill()
        self.servers[i].start(wait=0)

    def client(self) -> Any:
        import httpx

        return httpx.Client(
            base_url=self.indexer, timeout=60, headers={"Authorization": f"Bearer {self.token}"}
        )

    def task(self, type_: str, params: dict[str, Any], **extra: Any) -> int:
        with self.client() as c:
            r = c.post("/tasks", json={"type": type_, "params": params, **extra})
            r.raise_for_status()
            return int(r.json()["data"]["id"])

    def wait_task(
        self, task_id: int, timeout: float = 600, interval: float = 0.05
    ) -> dict[str, Any]:
        with self.client() as c:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                t: dict[str, Any] = c.get(f"/tasks/{task_id}").json()["data"]
                if t["completed_at"]:
                    return t
                time.sleep(interval)
        raise TimeoutError(f"task {task_id} not final after {timeout}s")

    def stop(self) -> None:
        stop_all(self.roles, timeout=10)


def iso_ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def wait_connected(store: SqlStore, n: int, prefix: str = "", timeout: float = 300) -> None:
    """Until the indexer knows N agents (ids starting with `prefix`) as connected to a node
    (their commands are claimable only then): the measurement starts from a connected fleet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with store.reading() as tx:
            row = tx.one(
                "SELECT count(*) FROM agents WHERE node IS NOT NULL AND node <> '' AND id LIKE :p",
                {"p": prefix + "%"},
            )
        if row is not None and int(row[0]) >= n:
            return
        time.sleep(0.2)
    raise TimeoutError(f"fewer than {n} agents connected after {timeout}s")


def stage_times(store: SqlStore, task_id: int) -> dict[str, float]:
    """When the agent commands of a task reached each stage (seconds after the task was
    accepted: median and last), to see which hop the time goes to."""
    with store.reading() as tx:
        created = tx.one("SELECT created_at FROM tasks WHERE id = :id", {"id": task_id})
        rows = tx.all(
            "SELECT created_at, sent_at, delivered_at, completed_at FROM commands "
            "WHERE task_id = :id AND target_type = 'agent'",
            {"id": task_id},
        )
    if not rows or created is None:
        return {}
    t0 = float(created[0])
    out = {}
    for i, stage in enumerate(("written", "sent", "delivered", "recorded")):
        values = sorted(float(r[i]) - t0 for r in rows if r[i] is not None)
        if values:
            out[f"{stage}_p50_s"] = round(values[len(values) // 2], 3)
            out[f"{stage}_last_s"] = round(values[-1], 3)
    return out


@contextmanager
def profiled(pids: dict[str, int], out_dir: str | None, rate: int = 200) -> Iterator[None]:
    """With `out_dir`, sample each process with py-spy for the duration of the block and
    write one collapsed-stack file per process (`NAME.pyspy.txt`); without, do nothing."""
    import shutil
    import signal
    import subprocess

    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys_executable()), "py-spy")
    if not out_dir or not os.path.exists(spy):
        yield
        return
    os.makedirs(out_dir, exist_ok=True)
    procs = [
        subprocess.Popen(
            [
                spy,
                "record",
                "-p",
                str(pid),
                "-r",
                str(rate),
                "-f",
                "raw",
                "--nonblocking",
                "-o",
                f"{out_dir}/{name}.pyspy.txt",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]
    time.sleep(0.5)  # py-spy attaches
    try:
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(30)
            except Exception:
                p.kill()


def sys_executable() -> str:

    return sys.executable


def seed_agents(store: SqlStore, n: int, group: str, prefix: str, creds: str) -> None:
    """Register N agents straight into the store and write their credentials for the
    simulator: enrollment is not what these benchmarks measure, and enrolling 10,000 agents
    one by one over HTTP takes longer than the run itself."""
    import hashlib
    import secrets

    saved = {}
    rows = []
    for i in range(n):
        name = f"{prefix}-{i:06d}"
        secret = secrets.token_urlsafe(16)
        agent_id = f"{prefix}{i:06d}"
        saved[name] = {"id": agent_id, "secret": secret}
        rows.append(
            {
                "id": agent_id,
                "name": name,
                "groups": [group],
                "version": "sim-1",
                "secret_hash": hashlib.sha256(secret.encode()).hexdigest(),
            }
        )
    for lo in range(0, n, 20_000):
        store.register_agents(rows[lo : lo + 20_000])
    with open(creds, "w") as f:
        json.dump(saved, f)


class Simulator:
    """The simulator process; a thread drains its stdout into a queue, so the pipe never
    fills however many events it prints."""

    def __init__(self, argv: list[str], log_path: str) -> None:
        import queue
        import subprocess
        import threading

        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._held: list[dict[str, Any]] = []  # taken off the queue by events_named, not read
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleetcmd_lab.bench.simulator", *argv],
            stdout=subprocess.PIPE,
            stderr=open(log_path, "ab"),  # noqa: SIM115 - owned by the child
            text=True,
            start_new_session=True,
        )
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))
        self.events.put(None)

    def read_event(self, name: str, timeout: float = 900) -> dict[str, Any]:
        """The next event called `name`; earlier events of other names are passed over."""
        import queue

        for i, held in enumerate(self._held):
            if held["event"] == name:
                del self._held[: i + 1]
                return held
        self._held.clear()
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no '{name}' from the simulator in {timeout}s") from None
            if event is None:
                raise RuntimeError(f"simulator ended before '{name}' (code {self.proc.poll()})")
            if event["event"] == name:
                return event

    def events_named(self, name: str) -> list[dict[str, Any]]:
        """Every queued event called `name` (without waiting); the others stay for
        `read_event`."""
        out: list[dict[str, Any]] = []
        while not self.events.empty():
            event = self.events.get_nowait()
            if event is None:
                self.events.put(None)  # the end stays visible to read_event
                break
            (out if event["event"] == name else self._held).append(event)
        return out

    def finish(self, timeout: float = 60) -> dict[str, Any]:
        """Stop the simulated agents (SIGTERM) and return their `done` event."""
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.read_event("done", timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()


def start_simulator(
    servers: list[str],
    key: str,
    agents: int,
    groups: str,
    creds: str,
    log_path: str,
    expect: int = 0,
    duration: float = 600,
    prefix: str = "sim",
    trace: bool = False,
) -> Simulator:
    argv = [
        "--server",
        ",".join(servers),
        "--enrollment-key",
        key,
        "--agents",
        str(agents),
        "--groups",
        groups,
        "--creds",
        creds,
        "--expect",
        str(expect),
        "--duration",
        str(duration),
        "--prefix",
        prefix,
    ]
    return Simulator([*argv, "--trace"] if trace else argv, log_path)
