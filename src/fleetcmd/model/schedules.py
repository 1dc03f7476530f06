"""Schedules and freezes: what a person files, and the calendar arithmetic behind them.

A schedule files a task once at `start` (a local time in `tz`) or on a recurrence, an RFC 5545
RRULE (`FREQ=DAILY;BYHOUR=2;BYMINUTE=30`) read by python-dateutil. Recurrences run on the wall
clock of the named time zone (zoneinfo): "02:30 every night in Europe/Paris" stays at 02:30
local across a change of offset. As RFC 5545 says for a local time with a TZID, a time that
happens twice (the autumn change) means its first instance, and one that does not happen (the
spring gap) is read with the offset before the gap (02:30 becomes 03:30 summer time).

A freeze (a blackout period) is a span of UTC time over the agents a selector matches: tasks
that would reach one of them are refused, unless their filer holds the override permission.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from dateutil.rrule import rrule, rrulestr
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleetcmd.model import selectors
from fleetcmd.model.wire import Filer, TaskIn

MissedPolicy = Literal["run-once", "skip"]
# How late an occurrence may be filed and still count as on time (the loop wakes at the due
# time, so only an indexer that was down, or a store that was unreachable, is later than this).
GRACE = 300.0
MAX_OCCURRENCES_SHOWN = 50
_FORBIDDEN_PARTS = ("DTSTART", "TZID")
_SLACK = timedelta(hours=3)  # longer than any change of offset


class ScheduleError(ValueError):
    """A schedule that cannot be read (bad rule, zone or start)."""


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def zone(name: str) -> ZoneInfo:
    if name not in _zones():
        raise ScheduleError(f"unknown time zone {name!r} (an IANA name such as Europe/Paris)")
    try:
        return ZoneInfo(name)
    except ZoneInfoNotFoundError:
        raise ScheduleError(f"unknown time zone {name!r}") from None


def parse_local(text: str) -> datetime:
    """A local wall-clock time, `YYYY-MM-DDTHH:MM[:SS]`, without an offset (the zone says it)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ScheduleError(f"bad start {text!r}: a local time such as 2026-10-24T02:30") from None
    if value.tzinfo is not None:
        raise ScheduleError("'start' is a local time in 'tz': give it without an offset")
    return value.replace(microsecond=0)


def to_epoch(local: datetime, tz: ZoneInfo) -> float:
    """The instant of a local wall-clock time (fold 0: the first of a repeated time; a time in
    a spring gap is read with the offset before it)."""
    return local.replace(tzinfo=tz, fold=0).timestamp()


