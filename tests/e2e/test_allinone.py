"""`fleetcmd up` as an operator runs it, on custom ports (issues 14.4, 14.8 and 20.6): what it
prints, what its children can see, how it follows an agent through an upgrade that rolls back,
and that Ctrl-C leaves no fleetcmd process behind.

One system for the module; the last test stops it."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.packages import build_package, new_key, sign_package
from fleetcmd.agent.state import StateDir
from fleetcmd.allinone.up import DEFAULT_GROUP_CONFIG
from fleetcmd.content import sample
from fleetcmd.model.config import config_hash
from server.harness import login, task_final
from support import FLEETCMD, free_port, wait_until

CRASH = "0.1.2"  # an agent version that dies at start


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    data: Path
    out: Path
    api: str
    indexer: str
    token: str
    package_key: Path

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def admin(self) -> httpx.Client:
        return login(self.api, "admin", (self.data / "admin.password").read_text().strip())

    def node(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.indexer, timeout=30, headers={"Authorization": f"Bearer {self.token}"}
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*FLEETCMD, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "250"},
        )


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    tmp = tmp_path_factory.mktemp("up")
    data = tmp / "data"
    ports = {"indexer": free_port(), "management": free_port(), "comms": free_port()}
    pub = new_key(tmp / "packages.key")
    # Secrets in the environment `up` runs in: they must reach no child that way.
    token = secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "FLEETCMD_TOKEN": token,
        "FLEETCMD_PASSWORD": secrets.token_hex(8),
        "FLEETCMD_ENROLLMENT_KEY": secrets.token_hex(8),
    }
    out = tmp / "up.out"
    proc = subprocess.Popen(
        [
            *FLEETCMD,
            "up",
            "--agents",
            "2",
            "--data-dir",
            str(data),
            "--indexer-port",
            str(ports["indexer"]),
            "--management-port",
            str(ports["management"]),
            "--comms-port",
            str(ports["comms"]),
            "--content-interval",
            "3600",
            "--trust-key",
            str(pub),
        ],
        stdout=open(out, "wb"),  # noqa: SIM115 - lives as long as the process
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    system = Up(
        proc,
        data,
        out,
        f"http://127.0.0.1:{ports['management']}",
        f"http://127.0.0.1:{ports['indexer']}",
        token,
        tmp / "packages.key",
    )
    try:
        wait_until(
            lambda: "fleetcmd is up." in system.output() or proc.poll() is not None,
            120,
            interval=0.2,
            what="fleetcmd up",
        )
        assert proc.poll() is None, system.output()
        wait_until(
            lambda: all(agent_pid(system, f"local-agent-{i}") for i in (1, 2)),
            60,
            what="both agents running",
        )
        yield system
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
        for pid in fleetcmd_processes(data):  # whatever a failing test left behind
            os.kill(pid, signal.SIGKILL)
        print(system.output()[-5000:])


def fleetcmd_processes(data: Path) -> list[int]:
    """Processes whose command line or environment names the data folder: every role `up`
    starts, agents included (their options name their state folder)."""
    found = []
    needle = str(data).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (
                needle in (entry / "cmdline").read_bytes()
                or needle in (entry / "environ").read_bytes()
            ):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in status:
            out.append(int(entry.name))
    return out


def agent_pid(up: Up, name: str) -> int | None:
    return StateDir(up.data / "agents" / name).running_pid()


def test_try_commands_name_this_systems_api(up: Up) -> None:
    """On custom ports the printed commands carry `--api` with this system's URL (not
    55000, another instance's on a shared host), and they work as printed."""
    lines = [
        ln.strip()
        for ln in up.output().splitlines()
        if ln.strip().startswith(".venv/bin/fleetcmd task")
    ]
    assert len(lines) == 2 and all(f"--api {up.api} " in ln for ln in lines), lines
    listing = shlex.split(next(ln for ln in lines if " task list " in ln))
    r = up.cli(*listing[1:])
    assert r.returncode == 0 and "group-configuration-change" in r.stdout, r.stderr


def test_no_secret_on_a_command_line_or_in_an_environment(up: Up) -> None:
    """Secrets go to the roles in 0600 files: `ps` shows none, no child's environment holds
    one, and the agents are not handed the node credential at all."""
    values = {
        "node credential": up.token,
        "enrollment key": (up.data / "enrollment.key").read_text().strip(),
        "token signing key": (up.data / "comms-jwt.key").read_text().strip(),
        "admin password": (up.data / "admin.password").read_text().strip(),
    }
    kids = children(up.proc.pid)
    agents = [agent_pid(up, f"local-agent-{i}") for i in (1, 2)]
    assert len(kids) == 5 and set(agents) <= set(kids), (kids, agents)
    for pid in kids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode()
        for what, value in values.items():
            assert value not in cmdline, f"{what} on the command line of {cmdline[:120]}"
            assert value not in environ, f"{what} in the environment of {cmdline[:120]}"
        assert "FLEETCMD_TOKEN=" not in environ and "FLEETCMD_PASSWORD=" not in environ
    assert (up.data / "enrollment.key").stat().st_mode & 0o077 == 0
    # FLEETCMD_TOKEN given to `up` is what the roles use, handed over as a 0600 file
    assert (up.data / "run" / "node.token").read_text().strip() == up.token
    assert (up.data / "run" / "node.token").stat().st_mode & 0o777 == 0o600


