"""Agent upgrades (row 3): package checks and safe extraction in process, then real agent
processes switching version, refusing tampered packages and rolling back a version that does
not come up (design: src/fleetcmd/agent/upgrade.py)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

import fleetcmd
from fleetcmd.agent import upgrade as upgrades
from fleetcmd.agent.handlers import Context, execute
from fleetcmd.agent.state import StateDir
from fleetcmd.agent.upgrade import PHASES, UpgradeRefused, Versions, prepare
from fleetcmd.model.actions import Upgrade
from support import Role, wait_until

from .fake_comms import KEY, FakeComms
from .packages import build_package, new_key, sign_package

OLD = fleetcmd.__version__
NEW = "0.1.1"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(signing key, its public key, another key's public key)."""
    d = tmp_path_factory.mktemp("keys")
    pub = new_key(d / "feed.key")
    other = new_key(d / "other.key")
    return d / "feed.key", pub, other


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("packages")
    return {
        "good": build_package(d, NEW).read_bytes(),
        "crash": build_package(d, "0.1.2", "crash").read_bytes(),
        "hang": build_package(d, "0.1.3", "hang").read_bytes(),
    }


class StubComms:
    """Serves one package download, with the headers the server's endpoint sends."""

    def __init__(self, data: bytes, headers: dict[str, str]) -> None:
        self.data, self.headers, self.paths = data, headers, []

    def download(
        self, path: str, out: BinaryIO, max_bytes: int, timeout: float = 60.0
    ) -> dict[str, str]:
        self.paths.append(path)
        out.write(self.data)
        return {k.lower(): v for k, v in self.headers.items()}


def served(key: Path, data: bytes, version: str = NEW, **override: str) -> StubComms:
    sha, sig = sign_package(key, "fleetcmd", version, data)
    return StubComms(data, {"X-Package-Sha256": sha, "X-Package-Signature": sig, **override})


def upgrade_command(version: str = NEW, cid: int = 7) -> dict[str, Any]:
    return {
        "id": cid,
        "action": {
            "name": "upgrade",
            "version": 1,
            "args": {"version": version, "package": "fleetcmd"},
        },
        "timeout": 120,
    }


def nothing_switched(state: StateDir) -> bool:
    v = Versions(state)
    installed = (
        [p.name for p in state.versions_dir.iterdir()] if state.versions_dir.exists() else []
    )
    return (
        v.marker() is None
        and v.current() is None
        and not [n for n in installed if n not in (".lock",)]
    )


# -- in process: checks before anything is switched ------------------------------------------------
@pytest.mark.req("C3")
def test_a_verified_package_is_installed_side_by_side(
    ctx: Context, keys: Any, packages: dict[str, bytes]
) -> None:
    key, pub, _ = keys
    ctx.comms = served(key, packages["good"])
    ctx.trust_keys = [str(pub)]
    r = execute(ctx, upgrade_command())
    assert r.status == "success" and r.data == {"version": NEW, "restarting": True}, r.message
    assert ctx.comms.paths == [f"/agents/packages/fleetcmd-{NEW}"]
    assert ctx.restart is not None and ctx.restart.target.version == NEW
    src = Path(ctx.restart.target.src)
    assert src == ctx.state_dir.versions_dir / NEW / "src"
    assert f'__version__ = "{NEW}"' in (src / "fleetcmd" / "__init__.py").read_text()
    assert (src / "fleetcmd" / "agent" / "runner.py").is_file()
    # nothing switched yet: the runner does that (marker, watchdog, exec)
    assert Versions(ctx.state_dir).marker() is None


@pytest.mark.req("C3")
@pytest.mark.parametrize(
    "tamper", ["bytes", "sha_header", "signature", "other_key", "version", "no_signature"]
)
def test_a_tampered_package_is_refused_and_nothing_changes(
    ctx: Context, keys: Any, packages: dict[str, bytes], tamper: str
) -> None:
    key, pub, other = keys
    data = packages["good"]
    comms = served(key, data)
    if tamper == "bytes":  # the signature covers the sha256 of the original bytes
        comms.data = data[:-10] + b"0123456789"
        comms.headers["X-Package-Sha256"] = ""
    elif tamper == "sha_header":
        comms.data = data + b"x"
    elif tamper == "signature":
        comms.headers["X-Package-Signature"] = served(key, data, version="9.9.9").headers[
            "X-Package-Signature"
        ]
    elif tamper == "other_key":
        ctx.trust_keys = [str(other)]
    elif tamper == "no_signature":
        comms.headers["X-Package-Signature"] = ""
    ctx.comms = comms
    ctx.trust_keys = ctx.trust_keys or [str(pub)]
    r = execute(ctx, upgrade_command("0.1.9" if tamper == "version" else NEW))
    assert r.status == "failure" and "upgrade refused, nothing changed" in r.message, r.message
    assert ctx.restart is None and nothing_switched(ctx.state_dir)


