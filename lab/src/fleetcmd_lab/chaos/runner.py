"""One chaos run for one seed: start the system, keep a steady mix of tasks flowing, inject
the planned faults, heal, drain, stop, check the invariants, report.

    fleetcmd bench chaos --minutes 30 --seed 7 [--store postgresql://…] [--restart-postgres]

The report names the seed; the same seed replays the same fault plan."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fleetcmd.content.sample import SAMPLE_SOURCE
from fleetcmd_lab.chaos import faults as fault_kinds
from fleetcmd_lab.chaos.cluster import GROUPS, Cluster, ClusterSpec
from fleetcmd_lab.chaos.invariants import Evidence, RealAgent, Report, check

# Peak resident memory allowed per process during a run (MB): the SPEC's figures with room
# for a loaded machine; a queue without a bound shows up here first.
RSS_LIMITS = {"indexer": 800.0, "server": 600.0, "content": 300.0, "agent": 120.0, "sims": 600.0}


@dataclass
class ChaosConfig:
    seed: int
    store: str = "sqlite"  # "sqlite" or a postgresql:// URL (a fresh schema is used)
    duration: float = 60.0  # seconds of fault injection
    agents: int = 4
    sims: int = 20
    lease: float = 4.0
    task_timeout: float = 30.0
    kinds: list[str] | None = None  # default: every kind that applies to the store
    restart_postgres: bool = False
    root: Path | None = None  # run folder (kept); default a temporary one (removed if clean)
    drain_timeout: float = 120.0
    task_interval: float = 0.8
    disk_mb: int = 256
    scale: float = 1.0  # holds and gaps of the faults (< 1: the test suite's quick round)


@dataclass
class ChaosResult:
    seed: int
    store: str
    report: Report
    faults: Counter[str]
    skipped: Counter[str]
    fault_log: list[dict[str, Any]]
    figures: dict[str, Any]
    root: Path

    @property
    def violations(self) -> list[str]:
        return self.report.violations

    def to_json(self) -> dict[str, Any]:
        return {
            "name": "chaos",
            "seed": self.seed,
            "store": self.store,
            "faults": dict(self.faults),
            "skipped": dict(self.skipped),
            "figures": {**self.figures, **self.report.figures},
            "checks": {k: len(v) for k, v in self.report.checks.items()},
            "violations": self.violations,
            "root": str(self.root),
        }


class Workload:
    """A steady mix of tasks through the indexer's API: group changes, configuration changes,
    active responses, a few direct agent commands. Each submission carries an idempotency key
    and is retried until it gets an answer, as a careful client would."""

    def __init__(self, cluster: Cluster, rng: random.Random, interval: float) -> None:
        self.cluster = cluster
        self.rng = rng
        self.interval = interval
        self.stop = threading.Event()
        self.filed: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.unanswered = 0
        self.agent_ids: list[str] = []
        self._thread = threading.Thread(target=self._run, name="workload", daemon=True)

    def start(self) -> None:
        with self.cluster.client() as c:
            cursor = None
            while True:
                page = c.get(
                    "/agents", params={"limit": 1000, **({"cursor": cursor} if cursor else {})}
                ).json()["data"]
                self.agent_ids += [a["id"] for a in page["items"]]
                cursor = page.get("next_cursor")
                if not cursor:
                    break
        self._thread.start()

    def join(self) -> None:
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join(60)

    def next_task(self, n: int) -> tuple[str, dict[str, Any]]:
        rng = self.rng
        kind = rng.choices(["assign", "config", "ar", "ar-agents"], [3, 3, 2, 1])[0]
        if kind == "assign":
            agents = rng.sample(self.agent_ids, k=max(1, len(self.agent_ids) // 4))
            return "group-assignment-change", {
                "agents": agents,
                "mode": "set",
                "groups": [rng.choice(GROUPS)],
            }
        if kind == "config":
            return "group-configuration-change", {
                "group": rng.choice(GROUPS),
                "configuration": {
                    "log_level": rng.choice(["info", "warning"]),
                    "sca": {"enabled": False},
                    "inventory": {"enabled": False},
                    "active_response": {"enabled": True},
                    "labels": {"step": str(n)},
                },
            }
        ip = f"192.0.2.{rng.randrange(1, 255)}"
        if kind == "ar":
            return "active-response-execution", {
                "name": "block-ip",
                "arguments": [ip],
                "target": {"group": rng.choice(GROUPS)},
            }
        agents = rng.sample(self.agent_ids, k=min(3, len(self.agent_ids)))
        return "active-response-execution", {
            "name": "block-ip",
            "arguments": [ip],
            "target": {"agents": agents},
        }

    def _run(self) -> None:
        n = 0
        while not self.stop.wait(self.interval * self.rng.uniform(0.5, 1.5)):
            n += 1
            type_, params = self.next_task(n)
            body = {
                "type": type_,
                "params": params,
                "idempotency_key": f"chaos-{uuid.uuid4()}",
                "timeout": self.cluster.spec.task_timeout,
            }
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not self.stop.is_set():
                try:
                    with self.cluster.client(10) as c:
                        r = c.post("/tasks", json=body)
                except httpx.HTTPError:
                    time.sleep(0.5)
                    continue
                if r.status_code in (200, 202):
                    self.filed[type_] += 1
                elif r.status_code >= 500:
                    self.refused[f"{r.status_code} {r.json().get('error', '?')}"] += 1
                    time.sleep(0.5)
                    continue
                else:
                    self.refused[f"{r.status_code} {r.text[:80]}"] += 1
                break
            else:
                self.unanswered += 1


class MemorySampler:
    def __init__(self, cluster: Cluster, interval: float = 1.0) -> None:
        self.cluster = cluster
        self.interval = interval
        self.peaks: dict[str, float] = {}
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            for p in self.cluster.procs():
                if not p.alive():
                    continue
                with (
                    contextlib.suppress(OSError, ValueError, IndexError),
                    open(f"/proc/{p.pid}/status") as f,
                ):
                    for line in f:
                        if line.startswith("VmRSS:"):
                            mb = int(line.split()[1]) / 1024
                            self.peaks[p.name] = max(self.peaks.get(p.name, 0.0), mb)


def _store_url(
    cfg: ChaosConfig, root: Path, disk: fault_kinds.DiskLimit | None
) -> tuple[str, Callable[[], None]]:
    if cfg.store == "sqlite" or cfg.store.startswith("sqlite"):
        folder = disk.path if disk is not None and disk.mounted else root / "store"
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / 'fleetcmd.db'}", lambda: None
    import psycopg

    schema = f"chaos_{cfg.seed}_{uuid.uuid4().hex[:8]}"
    sep = "&" if "?" in cfg.store else "?"

    def drop() -> None:
        with contextlib.suppress(Exception), psycopg.connect(cfg.store, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    return f"{cfg.store}{sep}schema={schema}", drop


def _wait_drained(cluster: Cluster, timeout: float, say: Callable[[str], None]) -> bool:
    """Until every task is final and every outbox empty (or the timeout)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with cluster.client(10) as c:
                open_ = sum(
                    len(
                        c.get("/tasks", params={"status": s, "limit": 1000}).json()["data"]["items"]
                    )
                    for s in ("pending", "in_progress")
                )
        except (httpx.HTTPError, KeyError, ValueError):
            open_ = -1
        outbox = 0
        for a in cluster.agents:
            db = cluster.agent_dir(a.name) / "agent.db"
            with contextlib.suppress(Exception):
                import sqlite3

                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
                try:
                    outbox += int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
                finally:
                    conn.close()
        for i in range(2):
            with contextlib.suppress(OSError, ValueError, KeyError):
                doc = json.loads((cluster.root / f"sims-{i}" / "status.json").read_text())
                outbox += int(doc["outbox"])
        state = f"open tasks {open_}, results in outboxes {outbox}"
        if state != last:
            say(f"drain: {state}")
            last = state
        if open_ == 0 and outbox == 0:
            return True
        time.sleep(1.0)
    return False


