"""The Management API application (default port 55000, OpenAPI at /openapi.json)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.responses import PlainTextResponse

from fleetcmd import __version__
from fleetcmd.httpkit import NO_TELEMETRY, BodyLimit
from fleetcmd.server.dashboard import mount_dashboard
from fleetcmd.server.management import (
    audit,
    auth,
    enrollment,
    export,
    fleet,
    live,
    operators,
    reports,
    rollouts,
    schedules,
    security,
    subscribers,
    tasks,
)
from fleetcmd.server.rbac import User
from fleetcmd.server.state import ServerState
from fleetcmd.server.web import install_server_errors, metrics_response


def create_management_app(st: ServerState) -> FastAPI:
    app = FastAPI(
        title="fleetcmd Management API",
        version=__version__,
        telemetry=NO_TELEMETRY,
        description="File tasks, watch them progress, read the fleet. Log in with "
        "HTTP Basic on /security/user/authenticate, then send the token "
        "as `Authorization: Bearer`.",
    )
    app.state.server = st
    install_server_errors(app)
    # live first: /agents/summary before /agents/{id}
    for module in (
        auth,
        security,
        audit,
        enrollment,
        live,
        operators,
        tasks,
        export,
        rollouts,
        schedules,
        fleet,
        reports,
        subscribers,
    ):
        app.include_router(module.router)

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "role": "server",
            "api": "management",
            "node": st.options.node_id,
            "version": __version__,
            "uptime": round(time.time() - st.started_at, 1),
        }

    @app.get("/metrics", tags=["ops"])
    async def metrics(
        _: Annotated[User, Depends(auth.require("metrics:read"))],
    ) -> PlainTextResponse:
        return metrics_response(st)

    mount_dashboard(app, st)
    app.add_middleware(BodyLimit, limit=st.options.body_limit)
    return app
