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


def node_token(directory: Path, explicit: str | None = None) -> str:
    """The credential nodes use to call the indexer: flag, FLEETCMD_TOKEN, or a 0600 file."""
    return explicit or os.environ.get("FLEETCMD_TOKEN") or secret_file(directory / "node.token")
