"""Package inventory: dpkg-query output, Python distributions, and `vulnerability-rescan`
(row 8) answering the counts it sent per source."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from fleetcmd.agent.comms import CommsError
from fleetcmd.agent.handlers import Context, execute
from fleetcmd.agent.modules import inventory
from fleetcmd.agent.modules.inventory import Inventory, parse_dpkg_query, python_distributions

from .conftest import Sent


def command(name: str, args: dict[str, Any], cid: int = 1) -> dict[str, Any]:
    return {"id": cid, "action": {"name": name, "version": 1, "args": args}, "timeout": 30}


def test_dpkg_query_output_keeps_installed_packages_only() -> None:
    output = (
        "installed\tbash\t5.2.15-2+b7\n"
        "config-files\told-thing\t1.0\n"
        "installed\tlibc6:amd64\t2.36-9+deb12u4\n"
        "not-installed\tghost\t\n"
        "garbage line\n"
        "installed\topenssl\t3.0.13-1~deb12u1\n"
    )
    assert parse_dpkg_query(output) == [
        {"name": "bash", "version": "5.2.15-2+b7", "source": "dpkg"},
        {"name": "libc6:amd64", "version": "2.36-9+deb12u4", "source": "dpkg"},
        {"name": "openssl", "version": "3.0.13-1~deb12u1", "source": "dpkg"},
    ]


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="no dpkg on this host")
def test_dpkg_query_on_this_host() -> None:
    packages = inventory.dpkg_query()
    assert packages and all(p["source"] == "dpkg" and p["version"] for p in packages)
    assert any(p["name"].startswith("libc6") for p in packages)


def test_python_distributions_include_the_agents_own() -> None:
    packages = python_distributions()
    names = {p["name"].lower() for p in packages}
    assert "fleetcmd" in names
    assert all(p["source"] == "python" and p["version"] for p in packages)
    assert len(names) == len(packages)  # one entry per distribution


def test_collect_sends_both_sources_in_one_list() -> None:
    packages = inventory.collect()
    sources = {p["source"] for p in packages}
    assert "python" in sources
    if shutil.which("dpkg-query") or inventory.DPKG_STATUS.exists():
        assert "dpkg" in sources


@pytest.mark.req("C8")
def test_vulnerability_rescan_sends_the_inventory_now(ctx: Context, sent: Sent) -> None:
    r = execute(ctx, command("vulnerability-rescan", {"reason": "cve feed 42"}))
    assert r.status == "success", r.message
    assert r.data == {"sent": {"dpkg": 1}, "total": 1}
    assert sent.inventories == [[{"name": "bash", "version": "5.2", "source": "dpkg"}]]


@pytest.mark.req("C8")
def test_vulnerability_rescan_fails_when_the_server_does_not_take_it(ctx: Context) -> None:
    def down(packages: list[dict[str, str]]) -> None:
        raise CommsError(503, "indexer_unavailable", "try later")

    assert ctx.inventory is not None
    ctx.inventory.send = down
    r = execute(ctx, command("vulnerability-rescan", {}))
    assert r.status == "failure" and "inventory not sent" in r.message


def test_vulnerability_rescan_is_refused_while_inventory_is_disabled(
    ctx: Context, sent: Sent
) -> None:
    ctx.modules.apply({"inventory": {"enabled": False}})
    r = execute(ctx, command("vulnerability-rescan", {}))
    assert r.status == "failure" and "disabled" in r.message and sent.inventories == []


def test_a_failed_periodic_send_is_retried_sooner_than_the_interval() -> None:
    calls: list[int] = []

    def send(packages: list[dict[str, str]]) -> None:
        calls.append(len(packages))
        if len(calls) == 1:
            raise CommsError(0, "unreachable", "down")

    inv = Inventory(send, collect=lambda: [])
    inv.tick(10_000.0)
    inv.tick(10_000.0 + inventory.RETRY_AFTER - 1)
    assert len(calls) == 1
    inv.tick(10_000.0 + inventory.RETRY_AFTER)
    assert len(calls) == 2 and inv.last_sent == {}
