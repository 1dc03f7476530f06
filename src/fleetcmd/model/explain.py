"""Validation errors of content (rulesets, SCA policies, …) as sentences an author can act on.

pydantic reports a value that fits none of a union's types once per type
(`rules.0.match.srcip.str: Input should be a valid string; ….int: …; ….FieldTest.equal: …`).
Here the errors of one field become one sentence that names the item (`rule 100001`, by its
id and place) and the field, and says what the field must be: for a union, the alternative
that matches the kind of value given (an object is read as the model it must be), else the
list of the types it may be."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

TYPE_WORDS = {
    "str": "text",
    "int": "a number",
    "float": "a number",
    "bool": "true or false",
    "none": "null",
}
# Models a value may be, as an author knows them.
MODEL_WORDS = {"FieldTest": "a field test (an object with one of 'equals', 'in' or 'regex')"}
MAX_SHOWN = 80


Errors = list[tuple[tuple[Any, ...], dict[str, Any]]]  # (where, pydantic's error)


def explain(exc: ValidationError, raw: Any, limit: int = 10) -> str:
    """One sentence per faulty field, in document order, at most `limit` of them."""
    found = _describe([(tuple(e["loc"]), dict(e)) for e in exc.errors()], raw)
    sentences = [f"{_place(path, raw)}: {problem}" for path, problem in found[:limit]]
    more = len(found) - limit
    return "; ".join(sentences) + (f"; and {more} more" if more > 0 else "")


def _describe(errors: Errors, raw: Any) -> list[tuple[tuple[Any, ...], str]]:
    by_field: dict[tuple[Any, ...], Errors] = {}
    for loc, e in errors:
        path, rest = _split(loc, raw)
        by_field.setdefault(path, []).append((rest, e))
    return [(path, _problem(errs, _at(raw, path))) for path, errs in by_field.items()]


def _split(loc: tuple[Any, ...], raw: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(the path of the field in the document, what is left: a union member's tag and the
    path inside that member). A step that is not in the document is a tag."""
    node = raw
    for i, step in enumerate(loc):
        found = (isinstance(node, dict) and step in node) or (
            isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)
        )
        if found:
            node = node[step]
        elif isinstance(step, str) and _is_tag(step):
            return loc[:i], loc[i:]
        else:
            return loc[: i + 1], loc[i + 1 :]  # a key that is missing (or extra) here
    return loc, ()


def _is_tag(step: str) -> bool:
    return step in TYPE_WORDS or "[" in step or step[:1].isupper() or step.startswith("list")


def _at(raw: Any, path: tuple[Any, ...]) -> Any:
    node = raw
    for step in path:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _place(path: tuple[Any, ...], raw: Any) -> str:
    """`rule 100001 (rules[0]), field 'match.srcip'`: an item of a list named by its id."""
    words: list[str] = []
    field: list[str] = []
    node = raw
    for i, step in enumerate(path):
        child = _at(node, (step,))
        if isinstance(step, int) and i > 0 and isinstance(child, dict) and "id" in child:
            key = str(path[i - 1])
            if field and field[-1] == key:
                field.pop()
            item = key[:-1] if key.endswith("s") else key
            words.append(f"{item} {child['id']} ({key}[{step}])")
            field = []
        else:
            field.append(f"[{step}]" if isinstance(step, int) else str(step))
        node = child
    if field:
        words.append(f"field '{'.'.join(field).replace('.[', '[')}'")
    return ", ".join(words) or "the document"


def _problem(errors: Errors, value: Any) -> str:
    tagged = [(rest, e) for rest, e in errors if rest and _is_tag(str(rest[0]))]
    if not tagged:
        return "; ".join(dict.fromkeys(_message(e, rest) for rest, e in errors))
    models = [(rest, e) for rest, e in tagged if _model(str(rest[0]))]
    if isinstance(value, dict) and models:
        # An object was given: it was meant as the model; say what is wrong inside it.
        word = MODEL_WORDS.get(_model(str(models[0][0][0])), "an object")
        inner = _describe([(rest[1:], e) for rest, e in models], value)
        text = "; ".join(f"'{_dotted(p)}' {prob}" if p else prob for p, prob in inner)
        return f"as {word}: {text}"
    kinds = []
    for rest, _ in tagged:
        tag = str(rest[0])
        name = _model(tag)
        kinds.append(MODEL_WORDS.get(name, "an object") if name else TYPE_WORDS.get(tag, tag))
    kinds = list(dict.fromkeys(kinds))
    either = ", ".join(kinds[:-1]) + (f" or {kinds[-1]}" if len(kinds) > 1 else kinds[0])
    return f"must be {either}, not {_shown(value)}"


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")


def _model(tag: str) -> str:
    """The model a union member's tag names (`function-after[_one(), FieldTest]`)."""
    m = re.search(r"([A-Z]\w*)\]?$", tag)
    return m.group(1) if m else ""


def _message(e: dict[str, Any], rest: tuple[Any, ...]) -> str:
    inner = ".".join(str(x) for x in rest)
    msg = str(e["msg"])
    if e["type"] == "extra_forbidden":
        return f"'{inner}' is not a known key" if inner else "is not a known key"
    if e["type"] == "missing":
        return f"'{inner}' is required" if inner else "is required"
    msg = re.sub(r"^[A-Z]\w* should", "should", msg.removeprefix("Value error, "))
    got = "" if e["type"].startswith("value_error") else f" (not {_shown(e.get('input'))})"
    return f"{inner + ': ' if inner else ''}{msg}{got}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"
