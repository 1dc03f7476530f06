"""The store's housekeeping loops. Retention: now and then, finished tasks older than the
configured age leave the store with their commands (store/retention.py does it in short
batched transactions), and so do events that old every subscriber has passed. Upkeep:
every minute, and at once after retention removed something,
the store vacuums and analyzes what its database does not (store.upkeep)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.concurrency import run_in_threadpool

from fleetcmd.indexer.state import IndexerState

log = logging.getLogger("fleetcmd.indexer.retention")


async def retention_loop(
    st: IndexerState, days: float, interval: float = 3600.0, first_after: float = 60.0
) -> None:
    """Purge every `interval` seconds (the first pass `first_after` seconds after start);
    `days` <= 0 keeps everything."""
    if days <= 0:
        return
    await asyncio.sleep(first_after)
    while True:
        try:
            report = await run_in_threadpool(st.store.purge_finished, days * 86400)
            if report.tasks:
                st.upkeep_due.set()  # the removed rows are dead rows until a vacuum
                log.info(
                    "retention: removed %d task(s) and %d command(s) finished more than %g "
                    "day(s) ago in %d batches, %.1fs",
                    report.tasks,
                    report.commands,
                    days,
                    report.batches,
                    report.seconds,
                )
            pruned = await run_in_threadpool(st.store.prune_events, time.time() - days * 86400)
            if pruned:
                log.info("retention: removed %d event(s) every subscriber had passed", pruned)
        except Exception:  # retention must outlive a store hiccup
            log.exception("retention pass failed")
        await asyncio.sleep(interval)


async def upkeep_loop(st: IndexerState, interval: float = 60.0, first_after: float = 5.0) -> None:
    """Run the store's upkeep every `interval` seconds, or sooner when woken (`upkeep_due`);
    `interval` <= 0 never runs it. Says once, as a warning, when PostgreSQL's autovacuum is
    off: operators should know the indexer is doing its work."""
    if interval <= 0:
        return
    await asyncio.sleep(first_after)
    warned = False
    while True:
        st.upkeep_due.clear()
        try:
            report = await run_in_threadpool(st.store.upkeep)
            if report.autovacuum is False and not warned:
                warned = True
                log.warning(
                    "PostgreSQL's autovacuum is off for this store's busiest tables: the "
                    "indexer vacuums them itself when dead rows pile up (checked every %gs); "
                    "turning autovacuum on is better (docs/indexer.md, store upkeep)",
                    interval,
                )
            for action in report.actions:
                log.info("store upkeep: %s", action)
            for table in report.analyzed:
                step = "vacuum" if table in report.vacuumed else "analyze"
                st.metrics.upkeep.labels(step=step, table=table).inc()
        except Exception:  # upkeep must outlive a store hiccup
            log.exception("store upkeep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(st.upkeep_due.wait(), interval)
