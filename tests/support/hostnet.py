"""The host's real network and accounts, for the active responses that change them: Debian
packages installed by the set-up when missing (as the Makefile's `browser` target does), and a
pair of network namespaces of the test's own joined by a veth link, so that a firewall rule
changes nothing outside them. Needs root; where the kernel or the user may not make
namespaces, the test is skipped saying why (a failure under CI, which requires them)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

CI = bool(os.environ.get("CI"))
LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"ok\\n")
    c.close()
"""
PROBE = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as c:
        sys.exit(0 if c.recv(3) == b"ok\\n" else 1)
except OSError:
    sys.exit(1)
"""


def unavailable(why: str) -> None:
    if CI:
        pytest.fail(f"required under CI: {why}")
    pytest.skip(why)


def ensure_program(program: str, package: str) -> str:
    """`program`'s path, installing Debian's `package` with apt-get first when it is missing."""
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        unavailable(f"{program} is missing and cannot be installed here (apt-get {package})")
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    install = ["apt-get", *lock, "install", "-y", "--no-install-recommends", package]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(install, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        subprocess.run(["apt-get", *lock, "update"], capture_output=True, env=env)
        done = subprocess.run(install, capture_output=True, text=True, env=env)
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if not found:
        unavailable(f"apt-get install {package} failed: {done.stderr[-500:]}")
    assert found is not None
    return found


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@dataclass
class Namespaces:
    """`host` (where the agent and the listener run, 192.0.2.1) and `client` (the address to
    block, 192.0.2.2), joined by one veth link; nothing routes anywhere else."""

    host: str
    client: str
    host_ip: str = "192.0.2.1"
    client_ip: str = "192.0.2.2"

    def argv(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def run(self, ns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(ns, *argv), capture_output=True, text=True, timeout=timeout)

    def listen(self, port: int) -> subprocess.Popen[str]:
        """A TCP listener in `host` that greets each connection with `ok`."""
        proc = subprocess.Popen(
            self.argv(self.host, sys.executable, "-c", LISTENER, self.host_ip, str(port)),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
        return proc

    def reachable(self, port: int, timeout: float = 1.0) -> bool:
        """Whether a client in `client` connects to the listener and is greeted."""
        probe = [sys.executable, "-c", PROBE, self.host_ip, str(port), str(timeout)]
        return self.run(self.client, *probe, timeout=timeout + 10).returncode == 0


def need_namespaces() -> None:
    if os.geteuid() != 0:
        unavailable("network namespaces need root (ip netns add)")
    if shutil.which("ip") is None:
        unavailable("the ip program (iproute2) is missing")
    probe = f"fcprobe{secrets.token_hex(3)}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        unavailable(f"the kernel refuses a network namespace: {made.stderr.strip()}")
    ip("netns", "del", probe, check=False)


@contextmanager
def namespaces() -> Iterator[Namespaces]:
    need_namespaces()
    tag = secrets.token_hex(3)
    ns = Namespaces(host=f"fcedge-h-{tag}", client=f"fcedge-c-{tag}")
    try:
        for name in (ns.host, ns.client):
            ip("netns", "add", name)
            ip("-n", name, "link", "set", "lo", "up")
        veth_h, veth_c = f"fch{tag}", f"fcc{tag}"
        ip("-n", ns.host, "link", "add", veth_h, "type", "veth", "peer", "name", veth_c)
        ip("-n", ns.host, "link", "set", veth_c, "netns", ns.client)
        for name, dev, addr in ((ns.host, veth_h, ns.host_ip), (ns.client, veth_c, ns.client_ip)):
            ip("-n", name, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", name, "link", "set", dev, "up")
        yield ns
    finally:
        for name in (ns.host, ns.client):
            ip("netns", "del", name, check=False)
