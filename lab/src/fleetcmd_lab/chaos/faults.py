"""The fault kinds and the injector. A seed fixes the plan: which faults, in which order, on
which target, held how long, with which gaps. Replaying a seed replays that sequence (the
moments relative to the workload still vary a little with the machine's load).

Faults run one at a time; each one heals what it broke before the next starts, so a run ends
with every process up and every link open, and the invariants judge the aftermath."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fleetcmd_lab.chaos.cluster import GROUPS, Cluster

KINDS = (
    "kill-indexer",  # SIGKILL right after a large fan-out was filed (mid-expansion)
    "kill-server",  # SIGKILL a server while it holds leases on pulled commands
    "stop-server",  # SIGSTOP longer than its leases, then SIGCONT: a zombie wakes up
    "kill-agent",  # SIGKILL a real agent while it executes a command
    "kill-content",  # SIGKILL the content manager while it applies a new feed serial
    "cut-indexer",  # the server/content-manager <-> indexer link drops, blackholes or lags
    "cut-agents",  # an agents <-> server link drops, blackholes or lags
    "disk-full",  # the SQLite data folder runs out of space (tmpfs filled)
    "storm",  # a server restarts; all its agents reconnect at once
    "final-race",  # an agent frozen while its commands expire or are cancelled, then thawed
    "restart-postgres",  # PostgreSQL restarted under load (explicit opt-in only)
)


@dataclass
class Fault:
    kind: str
    target: int  # which server / agent / proxy, modulo what exists
    hold: float  # how long the fault lasts
    gap: float  # quiet time before it
    variant: str = ""  # link faults: drop | blackhole | delay
    jitter: float = 0.0  # extra delay before pulling the trigger


def plan(
    seed: int, duration: float, kinds: list[str], lease: float, scale: float = 1.0
) -> list[Fault]:
    """Every kind once (shuffled), then random kinds until `duration` seconds are planned.
    `scale` shortens holds and gaps (the test suite's quick round)."""
    rng = random.Random(seed)
    order = list(kinds)
    rng.shuffle(order)
    out: list[Fault] = []
    spent = 0.0

    def make(kind: str) -> Fault:
        hold = rng.uniform(2.0, 5.0) * scale
        if kind == "stop-server":  # always past the lease, whatever the scale
            hold = lease * 1.5 + rng.uniform(1.0, 3.0) * scale
        variant = rng.choice(("drop", "blackhole", "delay")) if kind.startswith("cut-") else ""
        return Fault(
            kind,
            rng.randrange(1000),
            round(hold, 2),
            round(rng.uniform(1.0, 3.0) * scale, 2),
            variant,
            round(rng.uniform(0.0, 0.4), 3),
        )

    for kind in order:
        f = make(kind)
        out.append(f)
        spent += f.hold + f.gap + 3.0
    while kinds and spent < duration:
        f = make(rng.choice(kinds))
        out.append(f)
        spent += f.hold + f.gap + 3.0
    return out


@dataclass
class DiskLimit:
    """The SQLite data folder on its own small tmpfs (needs root and `mount`)."""

    path: Path
    size_mb: int
    mounted: bool = False

    def mount(self) -> bool:
        self.path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
        )
        self.mounted = r.returncode == 0
        return self.mounted

    def fill(self) -> int:
        """Take every free byte; returns how many were written. The store's WAL is first
        checkpointed down to nothing, so that its next writes need new space (a WAL that
        still has room would hide the full disk)."""
        import sqlite3

        for db in self.path.glob("*.db"):
            with contextlib.suppress(sqlite3.Error):
                conn = sqlite3.connect(db, timeout=5)
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    conn.close()
        written = 0
        fd = os.open(self.path / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for size in (1 << 20, 4096, 1):
                chunk = b"\0" * size
                while True:
                    try:
                        written += os.write(fd, chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / "filler").unlink()

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False


@dataclass
class Injector:
    cluster: Cluster
    rng: random.Random
    disk: DiskLimit | None = None
    say: Callable[[str], None] = print
    done: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    log: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def run(self, faults: list[Fault], duration: float) -> None:
        deadline = time.monotonic() + duration
        for i, f in enumerate(faults):
            if self.stop_event.is_set() or (
                time.monotonic() > deadline and len(self.done) >= len({x.kind for x in faults})
            ):
                break
            self.stop_event.wait(f.gap)
            started = time.monotonic()
            entry = {"n": i + 1, **asdict(f), "t": round(time.time(), 3)}
            try:
                note = getattr(self, "_" + f.kind.replace("-", "_"))(f)
                entry["note"] = note
                if note.startswith("skipped"):
                    self.skipped[f.kind] += 1
                else:
                    self.done[f.kind] += 1
            except Exception as exc:  # a fault that could not be applied is reported, not fatal
                entry["error"] = f"{type(exc).__name__}: {exc}"
                self.violations.append(f"fault {i + 1} ({f.kind}) could not complete: {exc}")
            finally:
                healed = self.cluster.heal()
                if healed:
                    entry["healed"] = healed
            entry["seconds"] = round(time.monotonic() - started, 2)
            self.log.append(entry)
            self.say(
                f"fault {i + 1:>3} {f.kind:<16} {entry.get('note') or entry.get('error')}"
                f" ({entry['seconds']}s)"
            )

    # -- helpers --------------------------------------------------------------------------------
    def _file(self, type_: str, params: dict[str, Any], **extra: Any) -> int | None:
        with self.cluster.client(10) as c:
            try:
                r = c.post("/tasks", json={"type": type_, "params": params, **extra})
            except httpx.HTTPError:
                return None
        return int(r.json()["data"]["id"]) if r.status_code in (200, 202) else None

    def _pause(self, seconds: float) -> None:
        self.stop_event.wait(seconds)

    # -- the kinds ------------------------------------------------------------------------------
    def _kill_indexer(self, f: Fault) -> str:
        """With the webhook subscriber behind: its receiver refuses (500) or answers each batch
        slowly from a few seconds before the task until a while after the restart, so the indexer
        dies with undelivered events and the restarted one resumes from the durable cursor."""
        c = self.cluster
        behind, lag = "", None
        if c.sink is not None:
            refuse = f.target % 2 == 0
            c.sink.answer(status=500 if refuse else 200, delay=0.0 if refuse else 1.0)
            behind = "receiver answering 500" if refuse else "receiver slow (1 s a batch)"
            self._pause(max(1.0, f.hold))
            lag = (c.subscriber_state() or {}).get("lag")  # read before: the kill's timing
        task = self._file(
            "group-configuration-change",
            {
                "group": GROUPS[f.target % 2],
                "configuration": {"log_level": "info", "labels": {"chaos": str(f.target)}},
            },
            timeout=c.spec.task_timeout,
        )
        time.sleep(f.jitter / 4)
        assert c.indexer is not None
        c.indexer.kill()
        self._pause(f.hold)
        c.indexer.start()
        note = f"SIGKILL {f.jitter / 4 * 1000:.0f} ms after task {task} was filed; down {f.hold}s"
        if c.sink is not None:
            self._pause(f.hold)  # the restarted indexer meets the subscriber still behind
            c.sink.answer(status=200, delay=0.0)
            self.figures.setdefault("subscriber_lag_at_kill", []).append(lag)
            note += f"; subscriber {lag} events behind just before, {behind}"
        return note

    def _kill_server(self, f: Fault) -> str:
        c = self.cluster
        s = c.servers[f.target % len(c.servers)]
        task = self._file(
            "active-response-execution",
            {
                "name": "block-ip",
                "arguments": [f"198.51.100.{f.target % 250 + 1}"],
                "target": {"group": GROUPS[f.target % 2]},
            },
            timeout=c.spec.task_timeout,
        )
        time.sleep(0.2 + f.jitter)
        s.kill()
        self._pause(f.hold)
        s.start()
        return f"{s.name} SIGKILL {200 + f.jitter * 1000:.0f} ms after task {task}; down {f.hold}s"

    def _stop_server(self, f: Fault) -> str:
        c = self.cluster
        s = c.servers[f.target % len(c.servers)]
        self._file(
            "group-configuration-change",
            {
                "group": GROUPS[f.target % 2],
                "configuration": {"log_level": "info", "labels": {"zombie": str(f.target)}},
            },
            timeout=c.spec.task_timeout,
        )
        time.sleep(0.3 + f.jitter)
        s.signal(signal.SIGSTOP)
        self._pause(f.hold)
        s.signal(signal.SIGCONT)
        self._pause(2.0)  # let the zombie wake up while nothing else changes
        return f"{s.name} SIGSTOP for {f.hold}s (lease {c.spec.lease}s), then SIGCONT"

    def _kill_agent(self, f: Fault) -> str:
        c = self.cluster
        a = c.agents[f.target % len(c.agents)]
        agent_id = json.loads((c.agent_dir(a.name) / "credentials.json").read_text())["id"]
        task = self._file(
            "active-response-execution",
            {
                "name": "block-ip",
                "arguments": [f"203.0.113.{f.target % 250 + 1}"],
                "target": {"agents": [agent_id]},
            },
            timeout=c.spec.task_timeout,
        )
        seen = "no delivery seen"
        deadline = time.monotonic() + 8
        with c.client(5) as client:
            while task is not None and time.monotonic() < deadline:
                try:
                    page = client.get(
                        "/commands", params={"task_id": task, "target_id": agent_id}
                    ).json()
                    statuses = {x["status"] for x in page["data"]["items"]}
                except (httpx.HTTPError, KeyError, ValueError):
                    statuses = set()
                if statuses & {"delivered", "success", "failure"}:
                    seen = f"killed with the command {', '.join(sorted(statuses))}"
                    break
                time.sleep(0.01)
        a.kill()
        self._pause(f.hold)
        a.start()
        return f"{a.name} SIGKILL ({seen}, task {task}); down {f.hold}s"

    def _final_race(self, f: Fault) -> str:
        """SIGSTOP a real agent in the middle of its long-poll, file two commands for it (one
        expiring within seconds, one cancelled a second later) and SIGCONT it around the
        moment both went final: the frozen poll may answer with them, and the agent must run
        neither (invariant "nothing runs after it went final undelivered")."""
        c = self.cluster
        a = c.agents[f.target % len(c.agents)]
        agent_id = json.loads((c.agent_dir(a.name) / "credentials.json").read_text())["id"]
        a.signal(signal.SIGSTOP)
        try:
            expiring = self._file(
                "vulnerability-rescan",
                {"agents": [agent_id], "reason": "chaos: expiring"},
                expires_in=2.0,
            )
            cancelled = self._file(
                "vulnerability-rescan",
                {"agents": [agent_id], "reason": "chaos: cancelled"},
            )
            self._pause(1.0)
            if cancelled is not None:
                with self.cluster.client(10) as client, contextlib.suppress(httpx.HTTPError):
                    client.post(f"/tasks/{cancelled}/cancel")
            self._pause(max(1.5, f.hold) + f.jitter * 5)
        finally:
            a.signal(signal.SIGCONT)
        return (
            f"{a.name} frozen {max(1.5, f.hold) + 1 + f.jitter * 5:.1f}s while task "
            f"{expiring} expired and task {cancelled} was cancelled"
        )

    def _kill_content(self, f: Fault) -> str:
        c = self.cluster
        if c.content is None or c.feed is None:
            return "skipped: no content manager in this run"
        serial = c.feed.bump()
        time.sleep(0.5 + f.jitter * 3)  # it polls every second
        c.content.kill()
        self._pause(f.hold)
        c.content.start()
        return f"serial {serial} published; SIGKILL {500 + f.jitter * 3000:.0f} ms later"

    def _cut(self, name: str, f: Fault) -> str:
        c = self.cluster
        c.proxies.set(name, f.variant, delay=0.5 if f.variant == "delay" else 0.0)  # type: ignore[arg-type]
        self._file(
            "group-configuration-change",
            {
                "group": GROUPS[f.target % 2],
                "configuration": {"log_level": "info", "labels": {"cut": name}},
            },
            timeout=c.spec.task_timeout,
        )
        self._pause(f.hold)
        c.proxies.set(name, "pass")
        return f"{name} {f.variant} for {f.hold}s"

    def _cut_indexer(self, f: Fault) -> str:
        return self._cut("indexer", f)

    def _cut_agents(self, f: Fault) -> str:
        return self._cut(f"agents-{f.target % 2}", f)

    def _disk_full(self, f: Fault) -> str:
        if self.disk is None or not self.disk.mounted:
            return "skipped: the store is not on a size-limited folder in this run"
        answers: Counter[str | int] = Counter()
        unclear: list[str] = []
        try:
            written = self.disk.fill()
            deadline = time.monotonic() + f.hold
            with self.cluster.client(10) as c:
                while time.monotonic() < deadline:
                    try:
                        r = c.post(
                            "/tasks",
                            json={
                                "type": "group-configuration-change",
                                "params": {
                                    "group": GROUPS[0],
                                    "configuration": {"labels": {"disk": "full"}},
                                },
                                "timeout": self.cluster.spec.task_timeout,
                            },
                        )
                        answers[r.status_code] += 1
                        if r.status_code >= 500 and "full" not in r.text:
                            unclear.append(f"{r.status_code} {r.text[:160]}")
                    except httpx.HTTPError as exc:
                        answers[type(exc).__name__] += 1
                    time.sleep(0.3)
        finally:
            self.disk.free()
        recovered = None
        started = time.monotonic()
        with self.cluster.client(10) as c:
            while time.monotonic() - started < 30:
                with contextlib.suppress(httpx.HTTPError):
                    r = c.post(
                        "/tasks",
                        json={
                            "type": "group-configuration-change",
                            "params": {
                                "group": GROUPS[0],
                                "configuration": {"labels": {"disk": "back"}},
                            },
                            "timeout": self.cluster.spec.task_timeout,
                        },
                    )
                    if r.status_code == 202:
                        recovered = time.monotonic() - started
                        break
                time.sleep(0.3)
        if unclear:
            self.violations.append(f"disk-full: unclear error answers: {unclear[:3]}")
        if recovered is None:
            self.violations.append(
                "disk-full: the indexer accepted no task within 30 s of the space coming back"
            )
        self.figures.setdefault("disk_full_answers", Counter()).update(
            {str(k): v for k, v in answers.items()}
        )
        return (
            f"filled {written >> 20} MB; answers while full {dict(answers)}; "
            f"recovered in {recovered if recovered is None else round(recovered, 2)}s"
        )

    def _storm(self, f: Fault) -> str:
        c = self.cluster
        s = c.servers[f.target % len(c.servers)]
        s.kill()
        started = time.monotonic()
        s.start()
        assert s.health
        worst = 0.0
        unanswered = 0
        back = None
        total = c.spec.sims
        while time.monotonic() - started < 30 + f.hold:
            t0 = time.monotonic()
            try:
                httpx.get(s.health[0], timeout=5.0)
                worst = max(worst, time.monotonic() - t0)
            except httpx.HTTPError:
                unanswered += 1
            connected = 0
            for d in (c.root / f"sims-{i}" for i in range(2)):
                with contextlib.suppress(OSError, ValueError):
                    connected += int(json.loads((d / "status.json").read_text())["connected"])
            if back is None and connected >= total:
                back = time.monotonic() - started
            if back is not None and time.monotonic() - started > f.hold:
                break
            time.sleep(0.2)
        if unanswered:
            self.violations.append(
                f"storm: {s.name} left {unanswered} health probe(s) "
                "unanswered for 5 s while its agents reconnected"
            )
        self.figures.setdefault("storm", []).append(
            {
                "agents": total,
                "reconnected_s": None if back is None else round(back, 2),
                "worst_health_s": round(worst, 3),
            }
        )
        return (
            f"{s.name} restarted; {total} simulated agents back in "
            f"{'-' if back is None else round(back, 2)}s; worst /health {worst:.3f}s"
        )

    def _restart_postgres(self, f: Fault) -> str:
        clusters = sorted(os.listdir("/etc/postgresql"))
        if not clusters:
            return "skipped: no local PostgreSQL cluster"
        r = subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", clusters[-1], "main", "restart"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctlcluster failed: {r.stderr.strip()[:200]}")
        self._pause(f.hold)
        return f"PostgreSQL {clusters[-1]} restarted"
