"""The indexer's command-signing keys: every command leaving the stream for an agent is
signed here (`fleetcmd.model.command_signature` defines the bytes).

Keys live in the indexer's data folder (or where `--command-key` says):

    command-signing.key        current private key (PEM, 0600), made on first start
    command-signing.next.key   optional next key: published, endorsed by the current one
    command-keys.pub           public keys (current, next, retired), one base64 line each:
                               the file agents are given with `--command-key`
    command-signing.<id>.retired.key   keys retired by a promotion: still listed in
                               command-keys.pub (commands they signed may be in flight) until
                               the file is deleted
    command-signing.endorsement.json   after a promotion: the retired key's signature over
                               the current public key, so agents that missed the next key
                               still accept the new one

Rotation (docs/security.md): `fleetcmd command-key next`, restart the indexer (agents learn
the endorsed next key), then `fleetcmd command-key promote` and restart again."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetcmd.model import command_signature as cs

if TYPE_CHECKING:
    from fleetcmd.store.base import SqlStore

log = logging.getLogger("fleetcmd.indexer.signing")

KEY_FILE = "command-signing.key"
PUBLIC_FILE = "command-keys.pub"
ENDORSEMENT_FILE = "command-signing.endorsement.json"


def next_path(current: Path) -> Path:
    return current.with_name(current.name.removesuffix(".key") + ".next.key")


def write_private(path: Path, key: Ed25519PrivateKey) -> None:
    """Create `path` (0600) whole or not at all; FileExistsError if it exists (never
    overwritten: indexers sharing one key file may start together)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        tmp.unlink()


def load_private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an ed25519 private key")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s is readable by others (mode %o); it should be 0600", path, mode)
    return key


def load_or_create(path: Path) -> Ed25519PrivateKey:
    if path.exists():
        return load_private(path)
    key = Ed25519PrivateKey.generate()
    try:
        write_private(path, key)
    except FileExistsError:  # another indexer sharing the file made it first
        return load_private(path)
    log.info("created command-signing key %s (id %s)", path, cs.key_id(key.public_key()))
    return key


class CommandSigner:
    """Signs agent-bound commands with the current key; publishes current and next keys."""

    def __init__(
        self,
        current: Ed25519PrivateKey,
        next_key: Ed25519PrivateKey | None = None,
        endorsement: dict[str, str] | None = None,
        retired: list[Ed25519PrivateKey] | None = None,
    ) -> None:
        self.current = current
        self.next = next_key
        self.retired = retired or []
        self.key_id = cs.key_id(current.public_key())
        # {"by": key id, "sig": …}: the previous key vouching for the current one.
        self.endorsement = endorsement

    @classmethod
    def from_files(cls, key_path: Path, public_out: Path | None = None) -> CommandSigner:
        """Load (or make, on first start) the current key and the next one if there is one;
        write the public keyring next to them (or to `public_out`)."""
        current = load_or_create(key_path)
        nxt = next_path(key_path)
        retired = _retired(key_path)
        signer = cls(
            current,
            load_private(nxt) if nxt.exists() else None,
            _endorsement(key_path, cs.public_base64(current.public_key())),
            retired,
        )
        signer.write_public(public_out or key_path.with_name(PUBLIC_FILE), retired)
        return signer

    def derive(self, label: bytes) -> dict[str, bytes]:
        """Secrets only holders of the keys can compute (an HMAC of each key's raw bytes), by
        key id, the current key's first: indexers sharing the keys agree on them and no
        server node can. The user-proof keys; the others keep verifying across a rotation."""
        keys = [self.current, *([self.next] if self.next else []), *self.retired]
        return {
            cs.key_id(k.public_key()): hmac.new(
                k.private_bytes_raw(), label, hashlib.sha256
            ).digest()
            for k in keys
        }

    def sign(self, doc: dict[str, Any], expires_at: float) -> dict[str, Any]:
        """Add `signature` to an agent-bound command document (in place; returned)."""
        sig: dict[str, Any] = {
            "v": cs.VERSION,
            "key_id": self.key_id,
            "nonce": secrets.token_urlsafe(16),
            "expires": math.ceil(expires_at),
        }
        sig["sig"] = cs.sign(self.current, cs.statement(doc, sig))
        doc["signature"] = sig
        return doc

    def public_keys(self) -> dict[str, Any]:
        """What `GET /command-keys` serves: the current key, and the next one endorsed by it."""
        cur = self.current.public_key()
        current: dict[str, Any] = {"id": self.key_id, "public": cs.public_base64(cur)}
        if self.endorsement is not None:
            current["endorsed_by"] = self.endorsement["by"]
            current["endorsement"] = self.endorsement["sig"]
        doc: dict[str, Any] = {"current": current, "next": None}
        if self.next is not None:
            pub = cs.public_base64(self.next.public_key())
            doc["next"] = {
                "id": cs.key_id(self.next.public_key()),
                "public": pub,
                "endorsed_by": self.key_id,
                "endorsement": cs.sign(self.current, cs.endorsement_statement(pub)),
            }
        return doc

    def write_public(self, path: Path, retired: list[Ed25519PrivateKey] | None = None) -> None:
        keys = self.public_keys()
        lines = [
            "# fleetcmd command-signing public keys (give this file to agents with --command-key)",
            f"# current {keys['current']['id']}",
            keys["current"]["public"],
        ]
        if keys["next"] is not None:
            lines += [f"# next {keys['next']['id']}", keys["next"]["public"]]
        for old in retired or []:
            lines += [
                f"# retired {cs.key_id(old.public_key())} (delete its key file once "
                "the commands it signed have expired)",
                cs.public_base64(old.public_key()),
            ]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)


