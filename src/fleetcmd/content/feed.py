"""A CTI feed: a signed `manifest.json` and the content files it lists, in a folder or under an
HTTP(S) base URL; and `build`, which makes one from a source folder (`fleetcmd cti build`).

The manifest names every file by SHA-256 and carries a signature per item and one over the
whole manifest, so a mirror, a proxy or a disk can change nothing without being noticed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleetcmd.model import content_signing as signing
from fleetcmd.model.content import ID_RE, ITEM_TYPES, VERSION_RE, ContentError, parse_item

MANIFEST = "manifest.json"
MAX_MANIFEST = 8 * 1024 * 1024
MAX_ITEM = 256 * 1024 * 1024
# Where `cti build` looks for each type's files in a source folder.
SOURCE_DIRS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sca": ("sca", (".yaml", ".yml")),
    "cve": ("cve", (".json",)),
    "ruleset": ("ruleset", (".yaml", ".yml", ".json")),
    "active-response": ("active-response", (".json",)),
    "agent-package": ("agent-packages", (".tar.gz", ".tgz", ".whl", ".deb")),
}


class FeedError(Exception):
    """The feed cannot be read or its manifest cannot be trusted: nothing of it applies."""


class ManifestItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["sca", "cve", "ruleset", "active-response", "agent-package"]
    id: str = Field(pattern=ID_RE)
    version: str = Field(pattern=VERSION_RE)
    path: str = Field(min_length=1, max_length=512)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, le=MAX_ITEM)
    signature: str = Field(min_length=1, max_length=200)

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        parts = v.split("/")
        if v.startswith("/") or "\\" in v or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"path {v!r} must be relative, '/'-separated, without '.' or '..'")
        return v

    @property
    def key(self) -> str:
        """The item's identity across serials: `type:id`."""
        return f"{self.type}:{self.id}"

    def statement(self) -> bytes:
        return signing.item_statement(self.type, self.id, self.version, self.sha256)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    feed: str = Field(pattern=ID_RE)
    serial: int = Field(ge=0)
    created_at: str
    key_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")
    items: list[ManifestItem] = Field(max_length=100_000)
    signature: str = Field(min_length=1, max_length=200)


