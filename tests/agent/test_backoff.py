"""Jittered exponential backoff: grows, is capped, is random, resets on success."""

from __future__ import annotations

import random

from fleetcmd.agent.backoff import Backoff


def test_ceiling_grows_exponentially_and_is_capped() -> None:
    b = Backoff(base=0.5, cap=30.0, rng=random.Random(1))
    ceilings = []
    for _ in range(10):
        b.next_delay()
        ceilings.append(b.ceiling())
    assert ceilings[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(ceilings) == 30.0


def test_delays_are_jittered_within_the_ceiling() -> None:
    b = Backoff(base=1.0, cap=30.0, rng=random.Random(2))
    for _ in range(6):
        b.next_delay()
    delays = []
    for _ in range(50):
        b.failures = 6
        delays.append(b.next_delay())
    assert all(0.1 <= d <= 30.0 for d in delays)
    assert len({round(d, 3) for d in delays}) > 40  # spread, not synchronized


def test_reset_starts_again_from_the_base() -> None:
    b = Backoff(base=0.5, cap=30.0)
    for _ in range(8):
        b.next_delay()
    b.reset()
    assert b.next_delay() <= 0.5
