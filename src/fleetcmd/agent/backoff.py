"""Jittered exponential backoff between failed calls to the server.

"Full jitter" (a uniform draw between 0 and the exponential ceiling): when a server restarts,
thousands of agents that lost it at the same instant spread their reconnections over the whole
window instead of arriving together.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(
        self,
        base: float = 0.5,
        cap: float = 30.0,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self.base = base
        self.cap = cap
        self.factor = factor
        self.failures = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """Largest delay the next failure may wait (grows exponentially, capped)."""
        return min(self.cap, self.base * self.factor ** max(self.failures - 1, 0))

    def next_delay(self) -> float:
        """Record one more failure and draw the delay to wait before the next attempt."""
        self.failures += 1
        ceiling = self.ceiling()
        # Never zero: a floor of a tenth of the base keeps a dead server from being hammered.
        return max(self.base / 10, self._rng.uniform(0, ceiling))

    def jitter(self, spread: float) -> float:
        """A uniform draw in [0, spread): added to a delay the server imposed (Retry-After)."""
        return self._rng.uniform(0, spread)

    def reset(self) -> None:
        """Called after a success: the next failure starts again from `base`."""
        self.failures = 0
