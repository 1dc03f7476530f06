"""How every role serves HTTP: uvicorn, with deadlines on half-sent requests, a cap on open
connections, and forwarded headers trusted only from the proxies an operator names.

uvicorn itself times out only idle keep-alive connections: a client that sends half a
request line, or headers and then half a body, holds its connection (and a task waiting on
the body) for ever (issue 20: 107 of 120 such connections still open after 293 s). The
deadlines are kept per connection in the HTTP protocol, since nothing above it (ASGI) sees
a request before its headers are complete. Long-polls are not affected: their requests
are complete when they arrive; only the answer waits."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("fleetcmd.serving")


@dataclass(frozen=True)
class Limits:
    """What one listening API allows each client."""

    header_timeout: float = 10.0  # from connecting (or the first byte of a request) to its
    # last header
    body_timeout: float = 60.0  # from the last header to the last byte of the body
    max_connections: int = 16_384  # open at once; more are answered 503 and closed
    max_header_bytes: int = 64 * 1024  # request line and headers


def config(
    app: Any, host: str, port: int, limits: Limits, forwarded_allow_ips: str = "", **options: Any
) -> uvicorn.Config:
    """A uvicorn configuration with these limits. `X-Forwarded-For` (and `-Proto`) are
    honoured only from the comma-separated `forwarded_allow_ips` (none by default: the
    client address is the peer's, as audit records, login throttling and rate limits
    need); uvicorn would otherwise trust them from loopback, or from its environment."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded(limits),
        proxy_headers=bool(forwarded_allow_ips.strip()),
        forwarded_allow_ips=forwarded_allow_ips.strip() or "",
        log_level="warning",
        access_log=False,
        **options,
    )


def guarded(limits: Limits) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, with `limits` (uvicorn makes one per connection)."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})


def _response(status: int, reason: str, error: str, message: str) -> bytes:
    body = json.dumps({"error": error, "message": message}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class GuardedProtocol(HttpToolsProtocol):
    """One connection: refused when over the cap, closed (408) when a request's headers or
    body do not arrive in time, refused (431) when its headers are too large."""

    limits: ClassVar[Limits] = Limits()
    _deadline: asyncio.TimerHandle | None = None
    _header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                503,
                "Service Unavailable",
                "too_many_connections",
                f"over {self.limits.max_connections} open connections; try again",
            )
            return
        self._arm(self.limits.header_timeout, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._deadline is None:  # a keep-alive connection's next request
            self._arm(self.limits.header_timeout, "headers")

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        super().on_headers_complete()
        self._arm(self.limits.body_timeout, "body")  # disarmed at once if there is none

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():  # refused: the parser still reads on
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            super().on_message_complete()

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.limits.max_header_bytes and not self.transport.is_closing():
            self._refuse(
                431,
                "Request Header Fields Too Large",
                "headers_too_large",
                f"request line and headers over {self.limits.max_header_bytes} bytes",
            )

    def _arm(self, seconds: float, part: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, part, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, part: str, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self.transport.close()  # an answer is under way: nothing else can be said
            return
        self._refuse(
            408,
            "Request Timeout",
            "request_timeout",
            f"the request's {part} did not arrive within {seconds:g}s",
        )

    def _refuse(self, status: int, reason: str, error: str, message: str) -> None:
        log.debug("closing connection from %s: %s", self.client, message)
        self.transport.write(_response(status, reason, error, message))
        self.transport.close()
