"""The retention loop: now and then, finished tasks older than the configured age leave the
store with their commands (store/retention.py does it in short batched transactions)."""

from __future__ import annotations

import asyncio
import logging

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
                log.info(
                    "retention: removed %d task(s) and %d command(s) finished more than %g "
                    "day(s) ago in %d batches, %.1fs",
                    report.tasks,
                    report.commands,
                    days,
                    report.batches,
                    report.seconds,
                )
        except Exception:  # retention must outlive a store hiccup
            log.exception("retention pass failed")
        await asyncio.sleep(interval)
