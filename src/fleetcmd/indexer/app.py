"""The indexer process: FastAPI app, command manager worker and sweeper, wired explicitly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest
from starlette.concurrency import run_in_threadpool

from fleetcmd import __version__, gctune
from fleetcmd.httpkit import (
    NO_TELEMETRY,
    BodyLimit,
    Waker,
    check_bearer,
    install_error_handlers,
    wait_for,
)
from fleetcmd.indexer import user_proofs
from fleetcmd.indexer.api import (
    audit,
    indexes,
    operators,
    proofs,
    rollouts,
    schedules,
    stream,
    subscribers,
    tasks,
)
from fleetcmd.indexer.command_manager import CommandManager
from fleetcmd.indexer.retention import retention_loop, upkeep_loop
from fleetcmd.indexer.rollouts import RolloutScheduler
from fleetcmd.indexer.scheduler import TEST_CLOCK_SLEEP, Scheduler, clock_from_env
from fleetcmd.indexer.signing import CommandSigner, record_key
from fleetcmd.indexer.state import IndexerState, Metrics
from fleetcmd.indexer.subscriptions import Dispatcher
from fleetcmd.indexer.task_manager import TaskManager
from fleetcmd.indexer.user_proofs import UserProofs
from fleetcmd.indexer.windows import WindowGate
from fleetcmd.store.base import SqlStore

log = logging.getLogger("fleetcmd.indexer")


@dataclass
class IndexerOptions:
    token: str
    sweep_interval: float = 1.0
    disconnect_after: float = 60.0
    # A server node silent this long (three of its 5-s heartbeats) hands its agents'
    # undelivered commands on at once, instead of when its leases lapse (0: never).
    node_silent_after: float = 15.0
    run_command_manager: bool = True
    body_limit: int = 64 * 1024 * 1024
    attach_limit: int = 64 * 1024
    # Finished tasks older than this leave the store (0: keep forever); checked hourly.
    retention_days: float = 30.0
    retention_interval: float = 3600.0
    # The store's own vacuum/analyze where its database does not (0: never); seconds.
    upkeep_interval: float = 60.0
    # Push events to subscribers from this indexer (docs/indexer.md, "Events out").
    run_dispatcher: bool = True
    # Signs agent-bound commands; None: a throw-away key (embedded use and tests only).
    signer: CommandSigner | None = None


async def command_manager_loop(st: IndexerState) -> None:
    """Expand indexer commands as soon as they are written (woken by commits, not polling)."""
    while True:
        event = st.waker.event("indexer")
        try:
            started = time.perf_counter()
            handled = await run_in_threadpool(st.commands.run_once)
            if handled:
                st.metrics.expansion.observe(time.perf_counter() - started)
                continue
        except Exception:
            log.exception("command manager pass failed")
            await asyncio.sleep(1.0)
        await wait_for(event, stream.SLICE)


async def schedule_loop(st: IndexerState, test_clock: bool) -> None:
    """File due occurrences: asleep until the next one is due, woken when a schedule changes
    (here, or on another indexer of a PostgreSQL store, through NOTIFY)."""
    while True:
        event = st.waker.event("schedule")
        try:
            pause = await run_in_threadpool(st.schedules.run_once)
        except Exception:
            log.exception("scheduler pass failed")
            pause = 1.0
        await wait_for(event, min(pause, TEST_CLOCK_SLEEP) if test_clock else pause)


async def window_loop(st: IndexerState, test_clock: bool) -> None:
    """Open and close maintenance windows around held commands: asleep until the next
    opening or closing, woken when a window or a windowed task is written."""
    while True:
        event = st.waker.event("window")
        try:
            pause = await run_in_threadpool(st.windows.run_once)
        except Exception:
            log.exception("maintenance window pass failed")
            pause = 1.0
        await wait_for(event, min(pause, TEST_CLOCK_SLEEP) if test_clock else pause)


async def rollout_loop(st: IndexerState) -> None:
    """Step running rollouts: woken by results and control actions, else on a short timer."""
    while True:
        event = st.waker.event("rollout")
        try:
            pause = await run_in_threadpool(st.rollouts.run_once)
        except Exception:
            log.exception("rollout scheduler pass failed")
            pause = 1.0
        await wait_for(event, pause)


def create_app(store: SqlStore, options: IndexerOptions) -> FastAPI:
    waker = Waker()
    signer = options.signer
    if signer is None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        log.warning("no command-signing key given: signing with a throw-away key")
        signer = CommandSigner(Ed25519PrivateKey.generate())
    clock, test_clock = clock_from_env()
    if test_clock:
        log.warning("the scheduler reads a test clock (%s)", "FLEETCMD_SCHEDULER_CLOCK")
    tasks_ = TaskManager(store)
    st = IndexerState(
        store=store,
        token=options.token,
        tasks=tasks_,
        commands=CommandManager(store),
        rollouts=RolloutScheduler(store),
        schedules=Scheduler(tasks_, clock),
        windows=WindowGate(store, clock),
        waker=waker,
        metrics=Metrics(),
        signer=signer,
        proofs=UserProofs(store, signer.derive(user_proofs.LABEL)),
        attach_limit=options.attach_limit,
        started_at=time.time(),
    )
    store.subscribe(waker.fire)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        waker.bind(asyncio.get_running_loop())
        loops = [
            asyncio.create_task(
                stream.sweeper(
                    st,
                    options.sweep_interval,
                    options.disconnect_after,
                    options.node_silent_after,
                )
            )
        ]
        loops.append(
            asyncio.create_task(
                retention_loop(st, options.retention_days, options.retention_interval)
            )
        )
        loops.append(asyncio.create_task(upkeep_loop(st, options.upkeep_interval)))
        loops.append(asyncio.create_task(schedule_loop(st, test_clock)))
        loops.append(asyncio.create_task(window_loop(st, test_clock)))
        if options.run_dispatcher:
            loops.append(asyncio.create_task(Dispatcher(store, waker, st.metrics).run()))
        if options.run_command_manager:
            loops.append(asyncio.create_task(command_manager_loop(st)))
            loops.append(asyncio.create_task(rollout_loop(st)))
        other = await run_in_threadpool(record_key, store, st.signer)
        if other is not None:
            log.error(
                "another indexer of this store signs commands with key %s, this one with "
                "%s: agents refuse the commands of the key they do not trust; give every "
                "indexer the same --command-key file (docs/security.md)",
                other,
                st.signer.key_id,
            )
        log.info("indexer ready on store %s", store.url.split("@")[-1])
        gctune.settle()
        yield
        for t in loops:
            t.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

    app = FastAPI(
        title="fleetcmd indexer",
        version=__version__,
        lifespan=lifespan,
        telemetry=NO_TELEMETRY,
        description="Task manager, commands stream and command manager.",
        # The schema is served with the node credential only (below); no browsable pages.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.indexer = st
    install_error_handlers(app)
    app.include_router(operators.router)
    app.include_router(tasks.router)
    app.include_router(stream.router)
    app.include_router(indexes.router)
    app.include_router(audit.router)
    app.include_router(rollouts.router)
    app.include_router(schedules.router)
    app.include_router(proofs.router)
    app.include_router(subscribers.router)

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, Any]:
        """Liveness and store reachability (no credential needed; reveals no data)."""
        try:
            await run_in_threadpool(store.counts, "task", 0)
            ok = True
        except Exception:
            ok = False
        return {
            "status": "ok" if ok else "degraded",
            "role": "indexer",
            "version": __version__,
            "store": store.url.split(":", 1)[0],
            "store_ok": ok,
            "uptime": round(time.time() - st.started_at, 1),
        }

    @app.get("/command-keys", tags=["ops"])
    async def command_keys() -> dict[str, Any]:
        """The public keys agents verify commands with (public: no credential needed)."""
        return {"data": st.signer.public_keys()}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        check_bearer(request, st.token)
        return JSONResponse(app.openapi())

    @app.get("/metrics", tags=["ops"])
    async def metrics(request: Request) -> PlainTextResponse:
        check_bearer(request, st.token)
        return PlainTextResponse(
            generate_latest(st.metrics.registry).decode(), media_type="text/plain; version=0.0.4"
        )

    app.add_middleware(BodyLimit, limit=options.body_limit)
    return app
