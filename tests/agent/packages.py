"""Agent packages for the upgrade tests: this project at another version, built with the
content manager's reproducible tarball builder and signed like a CTI feed item."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

from fleetcmd.content.sample import REPO, agent_package
from fleetcmd.model import content_signing as signing


def build_package(tmp: Path, version: str, breakage: str | None = None) -> Path:
    """`fleetcmd-<version>.tar.gz` of this tree with `__version__ = version`. `breakage`:
    "crash" (the agent dies at import), "hang" (it starts but never checks in)."""
    root = tmp / f"tree-{version}"
    shutil.copytree(
        REPO / "src" / "fleetcmd",
        root / "src" / "fleetcmd",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    pyproject = (REPO / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(
        re.sub(
            r'^version\s*=\s*"[^"]+"',
            f'version = "{version}"',
            pyproject,
            count=1,
            flags=re.MULTILINE,
        )
    )
    init = root / "src" / "fleetcmd" / "__init__.py"
    init.write_text(
        re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text())
    )
    agent = root / "src" / "fleetcmd" / "agent"
    if breakage == "crash":
        runner = agent / "runner.py"
        runner.write_text(runner.read_text() + '\nraise RuntimeError("this build is broken")\n')
    elif breakage == "hang":
        main = agent / "__main__.py"
        main.write_text(
            main.read_text().replace(
                "def main() -> int:\n",
                "def main() -> int:\n    import time\n\n    time.sleep(3600)\n",
                1,
            )
        )
    return agent_package(tmp / f"out-{version}", root)


def sign_package(key: Path, name: str, version: str, data: bytes) -> tuple[str, str]:
    """(sha256, signature) as the content manager's package record holds them."""
    sha = hashlib.sha256(data).hexdigest()
    private = signing.load_private(key)
    return sha, signing.sign(private, signing.item_statement("agent-package", name, version, sha))


def new_key(path: Path) -> Path:
    """A signing key; returns the public key file an agent is told to trust."""
    signing.generate_key(path)
    return signing.pub_path(path)
