"""Events evaluated once: agents deliver events at least once (the log collector re-sends a
batch whose answer it did not get), and a re-sent event must not count twice towards a
threshold. An event that carries an `id` (a string of at most 128 characters) is evaluated
the first time this node sees that id from that agent; ids are remembered for `ttl` seconds,
at most `max_ids` of them (the oldest go first). Events without an id are always evaluated."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

MAX_IDS = 200_000
TTL = 3600.0


class SeenEvents:
    def __init__(self, max_ids: int = MAX_IDS, ttl: float = TTL) -> None:
        self.max_ids = max_ids
        self.ttl = ttl
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def fresh(self, agent: str, event: dict[str, Any], now: float) -> bool:
        """Whether the event is new (and, if it has an id, remember it)."""
        ident = event.get("id")
        if not isinstance(ident, str) or not ident or len(ident) > 128:
            return True
        while self._seen:
            oldest = next(iter(self._seen.values()))
            if oldest > now - self.ttl and len(self._seen) < self.max_ids:
                break
            self._seen.popitem(last=False)
        key = (agent, ident)
        if key in self._seen:
            return False
        self._seen[key] = now
        return True
