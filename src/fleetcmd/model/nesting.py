"""How deep a JSON document may nest, wherever one enters fleetcmd or is read back from it.

Every reply must serialize: pydantic's serializer gives up past 255 levels, its parser past
201, the standard library near 1000, and a reply that fails after a commit is a write the
caller never hears about (issue 20). So every API refuses documents deeper than `MAX_DEPTH`
before parsing them, the catalog refuses deeper task params (the dashboard's JSON fields do
not pass through a JSON edge), and a value read back from the store that is deeper (written
before this limit) is shown as an `Unreadable` marker instead. Real configurations nest a
handful of levels; the readers' envelopes add fewer than ten."""

from __future__ import annotations

import re
from typing import Any

MAX_DEPTH = 64

_QUOTES_AND_BRACKETS = bytes(sorted(set(range(256)) - set(b'"{}[]')))
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
_RUN = re.compile(rb"\[+|\]+")
_PASSES = 4


def text_too_deep(raw: bytes | str, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON text nests deeper than `limit`."""
    if len(raw) < 2 * (limit + 1):  # each level takes two brackets
        return False
    if isinstance(raw, str):
        if raw.count("{") + raw.count("[") <= limit:
            return False
        raw = raw.encode("utf-8", "surrogatepass")
    elif raw.count(b"{") + raw.count(b"[") <= limit:
        return False
    return text_depth(raw) > limit


def text_depth(raw: bytes) -> int:
    """How deep JSON text nests, found without parsing it: bodies reach megabytes, so the
    work is a few passes at C speed, not a Python loop per character nor a regex that can
    backtrack. Text that is not JSON gets a number too (the parser refuses it anyway).

    Escaped quotes go first, so that the quotes left alternate open/close; everything but quotes
    and brackets next; adjacent quotes then pair up (an empty string, or two strings
    merged, never a bracket outside a string), and the few strings that hold brackets are
    cut out. What is left is brackets only, of one kind: a few passes remove the innermost
    pairs (most documents are empty by then; each pass is one level), and the deepest run
    of openings in what remains is the rest."""
    if b"\\" in raw:  # escaped backslashes pair up from the left, as a parser reads them
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    text = raw.translate(None, _QUOTES_AND_BRACKETS).replace(b'""', b"")
    if b'"' in text:
        text = b"".join(text.split(b'"')[::2])
    brackets = text.translate(_ONE_KIND)
    passes = 0
    while brackets and passes < _PASSES:
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            break
        brackets, passes = shorter, passes + 1
    depth = deepest = 0
    for run in _RUN.findall(brackets):
        depth = depth + len(run) if run[0] == ord("[") else max(0, depth - len(run))
        deepest = max(deepest, depth)
    return passes + deepest


def value_too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether a parsed JSON value (dicts and lists) nests deeper than `limit`; a scalar is
    0 deep, `{}` and `[]` are 1 deep. Walked without recursion, stopping at the first
    branch past the limit."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend(
            (child, depth + 1) for child in children if isinstance(child, dict | list | tuple)
        )
    return False


class Unreadable(dict[str, Any]):
    """Stands in for a stored value nested deeper than `MAX_DEPTH` (written before the
    limit): readers show it, deliveries refuse it."""

    @staticmethod
    def why(what: str) -> str:
        """Why a reader that needs the value itself (to expand, deliver or apply it) refuses."""
        return f"{what} nested deeper than {MAX_DEPTH} levels (stored before that limit)"

    def __init__(self, limit: int = MAX_DEPTH) -> None:
        super().__init__(
            unreadable=f"stored value nested deeper than {limit} levels; "
            "not shown (docs/security.md)"
        )
