"""How a batch of events leaves: a signed webhook POST, or RFC 5424 syslog messages over TCP
(optionally TLS) with octet-counted framing (RFC 6587), each message's MSG the event as JSON
and its structured data the event's id, kind and type, so a SIEM collector can de-duplicate.

A sender raises `DeliveryFailed` (or any network error) when the batch may not have arrived;
the dispatcher then keeps its cursor and tries again later, so a batch may arrive twice,
never not at all (receivers de-duplicate by event id)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import ssl
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from fleetcmd import __version__
from fleetcmd.model.subscriptions import SIGNATURE_HEADER, sign

SD_ID = "fleetcmd@32473"  # 32473: the private enterprise number RFC 5612 reserves for examples
WARNING, NOTICE, INFO = 4, 5, 6
WARN_TYPES = {"failure", "timeout", "expired", "partial", "denied"}


class DeliveryFailed(Exception):
    pass


class Sender(Protocol):
    async def send(self, events: list[dict[str, Any]]) -> None: ...

    async def close(self) -> None: ...


class WebhookSender:
    """One POST per batch: `{"subscriber": name, "events": [...]}`, signed; any 2xx is
    delivered, anything else (or no answer within the timeout) is not."""

    def __init__(self, sub: dict[str, Any]) -> None:
        self.name = sub["name"]
        self.url = sub["url"]
        self.secret = sub["secret"] or ""
        self.timeout = float(sub["options"].get("timeout", 10.0))
        self.http = httpx.AsyncClient(timeout=self.timeout)

    async def send(self, events: list[dict[str, Any]]) -> None:
        body = json.dumps(
            {"subscriber": self.name, "events": events}, separators=(",", ":")
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"fleetcmd/{__version__}",
            "X-Fleetcmd-Subscriber": self.name,
            SIGNATURE_HEADER: sign(self.secret, body),
        }
        try:
            r = await self.http.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise DeliveryFailed(f"no answer within {self.timeout:g}s from {self.url}") from exc
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{self.url}: {exc or type(exc).__name__}") from exc
        if not r.is_success:
            raise DeliveryFailed(f"HTTP {r.status_code} from {self.url}: {r.text[:200]}")

    async def close(self) -> None:
        await self.http.aclose()


def _sd_value(value: Any) -> str:
    return re.sub(r'(["\\\]])', r"\\\1", str(value))


def _header_field(value: str, limit: int) -> str:
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def severity(event: dict[str, Any]) -> int:
    if event["kind"] == "alert":
        return WARNING
    if event["type"] in WARN_TYPES or (
        event["kind"] == "audit" and (event.get("data") or {}).get("outcome") in WARN_TYPES
    ):
        return WARNING
    if event["kind"] == "agent":
        return NOTICE
    return INFO


def rfc5424(event: dict[str, Any], facility: int, hostname: str) -> bytes:
    """`<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG`, MSG the event as JSON (UTF-8)."""
    pri = facility * 8 + severity(event)
    msgid = _header_field(f"{event['kind']}.{event['type']}", 32)
    sd = (
        f'[{SD_ID} id="{_sd_value(event["id"])}" kind="{_sd_value(event["kind"])}" '
        f'type="{_sd_value(event["type"])}"]'
    )
    msg = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    line = f"<{pri}>1 {event['at']} {hostname} fleetcmd {os.getpid()} {msgid} {sd} {msg}"
    return line.encode()


class SyslogSender:
    """One TCP (or TLS) connection, kept open; a batch is written and drained as one piece. A
    connection the collector closed is noticed before the next write, and made again."""

    def __init__(self, sub: dict[str, Any]) -> None:
        parts = urlsplit(sub["url"])
        self.host = parts.hostname or "127.0.0.1"
        self.port = int(parts.port or 514)
        opts = sub["options"]
        self.timeout = float(opts.get("timeout", 10.0))
        self.facility = int(opts.get("facility", 16))
        self.tls: ssl.SSLContext | None = None
        if opts.get("tls"):
            self.tls = ssl.create_default_context(cafile=opts.get("ca_file"))
        self.hostname = _header_field(socket.gethostname(), 255)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> asyncio.StreamWriter:
        if self.writer is not None and self.reader is not None and not self.reader.at_eof():
            return self.writer
        await self.close()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.host,
                self.port,
                ssl=self.tls,
                server_hostname=self.host if self.tls else None,
            ),
            self.timeout,
        )
        self.reader, self.writer = reader, writer
        return writer

    async def send(self, events: list[dict[str, Any]]) -> None:
        frames = []
        for e in events:
            msg = rfc5424(e, self.facility, self.hostname)
            frames.append(b"%d %s" % (len(msg), msg))
        try:
            writer = await self._connect()
            writer.write(b"".join(frames))
            await asyncio.wait_for(writer.drain(), self.timeout)
        except (OSError, TimeoutError) as exc:
            await self.close()
            raise DeliveryFailed(
                f"syslog {self.host}:{self.port}: {exc or type(exc).__name__}"
            ) from exc

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 2.0)


def sender_for(sub: dict[str, Any]) -> Sender:
    return WebhookSender(sub) if sub["kind"] == "webhook" else SyslogSender(sub)
