"""Per-address token buckets for the routes worth guessing at (enrollment, agent and user
authentication): a burst is let through, then `rate` requests per second.

In memory, per process: each server node limits on its own, which bounds an attacker to
`nodes x rate`. The table of addresses is bounded (least recently seen dropped first)."""

from __future__ import annotations

import time
from collections import OrderedDict

from fleetcmd.errors import TooManyRequests


class RateLimiter:
    def __init__(self, name: str, rate: float, burst: float, max_addresses: int = 100_000) -> None:
        self.name = name
        self.rate = rate
        self.burst = max(1.0, burst)
        self.max_addresses = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def retry_after(self, address: str, now: float | None = None) -> float | None:
        """Take one token for `address`; None if allowed, else seconds until one is free."""
        if not self.enabled:
            return None
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(address, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[address] = (tokens - 1.0, now)
            wait = None
        else:
            self._buckets[address] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        return wait

    def check(self, address: str) -> None:
        """Raise TooManyRequests (429 with Retry-After) when `address` is over its rate."""
        wait = self.retry_after(address)
        if wait is not None:
            raise TooManyRequests(
                f"too many {self.name} requests from {address}; retry in {wait:.1f}s", wait
            )
