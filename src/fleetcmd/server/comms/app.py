"""The Comms API application (default port 27000)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from starlette.types import ASGIApp

from fleetcmd import __version__
from fleetcmd.httpkit import NO_TELEMETRY, BodyLimit, check_bearer
from fleetcmd.server.comms import (
    checkin,
    configuration,
    enroll,
    fastpath,
    keys,
    packages,
    progress,
    results,
    telemetry,
)
from fleetcmd.server.state import ServerState
from fleetcmd.server.web import install_server_errors, metrics_response


def create_comms_app(st: ServerState) -> ASGIApp:
    """The Comms API: FastAPI, behind the hot routes' fast path unless it is turned off."""
    app = FastAPI(
        title="fleetcmd Comms API",
        version=__version__,
        telemetry=NO_TELEMETRY,
        description="Agents enroll, authenticate, long-poll for commands and "
        "report results (docs/comms-api.md).",
    )
    app.state.server = st
    install_server_errors(app)
    for module in (
        enroll,
        checkin,
        keys,
        results,
        progress,
        configuration,
        telemetry,
        packages,
    ):
        app.include_router(module.router)

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "role": "server",
            "api": "comms",
            "node": st.options.node_id,
            "version": __version__,
            "uptime": round(time.time() - st.started_at, 1),
        }

    @app.get("/metrics", tags=["ops"])
    async def metrics(request: Request) -> PlainTextResponse:
        """Scraped with the node credential (agents have no business here)."""
        check_bearer(request, st.options.token)
        return metrics_response(st)

    app.add_middleware(BodyLimit, limit=st.options.body_limit)
    # The hot routes go first, ahead of FastAPI's own middleware stack (fastpath.py).
    return fastpath.CommsFastPath(app, st) if fastpath.enabled() else app
