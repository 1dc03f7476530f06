"""Ed25519 keys and the canonical statements a CTI feed signs.

Every signature covers a statement with a domain prefix, so a signature made for one purpose
(an item) can never be replayed as another (a manifest), and the bytes signed are defined here
once for the publisher (`cti build`), the content manager and the agent (package upgrades).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ITEM_DOMAIN = "fleetcmd-cti-item:v1"
MANIFEST_DOMAIN = b"fleetcmd-cti-manifest:v1\n"


class BadKey(ValueError):
    """A key file or string that is not an ed25519 key we can use."""


def item_statement(type_: str, id_: str, version: str, sha256: str) -> bytes:
    """What an item signature covers: `fleetcmd-cti-item:v1|type|id|version|sha256`."""
    for part in (type_, id_, version, sha256):
        if "|" in part or "\n" in part:
            raise ValueError(f"{part!r}: '|' and newlines are not allowed in signed fields")
    return f"{ITEM_DOMAIN}|{type_}|{id_}|{version}|{sha256}".encode()


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the one byte form of a JSON document that is signed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_statement(manifest: dict[str, Any]) -> bytes:
    """What the manifest signature covers: the canonical manifest without `signature`."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return MANIFEST_DOMAIN + canonical_json(body)


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name for a public key (first 16 hex of SHA-256 of its raw bytes)."""
    return hashlib.sha256(raw_public(public)).hexdigest()[:16]


def raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_base64(public: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public(public)).decode()


def sign(private: Ed25519PrivateKey, statement: bytes) -> str:
    return base64.b64encode(private.sign(statement)).decode()


def verify(public: Ed25519PublicKey, statement: bytes, signature: str) -> bool:
    try:
        sig = base64.b64decode(signature, validate=True)
        public.verify(sig, statement)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys a content manager accepts; several during a key rotation."""

    keys: tuple[Ed25519PublicKey, ...]

    def ids(self) -> list[str]:
        return [key_id(k) for k in self.keys]

    def candidates(self, wanted: str | None) -> list[Ed25519PublicKey]:
        """The key a manifest names (`key_id`), or every trusted key when it names none."""
        if wanted is None:
            return list(self.keys)
        return [k for k in self.keys if key_id(k) == wanted]

    def verify_any(self, statement: bytes, signature: str, wanted: str | None = None) -> bool:
        return any(verify(k, statement, signature) for k in self.candidates(wanted))


# -- keys on disk ---------------------------------------------------------------------------------
def generate_key(path: Path) -> Ed25519PrivateKey:
    """Write a new private key (PEM, 0600, refuses to overwrite) and `path.pub` (PEM)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path(path).write_bytes(public_pem(private.public_key()))
    return private


def pub_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise BadKey(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadKey(f"{path}: not an ed25519 private key")
    return key


def parse_public(text: str | bytes) -> Ed25519PublicKey:
    """A public key as PEM or as the base64 of its 32 raw bytes."""
    data = text.encode() if isinstance(text, str) else text
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise BadKey(f"not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise BadKey("not an ed25519 public key")
        return key
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except binascii.Error:
        raise BadKey("public key is neither PEM nor base64") from None
    if len(raw) != 32:
        raise BadKey(f"a raw ed25519 public key has 32 bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_public(spec: str) -> Ed25519PublicKey:
    """`spec` is a file (PEM or base64 inside) or the base64 key itself."""
    path = Path(spec)
    if len(spec) < 4096 and path.is_file():
        return parse_public(path.read_bytes())
    return parse_public(spec)
