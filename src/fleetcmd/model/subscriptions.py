"""Event subscriptions (issue 18): the shape of a subscriber as administrators register it
(one model, used by the Management API and the indexer), and the webhook signature both
sides of a delivery compute.

Signature: `X-Fleetcmd-Signature: t=<unix seconds>,v1=<hex>` where hex is
HMAC-SHA256(secret, "<t>." + raw body). A receiver recomputes it over the bytes it got,
compares in constant time, and refuses a `t` too far from its clock (replays)."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SIGNATURE_HEADER = "X-Fleetcmd-Signature"
Kind = Literal["task", "command", "audit", "alert", "agent"]
KINDS: tuple[Kind, ...] = ("task", "command", "audit", "alert", "agent")
Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
TOLERANCE = 300.0  # seconds a receiver should accept between `t` and its clock


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(
    secret: str, header: str, body: bytes, now: float | None = None, tolerance: float = TOLERANCE
) -> bool:
    """What a receiver does with the header and the raw body."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


class Filters(BaseModel):
    """What a subscriber gets: `kinds` (default all), `statuses` for commands, tasks and
    agents (e.g. failure, timeout, disconnected), `actions` for audit records (exact or
    fnmatch patterns such as `task.*`)."""

    model_config = ConfigDict(extra="forbid")
    kinds: list[Kind] = Field(default_factory=lambda: list(KINDS), min_length=1)
    statuses: list[Annotated[str, Field(max_length=32)]] = Field(
        default_factory=list, max_length=32
    )
    actions: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=list, max_length=64
    )


class Options(BaseModel):
    """Delivery: events per batch, retries (jittered exponential backoff from `retry_base` to
    `retry_max` seconds; `pause_after` failures in a row pause the subscriber), timeouts; for
    syslog, TLS (`tls`, with `ca_file` to trust a private CA) and the facility."""

    model_config = ConfigDict(extra="forbid")
    batch: int = Field(default=200, ge=1, le=5000)
    retry_base: float = Field(default=1.0, gt=0, le=300)
    retry_max: float = Field(default=300.0, gt=0, le=3600)
    pause_after: int = Field(default=20, ge=1, le=10_000)
    timeout: float = Field(default=10.0, gt=0, le=120)
    tls: bool = False
    ca_file: str | None = Field(default=None, max_length=4096)
    facility: int = Field(default=16, ge=0, le=23)  # local0


class SubscriberIn(BaseModel):
    """`kind` webhook: `url` http(s)://…; kind syslog: `url` tcp://host:port (`options.tls`
    for TLS). `from_event` / `from_time` start it in the past (replay); by default it gets
    what happens from now on."""

    model_config = ConfigDict(extra="forbid")
    name: Name
    kind: Literal["webhook", "syslog"]
    url: str = Field(min_length=1, max_length=2048)
    filters: Filters = Field(default_factory=Filters)
    options: Options = Field(default_factory=Options)
    from_event: int | None = Field(default=None, ge=0)
    from_time: float | None = Field(default=None, ge=0)

    @field_validator("url")
    @classmethod
    def _plain(cls, url: str) -> str:
        if re.search(r"\s", url):
            raise ValueError("the URL has white space")
        return url

    @model_validator(mode="after")
    def _url_fits_kind(self) -> SubscriberIn:
        parts = urlsplit(self.url)
        if self.kind == "webhook" and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise ValueError("a webhook's url is http(s)://host[:port]/path")
        if self.kind == "syslog":
            try:
                port = parts.port
            except ValueError:
                port = None
            if parts.scheme != "tcp" or not parts.hostname or not port:
                raise ValueError("a syslog subscriber's url is tcp://host:port")
        return self


class ReplayIn(BaseModel):
    """Move a subscriber's cursor to just before an event id, or to a time."""

    model_config = ConfigDict(extra="forbid")
    from_event: int | None = Field(default=None, ge=0)
    from_time: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one(self) -> ReplayIn:
        if (self.from_event is None) == (self.from_time is None):
            raise ValueError("give from_event or from_time")
        return self