def test_agents_show_the_configuration_from_init(up: Up) -> None:
    """`GET /agents` shows the hash of the configuration each agent applied at start, before
    any group command (it was null until then)."""
    want = config_hash(DEFAULT_GROUP_CONFIG)
    with up.admin() as api:

        def hashes() -> list[Any]:
            return [a["config_hash"] for a in api.get("/agents").json()["data"]["items"]]

        assert wait_until(lambda: hashes() == [want, want], 30, what="config hashes")


def test_task_create_takes_timeout_and_expires_in(up: Up) -> None:
    r = up.cli(
        "task",
        "create",
        "vulnerability-rescan",
        "--api",
        up.api,
        "--data-dir",
        str(up.data),
        "-p",
        "all=true",
        "--timeout",
        "77",
        "--expires-in",
        "300",
    )
    assert r.returncode == 0, r.stderr
    task = json.loads(r.stdout)
    with up.admin() as api:
        commands = api.get("/commands", params={"task_id": task["id"]}).json()["data"]["items"]
        final = task_final(api, task["id"], timeout=60)
    assert commands and {c["timeout"] for c in commands} == {77}
    assert all(
        abs(_epoch(c["expires_at"]) - _epoch(final["created_at"]) - 300) < 5 for c in commands
    ), commands
    bad = up.cli(
        "task",
        "create",
        "vulnerability-rescan",
        "--api",
        up.api,
        "--data-dir",
        str(up.data),
        "-p",
        "all=true",
        "--timeout",
        "0",
    )
    assert bad.returncode != 0 and "--timeout" in bad.stderr


def _epoch(value: str | float) -> float:
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_content_poll_polls_the_feed_now(up: Up, tmp_path: Path) -> None:
    """`up --content-interval 3600`: a feed change is picked up by `fleetcmd content poll`
    at once, not in an hour."""
    source = sample.copy_source(tmp_path / "feed-src")
    policy = source / "sca" / "debian12-sshd.yaml"
    policy.write_text(policy.read_text().replace('version: "1.0.0"', 'version: "1.0.1"', 1))
    sample.build_sample_feed(up.data / "cti-feed", up.data / sample.DEV_KEY, source=source)
    started = time.monotonic()
    r = up.cli("content", "poll", "--data-dir", str(up.data), "--timeout", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)["report"]
    assert report["status"] == "applied" and any("1.0.1" in a for a in report["applied"]), report
    assert time.monotonic() - started < 30
    idle = up.cli("content", "poll", "--data-dir", str(tmp_path))
    assert idle.returncode == 2 and "no content manager is running" in idle.stderr


def publish(up: Up, version: str, data: bytes) -> None:
    """What the content manager stores for an agent package: the blob and its record."""
    sha, sig = sign_package(up.package_key, "fleetcmd", version, data)
    with up.node() as c:
        assert c.put(f"/blobs/{sha}", content=data).status_code == 200
        record = {
            "name": "fleetcmd",
            "version": version,
            "size": len(data),
            "sha256": sha,
            "signature": sig,
        }
        r = c.put(f"/indexes/agent-packages/fleetcmd-{version}", json=record)
        assert r.status_code == 200, r.text


def test_an_agent_restarted_by_its_upgrade_watchdog_is_followed_and_stopped(
    up: Up, tmp_path: Path
) -> None:
    """Upgrade local-agent-2 to a version that dies at start: it rolls back and its watchdog
    runs the previous version under a new pid, outside `up`'s process tree. `up` reports the
    restart (not a death), and Ctrl-C stops that agent too, exiting 0."""
    publish(up, CRASH, build_package(tmp_path, CRASH, "crash").read_bytes())
    before = agent_pid(up, "local-agent-2")
    state = up.data / "agents" / "local-agent-2"
    agent_id = json.loads((state / "credentials.json").read_text())["id"]
    with up.admin() as api:
        r = api.post(
            "/tasks",
            json={"type": "agent-upgrade", "params": {"agents": [agent_id], "version": CRASH}},
        )
        assert r.status_code == 202, r.text
        task = task_final(api, r.json()["data"]["id"], timeout=120)
        assert task["counts"] == {"failure": 1}, task
    after = wait_until(lambda: agent_pid(up, "local-agent-2"), 30, what="agent restarted")
    assert after != before and after not in children(up.proc.pid)
    wait_until(
        lambda: "local-agent-2: its process exited" in up.output(), 10, what="the restart reported"
    )
    line = next(ln for ln in up.output().splitlines() if "local-agent-2: its process" in ln)
    assert f"upgrade to {CRASH} rolled back" in line and f"as pid {after}" in line, line

    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(60) == 0, up.output()[-3000:]
    assert fleetcmd_processes(up.data) == []
    assert "stopped" in up.output().splitlines()[-1]
