"""Log in (HTTP Basic -> JWT) and the permission check every route goes through.

A login also fetches the person's user proof from the indexer (`indexer/user_proofs.py`); the
token carries it, and every task or rollout action filed for the person forwards it
(`user_proof`), so the indexer records the task under a user it verified itself."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from fleetcmd.errors import Forbidden, Unauthorized
from fleetcmd.server import audit
from fleetcmd.server.indexer_client import IndexerError
from fleetcmd.server.rbac import User
from fleetcmd.server.state import ServerState, server_state
from fleetcmd.server.tokens import PROOF, USER, bearer

router = APIRouter(tags=["security"])
State = Annotated[ServerState, Depends(server_state)]


class BadCredentials(Unauthorized):
    """401 that tells clients to use HTTP Basic on the login route."""


def _basic(request: Request) -> tuple[str, str]:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not value:
        raise BadCredentials("HTTP Basic credentials required")
    try:
        name, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise BadCredentials("malformed HTTP Basic credentials") from None
    if not sep or not name or len(name) > 128 or len(password) > 1024:
        raise BadCredentials("malformed HTTP Basic credentials")
    return name, password


@dataclass(frozen=True)
class LoggedIn:
    user: User
    proof: str  # the indexer's proof of this user (see the module's docstring)

    def token(self, st: ServerState) -> str:
        return st.tokens.issue(self.user.name, USER, self.user.generation, self.proof)


async def login(
    st: ServerState, request: Request, name: str, password: str, via: str
) -> LoggedIn | float:
    """Check a login, throttled and audited: the user and its proof, or the seconds to wait
    (throttled), or `BadCredentials`. Shared by the API and the dashboard's login form."""
    address = audit.client_address(request)
    wait = st.logins.retry_after(name, address)
    if wait > 0:
        await audit.record(
            st,
            "user.login",
            actor=name,
            outcome=audit.THROTTLED,
            request=request,
            details={"via": via, "retry_after": math.ceil(wait)},
        )
        return wait
    user = await st.rbac.verify(name, password)
    proof = None if user is None else await _proof(st, name, password)
    if user is None or proof is None:
        st.logins.failed(name, address)
        await audit.record(
            st,
            "user.login",
            actor=name,
            outcome=audit.FAILURE,
            request=request,
            details={"via": via},
        )
        raise BadCredentials("bad user name or password")
    st.logins.succeeded(name)
    await audit.record(st, "user.login", actor=name, request=request, details={"via": via})
    return LoggedIn(user, proof)


async def _proof(st: ServerState, name: str, password: str) -> str | None:
    """The indexer's proof of `name` (None: the store says no, e.g. a password changed on
    another node a moment ago)."""
    try:
        # Issuing a proof changes nothing, so a lost answer may be asked again.
        data = await st.indexer.post(
            "/user-proofs", {"user": name, "password": password}, retries=1, idempotent=True
        )
    except IndexerError as exc:
        if exc.status == 401:
            return None
        raise
    return str(data["proof"])


def too_many(wait: float) -> JSONResponse:
    seconds = math.ceil(wait)
    return JSONResponse(
        {"error": "too_many_requests", "message": f"too many failed logins; retry in {seconds} s"},
        status_code=429,
        headers={"Retry-After": str(seconds)},
    )


@router.post(
    "/security/user/authenticate",
    responses={
        401: {"description": "bad credentials"},
        429: {"description": "too many failed logins: wait `Retry-After`"},
    },
)
async def authenticate(request: Request, st: State) -> Any:
    name, password = _basic(request)
    outcome = await login(st, request, name, password, "api")
    if not isinstance(outcome, LoggedIn):
        return too_many(outcome)
    return {"data": {"token": outcome.token(st), "expires_in": int(st.tokens.ttl)}}


def token_user(st: ServerState, token: str, request: Request | None = None) -> User:
    """The live user behind a person's token: 401 if expired, forged, of a user that is gone
    or disabled, or issued before the user's roles or password last changed. With `request`,
    the token's user proof is kept for the tasks this request files (`user_proof`)."""
    claims = st.tokens.claims(token, USER)
    if request is not None:
        request.state.user_proof = claims.get(PROOF)
    name = str(claims["sub"])
    user = st.rbac.users.get(name)
    if user is None:
        raise Unauthorized(f"user '{name}' no longer exists")
    if user.disabled:
        raise Unauthorized(f"user '{name}' is disabled")
    if claims.get("gen", 0) != user.generation:
        raise Unauthorized(
            "token revoked (the user's roles or password changed); authenticate again"
        )
    return user


def require(action: str) -> Callable[..., Awaitable[User]]:
    """Dependency: the caller's user, if a role grants `action` on some resource of the kind
    it acts on (`RbacCache.can`: the system's actions need `*:*:*`). The route then checks the
    resources it touches: `fleetcmd.server.access` for the fleet, `security` for people.
    Refused writes are audited."""

    async def check(request: Request, st: State) -> User:
        user = token_user(st, bearer(request.headers.get("authorization", "")), request)
        if not st.rbac.can(user, action):
            await deny(st, request, user, action)
        return user

    return check


def user_proof(request: Request) -> str:
    """The caller's user proof, forwarded to the indexer with what it files for them."""
    proof = getattr(request.state, "user_proof", None)
    if not isinstance(proof, str) or not proof:
        raise Unauthorized(
            "this token carries no user proof (it predates them); authenticate again"
        )
    return proof


async def deny(
    st: ServerState,
    request: Request,
    user: User,
    action: str,
    target: str | None = None,
    why: str | None = None,
    **details: Any,
) -> None:
    """Raise 403 `forbidden`; a refused change (not a read) joins the audit trail."""
    if request.method not in ("GET", "HEAD"):
        await audit.record(
            st,
            _audit_action(action),
            actor=user.name,
            outcome=audit.DENIED,
            request=request,
            target=target,
            details={"permission": action, **details},
        )
    raise Forbidden(
        f"user '{user.name}' may not {action}"
        + (f" on {target}" if target else "")
        + (f": {why}" if why else ""),
        action=action,
        roles=list(user.roles),
        **details,
    )


def _audit_action(permission: str) -> str:
    noun, _, verb = permission.partition(":")
    return f"{noun}.{verb.split(':')[0] or 'access'}"


def caller(action: str) -> Any:
    return Annotated[User, Depends(require(action))]
