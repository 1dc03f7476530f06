"""The all-in-one system: indexer, server (Management API, Comms API, dashboard) and N local
agents, each a real process, on the embedded store unless told otherwise.

Nothing here is a second implementation of a role: `up` only starts the same commands an
operator would run by hand, waits for each to answer, and stops them all on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from fleetcmd.settings import default_store_url, node_token, secret_file

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


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child for its lifetime
        self.proc = subprocess.Popen(
            self.argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


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
    children: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        self.token = node_token(self.data_dir)
        self.enrollment_key = secret_file(self.data_dir / "enrollment.key", 24)
        self.env = {**os.environ, "FLEETCMD_TOKEN": self.token, "PYTHONUNBUFFERED": "1"}
        self.indexer_url = f"http://{self.host}:{self.ports.indexer}"
        self.management_url = f"http://{self.host}:{self.ports.management}"
        self.comms_url = f"http://{self.host}:{self.ports.comms}"

    def _child(self, name: str, *args: str) -> Child:
        child = Child(
            name,
            [sys.executable, "-m", "fleetcmd.cli", *args],
            self.data_dir / "logs" / f"{name}.log",
        )
        child.start(self.env)
        self.children.append(child)
        return child

    def start(self, say: object = print) -> None:
        out = say if callable(say) else print
        store = self.store_url or default_store_url(self.data_dir)
        indexer = self._child(
            "indexer",
            "indexer",
            "--host",
            self.host,
            "--port",
            str(self.ports.indexer),
            "--store",
            store,
            "--data-dir",
            str(self.data_dir),
        )
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
            "--enrollment-key",
            self.enrollment_key,
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
                *(["--feed", self.feed] if self.feed else []),
                *(a for k in self.trust_keys for a in ("--trust-key", str(k))),
            )
        for i in range(1, self.agents + 1):
            name = f"local-agent-{i}"
            self._child(
                name,
                "agent",
                "--server",
                self.comms_url,
                "--enrollment-key",
                self.enrollment_key,
                "--name",
                name,
                "--state-dir",
                str(self.data_dir / "agents" / name),
                *(a for k in self._package_keys() for a in ("--trust-key", str(k))),
                # The indexer wrote its public keys before it answered: no trust on first use.
                "--command-key",
                str(self.data_dir / "command-keys.pub"),
            )
        out(self.banner())

    def _package_keys(self) -> list[Path]:
        """The keys agents verify upgrade packages with: the feed's keys, or the sample
        feed's development key (created here, before the content manager needs it)."""
        if self.feed or not self.content:
            return list(self.trust_keys)
        from fleetcmd.content import signing
        from fleetcmd.content.sample import dev_key

        return [signing.pub_path(dev_key(self.data_dir)), *self.trust_keys]

    def _wait(self, url: str, child: Child, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited; see {child.log}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"{child.name} did not answer {url} within {timeout:.0f}s; see {child.log}"
        )

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
                "  .venv/bin/fleetcmd task create group-configuration-change "
                f"--data-dir {self.data_dir} \\",
                '      --params \'{"group": "default", "configuration": '
                '{"sca": {"enabled": false}}}\' --watch',
                f"  .venv/bin/fleetcmd task list --data-dir {self.data_dir}",
                "",
                "Ctrl-C stops everything; running it again reuses the data.",
            ]
        )

    def supervise(self, say: object = print) -> int:
        """Wait until Ctrl-C or a core role dies; report agents that exit."""
        out = say if callable(say) else print
        reported: set[str] = set()
        while True:
            for child in self.children:
                if not child.alive() and child.name not in reported:
                    reported.add(child.name)
                    assert child.proc is not None
                    out(f"{child.name} exited with code {child.proc.returncode}; see {child.log}")
                    if child.name in ("indexer", "server"):
                        return 1
            time.sleep(0.5)

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.alive():
                assert child.proc is not None
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(5)
