"""Agent selectors: the expression language a task targets agents with (docs/commands.md).

    group = web and version < 2.4 and not label.env = prod
    (os = Linux or arch = aarch64) and last_seen < 1h
    sca.score < 80 or has vulnerability CVE-2024-3094

Parsed here with lark (LALR, so the parser is iterative and a bad expression names the line,
column and what was expected), into a small tree of frozen dataclasses with the values already
normalised (a version to its sortable key, a relative time to seconds). The store compiles the
tree to SQL (store/selectors.py); nothing here knows how agents are stored."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedToken

MAX_LENGTH = 4096
MAX_DEPTH = 64

GRAMMAR = r"""
start: expr
?expr: conj (_OR conj)*       -> any_of
?conj: term (_AND term)*      -> all_of
?term: _NOT term              -> negate
     | "(" expr ")"
     | FIELD OP value         -> compare
     | _HAS _VULNERABILITY value -> has_vulnerability
     | _ALL                   -> every
?value: ESCAPED_STRING | BARE
_OR: "or"i
_AND: "and"i
_NOT: "not"i
_HAS: "has"i
_VULNERABILITY: "vulnerability"i
_ALL: "all"i
FIELD: /[a-z_]+(\.[A-Za-z0-9_-]+)?/
OP: "<=" | ">=" | "!=" | "=" | "<" | ">"
BARE: /[A-Za-z0-9_.*?\[\]!:\/+@%-]+/
%import common.ESCAPED_STRING
%import common.WS
%ignore WS
"""


@cache
def _parser() -> Lark:
    """Built on first use (tens of milliseconds), not when a process imports the model."""
    return Lark(GRAMMAR, parser="lalr", propagate_positions=False, maybe_placeholders=False)


EQUALITY = ("=", "!=")
ORDERED = ("=", "!=", "<", "<=", ">", ">=")
# field -> (operators, kind). `platform` is the agent's reported `os` under its other name.
FIELDS: dict[str, tuple[tuple[str, ...], str]] = {
    "name": (EQUALITY, "text"),
    "id": (EQUALITY, "text"),
    "group": (EQUALITY, "text"),
    "os": (EQUALITY, "text"),
    "platform": (EQUALITY, "text"),
    "arch": (EQUALITY, "text"),
    "hostname": (EQUALITY, "text"),
    "node": (EQUALITY, "text"),
    "config_hash": (EQUALITY, "text"),
    "status": (EQUALITY, "status"),
    "version": (ORDERED, "version"),
    "last_seen": (("<", "<=", ">", ">="), "age"),
    "sca.score": (ORDERED, "number"),
    "sca.failed": (EQUALITY, "text"),
    "label": (EQUALITY, "text"),  # label.<key>
}
STATUSES = ("active", "disconnected", "never_connected")
ALIASES = {"platform": "os"}
CVE_RE = re.compile(r"^(CVE-\d{4}-\d{4,}|GHSA(-[0-9a-z]{4}){3})$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DURATION = re.compile(r"^(\d{1,9})([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_VERSION = re.compile(r"^(\d{1,9}(?:\.\d{1,9}){0,5})([-+.]?[A-Za-z0-9.+-]{0,32})$")
_TERMINALS = {
    "FIELD": "a field name",
    "OP": "an operator (=, !=, <, <=, >, >=)",
    "BARE": "a value",
    "ESCAPED_STRING": "a quoted value",
    "LPAR": "'('",
    "RPAR": "')'",
    "_OR": "'or'",
    "_AND": "'and'",
    "_NOT": "'not'",
    "_HAS": "'has vulnerability'",
    "_VULNERABILITY": "'vulnerability'",
    "_ALL": "'all'",
    "$END": "the end",
}


class SelectorError(ValueError):
    """A selector that does not parse: where, and what the parser expected there."""

    def __init__(self, message: str, line: int, column: int, expected: list[str]) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.message = message
        self.line = line
        self.column = column
        self.expected = expected

    def to_json(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "line": self.line,
            "column": self.column,
            "expected": self.expected,
        }


# -- the tree -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Compare:
    """`field op value`; `value` normalised by kind (a version key, seconds, a number).
    `glob`: the text value holds `*` or `?` and matches as a pattern."""

    field: str
    op: str
    value: str | float
    key: str | None = None  # label.<key>
    glob: bool = False


@dataclass(frozen=True)
class HasVulnerability:
    cve: str


@dataclass(frozen=True)
class Every:
    pass


@dataclass(frozen=True)
class Not:
    part: Expr


@dataclass(frozen=True)
class And:
    parts: tuple[Expr, ...]


@dataclass(frozen=True)
class Or:
    parts: tuple[Expr, ...]


Expr = Compare | HasVulnerability | Every | Not | And | Or


# -- values -------------------------------------------------------------------------------------
def version_key(version: str) -> str | None:
    """A text key that sorts as versions do: numeric parts compared as numbers (1.10 > 1.9),
    missing parts as 0 (1.2 = 1.2.0), a suffix (1.2.0rc1, 1.2.0-beta) before the release.
    None for text that is no version (it matches no version comparison)."""
    m = _VERSION.fullmatch(version.strip())
    if m is None:
        return None
    parts = [int(x) for x in m.group(1).split(".")]
    parts += [0] * (6 - len(parts))
    suffix = m.group(2).lstrip("-+.")
    return ".".join(f"{n:09d}" for n in parts) + ("!" + suffix if suffix else "~")


def duration(text: str) -> float | None:
    m = _DURATION.fullmatch(text)
    return None if m is None else float(int(m.group(1)) * _UNITS[m.group(2)])


def is_glob(text: str) -> bool:
    return "*" in text or "?" in text


def glob_regex(pattern: str) -> str:
    """`*` and `?` as wildcards, everything else literal, anchored (a POSIX/Python regex)."""
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch.isalnum() or ch == "_":
            out.append(ch)
        else:
            out.append("\\" + ch)
    return "^" + "".join(out) + "$"


# -- parsing ------------------------------------------------------------------------------------
def parse(text: str) -> Expr:
    """The tree of a selector, or SelectorError naming the position."""
    if not isinstance(text, str):
        raise SelectorError("a selector is a string", 1, 1, ["a string"])
    if not text.strip():
        raise SelectorError("empty selector", 1, 1, ["a field name", "'all'", "'not'", "'('"])
    if len(text) > MAX_LENGTH:
        raise SelectorError(f"longer than {MAX_LENGTH} characters", 1, MAX_LENGTH, [])
    if "\x00" in text:
        col = text.index("\x00") + 1
        raise SelectorError("a NUL character", 1, col, [])
    try:
        tree = _parser().parse(text)
    except UnexpectedEOF as exc:
        raise _error("unexpected end", text, len(text), exc.expected) from None
    except UnexpectedToken as exc:
        tok = exc.token
        what = "end" if tok.type == "$END" else repr(str(tok))
        pos = len(text) if tok.type == "$END" else (tok.start_pos or 0)
        raise _error(f"unexpected {what}", text, pos, exc.expected) from None
    except UnexpectedCharacters as exc:
        pos = exc.pos_in_stream or 0
        raise _error(f"unexpected character {text[pos]!r}", text, pos, exc.allowed or ()) from None
    except LarkError as exc:  # anything else the parser refuses is still a clean refusal
        raise SelectorError(str(exc).splitlines()[0][:200], 1, 1, []) from None
    _check_depth(tree, text)
    return _build(tree.children[0], text)


def _position(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, column


def _error(message: str, text: str, pos: int, expected: Any) -> SelectorError:
    line, column = _position(text, pos)
    names = sorted({_TERMINALS.get(t, t) for t in expected or ()})
    return SelectorError(message, line, column, names)


def _at(token: Token, text: str, message: str, expected: list[str]) -> SelectorError:
    line, column = _position(text, token.start_pos or 0)
    return SelectorError(message, line, column, expected)


def _check_depth(tree: Tree[Token], text: str) -> None:
    stack: list[tuple[Tree[Token] | Token, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SelectorError(f"nested deeper than {MAX_DEPTH} levels", 1, 1, [])
        if isinstance(node, Tree):
            stack.extend((c, depth + 1) for c in node.children)


def _text(token: Token) -> str:
    if token.type == "ESCAPED_STRING":
        body = str(token)[1:-1]
        return re.sub(r"\\(.)", r"\1", body)
    return str(token)


def _build(node: Tree[Token] | Token, text: str) -> Expr:
    # Depth is bounded by _check_depth, so plain recursion is safe here.
    assert isinstance(node, Tree)
    rule = str(node.data)
    kids = node.children
    if rule in ("any_of", "all_of") and len(kids) == 1:
        return _build(kids[0], text)
    if rule == "any_of":
        return Or(tuple(_build(k, text) for k in kids))
    if rule == "all_of":
        return And(tuple(_build(k, text) for k in kids))
    if rule == "negate":
        return Not(_build(kids[0], text))
    if rule == "every":
        return Every()
    if rule == "has_vulnerability":
        tok = kids[0]
        assert isinstance(tok, Token)
        cve = _text(tok)
        if not CVE_RE.fullmatch(cve):
            raise _at(tok, text, f"{cve!r} is no CVE or GHSA id", ["CVE-YYYY-NNNN"])
        return HasVulnerability(cve)
    assert rule == "compare", rule
    field_tok, op_tok, value_tok = kids
    assert isinstance(field_tok, Token) and isinstance(op_tok, Token)
    assert isinstance(value_tok, Token)
    return _compare(field_tok, str(op_tok), value_tok, text)


def _compare(field_tok: Token, op: str, value_tok: Token, text: str) -> Compare:
    name = str(field_tok)
    key: str | None = None
    if name.startswith("label."):
        name, key = "label", name.removeprefix("label.")
        if not LABEL_KEY_RE.fullmatch(key):
            raise _at(field_tok, text, f"bad label key {key!r}", ["label.<key>"])
    if name not in FIELDS or (name == "label" and key is None):
        known = sorted(f if f != "label" else "label.<key>" for f in FIELDS)
        raise _at(field_tok, text, f"unknown field {name!r}", known)
    ops, kind = FIELDS[name]
    name = ALIASES.get(name, name)
    if op not in ops:
        raise _at(field_tok, text, f"'{name}' takes no '{op}'", list(ops))
    raw = _text(value_tok)
    if kind == "status":
        if raw not in STATUSES:
            raise _at(value_tok, text, f"unknown status {raw!r}", list(STATUSES))
        return Compare(name, op, raw)
    if kind == "version":
        vkey = version_key(raw)
        if vkey is None:
            raise _at(value_tok, text, f"{raw!r} is no version", ["a version such as 2.4.1"])
        return Compare(name, op, vkey)
    if kind == "age":
        seconds = duration(raw)
        if seconds is None:
            raise _at(value_tok, text, f"{raw!r} is no duration", ["30s, 15m, 1h, 7d or 2w"])
        return Compare(name, op, seconds)
    if kind == "number":
        try:
            number = float(raw)
        except ValueError:
            number = float("nan")
        if number != number or abs(number) > 1e9:
            raise _at(value_tok, text, f"{raw!r} is no number", ["a number"])
        return Compare(name, op, number)
    if not raw or len(raw) > 256:
        raise _at(value_tok, text, "a value is 1-256 characters", ["a value"])
    return Compare(name, op, raw, key, glob=is_glob(raw))