def test_a_package_that_is_not_the_version_it_claims_is_refused(
    ctx: Context, keys: Any, packages: dict[str, bytes], tmp_path: Path
) -> None:
    key, pub, _ = keys
    # correctly signed as 0.1.5, but the archive is fleetcmd-0.1.1
    ctx.comms, ctx.trust_keys = served(key, packages["good"], version="0.1.5"), [str(pub)]
    r = execute(ctx, upgrade_command("0.1.5"))
    assert r.status == "failure" and "is not under fleetcmd-0.1.5/" in r.message
    # the right folder name, but the code inside says another version
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, text in [
            ("src/fleetcmd/__init__.py", '__version__ = "0.1.1"\n'),
            ("src/fleetcmd/agent/__main__.py", ""),
        ]:
            info = tarfile.TarInfo(f"fleetcmd-0.1.5/{name}")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))
    ctx.comms = served(key, raw.getvalue(), version="0.1.5")
    r = execute(ctx, upgrade_command("0.1.5", cid=8))
    assert r.status == "failure" and "contains fleetcmd 0.1.1" in r.message
    assert ctx.restart is None and Versions(ctx.state_dir).marker() is None
    assert not (ctx.state_dir.versions_dir / "0.1.5").exists()


@pytest.mark.req("C3")
def test_without_a_trusted_key_upgrades_are_refused(
    ctx: Context, keys: Any, packages: dict[str, bytes]
) -> None:
    ctx.comms = served(keys[0], packages["good"])
    r = execute(ctx, upgrade_command())
    assert r.status == "failure" and "trusts no package signing key" in r.message
    assert ctx.comms.paths == []  # not even downloaded


def test_the_running_version_is_already_there(ctx: Context, keys: Any) -> None:
    ctx.comms, ctx.trust_keys = StubComms(b"", {}), [str(keys[1])]
    r = execute(ctx, upgrade_command(OLD))
    assert r.status == "success" and r.data == {"version": OLD, "unchanged": True}


def tarball(entries: list[tarfile.TarInfo], prefix: str = "fleetcmd-0.1.1") -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for info in entries:
            data = b"x" if info.isreg() else None
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"t-{os.getpid()}-{time.monotonic_ns()}.tgz"
    path.write_bytes(raw.getvalue())
    return path


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([entry("/etc/passwd")], "absolute"),
        ([entry("fleetcmd-0.1.1/../../evil")], "climbs out"),
        ([entry("other-1.0/src/x.py")], "not under fleetcmd-0.1.1/"),
        ([entry("fleetcmd-0.1.1/src/link", tarfile.SYMTYPE, "/etc/passwd")], "not a regular file"),
        (
            [entry("fleetcmd-0.1.1/src/hard", tarfile.LNKTYPE, "fleetcmd-0.1.1/x")],
            "not a regular file",
        ),
        ([entry("fleetcmd-0.1.1/dev", tarfile.CHRTYPE)], "not a regular file"),
    ],
)
def test_unsafe_archives_are_refused(
    tmp_path: Path, entries: list[tarfile.TarInfo], why: str
) -> None:
    archive = tarball(entries)
    try:
        with pytest.raises(UpgradeRefused, match=why):
            upgrades.extract(archive, tmp_path / "out", "fleetcmd-0.1.1")
    finally:
        archive.unlink()
    assert not (tmp_path / "evil").exists()


def test_not_a_tarball_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"MZ not a tarball at all")
    with pytest.raises(UpgradeRefused, match=r"not a tar\.gz"):
        upgrades.extract(junk, tmp_path / "out", "fleetcmd-0.1.1")


# -- the boot marker ------------------------------------------------------------------------------
def trial(tmp_path: Path, deadline: float = 60.0) -> Versions:
    v = Versions(StateDir(tmp_path).create())
    to = tmp_path / "versions" / NEW / "src"
    (to / "fleetcmd").mkdir(parents=True)
    (to / "fleetcmd" / "__init__.py").write_text(f'__version__ = "{NEW}"\n')
    v.begin(7, upgrades.Install(NEW, str(to)), deadline)
    return v


def test_a_trial_version_gets_one_boot_then_rolls_back(tmp_path: Path) -> None:
    v = trial(tmp_path)
    assert v.boot_target() == str(tmp_path / "versions" / NEW / "src")
    assert v.marker()["boots"] == 1  # type: ignore[index]
    # started again while still on trial: the first boot did not come up
    assert v.boot_target() is None  # the base install (no current.json yet)
    doc = v.marker()
    assert doc is not None and doc["state"] == upgrades.ROLLED_BACK
    assert "started again before checking in" in doc["reason"]


