"""Enrollment keys: several at once, each with an id, an optional expiry, revocable.

Kept in the indexer's `enrollment-keys` index, one document per key, holding only the
SHA-256 of the key: a key is 256 random bits, so a fast hash is as good as a slow one (there
is no dictionary to try) and keeps enrollment cheap. A key made by the Management API reads
`fek1.<id>.<secret>`, so the server finds its document directly. The key a server is started
with (`--enrollment-key-file`, FLEETCMD_ENROLLMENT_KEY or DATA_DIR/enrollment.key; what `fleetcmd
up` uses) is registered as `configured-<hash prefix>` on start, unless it was revoked: a
revoked configured key stays revoked across restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any
from urllib.parse import quote

from fleetcmd.errors import NotFound, Unauthorized
from fleetcmd.server.indexer_client import IndexerClient, IndexerError

INDEX = "enrollment-keys"
PREFIX = "fek1"


class BadEnrollmentKey(Unauthorized):
    """401 `unauthorized`: unknown, revoked or expired key (the message says which, only to
    a caller who holds the real key)."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str:
    """The document id a presented key is looked up by."""
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == PREFIX and parts[1].isalnum() and len(parts[1]) <= 32:
        return parts[1]
    return f"configured-{digest(key)[:16]}"


def public(doc: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """A key document as the Management API shows it: never the hash."""
    now = time.time() if now is None else now
    state = "active"
    if doc.get("revoked_at"):
        state = "revoked"
    elif doc.get("expires_at") is not None and float(doc["expires_at"]) <= now:
        state = "expired"
    return {
        k: doc.get(k)
        for k in (
            "id",
            "description",
            "source",
            "created_at",
            "created_by",
            "expires_at",
            "revoked_at",
            "revoked_by",
            "replaced_by",
        )
    } | {"state": state}


class EnrollmentKeys:
    def __init__(self, indexer: IndexerClient) -> None:
        self.indexer = indexer

    async def _get(self, key_id: str) -> dict[str, Any] | None:
        try:
            doc = await self.indexer.get(f"/indexes/{INDEX}/{quote(key_id, safe='')}")
        except IndexerError as exc:
            if exc.status in (404, 422):
                return None
            raise
        return doc if isinstance(doc, dict) else None

    async def _put(self, doc: dict[str, Any]) -> None:
        await self.indexer.put(f"/indexes/{INDEX}/{quote(doc['id'], safe='')}", doc)

    async def verify(self, presented: str, now: float | None = None) -> dict[str, Any]:
        """The key's document if `presented` is an active key; else BadEnrollmentKey."""
        now = time.time() if now is None else now
        doc = await self._get(key_id_of(presented))
        if doc is None or not hmac.compare_digest(str(doc.get("hash", "")), digest(presented)):
            raise BadEnrollmentKey("bad enrollment key")
        if doc.get("revoked_at"):
            raise BadEnrollmentKey(f"enrollment key {doc['id']} was revoked")
        if doc.get("expires_at") is not None and float(doc["expires_at"]) <= now:
            raise BadEnrollmentKey(f"enrollment key {doc['id']} expired")
        return doc

    async def register_configured(self, key: str) -> str | None:
        """On start: the configured key becomes a document unless one exists (maybe revoked)."""
        if not key:
            return None
        kid = key_id_of(key)
        if await self._get(kid) is None:
            await self._put(
                {
                    "id": kid,
                    "hash": digest(key),
                    "source": "configured",
                    "description": "the key this server was started with",
                    "created_at": time.time(),
                    "created_by": "server",
                    "expires_at": None,
                    "revoked_at": None,
                }
            )
        return kid

    async def list(self) -> list[dict[str, Any]]:
        docs = await self.indexer.get(f"/indexes/{INDEX}")
        items = docs.get("items") if isinstance(docs, dict) else None
        values = list(items.values()) if isinstance(items, dict) else list(items or [])
        out = [public(d) for d in values if isinstance(d, dict) and "id" in d]
        return sorted(out, key=lambda d: (d.get("created_at") or 0, d["id"]))

    async def create(
        self, user: str, description: str = "", expires_in: float | None = None
    ) -> tuple[str, dict[str, Any]]:
        """A new key; returns (the key, shown once; its public document)."""
        kid = secrets.token_hex(6)
        key = f"{PREFIX}.{kid}.{secrets.token_urlsafe(32)}"
        now = time.time()
        doc = {
            "id": kid,
            "hash": digest(key),
            "source": "api",
            "description": description,
            "created_at": now,
            "created_by": user,
            "expires_at": now + expires_in if expires_in else None,
            "revoked_at": None,
        }
        await self._put(doc)
        return key, public(doc)

    async def revoke(self, key_id: str, user: str) -> dict[str, Any]:
        doc = await self._get(key_id)
        if doc is None:
            raise NotFound(f"no enrollment key {key_id!r}", id=key_id)
        if not doc.get("revoked_at"):
            doc.update(revoked_at=time.time(), revoked_by=user)
            await self._put(doc)
        return public(doc)

    async def rotate(
        self, key_id: str, user: str, grace: float, expires_in: float | None
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """A new key replaces `key_id`, which stays valid `grace` seconds more (agents being
        installed with it can still enroll), then expires. Returns (key, new, old)."""
        old = await self._get(key_id)
        if old is None:
            raise NotFound(f"no enrollment key {key_id!r}", id=key_id)
        key, new = await self.create(user, str(old.get("description") or ""), expires_in)
        until = time.time() + grace
        if not old.get("revoked_at"):
            if grace <= 0:
                old.update(revoked_at=time.time(), revoked_by=user)
            elif old.get("expires_at") is None or float(old["expires_at"]) > until:
                old["expires_at"] = until
        old["replaced_by"] = new["id"]
        await self._put(old)
        return key, new, public(old)
