"""Group configuration: merging a group list into one configuration and hashing it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def config_hash(value: Any) -> str:
    return hashlib.sha256(canonical(value)).hexdigest()


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def merge(configs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Merge group configurations in group order: later groups override earlier ones."""
    merged: dict[str, Any] = {}
    for c in configs:
        merged = _merge(merged, c)
    return merged
