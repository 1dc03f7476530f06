"""Agent upgrades (row 3): download, verify, install side by side, switch, restart, and roll
back when the new version does not check in.

Over 500 lines on purpose: this is code that replaces the running program, and every check on
that path (signature, hash, archive members, the boot marker and its rollback) is kept in one
module to be reviewed together.

Layout, all under `STATE_DIR/versions/`::

    <version>/src/fleetcmd/…   an installed version (extracted whole, then renamed into place)
    <version>/.installed.json  {name, version, sha256}: written inside before the rename
    current.json               {version, src}: what a (re)start runs; absent = the base install
    upgrade.json               the boot marker of the last upgrade (below)
    .lock                      serialises every read-modify-write of the two files above

The boot marker: `{"command_id", "from": {version, src}, "to": {version, src}, "deadline",
"state", "boots", "reason", "watchdog"}` (`watchdog`: its pid, for supervisors: see
agent/supervision.py) with `state` one of

- `trial`: `to` is installed and being tried; `current.json` still names `from`;
- `committed`: `to` checked in (authenticated and initialised with the server) before the
  deadline; `current.json` names `to`;
- `rolled-back`: `to` exited, or did not check in before the deadline, or was booted a second
  time while still on trial; `current.json` names `from`.

Three parties move the marker, each under `.lock`, each only out of `trial`:
1. the **new version** commits it after its first successful check-in;
2. the **watchdog**, a small process started from the *old* code just before the switch, rolls
   it back when the new version dies or the deadline passes, stops it, and execs the old
   version in its place;
3. the **launcher** (`fleetcmd agent`, the base install) picks what to boot: a second boot of a
   version still on trial (the first one crashed, the host rebooted, a service manager
   restarted it) rolls back instead.

The command's result is written by whichever version runs after the marker left `trial`: the
new one answers success with `{"version"}`, the old one answers failure with the reason.
A package that fails its checks (size, sha256, ed25519 signature by a trusted key, safe
archive, the version it claims) is refused before anything is switched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import fleetcmd
from fleetcmd.agent.state import StateDir, process_alive, write_json
from fleetcmd.model.actions import Upgrade

log = logging.getLogger("fleetcmd.agent.upgrade")

TRIAL, COMMITTED, ROLLED_BACK = "trial", "committed", "rolled-back"
DEFAULT_DEADLINE = 120.0
MAX_PACKAGE = 256 * 1024 * 1024
MAX_EXTRACTED = 512 * 1024 * 1024
MAX_MEMBERS = 20_000
PACKAGE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]{0,63}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_~-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
VERSION_IN_SOURCE = re.compile(r'^__version__\s*=\s*"([^"]+)"', re.MULTILINE)
OPTIONS_ENV = "FLEETCMD_AGENT_OPTIONS"
# How long the watchdog gives a version it stops to go before killing it.
STOP_GRACE = 10.0


class UpgradeRefused(Exception):
    """The upgrade cannot happen; nothing was switched."""


@dataclass(frozen=True)
class Install:
    version: str
    src: str

    def to_json(self) -> dict[str, str]:
        return {"version": self.version, "src": self.src}

    @classmethod
    def from_json(cls, doc: Any) -> Install:
        return cls(str(doc["version"]), str(doc["src"]))


def running() -> Install:
    """The version this process runs, and the folder `fleetcmd` was imported from."""
    return Install(fleetcmd.__version__, str(Path(fleetcmd.__file__).resolve().parent.parent))


def pythonpath(src: str, inherited: str | None = None) -> str:
    """`src` first, then whatever else the path held (never another fleetcmd's folder)."""
    own = {src, running().src}
    rest = [p for p in (inherited or "").split(os.pathsep) if p and p not in own]
    return os.pathsep.join([src, *rest])


class Versions:
    """The versions folder of one agent: installs, `current.json`, the boot marker."""

    def __init__(self, state: StateDir) -> None:
        self.state = state
        self.root = state.versions_dir
        self.marker_path = self.root / "upgrade.json"
        self.current_path = self.root / "current.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def marker(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.marker_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def current(self) -> Install | None:
        try:
            return Install.from_json(json.loads(self.current_path.read_text()))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def _write_marker(self, doc: dict[str, Any]) -> None:
        write_json(self.marker_path, doc)

    def _set_current(self, install: Install) -> None:
        write_json(self.current_path, install.to_json())

    # -- transitions (each only out of `trial`) --------------------------------------------------
    def begin(self, command_id: Any, to: Install, deadline_s: float) -> dict[str, Any]:
        doc = {
            "command_id": command_id,
            "from": running().to_json(),
            "to": to.to_json(),
            "deadline": time.time() + deadline_s,
            "deadline_s": deadline_s,
            "state": TRIAL,
            "boots": 0,
            "reason": "",
            "started_at": time.time(),
        }
        with self.locked():
            self._write_marker(doc)
        return doc

    def commit(self) -> dict[str, Any] | None:
        """The new version checked in: it becomes current. None if no longer on trial."""
        with self.locked():
            doc = self.marker()
            if doc is None or doc.get("state") != TRIAL:
                return None
            doc.update(state=COMMITTED, committed_at=time.time())
            self._set_current(Install.from_json(doc["to"]))
            self._write_marker(doc)
        self.prune({doc["to"]["version"], doc["from"]["version"]})
        return doc

    def roll_back(self, reason: str) -> dict[str, Any] | None:
        """The new version did not come up: the previous one stays current. None if the
        marker already left `trial` (committed meanwhile, or rolled back by someone else)."""
        with self.locked():
            doc = self.marker()
            if doc is None or doc.get("state") != TRIAL:
                return None
            return self._roll_back(doc, reason)

    def watched_by(self, pid: int) -> None:
        """Name the watchdog of the upgrade on trial: a supervisor stopping the agent stops it
        first, or it would start the previous version again (agent/supervision.py)."""
        with self.locked():
            doc = self.marker()
            if doc is not None and doc.get("state") == TRIAL:
                doc["watchdog"] = pid
                self._write_marker(doc)

    def _roll_back(self, doc: dict[str, Any], reason: str) -> dict[str, Any]:
        doc.update(state=ROLLED_BACK, reason=reason, rolled_back_at=time.time())
        self._write_marker(doc)
        log.error("upgrade to %s rolled back: %s", doc["to"]["version"], reason)
        return doc

    def boot_target(self) -> str | None:
        """The source folder a start should run (None: the base install). A version on trial
        gets one boot, before its deadline; booting it a second time means the first did not
        come up, so the upgrade is rolled back and the previous version booted."""
        if self.marker_path.exists():
            with self.locked():
                doc = self.marker()
                if doc is not None and doc.get("state") == TRIAL:
                    if doc.get("boots", 0) == 0 and time.time() < float(doc["deadline"]):
                        doc["boots"] = 1
                        self._write_marker(doc)
                        return str(doc["to"]["src"])
                    why = (
                        "it was started again before checking in"
                        if doc.get("boots")
                        else "its check-in deadline passed before it started"
                    )
                    self._roll_back(doc, f"version {doc['to']['version']} did not check in: {why}")
        current = self.current()
        if current is not None and Path(current.src, "fleetcmd", "__init__.py").is_file():
            return current.src
        return None

    # -- installing --------------------------------------------------------------------------------
    def installed(self, version: str, sha256: str) -> Install | None:
        base = self.root / version
        try:
            meta = json.loads((base / ".installed.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        if meta.get("sha256") != sha256 or not (base / "src" / "fleetcmd").is_dir():
            return None
        return Install(version, str(base / "src"))

    def install(self, archive: Path, name: str, version: str, sha256: str) -> Install:
        """Extract a verified package into `<version>/` (all of it, or nothing)."""
        have = self.installed(version, sha256)
        if have is not None:
            return have
        tmp = self.root / f".tmp-{version}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            extract(archive, tmp, f"{name}-{version}")
            claimed = _source_version(tmp / "src")
            if claimed != version:
                raise UpgradeRefused(f"package {name}-{version} contains fleetcmd {claimed}")
            write_json(
                tmp / ".installed.json", {"name": name, "version": version, "sha256": sha256}
            )
            target = self.root / version
            if target.exists():
                old = self.root / f".old-{version}-{os.getpid()}"
                os.rename(target, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, target)
            _fsync_dir(self.root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return Install(version, str(self.root / version / "src"))

    def prune(self, keep: set[str]) -> list[str]:
        """Keep the versions named (current and previous) and remove other installs and any
        leftovers of interrupted installs."""
        removed = []
        for p in self.root.iterdir():
            if not p.is_dir() or p.is_symlink():
                continue
            leftover = p.name.startswith(".")
            if leftover or (p.name not in keep and (p / ".installed.json").exists()):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _source_version(src: Path) -> str:
    init = src / "fleetcmd" / "__init__.py"
    if not (src / "fleetcmd" / "agent" / "__main__.py").is_file() or not init.is_file():
        raise UpgradeRefused("package does not contain an agent (src/fleetcmd/agent/__main__.py)")
    m = VERSION_IN_SOURCE.search(init.read_text(errors="replace"))
    if m is None:
        raise UpgradeRefused("package's fleetcmd/__init__.py declares no __version__")
    return m.group(1)


def extract(archive: Path, dest: Path, prefix: str) -> int:
    """Extract a tar.gz whose entries all live under `prefix/`, stripped. Only regular files
    and folders; no absolute paths, no `..`, no links, devices or fifos; bounded size."""
    dest.mkdir(parents=True, mode=0o700)
    total = count = 0
    try:
        tar = tarfile.open(archive, mode="r:gz")  # noqa: SIM115 - closed by the `with` below
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UpgradeRefused(f"package is not a tar.gz archive ({exc})") from None
    with tar:
        for member in _members(tar):
            count += 1
            if count > MAX_MEMBERS:
                raise UpgradeRefused(f"package has more than {MAX_MEMBERS} entries")
            rel = _safe_relative(member.name, prefix)
            if rel is None:
                continue  # the prefix folder itself
            target = dest.joinpath(*rel.parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True, mode=0o755)
                continue
            if not member.isreg():
                raise UpgradeRefused(
                    f"package entry {member.name!r} is not a regular file "
                    "(links and special files are refused)"
                )
            total += member.size
            if total > MAX_EXTRACTED:
                raise UpgradeRefused(f"package extracts to more than {MAX_EXTRACTED} bytes")
            source = tar.extractfile(member)
            if source is None:
                raise UpgradeRefused(f"package entry {member.name!r} cannot be read")
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(source, f, 1024 * 1024)
                f.flush()
                os.fsync(f.fileno())
    return count


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    try:
        yield from tar
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UpgradeRefused(f"package archive is damaged ({exc})") from None


def _safe_relative(name: str, prefix: str) -> PurePosixPath | None:
    path = PurePosixPath(name)
    if path.is_absolute() or "\\" in name or "\0" in name:
        raise UpgradeRefused(f"package entry {name!r} has an absolute or odd path")
    parts = [p for p in path.parts if p not in ("", ".")]
    if ".." in parts:
        raise UpgradeRefused(f"package entry {name!r} climbs out of its folder ('..')")
    if not parts or parts[0] != prefix:
        raise UpgradeRefused(f"package entry {name!r} is not under {prefix}/")
    if len(parts) == 1:
        return None
    return PurePosixPath(*parts[1:])


# -- verification ---------------------------------------------------------------------------------
def verify(name: str, version: str, sha256: str, signature: str, trust_keys: list[str]) -> str:
    """Check the ed25519 signature of `fleetcmd-cti-item:v1|agent-package|name|version|sha256`
    (the statement the CTI feed signs, `fleetcmd.model.content_signing`) against the trusted keys;
    returns the key id that verified it. `cryptography` is imported here only."""
    from fleetcmd.model import content_signing as signing

    if not signature:
        raise UpgradeRefused("the server sent no package signature (X-Package-Signature)")
    keys = []
    for spec in trust_keys:
        try:
            keys.append(signing.load_public(spec))
        except (signing.BadKey, OSError, ValueError) as exc:
            log.error("trusted key %s cannot be loaded: %s", spec[:80], exc)
    if not keys:
        raise UpgradeRefused("none of the agent's trusted keys can be loaded")
    statement = signing.item_statement("agent-package", name, version, sha256)
    for key in keys:
        if signing.verify(key, statement, signature):
            return signing.key_id(key)
    raise UpgradeRefused(
        f"signature of package {name}-{version} (sha256 {sha256}) does not "
        "verify with any trusted key"
    )


@dataclass(frozen=True)
class PendingUpgrade:
    """A verified, installed version the runner must now switch to."""

    command_id: Any
    target: Install
    deadline: float


# An upgrade's phases as its command reports them (percent when the phase starts, its name).
PHASES: dict[str, tuple[float, str]] = {
    "download": (10.0, "download"),
    "verify": (40.0, "verify"),
    "install": (60.0, "install"),
    "restart": (80.0, "restart"),
    "watch": (90.0, "watch"),
}


def prepare(
    state: StateDir,
    comms: Any,
    command_id: Any,
    args: Upgrade,
    trust_keys: list[str],
    deadline_s: float,
    report: Callable[[float, str], None] | None = None,
) -> PendingUpgrade | dict[str, Any]:
    """Download, verify and install; returns the switch to make, or the result data when
    there is nothing to do. Raises UpgradeRefused; on any refusal nothing is switched. Each
    phase is `report`ed (percent, phase) as it starts; `restart` and `watch` follow in the
    runner and in the version that runs next (PHASES)."""
    say = report or (lambda _percent, _phase: None)
    version = args.version
    name = args.package or "fleetcmd"
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise UpgradeRefused("'version' must be a version string")
    if not isinstance(name, str) or not PACKAGE_NAME_RE.fullmatch(name):
        raise UpgradeRefused("'package' must be a package name such as 'fleetcmd'")
    if not trust_keys:
        raise UpgradeRefused(
            "this agent trusts no package signing key, so it refuses upgrades "
            "(start it with --trust-key)"
        )
    if version == fleetcmd.__version__:
        return {"version": version, "unchanged": True}
    versions = Versions(state)
    versions.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    download = versions.root / f".download-{name}-{version}.{os.getpid()}"
    try:
        say(*PHASES["download"])
        with open(download, "wb") as f:
            headers = comms.download(
                f"/agents/packages/{name}-{version}", f, MAX_PACKAGE, timeout=120.0
            )
        say(*PHASES["verify"])
        sha256 = _sha256(download)
        claimed = headers.get("x-package-sha256", "").lower()
        if claimed and claimed != sha256:
            raise UpgradeRefused(
                f"package {name}-{version}: downloaded bytes have sha256 "
                f"{sha256}, the server says {claimed}"
            )
        if not SHA256_RE.fullmatch(sha256):
            raise UpgradeRefused("bad sha256")
        key = verify(name, version, sha256, headers.get("x-package-signature", ""), trust_keys)
        log.info("package %s-%s verified: sha256 %s, signed by key %s", name, version, sha256, key)
        say(*PHASES["install"])
        target = versions.install(download, name, version, sha256)
    finally:
        with contextlib.suppress(FileNotFoundError):
            download.unlink()
    return PendingUpgrade(command_id, target, deadline_s)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


# -- the switch and the watchdog ------------------------------------------------------------------
def spawn_watchdog(state: StateDir, pid: int, options_json: str) -> None:
    """Start the watchdog from the code running now (the known-good version), detached: it
    must outlive this image and not be left a zombie child of the next one."""
    env = {
        **os.environ,
        OPTIONS_ENV: options_json,
        "PYTHONPATH": pythonpath(running().src, os.environ.get("PYTHONPATH")),
    }
    launcher = subprocess.Popen(
        [sys.executable, "-m", "fleetcmd.agent.upgrade", "detach", str(state.root), str(pid)],
        env=env,
        stdin=subprocess.DEVNULL,
        close_fds=True,
        cwd="/",
    )
    if launcher.wait(30) != 0:
        raise UpgradeRefused("the upgrade watchdog could not be started")


def exec_agent(src: str, options_json: str) -> None:
    """Replace this process with the agent running from `src` (same pid)."""
    env = {
        **os.environ,
        OPTIONS_ENV: options_json,
        "PYTHONPATH": pythonpath(src, os.environ.get("PYTHONPATH")),
    }
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir("/")  # `-m` puts the working folder on the path: it must not shadow `src`
    os.execve(sys.executable, [sys.executable, "-m", "fleetcmd.agent"], env)


def watch(state_dir: str, pid: int, options_json: str, poll: float = 0.2) -> int:
    """The watchdog: wait for the marker to leave `trial`; roll back and exec the previous
    version if the new one dies or misses its deadline."""
    versions = Versions(StateDir(state_dir))
    while True:
        doc = versions.marker()
        if doc is None or doc.get("state") != TRIAL:
            return 0
        alive = process_alive(pid)
        if not alive:
            reason = f"version {doc['to']['version']} exited before checking in"
        elif time.time() > float(doc["deadline"]):
            reason = (
                f"version {doc['to']['version']} did not check in within "
                f"{float(doc.get('deadline_s', 0)):g}s"
            )
        else:
            time.sleep(poll)
            continue
        done = versions.roll_back(reason)
        if done is None:
            return 0  # it committed at the last moment
        if alive:
            _stop(pid)
        _wait_folder_free(versions.state)
        log.warning("starting the previous version %s again", done["from"]["version"])
        exec_agent(str(done["from"]["src"]), options_json)
        return 1  # not reached


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + STOP_GRACE
    while process_alive(pid) and time.monotonic() < end:
        time.sleep(0.1)
    if process_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _wait_folder_free(state: StateDir, timeout: float = STOP_GRACE) -> None:
    """Until no agent holds the folder's lock (the stopped version released it)."""
    end = time.monotonic() + timeout
    fd = os.open(state.root / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while time.monotonic() < end:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                time.sleep(0.1)
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    """`python -m fleetcmd.agent.upgrade detach|watch STATE_DIR PID` (started by the agent)."""
    from fleetcmd.logsetup import setup_logging

    setup_logging("info")
    if len(argv) != 3 or argv[0] not in ("detach", "watch"):
        sys.stderr.write("usage: python -m fleetcmd.agent.upgrade detach|watch STATE_DIR PID\n")
        return 2
    mode, state_dir, pid = argv[0], argv[1], int(argv[2])
    if mode == "detach":
        # The intermediate: start the watchdog in its own session and leave at once, so the
        # agent reaps this process and the watchdog is adopted by init. Its pid is in the
        # marker before the agent switches (the agent waits for this process).
        watchdog = subprocess.Popen(
            [sys.executable, "-m", "fleetcmd.agent.upgrade", "watch", state_dir, str(pid)],
            stdin=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
            cwd="/",
        )
        Versions(StateDir(state_dir)).watched_by(watchdog.pid)
        return 0
    options_json = os.environ.pop(OPTIONS_ENV, "")
    if not options_json:
        log.error("watchdog started without the agent's options; cannot restart it")
        return 2
    return watch(state_dir, pid, options_json)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
