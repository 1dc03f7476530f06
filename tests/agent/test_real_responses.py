"""The active responses that act on the host, run for real (row 11): `firewall-drop` with
nftables inside network namespaces this test makes (a client in one cannot reach a listener in
the other while its address is blocked, and can again once the element's timeout lifts it),
and `disable-account` on a throw-away local account. The set-up installs Debian's `nftables`
when `nft` is missing (tests/support/hostnet.py)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetcmd.agent.handlers import Context
from fleetcmd.agent.processes import run_bounded
from fleetcmd.content.sample import SAMPLE_SOURCE
from support import free_port, wait_until
from support.hostnet import Namespaces, ensure_program, namespaces, unavailable

from .test_active_response import configure, run, sample

AR_RUN = str(Path(__file__).resolve().parent.parent / "support" / "ar_run.py")


@pytest.fixture(scope="module")
def nft() -> str:
    return ensure_program("nft", "nftables")


@pytest.fixture
def net(nft: str) -> Iterator[Namespaces]:
    with namespaces() as ns:
        yield ns


def drop(timeout: int) -> dict[str, Any]:
    """The sample definition, with a shorter block."""
    d = sample("firewall-drop")
    return {**d, "arguments": ["{0}", "{1}", "--timeout", str(timeout)]}


def respond(net: Namespaces, state: Path, definition: dict[str, Any], args: list[str]) -> Any:
    """The agent's active-response module, run in the host namespace."""
    done = net.run(
        net.host,
        sys.executable,
        AR_RUN,
        str(state),
        definition["name"],
        json.dumps(definition),
        json.dumps(args),
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.req("C11")
def test_firewall_drop_blocks_the_address_until_the_timeout_lifts_it(
    net: Namespaces, tmp_path: Path
) -> None:
    port = free_port()
    listener = net.listen(port)
    try:
        assert net.reachable(port), "the client must reach the listener before the block"
        r = respond(net, tmp_path / "state", drop(4), ["add", net.client_ip])
        blocked_at = time.monotonic()
        assert r["ok"], r
        assert r["data"]["argv"] == ["firewall-drop", "add", net.client_ip, "--timeout", "4"]
        assert f"blocked: {net.client_ip} for 4s" in r["data"]["stdout"]
        assert not net.reachable(port, timeout=1.0), "blocked, yet the client got through"
        listed = net.run(net.host, "nft", "list", "set", "inet", "fleetcmd", "drop4").stdout
        assert net.client_ip in listed and "expires" in listed, listed
        # the rule is in the host namespace only: the machine's own ruleset has no such table
        outside = subprocess.run(["nft", "list", "table", "inet", "fleetcmd"], capture_output=True)
        assert outside.returncode != 0
        wait_until(lambda: net.reachable(port, timeout=0.5), timeout=15, what="block lifted")
        assert time.monotonic() - blocked_at >= 3.0, "lifted before its timeout"
        listed = net.run(net.host, "nft", "list", "set", "inet", "fleetcmd", "drop4").stdout
        assert net.client_ip not in listed
    finally:
        listener.kill()
        listener.wait()


@pytest.mark.req("C11")
def test_firewall_drop_renews_a_block_and_delete_lifts_it_at_once(
    net: Namespaces, tmp_path: Path
) -> None:
    port = free_port()
    listener = net.listen(port)
    state = tmp_path / "state"
    try:
        assert respond(net, state, drop(300), ["add", net.client_ip])["ok"]
        again = respond(net, state, drop(300), ["add", net.client_ip])
        assert again["ok"] and "block renewed" in again["data"]["stdout"]
        assert not net.reachable(port, timeout=1.0)
        lifted = respond(net, state, drop(300), ["delete", net.client_ip])
        assert lifted["ok"] and f"unblocked: {net.client_ip}" in lifted["data"]["stdout"]
        assert net.reachable(port), "delete did not lift the block"
        twice = respond(net, state, drop(300), ["delete", net.client_ip])
        assert twice["ok"] and "was not blocked" in twice["data"]["stdout"]
        # one table, one chain with its two rules, however many times it ran
        rules = net.run(net.host, "nft", "list", "chain", "inet", "fleetcmd", "input").stdout
        assert rules.count(" drop") == 2, rules
        # an argument the definition does not allow is refused before anything runs
        bad = respond(net, state, drop(300), ["add", f"{net.client_ip}; nft flush ruleset"])
        assert "is not allowed by firewall-drop" in bad["refused"]
    finally:
        listener.kill()
        listener.wait()


def test_firewall_drop_fails_clearly_where_nftables_is_missing(ctx: Context) -> None:
    configure(ctx, "firewall-drop", sample("firewall-drop"))
    script = str(ctx.state_dir.ar_bin_dir / "firewall-drop")
    empty = ctx.state_dir.root / "no-tools"
    empty.mkdir()
    done = run_bounded([script, "add", "198.51.100.9"], 20, env={"PATH": str(empty)})
    assert done.exit_code == 4, done
    assert "nftables is not installed on this host" in done.text("stderr")
    assert "cannot add 198.51.100.9" in done.text("stderr")
    done = run_bounded([script, "add", "not-an-address"], 20, env={"PATH": str(empty)})
    assert done.exit_code == 2 and "does not appear to be an IPv4 or IPv6" in done.text("stderr")


def shadow(user: str) -> tuple[str, str]:
    """(password field, expiry field) of `user` in /etc/shadow."""
    for line in Path("/etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return fields[1], fields[7]
    raise AssertionError(f"{user} not in /etc/shadow")


@pytest.fixture
def account() -> Iterator[str]:
    """A throw-away local account with a password, removed afterwards."""
    if os.geteuid() != 0:
        unavailable("useradd needs root")
    ensure_program("useradd", "passwd")
    user = f"fcedge{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", user], check=True)
    try:
        subprocess.run(["chpasswd"], input=f"{user}:{secrets.token_hex(8)}", text=True, check=True)
        yield user
    finally:
        subprocess.run(["userdel", user], capture_output=True)