def _drain_subscriber(
    cluster: Cluster, timeout: float, say: Callable[[str], None], figures: dict[str, Any]
) -> None:
    """Until the webhook subscriber's cursor is at the end of the events (lag 0), with every
    other role stopped: what it has not received by then counts as lost."""
    if cluster.subscriber is None:
        return
    started = time.monotonic()
    state: dict[str, Any] | None = None
    while time.monotonic() - started < timeout:
        state = cluster.subscriber_state()
        if state is not None and state.get("lag") == 0:
            break
        time.sleep(0.5)
    figures["subscriber_drain_s"] = round(time.monotonic() - started, 1)
    if state is not None:
        figures["subscriber_at_end"] = {
            k: state.get(k) for k in ("state", "lag", "delivered", "failures", "last_error")
        }
    say(f"subscriber after {figures['subscriber_drain_s']}s: {figures.get('subscriber_at_end')}")


def run(cfg: ChaosConfig, say: Callable[[str], None] = print) -> ChaosResult:
    temp = cfg.root is None
    root = Path(tempfile.mkdtemp(prefix=f"fleetcmd-chaos-{cfg.seed}-")) if temp else cfg.root
    assert root is not None
    root.mkdir(parents=True, exist_ok=True)
    is_sqlite = cfg.store.startswith("sqlite")
    kinds = list(cfg.kinds or fault_kinds.KINDS)
    if not cfg.restart_postgres or is_sqlite:
        kinds = [k for k in kinds if k != "restart-postgres"]
    disk = None
    if is_sqlite and "disk-full" in kinds:
        disk = fault_kinds.DiskLimit(root / "store-tmpfs", cfg.disk_mb)
        if not disk.mount():
            say("disk-full: cannot mount a tmpfs here (not root?); that fault is skipped")
    if not is_sqlite:
        kinds = [k for k in kinds if k != "disk-full"]
    store_url, drop_store = _store_url(cfg, root, disk)
    rng = random.Random(cfg.seed)
    faults = fault_kinds.plan(cfg.seed, cfg.duration, kinds, cfg.lease, cfg.scale)
    (root / "plan.json").write_text(
        json.dumps({"seed": cfg.seed, "faults": [f.__dict__ for f in faults]}, indent=1)
    )
    say(
        f"chaos seed {cfg.seed} on {store_url.split('@')[-1]}: {len(faults)} faults planned "
        f"({', '.join(kinds)}); folder {root}"
    )
    spec = ClusterSpec(store_url, root, cfg.agents, cfg.sims, cfg.lease, cfg.task_timeout)
    cluster = Cluster(spec)
    injector = fault_kinds.Injector(cluster, rng, disk, say)
    sampler = MemorySampler(cluster)
    workload = Workload(cluster, random.Random(cfg.seed + 1), cfg.task_interval)
    figures: dict[str, Any] = {}
    report = Report()
    try:
        started = time.monotonic()
        cluster.start(say)
        configure_active_responses(cluster)
        figures["startup_s"] = round(time.monotonic() - started, 1)
        sampler.start()
        workload.start()
        t0 = time.monotonic()
        injector.run(faults, cfg.duration)
        figures["fault_phase_s"] = round(time.monotonic() - t0, 1)
        workload.join()
        healed = cluster.heal()
        if healed:
            say(f"healed: {healed}")
        t0 = time.monotonic()
        drained = _wait_drained(cluster, cfg.drain_timeout, say)
        figures["drain_s"] = round(time.monotonic() - t0, 1)
        if not drained:
            say(f"not drained within {cfg.drain_timeout:.0f}s; checking anyway")
    finally:
        workload.stop.set()
        sampler.join()
        cluster.stop(
            before_indexer=lambda: _drain_subscriber(cluster, cfg.drain_timeout, say, figures)
        )
    try:
        evidence = Evidence(
            store_url,
            [RealAgent(a.name, cluster.agent_dir(a.name), a.log_path) for a in cluster.agents],
            [root / f"sims-{i}" for i in range(2) if (root / f"sims-{i}").exists()],
            sampler.peaks,
            RSS_LIMITS,
            webhook=root / "webhook.jsonl" if cluster.subscriber is not None else None,
        )
        report = check(evidence)
        if injector.violations:
            report.checks["faults applied and answered clearly"] = injector.violations
        else:
            report.checks["faults applied and answered clearly"] = []
    finally:
        if disk is not None:
            if report.violations or not temp:  # keep the evidence: the database off the tmpfs
                with contextlib.suppress(OSError):
                    shutil.copytree(
                        disk.path,
                        root / "store",
                        dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("filler"),
                    )
            disk.unmount()
        drop_store()
    figures.update(
        {
            "tasks_filed": dict(workload.filed),
            "tasks_refused": dict(workload.refused),
            "tasks_unanswered": workload.unanswered,
            **injector.figures,
            "webhook_receiver": cluster.sink.figures() if cluster.sink is not None else None,
            "restarts": {p.name: p.starts - 1 for p in cluster.procs() if p.starts > 1},
        }
    )
    result = ChaosResult(
        cfg.seed,
        "sqlite" if is_sqlite else "postgresql",
        report,
        injector.done,
        injector.skipped,
        injector.log,
        figures,
        root,
    )
    (root / "result.json").write_text(json.dumps(result.to_json(), indent=1, default=str))
    if temp and not result.violations:
        shutil.rmtree(root, ignore_errors=True)
    return result


def configure_active_responses(cluster: Cluster) -> None:
    """block-ip for both groups, so active-response tasks run a real (harmless) script."""
    definition = json.loads((SAMPLE_SOURCE / "active-response" / "block-ip.json").read_text())
    with cluster.client() as c:
        ids = []
        for g in GROUPS:
            r = c.post(
                "/tasks",
                json={
                    "type": "active-response-configuration",
                    "params": {"group": g, "name": "block-ip", "definition": definition},
                    "idempotency_key": f"chaos-ar-{g}",
                },
            )
            r.raise_for_status()
            ids.append(int(r.json()["data"]["id"]))
        deadline = time.monotonic() + 120
        while ids and time.monotonic() < deadline:
            ids = [i for i in ids if not c.get(f"/tasks/{i}").json()["data"]["completed_at"]]
            time.sleep(0.3)
