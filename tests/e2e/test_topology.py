"""The multi-host topology of docs/deployment.md, for real (issue 19): two indexers and two
server nodes on one PostgreSQL schema; Debian's HAProxy runs deploy/haproxy.cfg as shipped
(only its addresses set through the environment), ends the agents' TLS with a certificate
from `fleetcmd certs`, balances the agents over the servers' Comms API, operators over their
Management API and the servers over the indexers, all health-checked on `/health`. Real agent
processes connect through it.

- A server node killed (SIGKILL): its agents go on through the other node within seconds, a
  task filed afterwards reaches every agent, and the task that was in flight ends with every
  command `success`: none lost, none run twice (each agent's log names each command it ran).
- An indexer killed just after a task was filed: the other indexer expands it, and the
  servers' pulls, leases and results go through HAProxy to the survivor.

At scale this is `fleetcmd bench multinode`; here a handful of agents keeps it in `make test`."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetcmd.launch import Process, clean_env, free_port, wait_url
from fleetcmd.model.actions import ACTIONS
from fleetcmd.tls import make_dev_certs
from server.harness import ENROLLMENT_KEY, JWT_KEY, task_final
from support import Indexer, Role, need_haproxy, store_url_for, wait_until

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "haproxy.cfg"
AGENTS = 4
TOKEN = "topology-node-token"
# "command 17: set-group-config" is the agent's log line when it runs a command.
RAN = re.compile(r"command (\d+): (\S+)$", re.M)


class Topology:
    def __init__(self, tmp: Path, store_url: str) -> None:
        self.tmp = tmp
        self.roles: list[Process] = []
        self.ports = {name: free_port() for name in ("comms", "management", "indexer")}
        self.lb_indexer = f"http://127.0.0.1:{self.ports['indexer']}"
        self.comms = f"https://127.0.0.1:{self.ports['comms']}"
        self.management = f"https://127.0.0.1:{self.ports['management']}"
        self.certs = tmp / "certs"
        self.indexers = [
            Indexer(
                store_url,
                tmp / f"indexer{i}",
                token=TOKEN,
                extra=["--command-key", str(tmp / "command-signing.key")],
            )
            for i in (1, 2)
        ]
        self.server_ports: list[tuple[int, int]] = []  # (comms, management) of each server
        self.servers = [self._server(i) for i in (1, 2)]
        self.agents: dict[str, tuple[Role, Path]] = {}
        self.lb: Process | None = None

    def _server(self, i: int) -> Role:
        comms, management = free_port(), free_port()
        role = Role(
            f"server{i}",
            [
                "server",
                "--indexer",
                self.lb_indexer,  # through HAProxy: either indexer serves it
                "--data-dir",
                str(self.tmp / f"server{i}"),
                "--node-id",
                f"server-{i}",
                "--comms-port",
                str(comms),
                "--management-port",
                str(management),
                "--forwarded-allow-ips",
                "127.0.0.1",  # HAProxy's X-Forwarded-For
                "--log-level",
                "info",
            ],
            self.tmp,
            env={
                "FLEETCMD_TOKEN": TOKEN,
                "FLEETCMD_ENROLLMENT_KEY": ENROLLMENT_KEY,
                "FLEETCMD_JWT_KEY": JWT_KEY,  # one token-signing key for the cluster
            },
        )
        self.server_ports.append((comms, management))
        return role

    def start(self) -> Topology:
        make_dev_certs(self.certs, ["127.0.0.1", "localhost"], 2)  # what `fleetcmd certs` makes
        pem = self.tmp / "haproxy.pem"  # HAProxy takes the certificate and its key in one file
        pem.write_bytes(
            (self.certs / "server.pem").read_bytes() + (self.certs / "server-key.pem").read_bytes()
        )
        pem.chmod(0o600)
        for idx in self.indexers:  # one after the other: the first makes the command key
            idx.start()
            self.roles.append(idx)
        env = {
            "FLEETCMD_COMMS_BIND": f"127.0.0.1:{self.ports['comms']}",
            "FLEETCMD_MANAGEMENT_BIND": f"127.0.0.1:{self.ports['management']}",
            "FLEETCMD_INDEXER_BIND": f"127.0.0.1:{self.ports['indexer']}",
            "FLEETCMD_INDEXER1": f"127.0.0.1:{self.indexers[0].port}",
            "FLEETCMD_INDEXER2": f"127.0.0.1:{self.indexers[1].port}",
            "FLEETCMD_TLS_PEM": str(pem),
            "FLEETCMD_MAXCONN": "1000",
        }
        for i, (comms, management) in enumerate(self.server_ports, start=1):
            env[f"FLEETCMD_SERVER{i}_COMMS"] = f"127.0.0.1:{comms}"
            env[f"FLEETCMD_SERVER{i}_MANAGEMENT"] = f"127.0.0.1:{management}"
        self.lb = Process(
            "haproxy",
            [need_haproxy(), "-db", "-f", str(CONFIG)],
            self.tmp / "haproxy.log",
            clean_env(**env),
        ).start()
        self.roles.append(self.lb)
        wait_url(f"{self.lb_indexer}/health", 30, self.lb)
        for s, (comms, _) in zip(self.servers, self.server_ports, strict=True):
            s.start()
            self.roles.append(s)
            wait_url(f"http://127.0.0.1:{comms}/health", 30, s)
        self.ca = str(self.certs / "ca.pem")
        wait_until(
            lambda: self._up("comms") and self._up("management"),
            30,
            what="HAProxy sees both servers",
        )
        return self

    def _up(self, api: str) -> bool:
        url = self.comms if api == "comms" else self.management
        try:
            return httpx.get(f"{url}/health", verify=self.ca, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def admin(self) -> httpx.Client:
        password = (self.tmp / "server1" / "admin.password").read_text().strip()
        c = login_tls(self.management, "admin", password, self.ca)
        return c

    def agent(self, name: str) -> None:
        state = self.tmp / name
        role = Role(
            name,
            [
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
                str(state),
                "--groups",
                "topo",
            ],
            self.tmp,
        ).start()
        self.roles.append(role)
        self.agents[name] = (role, state)

    def runs(self) -> Counter[int]:
        """Command id → how many times an agent's log says it ran it."""
        counts: Counter[int] = Counter()
        for role, _ in self.agents.values():
            for cid, action in RAN.findall(role.log()):
                if action in ACTIONS:
                    counts[int(cid)] += 1
        return counts

    def stop(self) -> None:
        for p in reversed(self.roles):
            if p.alive:
                p.kill()
        for p in self.roles:
            print(f"----- {p.name} log (tail) -----\n{p.log()[-3000:]}")


