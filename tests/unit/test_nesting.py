"""How deep JSON nests, measured on the text (at every edge, before parsing) and on values:
both agree with the definition for any document, strings full of brackets, quotes and
backslashes included."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetcmd.model.nesting import (
    MAX_DEPTH,
    Unreadable,
    text_depth,
    text_too_deep,
    value_too_deep,
)
from fleetcmd.model.records import loads


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


tricky = st.text(alphabet='{}[]"\\:,ab \n\u00e9\U0001f600', max_size=8)
documents = st.recursive(
    st.none() | st.booleans() | st.integers() | tricky,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky, inner, max_size=4),
    max_leaves=40,
)


@settings(max_examples=600, deadline=None)
@given(documents, st.sampled_from([False, True]), st.integers(0, 12))
def test_the_text_and_the_value_agree_with_the_definition(
    doc: Any, ascii_: bool, limit: int
) -> None:
    text = json.dumps(doc, ensure_ascii=ascii_)
    assert text_depth(text.encode()) == depth(doc)
    assert text_too_deep(text, limit) is (depth(doc) > limit)
    assert text_too_deep(text.encode(), limit) is (depth(doc) > limit)
    assert value_too_deep(doc, limit) is (depth(doc) > limit)


def test_the_limit_and_text_that_is_not_json() -> None:
    at = '{"a":' * (MAX_DEPTH - 1) + "[]" + "}" * (MAX_DEPTH - 1)
    assert not text_too_deep(at) and text_too_deep("[" + at + "]")
    assert text_too_deep("[" * 100_000)  # never closed: still more than the limit open
    assert not text_too_deep("]" * 100_000 + "[" * 10)
    assert text_too_deep(b'"\\"' * 1000 + b"[" * 70 + b"]" * 70)  # escapes, then depth


def test_stored_values_too_deep_come_back_as_a_marker() -> None:
    deep = json.dumps(json.loads("[" * 300 + "]" * 300))
    assert isinstance(loads(deep), Unreadable) and "unreadable" in loads(deep)
    assert loads('{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}


def test_megabyte_bodies_are_measured_in_passes_not_per_character() -> None:
    """Printed for docs/security.md; bounded loosely (a shared 2-core host)."""
    results = json.dumps(
        {
            "results": [
                {"id": i, "status": "success", "data": {"groups": ["a", "b"], "h": "x" * 40}}
                for i in range(8000)
            ]
        }
    ).encode()
    chains = (b"[" * 64 + b"]" * 64) * 8000  # the worst shape: every level, everywhere
    for name, body in (("results batch", results), ("adversarial", chains)):
        started = time.perf_counter()
        text_too_deep(body)
        took = time.perf_counter() - started
        print(f"{name}: {len(body) / 1e6:.1f} MB checked in {took * 1000:.1f} ms")
        assert took < 1.0
