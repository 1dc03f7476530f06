"""The agent's state folder: credentials, applied state, stored content, pid file.

Layout (see docs/agent.md)::

    STATE_DIR/credentials.json   {"id", "secret"}       0600, written once at enrollment
    STATE_DIR/enrollment.json    {"request_id", "secret"}  0600, until enrolled: every attempt
                                 names the same request, so a retry gets the first answer
    STATE_DIR/state.json         {"name", "groups", "config", "config_hash", "version", …}
    STATE_DIR/agent.db           journal of executed command ids + outbox of results (SQLite)
    STATE_DIR/agent.pid          pid of the running agent
    STATE_DIR/sca/<policy>.json  stored SCA policies
    STATE_DIR/sca-results/<policy>.json    last evaluation of each policy
    STATE_DIR/active-response/<name>.json  stored active-response definitions
    STATE_DIR/active-response/bin/         the only place responses are executed from
    STATE_DIR/active-response/lists/       what the bundled responses write (deny lists)
    STATE_DIR/versions/                    upgrades: installed versions and the boot marker

Every file is written atomically (tmp + fsync + rename + fsync of the folder) so that a kill at
any instant leaves either the old or the new content, never a torn file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fleetcmd
from fleetcmd.model.config import config_hash

# Content names become file names: refuse anything that could escape its folder.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class InvalidName(ValueError):
    """A policy or response name that cannot be used as a file name."""


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file, whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def process_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a dead child its parent has not reaped is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        return stat_line.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def write_json(path: Path, value: Any, mode: int = 0o600) -> None:
    atomic_write(path, json.dumps(value, sort_keys=True, indent=1).encode() + b"\n", mode)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise InvalidName(
            f"invalid name {name!r}: letters, digits and _ . : - only (at most 128 characters)"
        )
    return name


@dataclass(frozen=True)
class Credentials:
    id: str
    secret: str


@dataclass(frozen=True)
class EnrollmentRequest:
    """The agent's name for its enrollment and the secret proving it (server: comms/enroll)."""

    request_id: str
    secret: str


@dataclass
class AgentState:
    """What the agent has applied; mirrored to state.json after every change."""

    name: str
    groups: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    config_hash: str = field(default_factory=lambda: config_hash({}))
    version: str = fleetcmd.__version__
    removed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "groups": list(self.groups),
            "config": self.config,
            "config_hash": self.config_hash,
            "version": self.version,
            "removed": self.removed,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> AgentState:
        return cls(
            name=str(doc.get("name", "")),
            groups=list(doc.get("groups") or []),
            config=dict(doc.get("config") or {}),
            config_hash=str(doc.get("config_hash") or config_hash({})),
            version=str(doc.get("version") or fleetcmd.__version__),
            removed=bool(doc.get("removed", False)),
        )


class StateDir:
    """Paths and file operations of one agent's state folder."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.credentials_path = self.root / "credentials.json"
        self.enrollment_path = self.root / "enrollment.json"
        self.state_path = self.root / "state.json"
        self.db_path = self.root / "agent.db"
        self.pid_path = self.root / "agent.pid"
        self.sca_dir = self.root / "sca"
        self.sca_results_dir = self.root / "sca-results"
        self.ar_dir = self.root / "active-response"
        self.ar_bin_dir = self.ar_dir / "bin"
        self.ar_lists_dir = self.ar_dir / "lists"
        self.versions_dir = self.root / "versions"

    def create(self) -> StateDir:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in (self.sca_dir, self.sca_results_dir, self.ar_dir):
            d.mkdir(exist_ok=True, mode=0o700)
        return self

    # -- credentials ----------------------------------------------------------------------
    def credentials(self) -> Credentials | None:
        try:
            doc = json.loads(self.credentials_path.read_text())
        except FileNotFoundError:
            return None
        return Credentials(id=str(doc["id"]), secret=str(doc["secret"]))

    def save_credentials(self, creds: Credentials) -> None:
        write_json(self.credentials_path, {"id": creds.id, "secret": creds.secret}, 0o600)

    def forget_credentials(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.credentials_path.unlink()
        _fsync_dir(self.root)

    def enrollment_request(self) -> EnrollmentRequest:
        """The request every enrollment attempt of this folder names: made and kept (0600)
        before the first attempt, so that a retry after a lost answer is the same request."""
        try:
            doc = json.loads(self.enrollment_path.read_text())
            return EnrollmentRequest(str(doc["request_id"]), str(doc["secret"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            pass
        request = EnrollmentRequest(secrets.token_urlsafe(24), secrets.token_urlsafe(32))
        write_json(
            self.enrollment_path,
            {"request_id": request.request_id, "secret": request.secret},
            0o600,
        )
        return request

    def forget_enrollment_request(self) -> None:
        """Enrolled: the credentials replace the request."""
        with contextlib.suppress(FileNotFoundError):
            self.enrollment_path.unlink()

    # -- applied state ----------------------------------------------------------------------
    def load_state(self) -> AgentState | None:
        try:
            return AgentState.from_json(json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return None

    def save_state(self, state: AgentState) -> None:
        write_json(self.state_path, state.to_json(), 0o600)

    # -- stored content (SCA policies, active-response definitions) -----------------------
    def put_content(self, folder: Path, name: str, doc: Any) -> Path:
        path = folder / f"{check_name(name)}.json"
        write_json(path, doc, 0o600)
        return path

    def get_content(self, folder: Path, name: str) -> Any:
        """A stored item, or None when there is none."""
        try:
            return json.loads((folder / f"{check_name(name)}.json").read_text())
        except FileNotFoundError:
            return None

    def remove_content(self, folder: Path, name: str) -> bool:
        path = folder / f"{check_name(name)}.json"
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(folder)
        return True

    def clear_content(self, folder: Path) -> list[str]:
        """Delete every stored item of one kind (R5); returns the names removed."""
        removed = []
        for path in sorted(folder.glob("*.json")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path.stem)
        if removed:
            _fsync_dir(folder)
        return removed

    @staticmethod
    def list_content(folder: Path) -> list[str]:
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []

    # -- pid file ---------------------------------------------------------------------------
    def write_pid(self) -> None:
        atomic_write(self.pid_path, f"{os.getpid()}\n".encode(), 0o644)

    def remove_pid(self) -> None:
        try:
            if int(self.pid_path.read_text().strip()) == os.getpid():
                self.pid_path.unlink()
        except (FileNotFoundError, ValueError):
            pass

    def running_pid(self) -> int | None:
        """Pid of a live agent on this folder, or None (a stale pid file is ignored)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if process_alive(pid) else None
