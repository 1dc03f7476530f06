"""The multi-host topology of docs/deployment.md as real processes: two indexers and two
server nodes on one PostgreSQL schema behind Debian's HAProxy running deploy/haproxy.cfg as
shipped (only its addresses set through the environment), TLS ended there with a certificate
from `fleetcmd certs`, and real agents connecting through it.

`old_src` runs every role from another release's source tree (the same interpreter and
libraries: an older release needs no library this one lacks); `upgrade(role)` restarts one
role, on the same ports and folders, on this release's code."""

from __future__ import annotations

import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from fleetcmd.launch import Process, clean_env, free_port, wait_url
from fleetcmd.model.actions import ACTIONS
from fleetcmd.tls import make_dev_certs
from server.harness import ENROLLMENT_KEY, JWT_KEY
from support import Role, need_haproxy, wait_until

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "haproxy.cfg"
TOKEN = "topology-node-token"
# "command 17: apply-group-config" is the agent's log line when it runs a command.
RAN = re.compile(r"command (\d+): (\S+)$", re.M)


class Topology:
    def __init__(self, tmp: Path, store_url: str, old_src: Path | None = None) -> None:
        self.tmp = tmp
        self.store_url = store_url
        self.old_src = old_src
        self.roles: dict[str, Role] = {}
        self.ports = {name: free_port() for name in ("comms", "management", "indexer")}
        self.lb_indexer = f"http://127.0.0.1:{self.ports['indexer']}"
        self.comms = f"https://127.0.0.1:{self.ports['comms']}"
        self.management = f"https://127.0.0.1:{self.ports['management']}"
        self.certs = tmp / "certs"
        self.ca = str(self.certs / "ca.pem")
        self.indexer_ports = [free_port(), free_port()]
        self.server_ports = [(free_port(), free_port()), (free_port(), free_port())]
        self.lb: Process | None = None
        self.agents: list[str] = []
        self.retired: list[Role] = []  # roles replaced by an upgrade (their logs still count)

    # -- the roles, as their command lines -------------------------------------------------
    def _args(self, name: str) -> tuple[list[str], dict[str, str]]:
        if name.startswith("indexer"):
            i = int(name[-1])
            return [
                "indexer",
                "--port",
                str(self.indexer_ports[i - 1]),
                "--store",
                self.store_url,
                "--data-dir",
                str(self.tmp / name),
                "--command-key",  # indexers of one store sign with one key
                str(self.tmp / "command-signing.key"),
            ], {"FLEETCMD_TOKEN": TOKEN}
        if name.startswith("server"):
            i = int(name[-1])
            comms, management = self.server_ports[i - 1]
            return [
                "server",
                "--indexer",
                self.lb_indexer,  # through HAProxy: either indexer serves it
                "--data-dir",
                str(self.tmp / name),
                "--node-id",
                f"server-{i}",
                "--comms-port",
                str(comms),
                "--management-port",
                str(management),
                "--forwarded-allow-ips",
                "127.0.0.1",  # HAProxy's X-Forwarded-For
            ], {
                "FLEETCMD_TOKEN": TOKEN,
                "FLEETCMD_ENROLLMENT_KEY": ENROLLMENT_KEY,
                "FLEETCMD_JWT_KEY": JWT_KEY,  # one token-signing key for the cluster
            }
        return [
            "agent",
            "--server",
            self.comms,
            "--ca",
            self.ca,
            "--enrollment-key",
            ENROLLMENT_KEY,
            "--name",
            name,
            "--state-dir",
            str(self.tmp / name),
            "--groups",
            "topo",
        ], {}

    def _launch(self, name: str, old: bool) -> Role:
        args, env = self._args(name)
        if old and self.old_src is not None:
            env["PYTHONPATH"] = str(self.old_src)
        role = Role(name if old or self.old_src is None else f"{name}-new", args, self.tmp, env)
        role.start()
        self.roles[name] = role
        if name.startswith("indexer"):
            wait_url(f"http://127.0.0.1:{self.indexer_ports[int(name[-1]) - 1]}/health", 60, role)
        elif name.startswith("server"):
            comms, management = self.server_ports[int(name[-1]) - 1]
            wait_url(f"http://127.0.0.1:{comms}/health", 60, role)
            wait_url(f"http://127.0.0.1:{management}/health", 60, role)
        return role

    def start(self) -> Topology:
        make_dev_certs(self.certs, ["127.0.0.1", "localhost"], 2)  # what `fleetcmd certs` makes
        pem = self.tmp / "haproxy.pem"  # HAProxy takes the certificate and its key in one file
        pem.write_bytes(
            (self.certs / "server.pem").read_bytes() + (self.certs / "server-key.pem").read_bytes()
        )
        pem.chmod(0o600)
        for name in ("indexer1", "indexer2"):  # one after the other: the first makes the key
            self._launch(name, old=True)
        env = {
            "FLEETCMD_COMMS_BIND": f"127.0.0.1:{self.ports['comms']}",
            "FLEETCMD_MANAGEMENT_BIND": f"127.0.0.1:{self.ports['management']}",
            "FLEETCMD_INDEXER_BIND": f"127.0.0.1:{self.ports['indexer']}",
            "FLEETCMD_TLS_PEM": str(pem),
            "FLEETCMD_MAXCONN": "1000",
        }
        for i, port in enumerate(self.indexer_ports, start=1):
            env[f"FLEETCMD_INDEXER{i}"] = f"127.0.0.1:{port}"
        for i, (comms, management) in enumerate(self.server_ports, start=1):
            env[f"FLEETCMD_SERVER{i}_COMMS"] = f"127.0.0.1:{comms}"
            env[f"FLEETCMD_SERVER{i}_MANAGEMENT"] = f"127.0.0.1:{management}"
        self.lb = Process(
            "haproxy",
            [need_haproxy(), "-db", "-f", str(CONFIG)],
            self.tmp / "haproxy.log",
            clean_env(**env),
        ).start()
        wait_url(f"{self.lb_indexer}/health", 30, self.lb)
        for name in ("server1", "server2"):
            self._launch(name, old=True)
        wait_until(
            lambda: self._up(self.comms) and self._up(self.management),
            30,
            what="HAProxy sees both servers",
        )
        return self

    def _up(self, url: str) -> bool:
        try:
            return httpx.get(f"{url}/health", verify=self.ca, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def agent(self, name: str) -> None:
        self._launch(name, old=True)
        self.agents.append(name)

    def kill(self, name: str) -> None:
        self.roles[name].kill()

    def upgrade(self, name: str) -> Role:
        """Stop `name` (SIGTERM, as a service manager does) and start it on this release."""
        old = self.roles[name]
        old.kill(signal.SIGTERM)
        self.retired.append(old)
        return self._launch(name, old=False)

    # -- what an operator sees --------------------------------------------------------------
    def admin(self) -> httpx.Client:
        password = (self.tmp / "server1" / "admin.password").read_text().strip()
        r = httpx.post(
            f"{self.management}/security/user/authenticate",
            auth=("admin", password),
            verify=self.ca,
            timeout=10,
        )
        assert r.status_code == 200, r.text
        token = r.json()["data"]["token"]
        return httpx.Client(
            base_url=self.management,
            verify=self.ca,
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
        )

    def runs(self) -> Counter[int]:
        """Command id → how many times an agent's log says it ran it (across upgrades)."""
        counts: Counter[int] = Counter()
        for role in [*self.retired, *self.roles.values()]:
            if role.name.startswith("topo-"):
                for cid, action in RAN.findall(role.log()):
                    if action in ACTIONS:
                        counts[int(cid)] += 1
        return counts

    def stop(self) -> None:
        everything = [*self.roles.values(), *([self.lb] if self.lb else [])]
        for p in reversed(everything):
            if p.alive:
                p.kill()
        for p in [*self.retired, *everything]:
            print(f"----- {p.name} log (tail) -----\n{p.log()[-3000:]}")


def file_change(api: httpx.Client, v: int) -> dict[str, Any]:
    r = api.post(
        "/tasks",
        json={
            "type": "group-configuration-change",
            "params": {"group": "topo", "configuration": {"v": v}},
        },
    )
    assert r.status_code == 202, r.text
    return dict(r.json()["data"])


def agents_by_node(api: httpx.Client) -> dict[str, str | None]:
    items = api.get("/agents", params={"limit": 100}).json()["data"]["items"]
    return {a["name"]: a.get("node") for a in items}


def commands(api: httpx.Client, task_id: int) -> list[dict[str, Any]]:
    r = api.get("/commands", params={"task_id": task_id, "limit": 1000})
    assert r.status_code == 200, r.text
    return [c for c in r.json()["data"]["items"] if c["target"]["type"] == "agent"]
