"""Enrollment (a new agent gets an id and a secret) and authentication (secret -> token).

Both are rate-limited per client address (429 with Retry-After). The agent secret is 256
random bits stored as its SHA-256: with no dictionary to try, a slow hash (argon2) would
only cost CPU — tens of seconds when 10,000 agents re-authenticate after a restart — and
protect nothing more (docs/security.md)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from fleetcmd.errors import Conflict, Unauthorized
from fleetcmd.model.params import NAME_RE
from fleetcmd.server import audit
from fleetcmd.server.comms.auth import AgentRemoved, State
from fleetcmd.server.comms.keys import command_keys
from fleetcmd.server.enrollment_keys import BadEnrollmentKey
from fleetcmd.server.indexer_client import IndexerError, IndexerUnavailable
from fleetcmd.server.tokens import AGENT

router = APIRouter(tags=["enrollment"])
log = logging.getLogger("fleetcmd.server.comms.enroll")

NAME = NAME_RE.pattern
DEFAULT_GROUP = "default"


class EnrollIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enrollment_key: str = Field(min_length=1, max_length=512)
    name: str = Field(pattern=NAME)
    groups: list[str] | None = Field(default=None, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    info: dict[str, Any] = Field(default_factory=dict)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def _name_taken(st: State, name: str) -> bool:
    page = await st.indexer.get("/agents", search=name, limit=100)
    return any(a["name"] == name for a in page["items"])


async def _existing_groups(st: State, names: list[str]) -> tuple[list[str], list[str]]:
    found, missing = [], []
    for g in dict.fromkeys(names):
        if not NAME_RE.fullmatch(g):
            missing.append(g)
            continue
        try:
            await st.indexer.get(f"/groups/{quote(g, safe='')}")
            found.append(g)
        except IndexerError as exc:
            if exc.status != 404:
                raise
            missing.append(g)
    return found, missing


RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {"description": "too many requests from this address: wait `Retry-After`"}}


@router.post("/agents/enroll", status_code=201,
             responses={401: {"description": "unknown, revoked or expired enrollment key"},
                        409: {"description": "agent name taken"}, **RATE_LIMITED})
async def enroll(body: EnrollIn, request: Request, st: State) -> dict[str, Any]:
    """Create the agent in the indexer; the secret is shown once, only its hash is kept."""
    st.enroll_limit.check(client_address(request))
    try:
        key = await st.enrollment_keys.verify(body.enrollment_key)
    except BadEnrollmentKey as exc:
        await audit.record(st, "agent.enroll", actor="anonymous", outcome=audit.FAILURE,
                           request=request, details={"name": body.name,
                                                     "reason": exc.message})
        raise
    if await _name_taken(st, body.name):
        raise Conflict(f"agent name '{body.name}' is already taken", name=body.name)
    warnings: list[str] = []
    groups: list[str] = []
    if body.groups:
        found, missing = await _existing_groups(st, body.groups)
        if missing:
            warnings.append("unknown group(s) " + ", ".join(missing)
                            + ": the agent was enrolled without the requested groups")
        else:
            groups = found
    if not groups:
        found, _ = await _existing_groups(st, [DEFAULT_GROUP])
        groups = found
    agent_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    agent = {"id": agent_id, "name": body.name, "groups": groups, "version": body.version,
             "status": "never_connected", "info": {**body.info, "enrollment_key": key["id"]},
             "secret_hash": secret_hash(secret)}
    try:
        await st.indexer.post("/agents", {"agents": [agent]}, retries=1)
    except IndexerUnavailable:
        # The name is unique in the store: a concurrent enrollment may have taken it.
        if await _name_taken(st, body.name):
            raise Conflict(f"agent name '{body.name}' is already taken", name=body.name
                           ) from None
        raise
    st.metrics.enrolled.inc()
    await audit.record(st, "agent.enroll", actor=f"enrollment-key:{key['id']}",
                       request=request, target=agent_id, details={"name": body.name})
    log.info("enrolled agent %s (%s) in groups %s with enrollment key %s", agent_id, body.name,
             groups, key["id"])
    data: dict[str, Any] = {"id": agent_id, "secret": secret, "groups": groups,
                            "command_keys": await command_keys(st)}
    if warnings:
        data["warnings"] = warnings
    return {"data": data}


class AuthenticateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    secret: str = Field(min_length=1, max_length=512)


@router.post("/agents/authenticate",
             responses={401: {"description": "unknown agent or bad secret"},
                        403: {"description": "agent removed"}, **RATE_LIMITED})
async def authenticate(body: AuthenticateIn, request: Request, st: State) -> dict[str, Any]:
    st.auth_limit.check(client_address(request))
    try:
        creds = await st.indexer.get(f"/agents/{quote(body.id, safe='')}/credentials")
    except IndexerError as exc:
        if exc.status in (404, 422):
            raise Unauthorized("unknown agent or bad secret") from None
        raise
    if creds["status"] == "removed":
        st.removed.add(body.id)
        raise AgentRemoved(f"agent {body.id} was removed from the fleet")
    stored = creds.get("secret_hash") or ""
    if not stored or not hmac.compare_digest(secret_hash(body.secret), stored):
        raise Unauthorized("unknown agent or bad secret")
    return {"data": {"token": st.tokens.issue(body.id, AGENT),
                     "expires_in": int(st.tokens.ttl)}}
