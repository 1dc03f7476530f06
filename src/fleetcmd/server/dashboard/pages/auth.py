"""Log in with a user name and password (the API's users and JWT), log out."""

from __future__ import annotations

import math
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from starlette.responses import Response

from fleetcmd.server.dashboard.pages import read_form
from fleetcmd.server.dashboard.render import page, redirect
from fleetcmd.server.dashboard.session import (
    SESSION_COOKIE,
    Denied,
    LoginRequired,
    check_post,
    csrf_for,
    end_session,
    new_session_id,
    session_id,
    set_cookie,
    start_session,
    state,
    viewer,
)
from fleetcmd.server.management.auth import BadCredentials, LoggedIn
from fleetcmd.server.management.auth import login as login_user

router = APIRouter()


def _next(target: str | None) -> str:
    """Only a dashboard path may follow a login (no open redirect)."""
    if (
        target
        and target.startswith("/app/")
        and not target.startswith("//")
        and "\\" not in target
        and "/app/login" not in target
    ):
        return target
    return "/app/"


def _login_page(
    request: Request, error: str = "", name: str = "", status: int = 200, target: str | None = None
) -> Response:
    sid = session_id(request) or new_session_id()
    response = page(
        request,
        "login.html",
        None,
        status,
        error=error,
        name=name,
        csrf=csrf_for(state(request), sid),
        next=_next(target or request.query_params.get("next")),
    )
    if session_id(request) is None:
        set_cookie(request, response, SESSION_COOKIE, sid, None)
    return response


@router.get("/login")
async def login_form(request: Request) -> Response:
    try:
        viewer(request)
        return redirect(request, _next(request.query_params.get("next")))
    except LoginRequired:
        return _login_page(request)


@router.post("/login")
async def login(request: Request) -> Response:
    body = await request.body()
    form = dict(parse_qsl(body[:8192].decode("utf-8", "replace"), keep_blank_values=True))
    name = form.get("username", "").strip()
    try:
        check_post(request, form)
    except Denied:
        return _login_page(
            request, "The login form expired; try again.", name, 403, form.get("next")
        )
    if not name:
        return _login_page(request, "Bad user name or password.", name, 401, form.get("next"))
    try:
        outcome = await login_user(
            state(request), request, name, form.get("password", ""), "dashboard"
        )
    except BadCredentials:
        return _login_page(request, "Bad user name or password.", name, 401, form.get("next"))
    if not isinstance(outcome, LoggedIn):
        response = _login_page(
            request,
            f"Too many failed logins; try again in {math.ceil(outcome)} s.",
            name,
            429,
            form.get("next"),
        )
        response.headers["Retry-After"] = str(math.ceil(outcome))
        return response
    response = redirect(request, _next(form.get("next")))
    start_session(request, response, outcome)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    await read_form(request)
    response = redirect(request, "/app/login")
    end_session(response)
    return response
