"""Garbage-collector settings for the long-running roles (server node, indexer, simulator).

A server node carrying thousands of agents holds well over a million live objects (one
keep-alive connection, protocol, mailbox and waiting long-poll per agent). With CPython's
default thresholds (700, 10, 10) a full collection walks all of them every ~70,000 net
allocations: measured with 5,000 simulated agents, 17 full collections took 4.8 s of the
server's 8.6 s of CPU and delivery slowed from ~6 s to ~10 s (docs/performance.md).

`settle()` is called once a role has loaded what it keeps for its whole life (code,
configuration, rules, feeds): those objects move to the permanent generation, which no
collection walks again; young collections then run every 20,000 net allocations instead of
700 (still often enough that short-lived cycles die young) and a full one at most every
~4,000,000 (and only when a quarter of the heap is new since the last). Reference counting
frees everything else as before: only cyclic garbage waits a little longer."""

from __future__ import annotations

import gc

THRESHOLDS = (20_000, 20, 10)


def settle() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