def test_a_committed_version_is_booted_from_then_on(tmp_path: Path) -> None:
    v = trial(tmp_path)
    v.boot_target()
    assert v.commit() is not None
    assert v.roll_back("late watchdog") is None  # commit wins; nothing moves out of committed
    assert v.boot_target() == str(tmp_path / "versions" / NEW / "src")
    assert v.current() == upgrades.Install(NEW, str(tmp_path / "versions" / NEW / "src"))


def test_a_trial_past_its_deadline_is_not_booted(tmp_path: Path) -> None:
    v = trial(tmp_path, deadline=-1)
    assert v.boot_target() is None
    assert v.marker()["state"] == upgrades.ROLLED_BACK  # type: ignore[index]


# -- real agent processes -------------------------------------------------------------------------
class Upgradable:
    """A `fleetcmd agent` against the fake Comms API, trusting the test feed key."""

    def __init__(self, fake: FakeComms, tmp: Path, pub: Path, deadline: float = 30) -> None:
        self.fake, self.state = fake, tmp / "agent"
        self.role = Role(
            "agent-up",
            [
                "agent",
                "--server",
                fake.url,
                "--enrollment-key",
                KEY,
                "--name",
                "up-1",
                "--state-dir",
                str(self.state),
                "--trust-key",
                str(pub),
                "--upgrade-deadline",
                str(deadline),
                "--heartbeat-after",
                "0",
            ],
            tmp,
        )

    def start(self) -> Upgradable:
        self.role.start()
        wait_until(
            lambda: self.fake.agents and "GET /agents/init" in self.fake.calls,
            30,
            what="agent enrolled",
        )
        self.id = next(iter(self.fake.agents))
        return self

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "fleetcmd.cli", "agent-status", "--state-dir", str(self.state)],
            capture_output=True,
            text=True,
            check=True,
        )
        return dict(json.loads(out.stdout))

    def result(self, cid: int, timeout: float = 60) -> dict[str, Any]:
        wait_until(
            lambda: str(cid) in self.fake.results,
            timeout,
            interval=0.2,
            what=f"result of command {cid}",
        )
        return self.fake.results[str(cid)]

    def stop(self) -> None:
        pid = StateDir(self.state).running_pid()
        self.role.stop()
        if pid is not None and pid != self.role.pid:  # a version the watchdog started
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: StateDir(self.state).running_pid() is None, 15, what="agent stopped")
        print(self.role.log()[-6000:])


@pytest.fixture
def agent(fake: FakeComms, tmp_path: Path, keys: Any) -> Iterator[Upgradable]:
    a = Upgradable(fake, tmp_path, keys[1])
    try:
        yield a
    finally:
        a.stop()


def offer(fake: FakeComms, key: Path, version: str, data: bytes) -> None:
    sha, sig = sign_package(key, "fleetcmd", version, data)
    fake.packages[f"fleetcmd-{version}"] = (
        data,
        {"X-Package-Sha256": sha, "X-Package-Signature": sig},
    )


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(kv.decode().split("=", 1) for kv in raw if b"=" in kv)


@pytest.mark.req("C3")
def test_upgrade_restarts_into_the_new_version(
    agent: Upgradable, keys: Any, packages: dict[str, bytes]
) -> None:
    agent.start()
    before = agent.status()
    assert before["version"] == OLD
    offer(agent.fake, keys[0], NEW, packages["good"])
    agent.fake.queue(
        agent.id, agent.fake.command(10, "upgrade", {"version": NEW, "package": "fleetcmd"}, 120)
    )
    r = agent.result(10)
    assert r["status"] == "success", r
    assert r["data"] == {"version": NEW, "previous": OLD}
    # its phases were reported while it ran (issue 17.3): the handler's with its heartbeats,
    # `restart` by the old version before the switch, `watch` by the new one on trial
    phases = [b["message"] for b in agent.fake.beats if b["id"] == 10 and "message" in b]
    assert phases[-2:] == ["restart", "watch"], phases
    assert set(phases) <= {"download", "verify", "install", "restart", "watch"}, phases
    percents = [b["percent"] for b in agent.fake.beats if b["id"] == 10 and "percent" in b]
    assert percents == sorted(percents) and percents[-1] == 90, percents
    st = agent.status()
    assert st["version"] == NEW
    assert st["upgrade"]["last"]["state"] == "committed"
    assert st["upgrade"]["current"]["version"] == NEW
    # the process runs the new version's code: the interpreter was re-executed (same pid, so a
    # service manager keeps tracking it) with the new version's folder first on its path
    pid = st["pid"]
    assert pid == before["pid"] == agent.role.pid
    assert environ(pid)["PYTHONPATH"].split(os.pathsep)[0] == str(
        agent.state.resolve() / "versions" / NEW / "src"
    )
    # and it keeps working
    agent.fake.queue(agent.id, agent.fake.command(11, "rename", {"name": "up-2"}))
    assert agent.result(11)["status"] == "success"
    # a restart (service manager, reboot) boots the new version again
    agent.role.stop()
    agent.role.start()
    wait_until(lambda: agent.status()["pid"], 20, what="agent restarted")
    assert agent.status()["version"] == NEW


