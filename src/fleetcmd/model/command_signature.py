"""Signed commands: the bytes the indexer signs and the agent verifies (docs/security.md).

A command leaving the stream for an agent carries `signature`::

    {"v": 1, "key_id": "…", "nonce": "…", "expires": 1767225600, "sig": "<base64 ed25519>"}

The signature covers a domain prefix and the canonical JSON (sorted keys, no spaces, UTF-8)
of the command id, task id, target, action (name, version, args *as delivered*, so the
attached configuration or SCA policy is covered), timeout, expiry, nonce and key id. A
server can therefore route, hold and redeliver a command, but cannot change what it says,
aim it at another agent, keep it alive past its expiry or mint a new one.

Only the standard library here; `cryptography` is imported by the functions that need it, so
the agent pays for it only when it verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

VERSION = 1
DOMAIN = b"fleetcmd-command:v1\n"
# What a current key signs to vouch for the next one (key rotation without re-configuring).
ENDORSE_DOMAIN = b"fleetcmd-command-key:v1\n"

# Why an agent refuses a command: the `refused` value of its result data.
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad signature"
EXPIRED = "expired"
REPLAYED = "replayed"
NOT_FOR_THIS_AGENT = "not for this agent"


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the one byte form of a JSON value that is signed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def statement(command: dict[str, Any], signature: dict[str, Any]) -> bytes:
    """The bytes a command signature covers (fields missing from `command` are signed as null,
    so removing one breaks the signature as surely as changing it)."""
    action = command.get("action") if isinstance(command.get("action"), dict) else {}
    assert isinstance(action, dict)
    body = {
        "v": signature.get("v"),
        "id": command.get("id"),
        "task_id": command.get("task_id"),
        "target": command.get("target"),
        "action": {
            "name": action.get("name"),
            "version": action.get("version"),
            "args": action.get("args"),
        },
        "timeout": command.get("timeout"),
        "expires": signature.get("expires"),
        "nonce": signature.get("nonce"),
        "key_id": signature.get("key_id"),
    }
    return DOMAIN + canonical_json(body)


def raw_public(public: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """First 16 hex of SHA-256 of the raw public key (same naming as the CTI feed keys)."""
    return hashlib.sha256(raw_public(public)).hexdigest()[:16]


def public_base64(public: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public(public)).decode()


def sign(private: Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(private.sign(data)).decode()


def verify(public: Ed25519PublicKey, data: bytes, sig: str) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public.verify(base64.b64decode(sig, validate=True), data)
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        return False
    return True


def endorsement_statement(public_b64: str) -> bytes:
    return ENDORSE_DOMAIN + public_b64.encode()


def parse_public(text: str | bytes) -> Ed25519PublicKey:
    """One public key: PEM, or the base64 of its 32 raw bytes. Raises ValueError."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = text.encode() if isinstance(text, str) else text
    if b"-----BEGIN" in data:
        key = serialization.load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an ed25519 public key")
        return key
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except binascii.Error:
        raise ValueError("public key is neither PEM nor base64") from None
    if len(raw) != 32:
        raise ValueError(f"a raw ed25519 public key has 32 bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def parse_keyring(text: str) -> list[Ed25519PublicKey]:
    """A key file: PEM blocks and/or base64 lines; `#` lines are comments."""
    keys = []
    pem: list[str] = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if pem or s.startswith("-----BEGIN"):
            pem.append(s)
            if s.startswith("-----END"):
                keys.append(parse_public("\n".join(pem) + "\n"))
                pem = []
            continue
        keys.append(parse_public(s))
    if pem:
        raise ValueError("unterminated PEM block")
    return keys
