"""The sample CTI feed that `fleetcmd up` serves by default, signed with a development key.

The source files live in `feeds/sample/` of the repository; the agent package is made from this
very project, reproducibly (same tree, same bytes, same SHA-256), so rebuilding the sample feed
on every start changes nothing that the content manager would act on.

The development key is created on first use in the data folder. It is for trying fleetcmd on one
machine only: a production feed is signed with a key kept offline (`fleetcmd cti keygen`).
"""

from __future__ import annotations

import gzip
import io
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

from fleetcmd.content.feed import Manifest, SourceFile, build
from fleetcmd.model import content_signing as signing

REPO = Path(__file__).resolve().parents[3]
SAMPLE_SOURCE = REPO / "feeds" / "sample"
PACKAGE_NAME = "fleetcmd"
DEV_KEY = "cti-dev.key"


def project_version(root: Path = REPO) -> str:
    text = (root / "pyproject.toml").read_text()
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if m is None:
        raise ValueError(f"{root / 'pyproject.toml'}: no version")
    return m.group(1)


def agent_package(out_dir: Path, root: Path = REPO) -> Path:
    """`fleetcmd-<version>.tar.gz` of `src/fleetcmd` + `pyproject.toml`, byte-for-byte
    reproducible: sorted entries, zeroed times and owners, normalised modes, gzip without a
    timestamp."""
    version = project_version(root)
    prefix = f"{PACKAGE_NAME}-{version}"
    sources = sorted(
        p
        for p in (root / "src" / "fleetcmd").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )
    files = [root / "pyproject.toml", *sources]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            info = tarfile.TarInfo(f"{prefix}/{path.relative_to(root).as_posix()}")
            data = path.read_bytes()
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{prefix}.tar.gz"
    with (
        open(target, "wb") as f,
        gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=9) as gz,
    ):
        gz.write(raw.getvalue())
    return target


def dev_key(data_dir: Path) -> Path:
    """The development signing key of this data folder (created 0600 on first use)."""
    path = data_dir / DEV_KEY
    if not path.exists():
        signing.generate_key(path)
    return path


def build_sample_feed(
    out_dir: Path, key_path: Path, serial: int | None = None, source: Path = SAMPLE_SOURCE
) -> Manifest:
    """Build and sign the sample feed (with this project as its agent package) into
    `out_dir`; the key is created when `key_path` does not exist yet."""
    if not source.is_dir():
        raise FileNotFoundError(f"sample feed sources not found at {source}")
    if not key_path.exists():
        signing.generate_key(key_path)
    private = signing.load_private(key_path)
    with tempfile.TemporaryDirectory(prefix="fleetcmd-sample-") as tmp:
        package = agent_package(Path(tmp))
        extra = [SourceFile("agent-package", package, f"agent-packages/{package.name}")]
        return build(source, out_dir, private, serial=serial, extra=extra)


def sample_setup(data_dir: Path) -> tuple[Path, Path]:
    """For `fleetcmd up`: build the sample feed into DATA_DIR/cti-feed with the development
    key; returns the feed folder and the public key file to trust."""
    key = dev_key(data_dir)
    feed = data_dir / "cti-feed"
    build_sample_feed(feed, key)
    return feed, signing.pub_path(key)


def copy_source(dest: Path, source: Path = SAMPLE_SOURCE) -> Path:
    """A writable copy of the sample sources (tests edit it to publish new versions)."""
    shutil.copytree(source, dest)
    return dest
