"""The all-in-one system: indexer, server (Management API, Comms API, dashboard) and N local
agents, each a real process, on the embedded store unless told otherwise.

Nothing here is a second implementation of a role: `up` only starts the same commands an
operator would run by hand, waits for each to answer, and stops them all on Ctrl-C.

Secrets reach the roles in 0600 files of the data folder (`--token-file`,
`--enrollment-key-file`; the indexer's store URL, which may hold a password, in its 0600
configuration file run/indexer.toml), never on a command line or in an environment, and each
role gets only its own: agents the enrollment key, not the node credential. An agent is
followed by its state folder, not only by the process started here: an upgrade that rolls
back leaves it running under its watchdog's pid (agent/supervision.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from fleetcmd.agent.supervision import fleetcmd_process, processes
from fleetcmd.launch import Process, clean_env, fleetcmd_argv, wait_url
from fleetcmd.role_settings import ROLES
from fleetcmd.settings import default_store_url, node_token, secret_file, write_secret

DEFAULT_GROUP_CONFIG = {
    "sca": {"enabled": True, "interval": 3600},
    "active_response": {"enabled": True},
    "inventory": {"enabled": True, "interval": 3600},
    "log_level": "info",
}


@dataclass
class Ports:
    indexer: int = 9200
    management: int = 55000
    comms: int = 27000


# Secrets a child could inherit from the environment `up` runs in: each role reads its own
# from a file instead (and the agents need none of these).
SECRET_ENV = (
    "FLEETCMD_TOKEN",
    "FLEETCMD_ENROLLMENT_KEY",
    "FLEETCMD_JWT_KEY",
    "FLEETCMD_PASSWORD",
    "FLEETCMD_STORE_PASSWORD",
)
# Settings of the roles' own (FLEETCMD_INDEXER_PORT, …) would override what `up` tells them.
ROLE_ENV_PREFIXES = tuple(f"FLEETCMD_{r.replace('-', '_').upper()}_" for r in ROLES)
# How long an agent whose process ended may take to come back under its upgrade watchdog.
RESTART_GRACE = 30.0
STOP_TIMEOUT = 15.0


@dataclass
class Child(Process):
    """A role process of this system (fleetcmd.launch), stopped by `AllInOne.stop`."""

    def live_pids(self) -> list[int]:
        """The processes to stop for this child, in the order to stop them."""
        return [self.pid] if self.alive() else []


@dataclass
class LocalAgent(Child):
    """An agent, followed by its state folder: after an upgrade rolled back, its watchdog runs
    the previous version under another pid, outside this process tree."""

    state_dir: Path = Path()
    agent_pid: int | None = None  # the process that runs the agent now
    lost_at: float | None = None  # when that process was found gone
    ended: str = ""  # how the process followed last ended
    gone: bool = False  # ended for good (reported)
    failed: bool = False  # ...and not on purpose

    def start(self, wait: float = 60.0) -> LocalAgent:
        super().start(wait)
        self.agent_pid = self.proc.pid if self.proc is not None else None
        return self

    def _running(self, pid: int) -> bool:
        assert self.proc is not None
        return self.alive() if pid == self.proc.pid else fleetcmd_process(pid)

    def live_pids(self) -> list[int]:
        """The watchdog first (else it would start the agent again), then the agent."""
        found = processes(self.state_dir)
        pids = [found.watchdog] if found.watchdog is not None else []
        pids += [p for p in (self.agent_pid, found.agent) if p is not None and self._running(p)]
        return list(dict.fromkeys(pids))

    def check(self) -> str | None:
        """Follow the agent; a sentence when something happened to it."""
        assert self.proc is not None
        if self.gone or (self.agent_pid is not None and self._running(self.agent_pid)):
            return None
        now = time.monotonic()
        ended = (
            f"exited with code {self.proc.returncode}"
            if self.agent_pid == self.proc.pid
            else f"(pid {self.agent_pid}) exited"
        )
        if self.lost_at is None:
            self.lost_at, self.ended = now, ended
        found = processes(self.state_dir)
        if found.agent is not None:
            self.agent_pid, self.lost_at = found.agent, None
            return f"{self.name}: its process {self.ended}; {found.restart()}, as pid {found.agent}"
        if found.watchdog is not None and now - self.lost_at < RESTART_GRACE:
            return None  # the upgrade watchdog is starting it again
        self.gone = True
        code = self.proc.returncode if self.agent_pid == self.proc.pid else None
        if found.removed:
            return f"{self.name} was deleted from the fleet and stopped"
        self.failed = code != 0
        return f"{self.name} {self.ended}; see {self.log_path}"


@dataclass
class AllInOne:
    data_dir: Path
    store_url: str | None = None
    agents: int = 3
    host: str = "127.0.0.1"
    ports: Ports = field(default_factory=Ports)
    content: bool = True  # run the content manager (the sample feed unless `feed` is given)
    feed: str | None = None
    trust_keys: list[Path] = field(default_factory=list)  # the feed's keys (with `feed`)
    content_interval: float = 60.0  # seconds between the content manager's polls
    children: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        self.token = node_token(self.data_dir)
        # FLEETCMD_TOKEN, when given, reaches the roles as a 0600 file too.
        self.token_file = self.data_dir / "node.token"
        if os.environ.get("FLEETCMD_TOKEN"):
            self.token_file = write_secret(self.data_dir / "run" / "node.token", self.token)
        self.enrollment_key_file = self.data_dir / "enrollment.key"
        secret_file(self.enrollment_key_file, 24)
        self.env = clean_env(
            drop=[*SECRET_ENV, *(k for k in os.environ if k.startswith(ROLE_ENV_PREFIXES))]
        )
        self.failures: list[str] = []
        self.indexer_url = f"http://{self.host}:{self.ports.indexer}"
        self.management_url = f"http://{self.host}:{self.ports.management}"
        self.comms_url = f"http://{self.host}:{self.ports.comms}"

    def _child(self, name: str, *args: str, state_dir: Path | None = None) -> Child:
        argv = fleetcmd_argv(*args)
        log = self.data_dir / "logs" / f"{name}.log"
        child = (
            Child(name, argv, log, self.env)
            if state_dir is None
            else LocalAgent(name, argv, log, self.env, state_dir=state_dir)
        )
        child.start()
        self.children.append(child)
        return child

    def start(self, say: object = print) -> None:
        out = say if callable(say) else print
        indexer = self._child("indexer", "indexer", "--config", str(self._indexer_config()))
        self._wait(f"{self.indexer_url}/health", indexer)
        server = self._child(
            "server",
            "server",
            "--indexer",
            self.indexer_url,
            "--host",
            self.host,
            "--management-port",
            str(self.ports.management),
            "--comms-port",
            str(self.ports.comms),
            "--data-dir",
            str(self.data_dir),
            "--token-file",
            str(self.token_file),
            "--enrollment-key-file",
            str(self.enrollment_key_file),
        )
        self._wait(f"{self.management_url}/health", server)
        self._wait(f"{self.comms_url}/health", server)
        self._ensure_default_group()
        if self.content:
            self._child(
                "content-manager",
                "content-manager",
                "--indexer",
                self.indexer_url,
                "--data-dir",
                str(self.data_dir),
                "--token-file",
                str(self.token_file),
                "--interval",
                f"{self.content_interval:g}",
                *(["--feed", self.feed] if self.feed else []),
                *(a for k in self.trust_keys for a in ("--trust-key", str(k))),
            )
        for i in range(1, self.agents + 1):
            name = f"local-agent-{i}"
            state_dir = self.data_dir / "agents" / name
            self._child(
                name,
                "agent",
                "--server",
                self.comms_url,
                "--enrollment-key-file",
                str(self.enrollment_key_file),
                "--name",
                name,
                "--state-dir",
                str(state_dir),
                *(a for k in self._package_keys() for a in ("--trust-key", str(k))),
                # The indexer wrote its public keys before it answered: no trust on first use.
                "--command-key",
                str(self.data_dir / "command-keys.pub"),
                state_dir=state_dir,
            )
        out(self.banner())

    def _indexer_config(self) -> Path:
        """The indexer's settings as a 0600 TOML file: its store URL may hold a password."""
        store = self.store_url or default_store_url(self.data_dir)
        table = {
            "host": self.host,
            "port": self.ports.indexer,
            "store": store,
            "data_dir": str(self.data_dir),
            "token_file": str(self.token_file),
        }
        text = "[indexer]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
        return write_secret(self.data_dir / "run" / "indexer.toml", text)

    def _package_keys(self) -> list[Path]:
        """The keys agents verify upgrade packages with: the feed's keys, or the sample
        feed's development key (created here, before the content manager needs it)."""
        if self.feed or not self.content:
            return list(self.trust_keys)
        from fleetcmd.content.sample import dev_key
        from fleetcmd.model import content_signing as signing

        return [signing.pub_path(dev_key(self.data_dir)), *self.trust_keys]

    def _wait(self, url: str, child: Child, timeout: float = 60.0) -> None:
        wait_url(url, timeout, child)

    def _ensure_default_group(self) -> None:
        """First start only: a `default` group with a sensible configuration, filed as a task
        like any other change so that it is recorded."""
        with httpx.Client(
            base_url=self.indexer_url, timeout=30, headers={"Authorization": f"Bearer {self.token}"}
        ) as c:
            if c.get("/groups/default").status_code == 200:
                return
            r = c.post(
                "/tasks",
                json={
                    "type": "group-configuration-change",
                    "params": {"group": "default", "configuration": DEFAULT_GROUP_CONFIG},
                    "user": "fleetcmd-up",
                    "idempotency_key": "fleetcmd-up-default-group",
                },
            )
            r.raise_for_status()
            task_id = r.json()["data"]["id"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if c.get(f"/tasks/{task_id}").json()["data"]["completed_at"]:
                    return
                time.sleep(0.1)

    def banner(self) -> str:
        pw = self.data_dir / "admin.password"
        # Every command names this system's API: another instance may own port 55000.
        where = f"--api {self.management_url} --data-dir {self.data_dir}"
        content = (self.feed or "the sample feed (dev key)") if self.content else "off"
        return "\n".join(
            [
                "",
                "fleetcmd is up.",
                f"  Dashboard       {self.management_url}/app",
                f"  Management API  {self.management_url}   (OpenAPI: {self.management_url}/docs)",
                f"  Comms API       {self.comms_url}",
                f"  Indexer         {self.indexer_url}",
                f"  Content feed    {content}",
                f"  Log in as       admin / the password in {pw}",
                f"  Agents          {self.agents} local agents, state in "
                f"{self.data_dir / 'agents'}",
                f"  Logs            {self.data_dir / 'logs'}",
                "",
                "Try (in another terminal):",
                f"  .venv/bin/fleetcmd task create group-configuration-change {where} \\",
                '      --params \'{"group": "default", "configuration": '
                '{"sca": {"enabled": false}}}\' --watch',
                f"  .venv/bin/fleetcmd task list {where}",
                *(
                    [
                        f"  .venv/bin/fleetcmd content poll --data-dir {self.data_dir}   (poll "
                        f"the feed now; it is polled every {self.content_interval:g}s)"
                    ]
                    if self.content
                    else []
                ),
                "",
                "Ctrl-C stops everything; running it again reuses the data.",
            ]
        )

    def supervise(self, say: object = print) -> int:
        """Wait until Ctrl-C or a role dies; follow agents through restarts and report them."""
        out = say if callable(say) else print
        reported: set[str] = set()
        while True:
            for child in self.children:
                if isinstance(child, LocalAgent):
                    event = child.check()
                    if event:
                        out(event)
                        if child.failed:
                            self.failures.append(event)
                elif not child.alive() and child.name not in reported:
                    reported.add(child.name)
                    code = child.returncode()
                    event = f"{child.name} exited with code {code}; see {child.log_path}"
                    out(event)
                    self.failures.append(event)
                    if child.name in ("indexer", "server"):
                        return 1
            time.sleep(0.5)

    def stop(self, say: object = print) -> int:
        """Stop every process started here, and any an agent's watchdog started: SIGTERM,
        then SIGKILL for whatever did not stop in time. Returns the exit code of `up`:
        0 unless a role failed during the run or a process had to be killed."""
        out = say if callable(say) else print
        asked: set[int] = set()
        deadline, killing = time.monotonic() + STOP_TIMEOUT, False
        while True:
            # Agents first, each watchdog before its agent; then the roles, last started first.
            # Asked again each round: a watchdog may have started an agent meanwhile.
            live = [p for c in reversed(self.children) for p in c.live_pids()]
            if not live:
                break
            sig = signal.SIGKILL if killing else signal.SIGTERM
            for pid in live:
                if killing or pid not in asked:
                    asked.add(pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            if time.monotonic() > deadline:
                if killing:
                    self.failures.append(f"process(es) {live} could not be stopped")
                    out(self.failures[-1])
                    break
                self.failures.append(
                    f"process(es) {live} did not stop within {STOP_TIMEOUT:g}s: killed"
                )
                out(self.failures[-1])
                deadline, killing = time.monotonic() + 5, True
            time.sleep(0.1)
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.wait(5)
        return 1 if self.failures else 0
