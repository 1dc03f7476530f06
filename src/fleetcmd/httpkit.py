"""Pieces every HTTP role shares: error mapping, body size and depth limits, bearer checks,
the waker."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetcmd.errors import FleetError, TooDeep, Unauthorized
from fleetcmd.model.nesting import MAX_DEPTH, text_too_deep

log = logging.getLogger("fleetcmd.http")


# FastAPI's built-in OpenTelemetry hooks look up the tracer, meter and logger providers on
# every request (about a sixth of the server's CPU under agent load); we export Prometheus
# metrics instead.
NO_TELEMETRY: Any = {"tracing": False, "metrics": False, "logs": False}


def invalid_request(errors: Sequence[Any], where: str = "") -> dict[str, Any]:
    """The 422 body of a request that failed validation (pydantic's errors, FastAPI's or our
    own): each field in error and why, and one line that says it all. `where` prefixes the
    fields (e.g. "query") when the errors come from validating one part of the request."""
    fields = [
        {
            "field": ".".join(
                [where] * bool(where) + [str(x) for x in e.get("loc", ()) if x != "body"]
            )
            or "body",
            "error": e.get("msg", "invalid"),
        }
        for e in errors
    ]
    message = "; ".join(f"{e['field']}: {e['error']}" for e in fields[:10])
    return {"error": "invalid_request", "message": message, "details": {"errors": fields}}


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, validation errors and stray exceptions to JSON, in one place."""

    @app.exception_handler(FleetError)
    async def _fleet(_: Request, exc: FleetError) -> JSONResponse:
        return JSONResponse(
            exc.to_json(), status_code=exc.http_status, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(invalid_request(exc.errors()), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            404: "not_found",
            405: "method_not_allowed",
            401: "unauthorized",
            413: "payload_too_large",
        }.get(exc.status_code, "http_error")
        return JSONResponse(
            {"error": code, "message": str(exc.detail)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"error": "internal", "message": "internal error; see the server log"}, status_code=500
        )


class BodyLimit:
    """Refuse request bodies over `limit` bytes (413) before reading them whole, and JSON
    documents nested deeper than `depth` (422) before anything parses them."""

    def __init__(self, app: ASGIApp, limit: int, depth: int = MAX_DEPTH) -> None:
        self.app = app
        self.limit = limit
        self.depth = depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await too_large(send, self.limit)
                return
        if carries_json(scope):
            await self._json(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await too_large(send, self.limit)

    async def _json(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the JSON body whole (it is parsed whole anyway), check it, hand it on."""
        try:
            body = await read_body(receive, self.limit)
        except _TooLarge:
            await too_large(send, self.limit)
            return
        if body is None:
            return  # the client left
        if body.lstrip()[:1] in (b"{", b"[") and text_too_deep(body, self.depth):
            await too_deep(send, self.depth)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # what follows the body: a disconnect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def carries_json(scope: Scope) -> bool:
    """Whether a request has a body that FastAPI would parse as JSON: one declared as JSON,
    or one with no content type at all."""
    headers = dict(scope.get("headers", []))
    if b"content-length" not in headers and b"transfer-encoding" not in headers:
        return False
    if headers.get(b"content-length") == b"0":
        return False
    kind = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    return (
        not kind
        or kind == b"application/json"
        or (kind.startswith(b"application/") and kind.endswith(b"+json"))
    )


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, refused past `limit` bytes (`_TooLarge`); None if the client
    left before sending it."""
    chunks = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise _TooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class _TooLarge(BaseException):
    """A BaseException so that FastAPI's body parsing (which turns any Exception into a 400
    "error parsing the body") lets it through to `BodyLimit`."""


async def too_large(send: Send, limit: int) -> None:
    """Answer 413: the request body is over `limit` bytes."""
    await _answer(
        send, 413, {"error": "payload_too_large", "message": f"request body over {limit} bytes"}
    )


async def too_deep(send: Send, depth: int) -> None:
    """Answer 422: the JSON document nests deeper than `depth` levels."""
    await _answer(
        send,
        422,
        TooDeep(f"JSON document nested deeper than {depth} levels", limit=depth).to_json(),
    )


async def _answer(send: Send, status: int, doc: dict[str, Any]) -> None:
    body = json.dumps(doc, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def check_bearer(request: Request, expected: str) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("bad token")


class Waker:
    """Wake long-polls when new work lands: one asyncio.Event per topic, replaced when fired.

    `fire` may be called from any thread (store commits, the PostgreSQL LISTEN thread)."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def event(self, topic: str) -> asyncio.Event:
        ev = self._events.get(topic)
        if ev is None:
            ev = self._events[topic] = asyncio.Event()
        return ev

    def _fire(self, topic: str) -> None:
        ev = self._events.pop(topic, None)
        if ev is not None:
            ev.set()

    def fire_all(self) -> None:
        """Wake every waiter (on shutdown); safe from a signal handler or another thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fire_all)

    def _fire_all(self) -> None:
        for topic in list(self._events):
            self._fire(topic)

    def fire(self, topic: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._fire(topic)
        else:
            loop.call_soon_threadsafe(self._fire, topic)


async def wait_for(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except TimeoutError:
        return False


Handler = Callable[..., Awaitable[Any]]
