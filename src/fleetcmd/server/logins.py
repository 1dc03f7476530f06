"""Login attempt limiting: brute force is slowed per user name and per client address.

After `free` failures in a row for a key, each further attempt must wait a delay that
doubles with every failure (1 s, 2 s, 4 s, ... up to `max_delay`); an attempt made too early
is refused with 429 and `Retry-After` without even checking the password. A success clears
the user's key (not the address's: one good login must not launder a spraying address).
Keys are forgotten after `forget_after` seconds of silence. Counters live in each node's
memory: an attacker spreading over N nodes gets N times the attempts, still exponentially
slowed on each."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0


@dataclass
class LoginThrottle:
    free_per_user: int = 5
    free_per_address: int = 20
    base_delay: float = 1.0
    max_delay: float = 300.0
    forget_after: float = 3600.0
    _seen: dict[str, _Failures] = field(default_factory=dict)

    def _delay(self, key: str, free: int, now: float) -> float:
        f = self._seen.get(key)
        if f is None or f.count < free:
            return 0.0
        wait = min(self.max_delay, self.base_delay * 2 ** (f.count - free))
        return max(0.0, f.last + wait - now)

    def retry_after(self, user: str, address: str | None) -> float:
        """Seconds this attempt must still wait (0: go ahead)."""
        now = time.monotonic()
        self._forget(now)
        return max(
            self._delay(f"user:{user}", self.free_per_user, now),
            self._delay(f"addr:{address}", self.free_per_address, now) if address else 0.0,
        )

    def failed(self, user: str, address: str | None) -> None:
        now = time.monotonic()
        for key in (f"user:{user}", f"addr:{address}" if address else None):
            if key is not None:
                f = self._seen.setdefault(key, _Failures())
                f.count += 1
                f.last = now

    def succeeded(self, user: str) -> None:
        self._seen.pop(f"user:{user}", None)

    def _forget(self, now: float) -> None:
        if len(self._seen) > 1000:
            for key in [k for k, f in self._seen.items() if now - f.last > self.forget_after]:
                del self._seen[key]
