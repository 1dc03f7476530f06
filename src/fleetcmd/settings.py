"""Where each role keeps its data and credentials, and how URLs and tokens are found."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def data_dir(path: str | os.PathLike[str] | None) -> Path:
    d = Path(path or os.environ.get("FLEETCMD_DATA_DIR", "./data")).resolve()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def default_store_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'fleetcmd.db'}"


def secret_file(path: Path, nbytes: int = 32) -> str:
    """Read a secret from `path`, creating it (0600) on first use."""
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def read_secret(path: Path) -> str:
    """A secret from a file named on the command line (`--token-file`, `--enrollment-key-file`):
    the way to hand a process a secret that `ps` and /proc/PID/environ do not show."""
    value = path.read_text().strip()
    if not value:
        raise ValueError(f"{path} is empty")
    return value


def write_secret(path: Path, value: str) -> Path:
    """(Re)write a secret to a 0600 file, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.replace(tmp, path)
    return path


def node_token(directory: Path, explicit: str | None = None, file: Path | None = None) -> str:
    """The credential nodes use to call the indexer: flag or FLEETCMD_TOKEN, a file named
    with `--token-file`, or the 0600 file DATA_DIR/node.token (made on first use)."""
    if explicit and file is not None:
        raise ValueError("give --token (or FLEETCMD_TOKEN) or --token-file, not both")
    if file is not None:
        return read_secret(file)
    return explicit or os.environ.get("FLEETCMD_TOKEN") or secret_file(directory / "node.token")
