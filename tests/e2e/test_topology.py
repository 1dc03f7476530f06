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

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.harness import task_final
from support import need_haproxy, store_url_for, wait_until
from support.topology import Topology, agents_by_node, commands, file_change

AGENTS = 4


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topology]:
    need_haproxy()
    with store_url_for("postgres", tmp_path) as url:
        t = Topology(tmp_path, url).start()
        try:
            yield t
        finally:
            t.stop()


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
    victim = max((1, 2), key=lambda i: sum(1 for v in nodes.values() if v == f"server-{i}"))
    in_flight = file_change(api, 2)
    killed_at = time.monotonic()
    topo.kill(f"server{victim}")
    api = topo.admin()  # HAProxy sends the operator to the surviving node
    done = task_final(api, in_flight["id"], timeout=120)
    failover = time.monotonic() - killed_at
    assert done["status"] == "success", done
    survivor = f"server-{3 - victim}"
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
    topo.kill("indexer1")
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