def parse_manifest(data: bytes, trusted: signing.TrustedKeys) -> Manifest:
    """Parse and verify a manifest; any doubt refuses all of it (FeedError)."""
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FeedError(f"manifest is not JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("signature"), str):
        raise FeedError("manifest is not a signed JSON object")
    wanted = raw.get("key_id") if isinstance(raw.get("key_id"), str) else None
    if not trusted.candidates(wanted):
        raise FeedError(
            f"manifest is signed by key {wanted}, which is not trusted "
            f"(trusted: {', '.join(trusted.ids())})"
        )
    if not trusted.verify_any(signing.manifest_statement(raw), raw["signature"], wanted):
        raise FeedError("manifest signature does not verify against the trusted key(s)")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise FeedError(f"manifest does not follow the feed format: {exc.errors()[:5]}") from None
    keys = [i.key for i in manifest.items]
    if len(set(keys)) != len(keys):
        raise FeedError("manifest lists an item (type:id) twice")
    return manifest


# -- where a feed lives ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Fetched:
    """A manifest body with the validators to send next time (ETag, Last-Modified, mtime)."""

    body: bytes
    marker: dict[str, str]


class FeedSource(Protocol):
    location: str

    def manifest(self, marker: dict[str, str]) -> Fetched | None:
        """The manifest, or None when it has not changed since `marker`."""
        ...

    def fetch(self, path: str, size: int) -> bytes:
        """The bytes of an item (at most `size` + 1 bytes are read, to detect growth)."""
        ...

    def close(self) -> None: ...


class FolderFeed:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.location = str(self.root)

    def manifest(self, marker: dict[str, str]) -> Fetched | None:
        path = self.root / MANIFEST
        try:
            st = path.stat()
        except FileNotFoundError:
            raise FeedError(f"{path} does not exist") from None
        stamp = {"mtime_ns": str(st.st_mtime_ns), "size": str(st.st_size)}
        if marker == stamp:
            return None
        if st.st_size > MAX_MANIFEST:
            raise FeedError(f"manifest is larger than {MAX_MANIFEST} bytes")
        return Fetched(path.read_bytes(), stamp)

    def fetch(self, path: str, size: int) -> bytes:
        target = (self.root / path).resolve()
        if not target.is_relative_to(self.root):
            raise ContentError(f"{path}: resolves outside the feed folder")
        try:
            with open(target, "rb") as f:
                return f.read(size + 1)
        except OSError as exc:
            raise ContentError(f"{path}: cannot be read ({exc.strerror})") from None

    def close(self) -> None:
        pass


class HttpFeed:
    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base = base_url if base_url.endswith("/") else base_url + "/"
        self.location = self.base
        self.http = httpx.Client(timeout=timeout, follow_redirects=True)

    def manifest(self, marker: dict[str, str]) -> Fetched | None:
        headers = {}
        # An ETag is exact; Last-Modified (one-second resolution) only when there is none.
        if "etag" in marker:
            headers["If-None-Match"] = marker["etag"]
        elif "last_modified" in marker:
            headers["If-Modified-Since"] = marker["last_modified"]
        try:
            resp = self.http.get(urllib.parse.urljoin(self.base, MANIFEST), headers=headers)
        except httpx.HTTPError as exc:
            raise FeedError(f"{self.base}{MANIFEST}: {exc}") from None
        if resp.status_code == 304:
            return None
        if resp.status_code != 200:
            raise FeedError(f"{self.base}{MANIFEST}: HTTP {resp.status_code}")
        if len(resp.content) > MAX_MANIFEST:
            raise FeedError(f"manifest is larger than {MAX_MANIFEST} bytes")
        stamp = {}
        if "etag" in resp.headers:
            stamp["etag"] = resp.headers["etag"]
        if "last-modified" in resp.headers:
            stamp["last_modified"] = resp.headers["last-modified"]
        return Fetched(resp.content, stamp)

    def fetch(self, path: str, size: int) -> bytes:
        url = urllib.parse.urljoin(self.base, urllib.parse.quote(path))
        chunks: list[bytes] = []
        got = 0
        try:
            with self.http.stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise ContentError(f"{path}: HTTP {resp.status_code}")
                for chunk in resp.iter_bytes():
                    chunks.append(chunk)
                    got += len(chunk)
                    if got > size:
                        break
        except httpx.HTTPError as exc:
            raise ContentError(f"{path}: {exc}") from None
        return b"".join(chunks)[: size + 1]

    def close(self) -> None:
        self.http.close()


def open_feed(location: str) -> FeedSource:
    if location.startswith(("http://", "https://")):
        return HttpFeed(location)
    return FolderFeed(Path(location))


# -- building a feed (the publisher's side) -------------------------------------------------------
@dataclass(frozen=True)
class SourceFile:
    type: str
    path: Path
    rel: str


def source_files(src: Path) -> list[SourceFile]:
    """Every content file of a source folder, by type, in a stable order."""
    found: list[SourceFile] = []
    for type_ in ITEM_TYPES:
        folder, suffixes = SOURCE_DIRS[type_]
        d = src / folder
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.is_file() and f.name.endswith(suffixes):
                found.append(SourceFile(type_, f, f"{folder}/{f.name}"))
    return found


def feed_name(src: Path) -> str:
    """`feed.yaml` may name the feed (`feed: NAME`); else the folder's name."""
    meta = src / "feed.yaml"
    if meta.is_file():
        data = yaml.safe_load(meta.read_text()) or {}
        if isinstance(data, dict) and isinstance(data.get("feed"), str):
            return data["feed"]
    return src.resolve().name


def build(
    src: Path,
    out: Path,
    private: Ed25519PrivateKey,
    serial: int | None = None,
    extra: list[SourceFile] | None = None,
) -> Manifest:
    """Validate every source file, copy it into `out` under its SHA-256, sign each item and
    the manifest. The manifest is written last (atomically), so a poller never sees a manifest
    whose files are not there yet."""
    files = source_files(src) + list(extra or [])
    if not files:
        raise ContentError(f"{src}: no content files (looked in {sorted(SOURCE_DIRS)})")
    out.mkdir(parents=True, exist_ok=True)
    items: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for sf in files:
        data = sf.path.read_bytes()
        id_, version, _ = parse_item(sf.type, data, sf.rel)
        key = f"{sf.type}:{id_}"
        if key in seen:
            raise ContentError(f"{sf.rel}: {key} is already defined by {seen[key]}")
        seen[key] = sf.rel
        digest = hashlib.sha256(data).hexdigest()
        rel = f"{SOURCE_DIRS[sf.type][0]}/{digest}/{sf.path.name}"
        target = out / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sf.path, target)
        statement = signing.item_statement(sf.type, id_, version, digest)
        items.append(
            {
                "type": sf.type,
                "id": id_,
                "version": version,
                "path": rel,
                "sha256": digest,
                "size": len(data),
                "signature": signing.sign(private, statement),
            }
        )
    if serial is None:
        serial = _next_serial(out)
    body: dict[str, Any] = {
        "feed": feed_name(src),
        "serial": serial,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "key_id": signing.key_id(private.public_key()),
        "items": items,
    }
    body["signature"] = signing.sign(private, signing.manifest_statement(body))
    manifest = Manifest.model_validate(body)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".manifest.")
    with os.fdopen(fd, "w") as f:
        json.dump(body, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, out / MANIFEST)
    return manifest


def _next_serial(out: Path) -> int:
    """One more than the serial already published in `out` (serials never go back)."""
    try:
        previous = int(json.loads((out / MANIFEST).read_bytes())["serial"])
    except (OSError, ValueError, KeyError, TypeError):
        previous = 0
    return previous + 1