RECORD = ("command-signing", "current")


def record_key(store: SqlStore, signer: CommandSigner) -> str | None:
    """Note in the store which key signs its commands. Returns the id of a *different* key
    another indexer of this store signs with (agents trusting only one refuse the other's
    commands), or None. A key endorsed by the recorded one (a promotion) replaces it; the
    endorsement is matched by id only: this is an alarm for a misconfiguration, agents make
    the trust decisions."""
    mine = signer.public_keys()["current"]
    with store.transaction() as tx:
        doc = tx.document(*RECORD)
        theirs = doc.get("id") if isinstance(doc, dict) else None
        if theirs == mine["id"]:
            return None
        if theirs is not None and mine.get("endorsed_by") != theirs:
            return str(theirs)
        tx.put_document(*RECORD, {"id": mine["id"], "public": mine["public"], "since": time.time()})
    return None


def _endorsement(key_path: Path, public_b64: str) -> dict[str, str] | None:
    """The retired key's endorsement of the current key, if it is about this key."""
    try:
        doc = json.loads(key_path.with_name(ENDORSEMENT_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("public") != public_b64:
        return None
    return {"by": str(doc["by"]), "sig": str(doc["sig"])}


def _retired(key_path: Path) -> list[Ed25519PrivateKey]:
    return [load_private(p) for p in sorted(key_path.parent.glob("command-signing.*.retired.key"))]


def make_next(key_path: Path) -> str:
    """`fleetcmd command-key next`: create the next key; returns its id."""
    nxt = next_path(key_path)
    if nxt.exists():
        raise FileExistsError(f"{nxt} exists already: promote it first")
    key = Ed25519PrivateKey.generate()
    write_private(nxt, key)
    CommandSigner(load_private(key_path), key).write_public(
        key_path.with_name(PUBLIC_FILE), _retired(key_path)
    )
    return cs.key_id(key.public_key())


def promote(key_path: Path) -> tuple[str, str]:
    """`fleetcmd command-key promote`: the next key becomes current; the old one is kept
    as `command-signing.<id>.retired.key`. Returns (old id, new id)."""
    nxt = next_path(key_path)
    if not nxt.exists():
        raise FileNotFoundError(f"no next key at {nxt}: run `fleetcmd command-key next` first")
    old = load_private(key_path)
    new = load_private(nxt)
    old_id = cs.key_id(old.public_key())
    pub = cs.public_base64(new.public_key())
    endorsement = {"by": old_id, "public": pub, "sig": cs.sign(old, cs.endorsement_statement(pub))}
    key_path.with_name(ENDORSEMENT_FILE).write_text(json.dumps(endorsement) + "\n")
    os.replace(key_path, key_path.with_name(f"command-signing.{old_id}.retired.key"))
    os.replace(nxt, key_path)
    CommandSigner(new).write_public(key_path.with_name(PUBLIC_FILE), _retired(key_path))
    return old_id, cs.key_id(new.public_key())