@pytest.mark.req("C3")
def test_a_tampered_package_is_refused_by_the_running_agent(
    agent: Upgradable, keys: Any, packages: dict[str, bytes]
) -> None:
    agent.start()
    pid = agent.status()["pid"]
    data = packages["good"]
    sha, sig = sign_package(keys[0], "fleetcmd", NEW, data)
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0xFF
    agent.fake.packages[f"fleetcmd-{NEW}"] = (
        bytes(tampered),
        {"X-Package-Sha256": sha, "X-Package-Signature": sig},
    )
    agent.fake.queue(agent.id, agent.fake.command(20, "upgrade", {"version": NEW}, 120))
    r = agent.result(20)
    assert r["status"] == "failure" and "upgrade refused, nothing changed" in r["message"]
    st = agent.status()
    assert st["version"] == OLD and st["pid"] == pid and st["upgrade"]["last"] is None
    assert nothing_switched(StateDir(agent.state))


@pytest.mark.req("C3")
def test_a_version_that_dies_at_start_is_rolled_back(
    agent: Upgradable, keys: Any, packages: dict[str, bytes]
) -> None:
    agent.start()
    old_pid = agent.status()["pid"]
    offer(agent.fake, keys[0], "0.1.2", packages["crash"])
    agent.fake.queue(agent.id, agent.fake.command(30, "upgrade", {"version": "0.1.2"}, 120))
    r = agent.result(30)
    assert r["status"] == "failure", r
    assert "upgrade to 0.1.2 rolled back to " + OLD in r["message"]
    assert "exited before checking in" in r["message"]
    assert r["data"] == {"version": OLD, "attempted": "0.1.2", "rolled_back": True}
    st = agent.status()
    assert st["version"] == OLD and st["upgrade"]["last"]["state"] == "rolled-back"
    assert st["upgrade"]["current"] is None  # still the base install
    assert st["pid"] != old_pid  # the watchdog started the previous version in its place
    assert agent.role.proc is not None and agent.role.proc.poll() not in (None, 0)
    assert (agent.state / "versions" / "0.1.2").is_dir()  # kept for a post-mortem
    agent.fake.queue(agent.id, agent.fake.command(31, "rename", {"name": "still-here"}))
    assert agent.result(31)["status"] == "success"


@pytest.mark.req("C3")
def test_a_version_that_never_checks_in_is_rolled_back_at_the_deadline(
    fake: FakeComms, tmp_path: Path, keys: Any, packages: dict[str, bytes]
) -> None:
    agent = Upgradable(fake, tmp_path, keys[1], deadline=6).start()
    try:
        offer(fake, keys[0], "0.1.3", packages["hang"])
        started = time.monotonic()
        fake.queue(agent.id, fake.command(40, "upgrade", {"version": "0.1.3"}, 120))
        r = agent.result(40, timeout=60)
        assert r["status"] == "failure" and "did not check in within 6s" in r["message"], r
        assert time.monotonic() - started >= 6
        assert agent.status()["version"] == OLD
    finally:
        agent.stop()


def test_an_upgrade_reports_download_verify_install_in_order(
    ctx: Context, keys: Any, packages: dict[str, bytes]
) -> None:
    key, pub, _ = keys
    ctx.comms = served(key, packages["good"])
    phases: list[tuple[float, str]] = []
    got = prepare(
        ctx.state_dir,
        ctx.comms,
        7,
        Upgrade(version=NEW, package="fleetcmd"),
        [str(pub)],
        30,
        lambda p, m: phases.append((p, m)),
    )
    assert not isinstance(got, dict)
    assert phases == [PHASES["download"], PHASES["verify"], PHASES["install"]]
    # a refused package stops at the phase that refused it
    phases.clear()
    ctx.comms = served(key, packages["good"], **{"X-Package-Sha256": "0" * 64})
    with pytest.raises(UpgradeRefused):
        prepare(
            ctx.state_dir,
            ctx.comms,
            8,
            Upgrade(version=NEW, package="fleetcmd"),
            [str(pub)],
            30,
            lambda p, m: phases.append((p, m)),
        )
    assert [m for _, m in phases] == ["download", "verify"]
