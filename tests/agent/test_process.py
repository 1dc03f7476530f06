"""Real `fleetcmd agent` processes against the fake Comms API: kill -9, SIGTERM, deletion,
hot configuration in the same process, idle footprint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fleetcmd.content.sample import SAMPLE_SOURCE
from fleetcmd.model.config import config_hash
from support import Role, wait_until

from .fake_comms import KEY, FakeComms

BASELINE = yaml.safe_load((SAMPLE_SOURCE / "sca" / "debian12-baseline.yaml").read_text())


def agent_role(fake: FakeComms, tmp_path: Path, name: str = "p1") -> Role:
    return Role(
        f"agent-{name}",
        [
            "agent",
            "--server",
            fake.url,
            "--enrollment-key",
            KEY,
            "--name",
            name,
            "--state-dir",
            str(tmp_path / name),
        ],
        tmp_path,
    )


def status(tmp_path: Path, name: str = "p1") -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "fleetcmd.cli", "agent-status", "--state-dir", str(tmp_path / name)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def enrolled(fake: FakeComms) -> str:
    wait_until(
        lambda: fake.agents and "GET /agents/init" in fake.calls,
        20,
        what="agent enrolled and initialized",
    )
    return next(iter(fake.agents))


def test_results_in_the_outbox_survive_kill_9(fake: FakeComms, tmp_path: Path) -> None:
    role = agent_role(fake, tmp_path).start()
    try:
        aid = enrolled(fake)
        fake.refuse_results = True
        fake.agents[aid]["name"] = "renamed"  # the indexer renames before the command leaves
        fake.queue(aid, fake.command(1, "rename", {"name": "renamed"}))
        wait_until(lambda: status(tmp_path)["outbox"] == 1, 20, what="result in the outbox")
        role.kill(signal.SIGKILL)
        fake.refuse_results = False
        role = agent_role(fake, tmp_path).start()
        wait_until(lambda: "1" in fake.results, 20, what="result sent after the restart")
        assert fake.results["1"]["status"] == "success"
        assert fake.results["1"]["data"] == {"name": "renamed"}
        s = status(tmp_path)
        assert s["outbox"] == 0 and s["executed"] == 1 and s["name"] == "renamed"
        assert len(fake.agents) == 1  # credentials reused, no second enrollment
    finally:
        role.stop()
        print(role.log())


@pytest.mark.req("R2")
def test_hot_apply_in_the_same_process_then_sigterm(fake: FakeComms, tmp_path: Path) -> None:
    role = agent_role(fake, tmp_path).start()
    try:
        aid = enrolled(fake)
        pid = status(tmp_path)["pid"]
        assert pid == role.pid  # exec keeps the pid the supervisor started
        fake.group_configs["web"] = {"sca": {"enabled": False}, "log_level": "debug"}
        fake.agents[aid]["groups"] = ["web"]
        fake.queue(aid, fake.config_command(2, ["web"], attach=False))
        wait_until(lambda: "2" in fake.results, 20, what="set-groups result")
        assert fake.results["2"]["status"] == "success", fake.results["2"]
        s = status(tmp_path)
        assert s["groups"] == ["web"]
        assert s["config_hash"] == config_hash(fake.group_configs["web"])
        assert s["pid"] == pid and role.alive()
        start = time.monotonic()
        role.stop()  # SIGTERM cuts the long-poll short
        assert role.proc is not None and role.proc.returncode == 0
        assert time.monotonic() - start < 5
        assert status(tmp_path)["pid"] is None
    finally:
        role.stop()


def test_delete_exits_cleanly_and_forgets_credentials(fake: FakeComms, tmp_path: Path) -> None:
    role = agent_role(fake, tmp_path).start()
    try:
        aid = enrolled(fake)
        fake.queue(aid, fake.command(3, "delete", {}))
        assert role.proc is not None
        assert role.proc.wait(20) == 0
        assert fake.results["3"]["data"] == {"deleted": True}
        s = status(tmp_path)
        assert s["id"] is None and s["removed"] is True
        # a restart does not reconnect
        again = agent_role(fake, tmp_path).start()
        assert again.proc is not None and again.proc.wait(20) == 0
        assert len(fake.agents) == 1
    finally:
        role.stop()


def test_idle_agent_footprint(fake: FakeComms, tmp_path: Path) -> None:
    """SPEC §7: one idle agent stays under 40 MB RSS (measured, also in docs/agent.md)."""
    role = agent_role(fake, tmp_path).start()
    try:
        aid = enrolled(fake)
        # with its modules at work: inventory sent at start, a policy stored and evaluated
        wait_until(lambda: fake.agents[aid].get("inventories"), 30, what="inventory sent")
        fake.queue(
            aid,
            fake.command(1, "sca-policy", {"policy_id": "debian12-baseline", "policy": BASELINE}),
        )
        wait_until(lambda: "1" in fake.results, 30, what="policy evaluated")
        assert fake.results["1"]["status"] == "success", fake.results["1"]
        time.sleep(1.0)
        rss_kb = int(Path(f"/proc/{role.pid}/status").read_text().split("VmRSS:")[1].split()[0])
        print(f"idle agent RSS: {rss_kb / 1024:.1f} MB")
        assert rss_kb < 40 * 1024
    finally:
        role.stop()


def test_the_agent_process_imports_no_heavy_libraries() -> None:
    """The footprint budget: modules import their heavy helpers only when used (PyYAML for a
    YAML policy, cryptography during an upgrade)."""
    code = (
        "import sys, fleetcmd.agent.__main__, fleetcmd.agent.runner; "
        "print(sorted(m for m in ('pydantic', 'httpx', 'fastapi', 'rich', 'cryptography', "
        "'yaml', 'typer') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
