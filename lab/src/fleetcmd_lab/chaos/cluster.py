"""The whole system as real processes for a chaos run, each one restartable, wired through
fault proxies:

    runner ──────────────────────────────► indexer ◄── proxy `indexer` ◄── server-0, server-1,
                                                                             content manager
    agents (real) + simulated agents ──► proxy `agents-0` ──► server-0 (else server-1)
                                     └─► proxy `agents-1` ──► server-1 (else server-0)

The runner talks to the indexer directly (it is the observer, not a subject). Every process
appends to its own log in the run folder, across restarts, so a log shows each life."""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fleetcmd.launch import Process, clean_env, fleetcmd_argv, free_port
from fleetcmd_lab.chaos.proxy import ProxyHost

TOKEN = "chaos-node-token"
ENROLLMENT_KEY = "chaos-enrollment-key"
JWT_KEY = "chaos-jwt-key-shared-by-server-nodes"
GROUPS = ("chaos-a", "chaos-b")


SIGTERM = signal.SIGTERM  # (inside Proc, `signal` is its method)


@dataclass
class Proc(Process):
    """One role process (fleetcmd.launch): started, killed, stopped and continued by the
    injector. Each start is marked in its log, so that the log shows every life."""

    role: str = ""
    stopped: bool = False  # SIGSTOPped

    def start(self, wait: float = 90.0) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"===== start {self.starts + 1} at {time.time():.3f} =====\n".encode())
        self.stopped = False
        super().start(wait)
        return self

    def signal(self, sig: int) -> None:
        if self.alive():
            self.send(sig)
            if sig == signal.SIGSTOP:
                self.stopped = True
            elif sig == signal.SIGCONT:
                self.stopped = False

    def kill(self) -> None:
        if self.stopped:
            self.send(signal.SIGCONT)
        super().kill()
        self.stopped = False

    def stop(self, timeout: float = 20.0, sig: int = SIGTERM) -> bool:
        """SIGTERM (a stopped process continued first), then SIGKILL if it does not end in
        time."""
        if self.stopped:
            self.signal(signal.SIGCONT)
        return super().stop(timeout, sig)


@dataclass
class ClusterSpec:
    store_url: str
    root: Path
    agents: int = 4
    sims: int = 20
    lease: float = 6.0
    task_timeout: float = 30.0
    content: bool = True
    subscriber: bool = True  # a webhook subscriber, registered before anything happens


