"""The Comms API's three hot routes, served as plain ASGI: the long-poll, the ack and the
results. Every agent calls each of them for every command, so their per-request cost decides
how many agents a node carries (docs/performance.md): through FastAPI's routing, dependency
solving and response encoding a request cost ~0.7 ms of server CPU here.

The same models validate the same bytes (pydantic, in Rust, straight from the body), the same
functions (`checkin.take`, `checkin.acknowledge`, `results.record`) do the work, and errors
have the same JSON bodies and statuses as on every other route. FastAPI still documents these
routes in the OpenAPI (the fuzz tests generate requests from it and land here) and serves
them when `FLEETCMD_COMMS_FASTPATH=0` (to compare, or to rule this layer out)."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import parse_qsl

from pydantic import ValidationError
from pydantic_core import to_json
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetcmd.errors import FleetError
from fleetcmd.httpkit import invalid_request, too_deep, too_large
from fleetcmd.model.nesting import MAX_DEPTH, text_too_deep
from fleetcmd.model.wire import AgentResultsIn
from fleetcmd.server.comms.auth import AgentRemoved
from fleetcmd.server.comms.checkin import AckIn, PollQuery, acknowledge, take
from fleetcmd.server.comms.results import record
from fleetcmd.server.indexer_client import IndexerError
from fleetcmd.server.state import ServerState
from fleetcmd.server.tokens import AGENT, bearer
from fleetcmd.server.web import indexer_error

log = logging.getLogger("fleetcmd.server.comms.fastpath")

Route = Callable[[ServerState, str, Scope, bytes], Awaitable[dict[str, object]]]


async def _poll(st: ServerState, agent_id: str, scope: Scope, _: bytes) -> dict[str, object]:
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    try:
        wait = PollQuery.model_validate({"wait": query["wait"]} if "wait" in query else {}).wait
    except ValidationError as exc:
        raise _Invalid(invalid_request(exc.errors(), "query")) from None
    return {"commands": await take(st, agent_id, wait)}


async def _ack(st: ServerState, agent_id: str, _: Scope, body: bytes) -> dict[str, object]:
    return {"acked": await acknowledge(st, agent_id, _parse(AckIn, body).ids)}


async def _results(st: ServerState, agent_id: str, scope: Scope, body: bytes) -> dict[str, object]:
    client = scope.get("client")
    address = client[0] if client else None
    return {"results": await record(st, agent_id, _parse(AgentResultsIn, body).results, address)}


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/agents/commands"): _poll,
    ("POST", "/agents/commands/ack"): _ack,
    ("POST", "/agents/results"): _results,
}


class _Invalid(Exception):
    def __init__(self, body: dict[str, object]) -> None:
        self.body = body


M = TypeVar("M", AckIn, AgentResultsIn)


def _parse(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _Invalid(
            invalid_request(exc.errors(include_url=False, include_input=False))
        ) from None


def enabled() -> bool:
    return os.environ.get("FLEETCMD_COMMS_FASTPATH", "1") != "0"


class CommsFastPath:
    """The outermost ASGI app of the Comms API: the three hot routes here, everything else
    to the FastAPI app. It bounds request bodies (size and depth) itself, as `BodyLimit`
    does there."""

    def __init__(self, app: ASGIApp, st: ServerState) -> None:
        self.app = app
        self.st = st
        self.limit = st.options.body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (
            ROUTES.get((scope.get("method", ""), scope.get("path", "")))
            if scope["type"] == "http"
            else None
        )
        if route is None:
            await self.app(scope, receive, send)
            return
        st = self.st
        try:
            declared = _header(scope, b"content-length")
            if declared.isdigit() and int(declared) > self.limit:
                raise _TooLarge
            agent_id = st.tokens.verify(bearer(_header(scope, b"authorization")), AGENT)
            if agent_id in st.removed:
                raise AgentRemoved(f"agent {agent_id} was removed from the fleet")
            body = await _body(receive, self.limit) if scope["method"] == "POST" else b""
            if text_too_deep(body):
                await too_deep(send, MAX_DEPTH)
                return
            data = await route(st, agent_id, scope, body)
            payload = to_json({"data": data})
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return
        except _TooLarge:
            await too_large(send, self.limit)
            return
        except FleetError as exc:
            response = JSONResponse(
                exc.to_json(), status_code=exc.http_status, headers=getattr(exc, "headers", None)
            )
        except _Invalid as exc:
            response = JSONResponse(exc.body, status_code=422)
        except IndexerError as exc:
            response = indexer_error(exc)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            response = JSONResponse(
                {"error": "internal", "message": "internal error; see the server log"},
                status_code=500,
            )
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


async def _body(receive: Receive, limit: int) -> bytes:
    """The whole request body, refused past `limit` bytes."""
    chunks = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client left
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
