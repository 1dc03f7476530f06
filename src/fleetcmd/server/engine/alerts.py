"""Alerts to the indexer's `alerts` index, in batches, off the event path.

A burst of events must not turn into a burst of round trips made while agents wait, nor
grow memory without bound while the indexer is away: alerts wait in a bounded queue (the
oldest are dropped, and counted, when it is full) and a flusher writes them a batch at a time
with a few requests in flight. Document ids come from the event and rule, so a write retried
after a timeout rewrites the same document instead of adding a second alert."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from fleetcmd.server.indexer_client import IndexerClient, IndexerError, IndexerUnavailable

log = logging.getLogger("fleetcmd.server.engine.alerts")

ALERTS_INDEX = "alerts"


class AlertWriter:
    def __init__(
        self,
        indexer: IndexerClient,
        *,
        max_queue: int = 50_000,
        batch: int = 500,
        parallel: int = 8,
        interval: float = 0.1,
    ) -> None:
        self.indexer = indexer
        self.queue: deque[dict[str, Any]] = deque()
        self.max_queue = max_queue
        self.batch = batch
        self.parallel = parallel
        self.interval = interval
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._kick = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="engine-alerts")

    async def stop(self) -> None:
        """Write what is queued (one last try), then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            while self.queue:
                if not await self.flush_once():
                    break

    def add(self, alerts: list[dict[str, Any]]) -> None:
        for alert in alerts:
            if len(self.queue) >= self.max_queue:
                self.queue.popleft()
                self.dropped += 1
                if self.dropped % 1000 == 1:
                    log.warning(
                        "alert queue full (%d): dropped %d alert(s) so far",
                        self.max_queue,
                        self.dropped,
                    )
            self.queue.append(alert)
        if alerts:
            self._idle.clear()
            self._kick.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until everything queued was written (tests, clean stops)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _run(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            await asyncio.sleep(self.interval)  # let the rest of a burst join the batch
            while self.queue:
                if not await self.flush_once():
                    await asyncio.sleep(1.0)  # the indexer is away; the alerts wait
            self._idle.set()

    async def flush_once(self) -> bool:
        """Write one batch. False when the indexer is unreachable (the batch is put back)."""
        batch = [self.queue.popleft() for _ in range(min(self.batch, len(self.queue)))]
        gate = asyncio.Semaphore(self.parallel)

        async def write(alert: dict[str, Any]) -> str:
            async with gate:
                try:
                    await self.indexer.put(f"/indexes/{ALERTS_INDEX}/{alert['id']}", alert)
                    return "written"
                except IndexerUnavailable:
                    return "retry"
                except IndexerError as exc:  # refused for good: retrying cannot help
                    log.error("alert %s refused by the indexer: %s", alert["id"], exc)
                    return "refused"

        outcomes = await asyncio.gather(*(write(a) for a in batch))
        left = [a for a, o in zip(batch, outcomes, strict=True) if o == "retry"]
        self.written += outcomes.count("written")
        self.failed += outcomes.count("refused")
        if left:
            self.queue.extendleft(reversed(left))
            while len(self.queue) > self.max_queue:
                self.queue.pop()
                self.dropped += 1
            log.warning("indexer unavailable: %d alert(s) wait to be written", len(self.queue))
            return False
        return True