@dataclass
class Cluster:
    spec: ClusterSpec
    proxies: ProxyHost = field(default_factory=ProxyHost)
    indexer: Proc | None = None
    servers: list[Proc] = field(default_factory=list)
    content: Proc | None = None
    agents: list[Proc] = field(default_factory=list)
    sims: list[Proc] = field(default_factory=list)
    feed: Any = None  # the content publisher (fleetcmd_lab.chaos.feed.Publisher)
    sink: Any = None  # the webhook subscriber's receiver (fleetcmd_lab.webhook.Sink)
    subscriber: int | None = None  # its subscriber id in the store

    def __post_init__(self) -> None:
        self.root = self.spec.root
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs = self.root / "logs"
        self.env = clean_env(
            FLEETCMD_TOKEN=TOKEN, FLEETCMD_ENROLLMENT_KEY=ENROLLMENT_KEY, FLEETCMD_JWT_KEY=JWT_KEY
        )
        self.indexer_port = free_port()
        self.indexer_url = f"http://127.0.0.1:{self.indexer_port}"

    # -- wiring ---------------------------------------------------------------------------------
    def _fleetcmd(self, *args: str) -> list[str]:
        return fleetcmd_argv(*args)

    @staticmethod
    def _proc(
        name: str,
        role: str,
        argv: list[str],
        log: Path,
        env: dict[str, str],
        health: str | None = None,
    ) -> Proc:
        return Proc(name, argv, log, env, [health] if health else [], role=role)

    def start(self, say: Any = print) -> None:
        self.indexer = self._proc(
            "indexer",
            "indexer",
            self._fleetcmd(
                "indexer",
                "--port",
                str(self.indexer_port),
                "--store",
                self.spec.store_url,
                "--data-dir",
                str(self.root / "indexer"),
                "--log-level",
                "info",
            ),
            self.logs / "indexer.log",
            self.env,
            f"{self.indexer_url}/health",
        ).start()
        say(f"indexer up on {self.indexer_url}")
        if self.spec.subscriber:
            self.subscribe()
        idx_proxy = self.proxies.add("indexer", [("127.0.0.1", self.indexer_port)])
        via_proxy = f"http://127.0.0.1:{idx_proxy.port}"
        comms_ports = [free_port() for _ in range(2)]
        for i, port in enumerate(comms_ports):
            self.servers.append(
                self._proc(
                    f"server-{i}",
                    "server",
                    self._fleetcmd(
                        "server",
                        "--indexer",
                        via_proxy,
                        "--data-dir",
                        str(self.root / f"server-{i}"),
                        "--node-id",
                        f"chaos-server-{i}",
                        "--comms-port",
                        str(port),
                        "--management-port",
                        str(free_port()),
                        "--lease",
                        str(self.spec.lease),
                        "--pull-wait",
                        "5",
                        # every agent here shares one address: a per-address enrollment
                        # limit would only slow the set-up (authentication stays limited)
                        "--enroll-rate",
                        "0",
                        "--log-level",
                        "info",
                    ),
                    self.logs / f"server-{i}.log",
                    self.env,
                    f"http://127.0.0.1:{port}/health",
                )
            )
        for s in self.servers:
            s.start()
        say("servers up")
        ups = [("127.0.0.1", p) for p in comms_ports]
        self.agent_urls = []
        for i in range(2):
            p = self.proxies.add(f"agents-{i}", ups if i == 0 else ups[::-1], "/health")
            self.agent_urls.append(f"http://127.0.0.1:{p.port}")
        self.setup_groups()
        if self.spec.content:
            from fleetcmd_lab.chaos.feed import Publisher

            self.feed = Publisher.create(self.root / "cti")
            self.feed.publish()
            self.content = self._proc(
                "content-manager",
                "content",
                self._fleetcmd(
                    "content-manager",
                    "--indexer",
                    via_proxy,
                    "--feed",
                    str(self.feed.out),
                    "--trust-key",
                    str(self.feed.pub),
                    "--interval",
                    "1",
                    "--data-dir",
                    str(self.root / "content"),
                    "--log-level",
                    "info",
                ),
                self.logs / "content-manager.log",
                self.env,
            ).start()
        for i in range(self.spec.agents):
            name = f"agent-{i:02d}"
            options = {
                "server": self.agent_urls[i % 2],
                "enrollment_key": ENROLLMENT_KEY,
                "name": name,
                "state_dir": str(self.agent_dir(name)),
                "groups": [GROUPS[i % 2]],
                "log_level": "info",
                "wait": 10.0,
                "backoff_cap": 3.0,
            }
            env = {**self.env, "FLEETCMD_AGENT_OPTIONS": json.dumps(options)}
            self.agents.append(
                self._proc(
                    name,
                    "agent",
                    [sys.executable, "-m", "fleetcmd.agent"],
                    self.logs / f"{name}.log",
                    env,
                ).start()
            )
        per = [self.spec.sims // 2, self.spec.sims - self.spec.sims // 2]
        for i, n in enumerate(per):
            if n <= 0:
                continue
            d = self.root / f"sims-{i}"
            d.mkdir(exist_ok=True)
            self.sims.append(
                self._proc(
                    f"sims-{i}",
                    "sims",
                    [
                        sys.executable,
                        "-m",
                        "fleetcmd_lab.chaos.simagents",
                        "--server",
                        self.agent_urls[i],
                        "--enrollment-key",
                        ENROLLMENT_KEY,
                        "--agents",
                        str(n),
                        "--groups",
                        GROUPS[i % 2],
                        "--prefix",
                        f"sim{i}",
                        "--creds",
                        str(d / "creds.json"),
                        "--record",
                        str(d / "executions.jsonl"),
                        "--summary",
                        str(d / "summary.json"),
                        "--status",
                        str(d / "status.json"),
                        "--wait",
                        "10",
                        "--seed",
                        str(i),
                    ],
                    self.logs / f"sims-{i}.log",
                    self.env,
                ).start()
            )
        self.wait_enrolled()
        say(f"{len(self.agents)} agents and {self.spec.sims} simulated agents enrolled")

    def agent_dir(self, name: str) -> Path:
        return self.root / "agents" / name

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.indexer_url, timeout=timeout, headers={"Authorization": f"Bearer {TOKEN}"}
        )

    def setup_groups(self) -> None:
        with self.client() as c:
            for g in GROUPS:
                r = c.post(
                    "/tasks",
                    json={
                        "type": "group-configuration-change",
                        "params": {
                            "group": g,
                            "configuration": {
                                "log_level": "info",
                                "sca": {"enabled": False},
                                "inventory": {"enabled": False},
                                "active_response": {"enabled": True},
                            },
                        },
                        "idempotency_key": f"chaos-setup-{g}",
                    },
                )
                r.raise_for_status()

    def wait_enrolled(self, timeout: float = 120.0) -> None:
        want = self.spec.agents + self.spec.sims
        deadline = time.monotonic() + timeout
        n = 0
        while time.monotonic() < deadline:
            with self.client() as c:
                n = int(c.get("/agents/summary").json()["data"].get("total", 0))
            if n >= want:
                return
            time.sleep(0.5)
        raise TimeoutError(f"only {n} of {want} agents enrolled within {timeout:.0f}s")

    # -- process bookkeeping ---------------------------------------------------------------------
    def procs(self) -> list[Proc]:
        core = [p for p in (self.indexer, self.content) if p is not None]
        return [*core, *self.servers, *self.agents, *self.sims]

    def subscribe(self) -> None:
        """The webhook subscriber the invariant "every final command and audit entry was
        delivered" judges: every kind, from the first event (registered on an empty store, so
        nothing precedes its cursor); retried quickly and never paused (a paused subscriber
        waits for an operator, which a run has not)."""
        from fleetcmd_lab.webhook import Sink

        self.sink = Sink(record=self.root / "webhook.jsonl")
        with self.client() as c:
            r = c.post(
                "/subscribers",
                json={
                    "subscriber": {
                        "name": "chaos-hook",
                        "kind": "webhook",
                        "url": self.sink.url,
                        "from_event": 0,
                        "options": {
                            "batch": 50,
                            "retry_base": 0.2,
                            "retry_max": 2.0,
                            "pause_after": 10_000,
                            "timeout": 2.0,
                        },
                    },
                    "user": "chaos",
                },
            )
            r.raise_for_status()
        sub = r.json()["data"]
        self.sink.secret = sub["secret"]
        self.subscriber = int(sub["id"])

    def subscriber_state(self) -> dict[str, Any] | None:
        """The subscriber as the indexer reports it (state, cursor, lag), or None."""
        if self.subscriber is None:
            return None
        try:
            with self.client(5) as c:
                doc: dict[str, Any] = c.get(f"/subscribers/{self.subscriber}").json()["data"]
                return doc
        except (httpx.HTTPError, KeyError, ValueError):
            return None

    def heal(self) -> list[str]:
        """Everything back: proxies pass, stopped processes continue, dead ones restart, the
        webhook receiver answers again."""
        done = []
        if self.sink is not None and (self.sink.status != 200 or self.sink.delay):
            self.sink.answer(status=200, delay=0.0)
            done.append("webhook receiver answers")
        for name in self.proxies.proxies:
            if self.proxies.proxies[name].mode != "pass":
                self.proxies.set(name, "pass")
                done.append(f"proxy {name} pass")
        for p in self.procs():
            if p.stopped:
                p.signal(signal.SIGCONT)
                done.append(f"SIGCONT {p.name}")
            if not p.alive():
                try:
                    p.start()
                    done.append(f"restart {p.name}")
                except (RuntimeError, TimeoutError) as exc:
                    done.append(f"restart {p.name} failed: {exc}")
        return done

    def stop(self, before_indexer: Any = None) -> None:
        """Agents first (they drain their outboxes on the way out), then the roles; the
        indexer last, after `before_indexer()` (the subscriber's drain: everything the other
        roles wrote has been written by then)."""
        for group in (self.sims, self.agents):
            for p in group:
                if p.stopped:
                    p.signal(signal.SIGCONT)
                p.send(signal.SIGTERM)
            for p in group:
                p.stop(90.0)
        for role in [self.content, *self.servers]:
            if role is not None:
                role.stop()
        if before_indexer is not None:
            before_indexer()
        if self.indexer is not None:
            self.indexer.stop()
        self.proxies.close()
        if self.sink is not None:
            self.sink.close()
