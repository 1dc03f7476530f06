"""Who is looking at the dashboard: the Management API's JWT in an HttpOnly cookie, a
session id for CSRF tokens, and the same RBAC check as the API.

The JWT is exactly the one `POST /security/user/authenticate` issues (audience
`fleetcmd-api`, 15 minutes); it is re-issued when half its life has passed, so an operator
who keeps working stays logged in and one who walks away is logged out. CSRF tokens are an
HMAC of the session id (a second HttpOnly cookie, rotated at login), so a form rendered
before a token refresh still posts."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlsplit

import jwt
from fastapi import Request
from starlette.responses import Response

from fleetcmd.errors import Unauthorized
from fleetcmd.server.access import Reader
from fleetcmd.server.management.auth import LoggedIn, token_user
from fleetcmd.server.rbac import User
from fleetcmd.server.state import ServerState
from fleetcmd.server.tokens import PROOF, USER

TOKEN_COOKIE = "fleetcmd_token"
SESSION_COOKIE = "fleetcmd_sid"
COOKIE_PATH = "/app"
CSRF_FIELD = "csrf_token"


class LoginRequired(Exception):
    """No valid session: the page redirects to the login form."""


class Denied(Exception):
    """The user's roles do not allow the action (403), or a post failed its CSRF check."""

    def __init__(self, message: str, action: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.action = action


@dataclass(frozen=True)
class Viewer:
    """The logged-in user and what the pages may offer them."""

    user: User
    csrf: str
    st: ServerState

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def roles(self) -> tuple[str, ...]:
        return self.user.roles

    def can(self, action: str) -> bool:
        """As the API's gate (`RbacCache.can`): granted on some resource of the kind the
        action acts on; each page then narrows to the resources it shows or changes."""
        return self.st.rbac.can(self.user, action)

    def require(self, action: str) -> None:
        if not self.can(action):
            raise Denied(f"user '{self.name}' may not {action}", action)

    def reader(self, action: str) -> Reader:
        """What this user may see with `action` (agents, groups, tasks, commands)."""
        return Reader(self.st, self.user, action)

    def deny(self, action: str, what: str) -> NoReturn:
        raise Denied(f"user '{self.name}' may not {action} on {what}", action)


def state(request: Request) -> ServerState:
    st: ServerState = request.app.state.server
    return st


def csrf_for(st: ServerState, sid: str) -> str:
    key = hashlib.sha256(b"fleetcmd-dashboard-csrf:" + st.options.jwt_key.encode()).digest()
    return hmac.new(key, sid.encode(), hashlib.sha256).hexdigest()


def session_id(request: Request) -> str | None:
    sid = request.cookies.get(SESSION_COOKIE, "")
    return sid if 16 <= len(sid) <= 128 else None


def new_session_id() -> str:
    return secrets.token_urlsafe(24)


def viewer(request: Request) -> Viewer:
    """The logged-in user, or `LoginRequired`. Schedules a token refresh when it is due."""
    st = state(request)
    token = request.cookies.get(TOKEN_COOKIE)
    sid = session_id(request)
    if not token or sid is None:
        raise LoginRequired()
    try:
        user = token_user(st, token, request)
    except Unauthorized:  # expired, disabled, roles changed: log in again
        raise LoginRequired() from None
    claims = jwt.decode(token, options={"verify_signature": False})
    proof = claims.get(PROOF)
    # The indexer's proof of the user (12 hours) bounds the session: then log in again.
    if not isinstance(proof, str) or _expiry(proof) <= _now():
        raise LoginRequired()
    if int(claims["exp"]) - _now() < st.tokens.ttl / 2:
        request.state.refreshed_token = st.tokens.issue(user.name, USER, user.generation, proof)
    return Viewer(user, csrf_for(st, sid), st)


def _expiry(proof: str) -> int:
    """A proof's expiry, read (the indexer alone can verify it)."""
    try:
        return int(jwt.decode(proof, options={"verify_signature": False})["exp"])
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        return 0


def check_post(request: Request, form: dict[str, str]) -> None:
    """Refuse a cross-site post: a foreign Origin, or a CSRF token not bound to this session."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise Denied("cross-site request refused")
    sid = session_id(request)
    token = form.get(CSRF_FIELD, "")
    if sid is None or not hmac.compare_digest(token, csrf_for(state(request), sid)):
        raise Denied(
            "the form expired or did not come from this dashboard; reload the page and try again"
        )


def set_cookie(
    request: Request, response: Response, name: str, value: str, max_age: int | None
) -> None:
    """HttpOnly, SameSite=Strict, scoped to /app; Secure when served over HTTPS."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def start_session(request: Request, response: Response, login: LoggedIn) -> None:
    """Log in: a fresh session id (no fixation) and the API's JWT (with the user proof)."""
    st = state(request)
    set_cookie(request, response, SESSION_COOKIE, new_session_id(), None)
    set_cookie(request, response, TOKEN_COOKIE, login.token(st), int(st.tokens.ttl))


def end_session(response: Response) -> None:
    for name in (TOKEN_COOKIE, SESSION_COOKIE):
        response.delete_cookie(name, path=COOKIE_PATH, httponly=True, samesite="strict")


def apply_refresh(request: Request, response: Response) -> Response:
    token = getattr(request.state, "refreshed_token", None)
    if token:
        set_cookie(request, response, TOKEN_COOKIE, token, int(state(request).tokens.ttl))
    return response


def _now() -> int:
    return int(time.time())
