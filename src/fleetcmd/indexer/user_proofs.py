"""Who filed a task: proofs of a person, checked here, not taken on a server's word.

A server node holds the node credential and the JWT key, so it could mint any person's token
and name any user on `POST /tasks`. The indexer therefore asks for a *user proof*: when a
person logs in, the server passes the password on to `POST /user-proofs`; the indexer checks
it against the `rbac` index and answers a JWT (HS256, 12 hours) under a key derived from its
command-signing key (`CommandSigner.derive`), which no server holds; proofs made under a key
since promoted or retired keep verifying while the indexer keeps that key. The server keeps the
proof inside the person's token and forwards it with each task and rollout action it files
for them. A proof stops working when its user is disabled or its roles or password change
(the user's token generation, as for tokens).

Without a proof a request is the node's own (`attribute`): a name that belongs to a person
is replaced by `node`; other names (`engine`, `content-manager`, `system`, ...) are the
services that file unattended tasks. The indexer audits such a task in the task's own
transaction (a person's task is audited by the server that files it, with the caller's
address). Users and roles change only with a proof."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from fleetcmd.errors import BadUserProof, Forbidden, Unauthorized
from fleetcmd.store.base import SqlStore

NODE = "node"
SYSTEM = "system"
AUDIENCE = "fleetcmd-user-proof"
TTL = 12 * 3600.0
LABEL = b"fleetcmd user proof v1"
_hasher = PasswordHasher()


@cache
def _dummy_hash() -> str:
    return _hasher.hash("no such user: spend the time of a real check")


@dataclass(frozen=True)
class Attribution:
    """The user a request is recorded under, and whether a proof says so."""

    user: str
    proven: bool
    claimed: str

    def audit(self, type_: str, source: str) -> dict[str, Any] | None:
        """The record of a task the node files in its own name (people's tasks are audited
        by the server that files them, with the caller's address)."""
        if self.proven:
            return None
        details: dict[str, Any] = {"type": type_, "source": source, "credential": "node"}
        if self.claimed != self.user:
            details["claimed_user"] = self.claimed
        return {
            "actor": self.user,
            "action": "task.create",
            "outcome": "success",
            "details": details,
        }


class UserProofs:
    def __init__(self, store: SqlStore, secrets: dict[str, bytes], ttl: float = TTL) -> None:
        """`secrets` by key id: proofs are made with the first, checked with any."""
        self.store = store
        self._kid, self._secret = next(iter(secrets.items()))
        self._secrets = secrets
        self.ttl = ttl

    def _user(self, name: str) -> dict[str, Any] | None:
        with self.store.reading() as tx:
            doc = tx.document("rbac", f"users/{name}")
        return doc if isinstance(doc, dict) else None

    def issue(self, name: str, password: str) -> dict[str, Any]:
        """A proof for `name`, if `password` is its password and it is enabled."""
        doc = self._user(name)
        stored = doc.get("password_hash") if doc else None
        try:
            _hasher.verify(stored if isinstance(stored, str) else _dummy_hash(), password)
        except (VerificationError, InvalidHashError):
            raise Unauthorized("bad user name or password") from None
        if doc is None or doc.get("disabled"):
            raise Unauthorized("bad user name or password")
        now = int(time.time())
        claims = {
            "sub": name,
            "gen": int(doc.get("generation", 0)),
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + int(self.ttl),
        }
        return {
            "proof": jwt.encode(
                claims, self._secret, algorithm="HS256", headers={"kid": self._kid}
            ),
            "user": name,
            "expires_at": claims["exp"],
        }

    def verify(self, proof: str) -> str:
        """The user a proof names, or `BadUserProof` saying why not."""
        try:
            secret = self._secrets.get(str(jwt.get_unverified_header(proof).get("kid")))
            if secret is None:
                raise BadUserProof("the user proof is not under a key this indexer holds")
            claims = jwt.decode(
                proof,
                secret,
                algorithms=["HS256"],
                audience=AUDIENCE,
                options={"require": ["sub", "gen", "exp", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise BadUserProof("the user proof expired; log in again") from None
        except jwt.PyJWTError:
            raise BadUserProof("the user proof does not verify") from None
        name = str(claims["sub"])
        doc = self._user(name)
        if doc is None or doc.get("disabled"):
            raise BadUserProof(f"user '{name}' is gone or disabled")
        if int(doc.get("generation", 0)) != claims["gen"]:
            raise BadUserProof(
                f"the user proof of '{name}' was revoked (roles or password changed); log in again"
            )
        return name

    def attribute(
        self, claimed: str | None, proof: str | None, *, people: bool = False
    ) -> Attribution:
        """Who a request from a node is recorded under. `people`: it changes users or roles,
        which only a person's proof may do."""
        if proof is not None:
            name = self.verify(proof)
            if claimed is not None and claimed != name:
                raise BadUserProof(f"the user proof is for '{name}', not '{claimed}'")
            return Attribution(name, True, name)
        if people:
            raise Forbidden(
                "users and roles change only on a person's request (a user proof "
                "from the Management API); a node credential alone may not"
            )
        claimed = claimed or SYSTEM
        if self._user(claimed) is not None:
            return Attribution(NODE, False, claimed)
        return Attribution(claimed, False, claimed)