def login_tls(api: str, user: str, password: str, ca: str) -> httpx.Client:
    r = httpx.post(
        f"{api}/security/user/authenticate", auth=(user, password), verify=ca, timeout=10
    )
    assert r.status_code == 200, r.text
    token = r.json()["data"]["token"]
    return httpx.Client(
        base_url=api, verify=ca, timeout=30, headers={"Authorization": f"Bearer {token}"}
    )


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topology]:
    need_haproxy()
    with store_url_for("postgres", tmp_path) as url:
        t = Topology(tmp_path, url).start()
        try:
            yield t
        finally:
            t.stop()


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


def test_a_server_and_an_indexer_killed_behind_haproxy_lose_nothing(topo: Topology) -> None:
    api = topo.admin()
    task_final(api, file_change(api, 0)["id"])  # the group's first configuration
    for i in range(AGENTS):
        topo.agent(f"topo-{i}")
    names = set(topo.agents)
    wait_until(
        lambda: {n for n, node in agents_by_node(api).items() if node} >= names,
        60,
        what="every agent connected through HAProxy",
    )
    first = task_final(api, file_change(api, 1)["id"], timeout=60)
    assert first["status"] == "success", first
    nodes = agents_by_node(api)
    print("agents by node:", nodes)

    # A server node killed with a task in flight.
    victim = max({"server-1", "server-2"}, key=lambda n: sum(1 for v in nodes.values() if v == n))
    in_flight = file_change(api, 2)
    killed_at = time.monotonic()
    topo.servers[0 if victim == "server-1" else 1].kill()
    api = topo.admin()  # HAProxy sends the operator to the surviving node
    done = task_final(api, in_flight["id"], timeout=120)
    failover = time.monotonic() - killed_at
    assert done["status"] == "success", done
    survivor = "server-2" if victim == "server-1" else "server-1"
    moved = wait_until(
        lambda: (m := agents_by_node(api)) and all(m[n] == survivor for n in names) and m,
        60,
        what=f"every agent on {survivor}",
    )
    after = task_final(api, file_change(api, 3)["id"], timeout=60)
    assert after["status"] == "success", after
    print(f"server killed: in-flight task final {failover:.1f} s later; agents now {moved}")

    # An indexer killed just after a task was filed: the other expands it.
    filed = file_change(api, 4)
    topo.indexers[0].kill()
    assert task_final(api, filed["id"], timeout=120)["status"] == "success"
    alone = task_final(api, file_change(api, 5)["id"], timeout=60)  # the survivor alone
    assert alone["status"] == "success", alone

    runs = topo.runs()
    for task in (first, in_flight, after, filed, alone):
        cmds = commands(api, task["id"])
        assert len(cmds) == AGENTS  # one command an agent: none lost
        assert {c["status"] for c in cmds} == {"success"}, cmds
        for c in cmds:
            assert runs[c["id"]] == 1, f"command {c['id']} ran {runs[c['id']]} times"
