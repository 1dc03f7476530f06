"""A tiny reference evaluator of selectors over agents held as plain dicts: what the compiled
SQL (store/selectors.py) must agree with on both stores (tests/contract/test_selectors.py).
Written from the grammar's documented meaning, independently of the SQL."""

from __future__ import annotations

import re
from typing import Any

from fleetcmd.model import selectors as s

# An agent: {"id", "name", "groups": [...], "status", "version", "node", "config_hash",
# "last_seen" (epoch or None), "info": {...}, "labels": {...}, "sca": [{"score", "failed": [...]}],
# "cves": [...]}


def _text(actual: Any, value: str, glob: bool) -> bool:
    if actual is None:
        return False
    if glob:
        return re.fullmatch(s.glob_regex(value)[1:-1], str(actual), re.DOTALL) is not None
    return str(actual) == value


def _ordered(actual: Any, op: str, value: Any) -> bool:
    if actual is None:
        return False
    return {
        "=": actual == value,
        "!=": actual == value,  # negated by the caller
        "<": actual < value,
        "<=": actual <= value,
        ">": actual > value,
        ">=": actual >= value,
    }[op]


def matches(expr: s.Expr, agent: dict[str, Any], now: float) -> bool:
    if isinstance(expr, s.Every):
        return True
    if isinstance(expr, s.Not):
        return not matches(expr.part, agent, now)
    if isinstance(expr, s.And):
        return all(matches(p, agent, now) for p in expr.parts)
    if isinstance(expr, s.Or):
        return any(matches(p, agent, now) for p in expr.parts)
    if isinstance(expr, s.HasVulnerability):
        return expr.cve in agent.get("cves", [])
    hit = _compare(expr, agent, now)
    return not hit if expr.op == "!=" else hit


def _compare(c: s.Compare, agent: dict[str, Any], now: float) -> bool:
    v = c.value
    if c.field in ("name", "id", "node", "config_hash", "status"):
        assert isinstance(v, str)
        return _text(agent.get(c.field), v, c.glob)
    if c.field in ("os", "arch", "hostname"):
        assert isinstance(v, str)
        return _text(agent.get("info", {}).get(c.field), v, c.glob)
    if c.field == "group":
        assert isinstance(v, str)
        return any(_text(g, v, c.glob) for g in agent.get("groups", []))
    if c.field == "label":
        assert isinstance(v, str)
        return _text(agent.get("labels", {}).get(c.key or ""), v, c.glob)
    if c.field == "version":
        key = s.version_key(agent["version"]) if agent.get("version") else None
        return _ordered(key, c.op, v)
    if c.field == "last_seen":
        assert isinstance(v, float)
        seen = agent.get("last_seen")
        age = None if seen is None else now - seen
        if c.op in ("<", "<="):
            return age is not None and (age < v if c.op == "<" else age <= v)
        return age is None or (age > v if c.op == ">" else age >= v)
    if c.field == "sca.score":
        return any(
            scan.get("score") is not None and _ordered(float(scan["score"]), c.op, v)
            for scan in agent.get("sca", [])
        )
    if c.field == "sca.failed":
        assert isinstance(v, str)
        return any(_text(f, v, c.glob) for scan in agent.get("sca", []) for f in scan["failed"])
    raise AssertionError(c.field)