def to_local(epoch: float, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(epoch, tz).replace(tzinfo=None)


def iso_local(epoch: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(epoch, tz).isoformat()


def iso_utc(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class Recurrence:
    """The occurrences (UTC instants) of a schedule: its rule, start and zone."""

    def __init__(self, rule: str | None, start_local: str, tz: str) -> None:
        self.tz = zone(tz)
        self.start = parse_local(start_local)
        self.rule: rrule | None = None
        if rule is not None:
            text = rule.strip().removeprefix("RRULE:")
            upper = text.upper()
            if any(part in upper for part in _FORBIDDEN_PARTS):
                raise ScheduleError(
                    "give the rule's start in 'start' and its zone in 'tz' (no DTSTART or "
                    "TZID); UNTIL is a local time in 'tz' too"
                )
            if "FREQ=SECONDLY" in upper:
                raise ScheduleError("FREQ=SECONDLY is too frequent for a schedule")
            try:
                parsed = rrulestr(text, dtstart=self.start, forceset=False)
            except (ValueError, TypeError) as exc:
                raise ScheduleError(f"bad RRULE {rule!r}: {exc}") from None
            if not isinstance(parsed, rrule):
                raise ScheduleError("one RRULE, without RDATE or EXRULE")
            self.rule = parsed

    def after(self, epoch: float) -> Iterator[float]:
        """Occurrences strictly after `epoch`, in order, each instant once."""
        if self.rule is None:
            at = to_epoch(self.start, self.tz)
            if at > epoch:
                yield at
            return
        # The rule runs in local time. Instants follow it in order except around a spring gap
        # (02:30 read as 03:30 comes after 03:00): hold each one until the rule is past it
        # by more than any gap, and start a little early for the same reason.
        local = max(self.start, to_local(epoch, self.tz) - _SLACK)
        held: list[float] = []
        last = epoch
        for occ in self.rule.xafter(local, inc=True):
            at = to_epoch(occ, self.tz)
            heapq.heappush(held, at)
            while held and held[0] < at - _SLACK.total_seconds():
                first = heapq.heappop(held)
                if first > last:
                    last = first
                    yield first
        while held:
            first = heapq.heappop(held)
            if first > last:
                last = first
                yield first

    def next_after(self, epoch: float) -> float | None:
        return next(self.after(epoch), None)

    def between(self, after: float, until: float, limit: int) -> tuple[list[float], int]:
        """Up to `limit` latest occurrences in (`after`, `until`], and how many there were."""
        found: list[float] = []
        n = 0
        for at in self.after(after):
            if at > until:
                break
            n += 1
            found.append(at)
            if len(found) > limit:
                found.pop(0)
        return found, n

    def upcoming(self, epoch: float, n: int = 5) -> list[float]:
        out: list[float] = []
        for at in self.after(epoch):
            out.append(at)
            if len(out) >= n:
                break
        return out


class ScheduleIn(BaseModel):
    """`POST /schedules`: the task to file, and when."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    task: TaskIn
    tz: str = Field(default="UTC", min_length=1, max_length=64)
    start: str | None = Field(
        default=None,
        max_length=32,
        description="Local time in `tz` of the first occurrence (default: now).",
    )
    rrule: str | None = Field(default=None, min_length=1, max_length=1000)
    missed: MissedPolicy = "run-once"

    @field_validator("task")
    @classmethod
    def _no_key(cls, v: TaskIn) -> TaskIn:
        if v.idempotency_key is not None or v.preview_token is not None:
            raise ValueError(
                "a scheduled task has no idempotency key or preview token: each occurrence "
                "is filed once, with a key of its own"
            )
        return v

    @model_validator(mode="after")
    def _readable(self) -> ScheduleIn:
        try:
            Recurrence(self.rrule, self.start or "2000-01-01T00:00", self.tz)
        except ScheduleError as exc:
            raise ValueError(str(exc)) from None
        return self


class ScheduleToIndexer(ScheduleIn, Filer):
    pass


class FreezeIn(BaseModel):
    """`POST /freezes`: no task reaches the agents `selector` matches in [starts_at, ends_at)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    selector: str = Field(min_length=1, max_length=4096)
    starts_at: datetime
    ends_at: datetime
    reason: str = Field(default="", max_length=1000)
    # refuse: tasks that would reach frozen agents are refused; hold: they are filed and
    # their commands to frozen agents wait (`held`) until the freeze ends.
    mode: Literal["refuse", "hold"] = "refuse"

    @model_validator(mode="after")
    def _span(self) -> FreezeIn:
        for value in (self.starts_at, self.ends_at):
            if value.tzinfo is None:
                raise ValueError("'starts_at' and 'ends_at' carry an offset (e.g. Z)")
        if self.ends_at <= self.starts_at:
            raise ValueError("'ends_at' must be after 'starts_at'")
        if (self.ends_at - self.starts_at).total_seconds() > 366 * 86400:
            raise ValueError("a freeze lasts at most a year")
        return self


class FreezeToIndexer(FreezeIn, Filer):
    pass


class WindowIn(BaseModel):
    """`POST /windows`: the agents `selector` matches may run windowed tasks from each
    occurrence of `rrule` (local times in `tz`, from `start`) for `duration` seconds."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    selector: str = Field(min_length=1, max_length=4096)
    rrule: str = Field(min_length=1, max_length=1000)
    start: str = Field(default="2000-01-01T00:00", max_length=32)
    tz: str = Field(default="UTC", min_length=1, max_length=64)
    duration: float = Field(gt=0, le=7 * 86400)

    @model_validator(mode="after")
    def _readable(self) -> WindowIn:
        try:
            Recurrence(self.rrule, self.start, self.tz)
        except ScheduleError as exc:
            raise ValueError(str(exc)) from None
        try:
            selectors.parse(self.selector)
        except selectors.SelectorError as exc:
            raise ValueError(f"selector: {exc}") from None
        return self


class WindowToIndexer(WindowIn, Filer):
    pass


def schedule_view(row: dict[str, Any], now: float) -> dict[str, Any]:
    """A schedule as the API answers it, with its next five occurrences."""
    rec = Recurrence(row["rrule"], row["start_local"], row["tz"])
    upcoming = rec.upcoming(max(now, row["last_at"] or 0.0)) if row["status"] == "active" else []
    return {
        **{k: v for k, v in row.items() if k not in ("next_at", "last_at", "created_at")},
        "next_at": iso_utc(row["next_at"]),
        "last_at": iso_utc(row["last_at"]),
        "created_at": iso_utc(row["created_at"]),
        "updated_at": iso_utc(row["updated_at"]),
        "next": [{"at": iso_utc(t), "local": iso_local(t, rec.tz)} for t in upcoming],
    }
