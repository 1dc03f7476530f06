"""The sample CTI feed that `fleetcmd up` serves by default, signed with a development key.

The source files ship inside the package (`content/sample_feed/`), so that an installed wheel
serves the same feed as a checkout. The agent package is made from this very project,
reproducibly (same tree, same bytes, same SHA-256), so rebuilding the sample feed on every start
changes nothing that the content manager would act on: from a checkout, `pyproject.toml` and
`src/fleetcmd`; installed from a wheel, the installed `fleetcmd` package laid out the same way
(`src/fleetcmd/…`, which is what an agent's upgrade installs).

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

import fleetcmd
from fleetcmd.content.feed import Manifest, SourceFile, build
from fleetcmd.model import content_signing as signing

PACKAGE_DIR = Path(fleetcmd.__file__).resolve().parent
REPO = PACKAGE_DIR.parents[1]  # the checkout's root, when running from one (is_checkout)
SAMPLE_SOURCE = Path(__file__).resolve().parent / "sample_feed"
PACKAGE_NAME = "fleetcmd"
DEV_KEY = "cti-dev.key"


def is_checkout(root: Path = REPO) -> bool:
    """Whether `root` is a source tree: `pyproject.toml` beside `src/fleetcmd`."""
    return (root / "pyproject.toml").is_file() and (root / "src" / "fleetcmd").is_dir()


def project_version(root: Path | None = None) -> str:
    """The version of a source tree (its pyproject.toml); by default of this checkout, or of
    the installed package when there is none."""
    if root is None:
        if not is_checkout():
            return fleetcmd.__version__
        root = REPO
    text = (root / "pyproject.toml").read_text()
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if m is None:
        raise ValueError(f"{root / 'pyproject.toml'}: no version")
    return m.group(1)


def _sources(package: Path) -> list[Path]:
    return sorted(
        p
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )


def agent_package(out_dir: Path, root: Path | None = None) -> Path:
    """`fleetcmd-<version>.tar.gz` of `src/fleetcmd` + `pyproject.toml` of the source tree
    `root` (default: this checkout, or the installed package, without pyproject.toml, when
    there is no checkout), byte-for-byte reproducible: sorted entries, zeroed times and
    owners, normalised modes, gzip without a timestamp."""
    if root is None and is_checkout():
        root = REPO
    if root is not None:
        tree = [root / "pyproject.toml", *_sources(root / "src" / "fleetcmd")]
        files = [(p, p.relative_to(root).as_posix()) for p in tree]
    else:
        files = [
            (p, f"src/fleetcmd/{p.relative_to(PACKAGE_DIR).as_posix()}")
            for p in _sources(PACKAGE_DIR)
        ]
    version = project_version(root)
    prefix = f"{PACKAGE_NAME}-{version}"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, name in files:
            info = tarfile.TarInfo(f"{prefix}/{name}")
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
