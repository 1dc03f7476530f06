"""Decoders of the log collector: one log line in, the fields of one event out.

Field names are flat, as the engine's rules name them (docs/engine.md, "Fields"), and follow
the sample ruleset: `program`, `message`, `srcip`.

- `syslog`: a line as rsyslog writes it, with the traditional timestamp (`Dec  7 14:31:16 host
  sshd[812]: …`, RFC 3164) or the high-precision one (`2026-12-07T14:31:16.123456+00:00 host
  sshd[812]: …`, Debian's default since 12): `timestamp` (epoch seconds), `hostname`,
  `program`, `pid`, `message`. A line that is not syslog still gives `message`.
  Lines of `sshd` (and `sshd-session`, OpenSSH ≥ 9.8) are decoded further (`decoder: sshd`):
  `Failed password|publickey|… for [invalid user] USER from ADDRESS port N` →
  `category: authentication_failed`, `dstuser`, `srcip`, `srcport`, `auth_method`,
  `invalid_user`; `Invalid user USER from ADDRESS [port N]` → `category: invalid_user`;
  `Accepted METHOD for USER from ADDRESS port N` → `category: authentication_success`.
  An address that does not parse as one is left out rather than passed on to a rule.
- `json`: one JSON object per line; its keys become the event's (the collector's own keys,
  `module`, `id`, `location`, `decoder`, win). A line that is not an object is
  `{"message": line, "decoder": "json-invalid"}`, so nothing read is silently dropped.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import time
from datetime import datetime
from typing import Any

FORMATS = ("syslog", "json")
MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}

_HEAD = r"(?P<host>\S+) (?P<program>[^\s\[:]+)(?:\[(?P<pid>\d+)\])?: ?(?P<message>.*)$"
SYSLOG_BSD = re.compile(r"^(?P<ts>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) " + _HEAD)
SYSLOG_ISO = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?) " + _HEAD
)
SSHD_PROGRAMS = ("sshd", "sshd-session")
SSHD_FAILED = re.compile(
    r"^Failed (?P<method>\S+) for (?P<invalid>invalid user )?(?P<user>\S*) "
    r"from (?P<ip>\S+) port (?P<port>\d+)"
)
SSHD_INVALID = re.compile(r"^Invalid user (?P<user>\S*) from (?P<ip>\S+)(?: port (?P<port>\d+))?")
SSHD_ACCEPTED = re.compile(
    r"^Accepted (?P<method>\S+) for (?P<user>\S+) from (?P<ip>\S+) port (?P<port>\d+)"
)


def decode(fmt: str, line: str, now: float | None = None) -> dict[str, Any]:
    """The fields of one line (without the collector's own keys)."""
    if fmt == "json":
        return decode_json(line)
    return decode_syslog(line, now if now is not None else time.time())


def decode_json(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        return {"message": line, "decoder": "json-invalid"}
    return {**value, "decoder": "json"}


def decode_syslog(line: str, now: float) -> dict[str, Any]:
    m = SYSLOG_ISO.match(line) or SYSLOG_BSD.match(line)
    if m is None:
        return {"message": line, "decoder": "plain"}
    fields: dict[str, Any] = {
        "hostname": m["host"],
        "program": m["program"],
        "message": m["message"],
        "decoder": "syslog",
    }
    if m["pid"]:
        fields["pid"] = m["pid"]
    ts = _timestamp(m["ts"], now)
    if ts is not None:
        fields["timestamp"] = ts
    if m["program"] in SSHD_PROGRAMS:
        fields.update(decode_sshd(m["message"]))
    return fields


def decode_sshd(message: str) -> dict[str, Any]:
    if m := SSHD_FAILED.match(message):
        out = {
            "category": "authentication_failed",
            "auth_method": m["method"],
            "dstuser": m["user"],
            "invalid_user": bool(m["invalid"]),
            "srcport": m["port"],
        }
    elif m := SSHD_INVALID.match(message):
        out = {"category": "invalid_user", "dstuser": m["user"], "invalid_user": True}
        if m["port"]:
            out["srcport"] = m["port"]
    elif m := SSHD_ACCEPTED.match(message):
        out = {
            "category": "authentication_success",
            "auth_method": m["method"],
            "dstuser": m["user"],
            "srcport": m["port"],
        }
    else:
        return {}
    with contextlib.suppress(ValueError):
        out["srcip"] = str(ipaddress.ip_address(m["ip"]))
    return {**out, "decoder": "sshd"}


def _timestamp(text: str, now: float) -> float | None:
    """Epoch seconds of a syslog timestamp. The traditional form has no year nor zone: local
    time, this year, or last year when that would put it more than a day in the future."""
    try:
        if text[0].isdigit():
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        month, day, clock = text.split()
        hh, mm, ss = (int(x) for x in clock.split(":"))
        year = datetime.fromtimestamp(now).year
        for y in (year, year - 1):
            ts = datetime(y, MONTHS[month], int(day), hh, mm, ss).timestamp()
            if ts <= now + 86400:
                return ts
    except (ValueError, KeyError):
        return None
    return None
