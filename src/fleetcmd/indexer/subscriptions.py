"""The event dispatcher: an indexer background loop that pushes the outbox (`store/events.py`)
to every active subscriber, each from its own durable cursor.

Why here: the indexer owns the store, where the events are written in the transactions of
their changes; its commits fire the waker (`events`, and `subscribers` on a registration
change; on PostgreSQL other indexers hear it by NOTIFY), so a lane sleeps until there is
something to send instead of polling. One lane (an asyncio task) per subscriber: a dead
subscriber backs off and is paused on its own, and neither slows the live path (the lanes
only read the store, and write one small cursor update per delivered batch) nor the other
subscribers. A lane holds its subscriber under a lease in the store, so with several indexers
on one PostgreSQL exactly one of them delivers a given subscriber, in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from typing import Any

from starlette.concurrency import run_in_threadpool

from fleetcmd.httpkit import Waker, wait_for
from fleetcmd.indexer.senders import sender_for
from fleetcmd.store.base import SqlStore

log = logging.getLogger("fleetcmd.indexer.subscriptions")
LEASE = 30.0
IDLE = 5.0  # a lane with nothing to send looks again after this, woken or not
LAG_EVERY = 2.0  # seconds between lag counts per lane


def backoff(failures: int, base: float, cap: float) -> float:
    """Exponential in the failures in a row, capped, with full jitter (between half and all
    of it) so that subscribers failing together do not retry together."""
    return min(cap, base * 2 ** max(0, failures - 1)) * random.uniform(0.5, 1.0)


class Dispatcher:
    def __init__(self, store: SqlStore, waker: Waker, metrics: Any, owner: str | None = None):
        self.store = store
        self.waker = waker
        self.metrics = metrics
        self.owner = owner or f"indexer-{uuid.uuid4().hex[:12]}"
        self.lanes: dict[int, tuple[float, asyncio.Task[None]]] = {}
        self.named: set[str] = set()

    async def run(self) -> None:
        """Keep one lane per active subscriber; restart a lane whose registration changed
        (resumed, replayed, edited), end those paused or removed."""
        try:
            while True:
                changed = self.waker.event("subscribers")
                try:
                    subs = await run_in_threadpool(self.store.list_subscribers)
                except Exception:
                    log.exception("cannot list subscribers")
                    subs = None
                if subs is not None:
                    self._reconcile(subs)
                await wait_for(changed, IDLE)
        finally:
            for _, task in self.lanes.values():
                task.cancel()
            await asyncio.gather(*(t for _, t in self.lanes.values()), return_exceptions=True)
            with contextlib.suppress(Exception):
                self.store.release_subscribers(self.owner)

    def _reconcile(self, subs: list[dict[str, Any]]) -> None:
        active = {s["id"]: s for s in subs if s["state"] == "active"}
        names = {s["name"] for s in subs}
        for gone in self.named - names:  # removed: their series go too
            for metric in (
                self.metrics.subscriber_paused,
                self.metrics.subscriber_lag,
                self.metrics.subscriber_delivered,
                self.metrics.subscriber_failures,
            ):
                with contextlib.suppress(KeyError):
                    metric.remove(gone)
        self.named = names
        for s in subs:
            self.metrics.subscriber_paused.labels(s["name"]).set(s["state"] == "paused")
        for sid, (version, task) in list(self.lanes.items()):
            sub = active.get(sid)
            if task.done() or sub is None or sub["updated_at"] != version:
                task.cancel()
                del self.lanes[sid]
        for sid, sub in active.items():
            if sid not in self.lanes:
                task = asyncio.create_task(self.lane(sid), name=f"subscriber-{sub['name']}")
                self.lanes[sid] = (sub["updated_at"], task)

    async def lane(self, sid: int) -> None:
        try:
            await self._lane(sid)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("subscriber %d: lane failed; restarted on the next look", sid)

    async def _lane(self, sid: int) -> None:
        sub = await run_in_threadpool(self.store.subscriber, sid, True)
        name, opts, filters = sub["name"], sub["options"], sub["filters"]
        batch = int(opts.get("batch", 200))
        pause_after = int(opts.get("pause_after", 20))
        base, cap = float(opts.get("retry_base", 1.0)), float(opts.get("retry_max", 300.0))
        m = self.metrics
        sender = sender_for(sub)
        leased_at = 0.0
        counted_at = 0.0
        position: tuple[int, int] | None = None
        try:
            while True:
                wake = self.waker.event("events")
                now = time.monotonic()
                if now - leased_at > LEASE / 3:
                    if not await run_in_threadpool(
                        self.store.lease_subscriber, sid, self.owner, LEASE
                    ):
                        position = None  # another indexer delivers it; look again later
                        await asyncio.sleep(LEASE / 3)
                        continue
                    leased_at = now
                    if position is None:  # read it under the lease: the holder's cursor
                        current = await run_in_threadpool(self.store.subscriber, sid)
                        position = (current["cursor"]["tx"], current["cursor"]["id"])
                assert position is not None
                if now - counted_at > LAG_EVERY:
                    counted_at = now
                    lag = await run_in_threadpool(self.store.lag, position)
                    m.subscriber_lag.labels(name).set(lag)
                events, last = await run_in_threadpool(
                    self.store.read_events, position, batch, filters
                )
                if last is None:
                    # nothing readable; on PostgreSQL committed events may still wait behind
                    # an older transaction, so count rather than assume none
                    counted_at = now
                    lag = await run_in_threadpool(self.store.lag, position)
                    m.subscriber_lag.labels(name).set(lag)
                    await wait_for(wake, IDLE if not lag else 0.2)
                    continue
                if events:
                    try:
                        await sender.send(events)
                    except Exception as exc:
                        m.subscriber_failures.labels(name).inc()
                        error = str(exc) or type(exc).__name__
                        failures = await run_in_threadpool(
                            self.store.delivery_failed, sid, self.owner, error, pause_after
                        )
                        if failures >= pause_after:
                            log.error(
                                "subscriber %s paused after %d failed deliveries in a row "
                                "(last: %s); resume it when it is back",
                                name,
                                failures,
                                error,
                            )
                            m.subscriber_paused.labels(name).set(1)
                            return
                        pause = backoff(failures, base, cap)
                        log.warning(
                            "subscriber %s: delivery failed (%s); retry %d in %.1fs",
                            name,
                            error,
                            failures,
                            pause,
                        )
                        await asyncio.sleep(pause)
                        continue
                if not await run_in_threadpool(
                    self.store.advance, sid, self.owner, last, len(events)
                ):
                    log.warning("subscriber %s: lease lost or paused; lane ends", name)
                    return
                position = last
                m.subscriber_delivered.labels(name).inc(len(events))
        finally:
            with contextlib.suppress(Exception):
                await sender.close()
