"""Enrollment (a new agent gets an id and a secret) and authentication (secret -> token).

Both are rate-limited per client address (429 with Retry-After). The agent secret is 256
random bits stored as its SHA-256: with no dictionary to try, a slow hash (argon2) would
only cost CPU — tens of seconds when 10,000 agents re-authenticate after a restart — and
protect nothing more (docs/security.md).

Enrollment is idempotent when the agent names its request: it makes a request id and a
request secret (256 random bits) once, keeps them before its first attempt, and sends both
each time. The agent's secret is then derived from the request secret and the agent id
(HMAC-SHA256), so the store keeps only what it keeps for any agent — the request id and the
SHA-256 of the agent secret — and a repeat (the first answer was lost to a timeout) is
answered with the same id and secret by whoever proves the request secret again."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    # Both or neither: the agent's name for this enrollment, and the secret proving it.
    request_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{16,128}$")
    request_secret: str | None = Field(default=None, min_length=32, max_length=256)

    @model_validator(mode="after")
    def _request_pair(self) -> EnrollIn:
        if (self.request_id is None) != (self.request_secret is None):
            raise ValueError("give both 'request_id' and 'request_secret', or neither")
        return self


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def derived_secret(request_secret: str, agent_id: str) -> str:
    """The agent secret of an agent enrolled by a named request: recomputable from the
    request secret (which only the agent holds), never stored."""
    mac = hmac.new(
        request_secret.encode(), f"fleetcmd-agent-secret:v1:{agent_id}".encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


async def _earlier(st: State, body: EnrollIn) -> dict[str, Any] | None:
    """The agent an earlier attempt of this request enrolled, with its secret; None when
    the request is new. Conflict when the request id is someone else's (the secret does
    not prove it)."""
    if body.request_id is None or body.request_secret is None:
        return None
    try:
        agent: dict[str, Any] = await st.indexer.get(f"/enrollments/{body.request_id}")
    except IndexerError as exc:
        if exc.status == 404:
            return None
        raise
    if agent["status"] == "removed":
        raise AgentRemoved(f"agent {agent['id']}, enrolled by this request, was removed")
    secret = derived_secret(body.request_secret, agent["id"])
    if not hmac.compare_digest(secret_hash(secret), agent.get("secret_hash") or ""):
        raise Conflict(
            "this enrollment request id was used with another secret", request_id=body.request_id
        )
    return {**agent, "secret": secret}


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
    429: {"description": "too many requests from this address: wait `Retry-After`"}
}


@router.post(
    "/agents/enroll",
    status_code=201,
    responses={
        401: {"description": "unknown, revoked or expired enrollment key"},
        409: {"description": "agent name taken"},
        **RATE_LIMITED,
    },
)
async def enroll(body: EnrollIn, request: Request, st: State) -> dict[str, Any]:
    """Create the agent in the indexer; the secret is shown once, only its hash is kept. A
    repeat of a named request (`request_id`) gets the first answer again."""
    st.enroll_limit.check(client_address(request))
    # Before the key check: the agent exists already, and revoking a key stops new
    # enrollments, not the answer to one it allowed.
    earlier = await _earlier(st, body)
    if earlier is not None:
        return await _answer_again(st, request, earlier)
    try:
        key = await st.enrollment_keys.verify(body.enrollment_key)
    except BadEnrollmentKey as exc:
        await audit.record(
            st,
            "agent.enroll",
            actor="anonymous",
            outcome=audit.FAILURE,
            request=request,
            details={"name": body.name, "reason": exc.message},
        )
        raise
    if await _name_taken(st, body.name):
        # Taken by this very request, maybe: an attempt that overlapped this one won.
        earlier = await _earlier(st, body)
        if earlier is not None:
            return await _answer_again(st, request, earlier)
        raise Conflict(f"agent name '{body.name}' is already taken", name=body.name)
    warnings: list[str] = []
    groups: list[str] = []
    if body.groups:
        found, missing = await _existing_groups(st, body.groups)
        if missing:
            warnings.append(
                "unknown group(s) "
                + ", ".join(missing)
                + ": the agent was enrolled without the requested groups"
            )
        else:
            groups = found
    if not groups:
        found, _ = await _existing_groups(st, [DEFAULT_GROUP])
        groups = found
    agent_id = secrets.token_hex(6)
    secret = (
        derived_secret(body.request_secret, agent_id)
        if body.request_secret
        else secrets.token_urlsafe(32)
    )
    agent = {
        "id": agent_id,
        "name": body.name,
        "groups": groups,
        "version": body.version,
        "status": "never_connected",
        "info": {**body.info, "enrollment_key": key["id"]},
        "secret_hash": secret_hash(secret),
        "enrollment_request": body.request_id,
    }
    try:
        await st.indexer.post("/agents", {"agents": [agent]}, retries=1)
    except IndexerError as exc:
        if not isinstance(exc, IndexerUnavailable) and exc.status != 409:
            raise
        # A concurrent attempt of the same request may have won (the agent timed out and
        # asked again while the first was still being written): answer as it did.
        earlier = await _earlier(st, body)
        if earlier is not None:
            return await _answer_again(st, request, earlier)
        # The name is unique in the store: a concurrent enrollment may have taken it.
        if await _name_taken(st, body.name):
            raise Conflict(f"agent name '{body.name}' is already taken", name=body.name) from None
        raise
    st.metrics.enrolled.inc()
    await audit.record(
        st,
        "agent.enroll",
        actor=f"enrollment-key:{key['id']}",
        request=request,
        target=agent_id,
        details={"name": body.name},
    )
    log.info(
        "enrolled agent %s (%s) in groups %s with enrollment key %s",
        agent_id,
        body.name,
        groups,
        key["id"],
    )
    data: dict[str, Any] = {
        "id": agent_id,
        "secret": secret,
        "groups": groups,
        "command_keys": await command_keys(st),
    }
    if warnings:
        data["warnings"] = warnings
    return {"data": data}


async def _answer_again(st: State, request: Request, agent: dict[str, Any]) -> dict[str, Any]:
    await audit.record(
        st,
        "agent.enroll",
        actor=f"agent:{agent['id']}",
        request=request,
        target=agent["id"],
        details={"name": agent["name"], "repeat": True},
    )
    log.info("enrollment of agent %s (%s) repeated: same answer", agent["id"], agent["name"])
    return {
        "data": {
            "id": agent["id"],
            "secret": agent["secret"],
            "groups": agent["groups"],
            "command_keys": await command_keys(st),
        }
    }


class AuthenticateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    secret: str = Field(min_length=1, max_length=512)


@router.post(
    "/agents/authenticate",
    responses={
        401: {"description": "unknown agent or bad secret"},
        403: {"description": "agent removed"},
        **RATE_LIMITED,
    },
)
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
    return {"data": {"token": st.tokens.issue(body.id, AGENT), "expires_in": int(st.tokens.ttl)}}