@pytest.mark.req("C11")
def test_disable_account_locks_a_real_account_and_unlock_undoes_it(
    ctx: Context, account: str
) -> None:
    password, expiry = shadow(account)
    assert not password.startswith("!") and expiry == ""
    configure(ctx, "disable-account", sample("disable-account"))
    r = run(ctx, "disable-account", [account])
    assert r.status == "success", r.message
    assert r.data["argv"] == ["disable-account", "lock", account]
    assert f"account {account} locked (usermod -L -e 1 {account})" in r.data["stdout"]
    locked, expiry = shadow(account)
    assert locked == f"!{password}" and expiry == "1"  # password disabled, account expired
    status = subprocess.run(["passwd", "-S", account], capture_output=True, text=True).stdout
    assert status.split()[1] == "L", status
    assert (ctx.state_dir.ar_lists_dir / "disabled-accounts.txt").read_text() == f"{account}\n"

    unlock = {**sample("disable-account"), "name": "enable-account", "arguments": ["unlock", "{0}"]}
    configure(ctx, "enable-account", unlock)
    r = run(ctx, "enable-account", [account], cid=3)
    assert r.status == "success", r.message
    assert shadow(account) == (password, "")
    assert (ctx.state_dir.ar_lists_dir / "disabled-accounts.txt").read_text() == ""


@pytest.mark.req("C11")
def test_disable_account_refuses_root_and_unknown_accounts(ctx: Context) -> None:
    before = Path("/etc/shadow").read_text() if os.geteuid() == 0 else ""
    configure(ctx, "disable-account", sample("disable-account"))
    r = run(ctx, "disable-account", ["root"])
    assert r.status == "failure" and r.data["exit_code"] == 2
    assert "root is never locked" in r.data["stderr"]
    r = run(ctx, "disable-account", [f"nobody{secrets.token_hex(3)}"], cid=3)
    assert r.status == "failure" and "no local account" in r.data["stderr"]
    if before:
        assert Path("/etc/shadow").read_text() == before


def test_the_sample_feed_names_the_real_responses() -> None:
    """The brute-force rule of the sample feed blocks with nftables, not with the deny list."""
    rules = (SAMPLE_SOURCE / "ruleset" / "rules.yaml").read_text()
    assert "name: firewall-drop" in rules and '["add", "{srcip}"]' in rules
