"""What both server APIs share: error mapping (indexer errors pass through), body limit."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest

from fleetcmd.httpkit import install_error_handlers
from fleetcmd.server.indexer_client import IndexerError, IndexerUnavailable
from fleetcmd.server.state import ServerState


def install_server_errors(app: FastAPI) -> None:
    install_error_handlers(app)

    @app.exception_handler(IndexerError)
    async def _indexer(_: Request, exc: IndexerError) -> JSONResponse:
        return indexer_error(exc)


def indexer_error(exc: IndexerError) -> JSONResponse:
    """The indexer's 4xx answers reach the caller unchanged; outages become 503."""
    if isinstance(exc, IndexerUnavailable):
        return JSONResponse(
            {"error": "indexer_unavailable", "message": "the indexer is unavailable; try again"},
            status_code=503,
            headers={"Retry-After": "2"},
        )
    return JSONResponse(exc.body, status_code=exc.status)


def metrics_response(st: ServerState) -> PlainTextResponse:
    st.metrics.mailbox_depth.set(st.mailboxes.depth())
    st.metrics.connected.set(len(st.mailboxes.connected()))
    return PlainTextResponse(
        generate_latest(st.metrics.registry).decode(), media_type="text/plain; version=0.0.4"
    )
