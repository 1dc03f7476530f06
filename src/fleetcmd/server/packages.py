"""Agent packages: the server's package store (row 4); agents download through
`comms/packages.py` (row 3).

`fetch-package` (and a download of a package this node has not fetched yet) reads the
package record `agent-packages/<name>-<version>` from the indexer, streams the bytes of
`/blobs/<sha256>` to `DATA_DIR/packages/`, and keeps them only if their SHA-256 and size are
the record's. Downloads carry the SHA-256 and the CTI signature in headers, so the agent
verifies both before installing anything; this node re-checks a file's digest before serving
it the first time, so a file damaged on disk is fetched again rather than served."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.concurrency import run_in_threadpool

from fleetcmd.errors import FleetError, NotFound
from fleetcmd.server.indexer_client import IndexerClient, IndexerError, IndexerUnavailable

log = logging.getLogger("fleetcmd.server.packages")


PACKAGE_INDEX = "agent-packages"
# `<name>-<version>` optionally followed by the file extension the feed used. No `/`, no `..`:
# the name only ever selects a record, never a path.
REQUEST_RE = re.compile(
    r"^(?P<id>[A-Za-z0-9][A-Za-z0-9_.+~-]{0,190}?)"
    r"(?P<ext>\.tar\.gz|\.tgz|\.whl|\.deb)?$"
)
CHUNK = 1024 * 1024


class BadPackageName(FleetError):
    http_status = 400
    code = "bad_package_name"


class PackageNotFound(NotFound):
    code = "package_not_found"


class PackageUnverified(FleetError):
    """The bytes the indexer gave do not match the package record: nothing is kept."""

    http_status = 502
    code = "package_unverified"


@dataclass(frozen=True)
class PackageMeta:
    name: str
    version: str
    sha256: str
    size: int
    signature: str

    @property
    def id(self) -> str:
        return f"{self.name}-{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "signature": self.signature,
        }

    @classmethod
    def from_record(cls, doc: Any, what: str) -> PackageMeta:
        try:
            meta = cls(
                str(doc["name"]),
                str(doc["version"]),
                str(doc["sha256"]).lower(),
                int(doc["size"]),
                str(doc.get("signature") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PackageUnverified(f"package record {what} is incomplete ({exc})") from None
        if not re.fullmatch(r"[0-9a-f]{64}", meta.sha256) or meta.size < 0:
            raise PackageUnverified(f"package record {what} has a bad sha256 or size")
        return meta


def package_id(requested: str) -> str:
    """The record id (`<name>-<version>`) a download asks for; refuses anything else."""
    m = REQUEST_RE.fullmatch(requested)
    if m is None or ".." in requested:
        raise BadPackageName(
            f"bad package name {requested[:200]!r}: expected NAME-VERSION or NAME-VERSION.tar.gz"
        )
    return m["id"]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class PackageStore:
    """Verified package files in `DATA_DIR/packages/` (`<id>.pkg` + `<id>.json`)."""

    def __init__(
        self,
        indexer: IndexerClient,
        indexer_url: str,
        token: str,
        data_dir: Path,
        ca: str | None = None,
    ) -> None:
        self.indexer = indexer
        self.folder = data_dir / "packages"
        self._blobs = httpx.AsyncClient(
            base_url=indexer_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(300.0, connect=5.0),
            verify=ssl.create_default_context(cafile=ca) if ca else True,
        )
        self._locks: dict[str, asyncio.Lock] = {}
        # Files whose digest was checked by this process: (size, mtime_ns) at that time.
        self._verified: dict[str, tuple[int, int]] = {}

    async def close(self) -> None:
        await self._blobs.aclose()

    def _paths(self, ident: str) -> tuple[Path, Path]:
        return self.folder / f"{ident}.pkg", self.folder / f"{ident}.json"

    def local(self, ident: str) -> PackageMeta | None:
        _, meta_path = self._paths(ident)
        try:
            return PackageMeta.from_record(json.loads(meta_path.read_text()), ident)
        except (OSError, ValueError, PackageUnverified):
            return None

    async def fetch(self, ident: str, expected_sha256: str | None = None) -> PackageMeta:
        """Row 4: the package record and its verified bytes, stored here. A package already
        stored with the same digest is not downloaded again."""
        lock = self._locks.setdefault(ident, asyncio.Lock())
        async with lock:
            try:
                record = await self.indexer.get(f"/indexes/{PACKAGE_INDEX}/{ident}")
            except IndexerError as exc:
                if exc.status == 404:
                    raise PackageNotFound(
                        f"package {ident} is not in the indexer's {PACKAGE_INDEX} index"
                    ) from None
                raise
            meta = PackageMeta.from_record(record, ident)
            if meta.id != ident:
                raise PackageUnverified(f"package record {ident} names {meta.id}")
            if expected_sha256 is not None and meta.sha256 != expected_sha256.lower():
                raise PackageUnverified(
                    f"package record {ident} has sha256 {meta.sha256}, "
                    f"the command says {expected_sha256}"
                )
            have = self.local(ident)
            if have == meta and await self._intact(ident, meta):
                return meta
            await self._download(meta)
            return meta

    async def _download(self, meta: PackageMeta) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        pkg_path, meta_path = self._paths(meta.id)
        fd, tmp_name = tempfile.mkstemp(dir=self.folder, prefix=f".{meta.id}.")
        tmp = Path(tmp_name)
        try:
            h, size = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out:
                try:
                    async with self._blobs.stream("GET", f"/blobs/{meta.sha256}") as resp:
                        if resp.status_code == 404:
                            raise PackageNotFound(
                                f"package {meta.id}: blob {meta.sha256} is not in the indexer"
                            )
                        if resp.status_code >= 400:
                            raise IndexerUnavailable(
                                resp.status_code,
                                {
                                    "error": "indexer_unavailable",
                                    "message": f"blob download answered {resp.status_code}",
                                },
                            )
                        async for chunk in resp.aiter_bytes(CHUNK):
                            size += len(chunk)
                            if size > meta.size:
                                raise PackageUnverified(
                                    f"package {meta.id}: more than the "
                                    f"{meta.size} bytes of its record"
                                )
                            h.update(chunk)
                            out.write(chunk)
                except httpx.TransportError as exc:
                    raise IndexerUnavailable(
                        503,
                        {
                            "error": "indexer_unavailable",
                            "message": f"blob download failed: {exc!r}",
                        },
                    ) from None
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            if size != meta.size or digest != meta.sha256:
                raise PackageUnverified(
                    f"package {meta.id}: got {size} bytes with sha256 "
                    f"{digest}, the record says {meta.size} bytes, "
                    f"{meta.sha256}"
                )
            os.replace(tmp, pkg_path)
            meta_tmp = meta_path.with_suffix(".json.tmp")
            meta_tmp.write_text(json.dumps(meta.to_json(), sort_keys=True))
            os.replace(meta_tmp, meta_path)
            st = pkg_path.stat()
            self._verified[meta.id] = (st.st_size, st.st_mtime_ns)
            log.info("package %s stored (%d bytes, sha256 %s)", meta.id, size, digest)
        finally:
            tmp.unlink(missing_ok=True)

    async def _intact(self, ident: str, meta: PackageMeta) -> bool:
        """Whether the stored file is still the one verified (digest re-checked once per
        process, and again whenever its size or modification time changes)."""
        pkg_path, _ = self._paths(ident)
        try:
            st = pkg_path.stat()
        except OSError:
            return False
        mark = (st.st_size, st.st_mtime_ns)
        if self._verified.get(ident) == mark:
            return True
        if st.st_size != meta.size or await run_in_threadpool(file_sha256, pkg_path) != meta.sha256:
            log.error("stored package %s does not match its sha256; fetching it again", ident)
            return False
        self._verified[ident] = mark
        return True

    async def open(self, requested: str) -> tuple[Path, PackageMeta]:
        """The file and record to serve for a download; fetched on demand if not here yet."""
        ident = package_id(requested)
        meta = self.local(ident)
        if meta is None or not await self._intact(ident, meta):
            meta = await self.fetch(ident)
        return self._paths(ident)[0], meta
