"""Coalesce many small writes from concurrent requests into one indexer request.

Like Elastic fleet-server's bulker: thousands of agents acking or posting results at once
become one `POST /commands/mark` or `POST /results` every few tens of milliseconds. Each
caller awaits a future that resolves to its own item's answer, so an agent still gets a real
per-id outcome, not a blind "ok"."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger("fleetcmd.server.bulker")

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[list[T]], Awaitable[Sequence[R]]]


class Bulker(Generic[T, R]):
    """Queue items; a single flusher sends them in batches via `flush(items) -> answers`
    (one answer per item, same order)."""

    def __init__(
        self, name: str, flush: Flush[T, R], *, interval: float = 0.02, max_batch: int = 5000
    ) -> None:
        self.name = name
        self._flush = flush
        self.interval = interval
        self.max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"bulker-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drain()

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._queue.extend(zip(items, futures, strict=True))
        self._kick.set()
        return list(await asyncio.gather(*futures))

    async def submit(self, item: T) -> R:
        return (await self.submit_many([item]))[0]

    async def _run(self) -> None:
        while True:
            await self._kick.wait()
            # Let concurrent requests pile up for one interval: that is the whole point.
            await asyncio.sleep(self.interval)
            self._kick.clear()
            await self._drain()

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                answers = await self._flush([item for item, _ in batch])
            except Exception as exc:
                log.warning("bulk %s of %d items failed: %s", self.name, len(batch), exc)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), answer in zip(batch, answers, strict=True):
                if not fut.done():
                    fut.set_result(answer)
