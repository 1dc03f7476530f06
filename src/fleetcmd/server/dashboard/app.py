"""The dashboard application, mounted at `/app` on the Management API.

A sub-application of its own, so that its errors are HTML pages (a login redirect, a 403
page) while the API next to it keeps answering JSON, and so that it stays out of the API's
OpenAPI document."""

from __future__ import annotations

import logging
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from fleetcmd.errors import FleetError
from fleetcmd.server.dashboard.pages import (
    agents,
    alerts,
    audit,
    auth,
    commands,
    create,
    groups,
    operators,
    overview,
    schedules,
    subscribers,
    tasks,
)
from fleetcmd.server.dashboard.render import STATIC, page
from fleetcmd.server.dashboard.session import Denied, LoginRequired, Viewer, viewer
from fleetcmd.server.indexer_client import IndexerError, IndexerUnavailable
from fleetcmd.server.state import ServerState

log = logging.getLogger("fleetcmd.server.dashboard")


class _Static(StaticFiles):
    """Assets are addressed by content hash (`?v=`), so browsers may keep them a day."""

    async def get_response(self, path: str, scope: dict) -> Response:  # type: ignore[override]
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "public, max-age=86400"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def _maybe_viewer(request: Request) -> Viewer | None:
    try:
        return viewer(request)
    except LoginRequired:
        return None


def create_dashboard_app(st: ServerState) -> FastAPI:
    app = FastAPI(title="fleetcmd dashboard", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.server = st
    for module in (
        auth,
        overview,
        create,
        operators,
        tasks,
        commands,
        agents,
        alerts,
        groups,
        audit,
        schedules,
        subscribers,
    ):
        app.include_router(module.router)
    app.mount("/static", _Static(directory=STATIC), name="static")

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _: LoginRequired) -> Response:
        if request.method == "GET" and "text/event-stream" not in request.headers.get("accept", ""):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/app/login?next={_quote(target)}", status_code=303)
        return page(
            request,
            "error.html",
            None,
            401,
            title="Logged out",
            message="Your session has ended. Log in again.",
        )

    @app.exception_handler(Denied)
    async def _denied(request: Request, exc: Denied) -> Response:
        return page(
            request,
            "error.html",
            _maybe_viewer(request),
            403,
            title="Not allowed",
            message=exc.message,
        )

    @app.exception_handler(FleetError)
    async def _fleet(request: Request, exc: FleetError) -> Response:
        return page(
            request,
            "error.html",
            _maybe_viewer(request),
            exc.http_status,
            title="Not found" if exc.http_status == 404 else "Refused",
            message=exc.message,
        )

    @app.exception_handler(IndexerError)
    async def _indexer(request: Request, exc: IndexerError) -> Response:
        if isinstance(exc, IndexerUnavailable):
            return page(
                request,
                "error.html",
                _maybe_viewer(request),
                503,
                title="Indexer unavailable",
                message="The indexer did not answer; this page retries when reloaded.",
            )
        status = exc.status if exc.status in (400, 403, 404, 409, 422) else 502
        return page(
            request,
            "error.html",
            _maybe_viewer(request),
            status,
            title="Not found" if status == 404 else "Refused",
            message=str(exc.body.get("message") or exc.body),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return page(
            request,
            "error.html",
            _maybe_viewer(request),
            exc.status_code,
            title="Not found" if exc.status_code == 404 else "Error",
            message=str(exc.detail),
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        log.exception("dashboard error on %s %s", request.method, request.url.path)
        return page(
            request,
            "error.html",
            None,
            500,
            title="Internal error",
            message="Something went wrong; the server log has the details.",
        )

    return app


def mount_dashboard(api: FastAPI, st: ServerState) -> None:
    """Serve the dashboard at /app; `/` leads there."""
    api.mount("/app", create_dashboard_app(st))

    @api.get("/", include_in_schema=False)
    async def _root() -> RedirectResponse:
        return RedirectResponse("/app/", status_code=307)


def _quote(path: str) -> str:
    return quote(path, safe="/")
