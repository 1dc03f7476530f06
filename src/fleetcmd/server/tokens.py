"""Short-lived HS256 JWTs for agents (Comms API) and people (Management API).

The signing key is shared by every server node, so an agent may authenticate on one node
and poll another. The audience keeps an agent token from opening the Management API."""

from __future__ import annotations

import time
from typing import Any

import jwt

from fleetcmd.errors import Unauthorized

AGENT = "fleetcmd-agent"
USER = "fleetcmd-api"
PROOF = "proof"


class TokenIssuer:
    def __init__(self, key: str, ttl: float = 900.0) -> None:
        self._key = key
        self.ttl = ttl
        # token -> (subject, audience, expiry) of tokens whose signature was checked: an
        # agent sends the same token on every poll, ack and result until it expires, and
        # decoding it each time cost a tenth of the server's CPU under load.
        self._verified: dict[str, tuple[str, str, int]] = {}

    def issue(
        self, subject: str, audience: str, generation: int | None = None, proof: str | None = None
    ) -> str:
        """`generation`: a person's token generation (see `rbac`); bumping it revokes.
        `proof`: the person's user proof from the indexer, forwarded with their tasks."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": subject,
            "aud": audience,
            "iat": now,
            "exp": now + int(self.ttl),
        }
        if generation is not None:
            claims["gen"] = generation
        if proof is not None:
            claims[PROOF] = proof
        return jwt.encode(claims, self._key, algorithm="HS256")

    def claims(self, token: str, audience: str) -> dict[str, Any]:
        """All the claims of a valid token (people's tokens: the generation too)."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=audience,
                options={"require": ["sub", "exp", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired; authenticate again") from None
        except jwt.PyJWTError:
            raise Unauthorized("invalid token") from None
        return claims

    def verify(self, token: str, audience: str) -> str:
        known = self._verified.get(token)
        if known is not None and known[1] == audience and known[2] > time.time():
            return known[0]
        claims = self.claims(token, audience)
        if len(self._verified) >= 100_000:
            self._verified.clear()
        self._verified[token] = (str(claims["sub"]), audience, int(claims["exp"]))
        return str(claims["sub"])


def bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token")
    return token.strip()
