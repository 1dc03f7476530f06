"""Keyset pagination over the API's cursors, with a way back.

The API pages forward only (`cursor` = last id seen), which keeps every page O(page size)
at any depth. The pages we came through travel in the URL (`trail`), so "Previous" is a
link too, and no page ever counts or skips rows."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

FIRST = "~"
MAX_TRAIL = 200


@dataclass(frozen=True)
class Pager:
    cursor: str | None
    trail: tuple[str, ...]
    size: int

    @classmethod
    def of(cls, request: Request, default_size: int = 50, max_size: int = 500) -> Pager:
        q = request.query_params
        cursor = q.get("cursor") or None
        trail = tuple(t for t in q.get("trail", "").split(",") if t)[-MAX_TRAIL:]
        try:
            size = max(1, min(max_size, int(q.get("size", default_size))))
        except ValueError:
            size = default_size
        return cls(cursor, trail, size)

    @property
    def number(self) -> int:
        """1-based page number (how many pages we came through, plus this one)."""
        return len(self.trail) + 1

    @property
    def offset(self) -> int:
        return len(self.trail) * self.size

    def next(self, next_cursor: str | None) -> dict[str, str] | None:
        if not next_cursor:
            return None
        trail = (*self.trail, self.cursor or FIRST)[-MAX_TRAIL:]
        return {"cursor": next_cursor, "trail": ",".join(trail)}

    def previous(self) -> dict[str, str] | None:
        if not self.trail:
            return None
        back = self.trail[-1]
        return {"cursor": "" if back == FIRST else back, "trail": ",".join(self.trail[:-1])}
