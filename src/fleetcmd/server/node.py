"""One server node: both APIs (two uvicorn servers in one event loop) and the background
loops (heartbeat, agent state, command puller, lease renewal, bulkers), started and stopped
together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import signal
import socket
import time
from collections import deque
from collections.abc import Generator
from typing import Any

import uvicorn

from fleetcmd import __version__, gctune, serving
from fleetcmd.model import actions
from fleetcmd.ratelimit import RateLimiter
from fleetcmd.server import handlers
from fleetcmd.server.bulker import Bulker
from fleetcmd.server.comms.app import create_comms_app
from fleetcmd.server.config import ServerConfig, ServerOptions, log_level_observer
from fleetcmd.server.engine import Engine
from fleetcmd.server.enrollment_keys import EnrollmentKeys
from fleetcmd.server.indexer_client import IndexerClient, IndexerError
from fleetcmd.server.mailbox import Mailboxes
from fleetcmd.server.management.app import create_management_app
from fleetcmd.server.metrics import ServerMetrics
from fleetcmd.server.packages import PackageStore
from fleetcmd.server.presence import Presence
from fleetcmd.server.puller import Puller, renew_leases
from fleetcmd.server.rbac import RbacCache, ensure_admin
from fleetcmd.server.state import ServerState
from fleetcmd.server.tokens import TokenIssuer

log = logging.getLogger("fleetcmd.server")


def default_node_id(comms_port: int) -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "host"
    return f"server-{host}-{comms_port}"[:128]


def build_state(options: ServerOptions) -> ServerState:
    indexer = IndexerClient(options.indexer_url, options.token, ca=options.ca)
    metrics = ServerMetrics()
    owner = f"{options.node_id}#{secrets.token_hex(4)}"

    async def flush_results(items: list[dict[str, Any]]) -> list[str]:
        with metrics.bulk.labels("results").time():
            data = await indexer.post("/results", {"results": items}, idempotent=True)
        by_id = {int(o["id"]): str(o["outcome"]) for o in data["results"]}
        return [by_id.get(int(i["id"]), "ignored: no answer from the indexer") for i in items]

    async def flush_delivered(ids: list[int]) -> list[bool]:
        with metrics.bulk.labels("delivered").time():
            data = await indexer.post(
                "/commands/mark",
                {"owner": owner, "ids": ids, "status": "delivered"},
                idempotent=True,
            )
        moved = set(data["moved"])
        return [i in moved for i in ids]

    async def flush_progress(items: list[dict[str, Any]]) -> list[int | None]:
        with metrics.bulk.labels("progress").time():
            data = await indexer.post("/commands/heartbeat", {"beats": items}, idempotent=True)
        running = data["running"]
        return [running.get(str(i["id"])) for i in items]

    mailboxes = Mailboxes()

    async def flush_held(ids: list[int]) -> list[bool]:
        with metrics.bulk.labels("held").time():
            lost, _ = await renew_leases(indexer, owner, mailboxes, sorted(set(ids)), options.lease)
        gone = set(lost)
        return [i not in gone for i in ids]

    async def flush_targets(ids: list[int]) -> list[dict[str, Any] | None]:
        with metrics.bulk.labels("targets").time():
            data = await indexer.post(
                "/commands/targets", {"ids": sorted(set(ids))}, idempotent=True
            )
        found = data["targets"]
        return [found.get(str(i)) for i in ids]

    config = ServerConfig()
    st = ServerState(
        options=options,
        indexer=indexer,
        config=config,
        metrics=metrics,
        mailboxes=mailboxes,
        presence=Presence(indexer, options.node_id),
        rbac=RbacCache(indexer),
        tokens=TokenIssuer(options.jwt_key, options.token_ttl),
        results=Bulker("results", flush_results),
        delivered=Bulker("delivered", flush_delivered),
        held=Bulker("held", flush_held),
        progress=Bulker("progress", flush_progress),
        targets=Bulker("targets", flush_targets),
        engine=Engine(indexer, options.data_dir, metrics.registry),
        packages=PackageStore(
            indexer, options.indexer_url, options.token, options.data_dir, ca=options.ca
        ),
        enrollment_keys=EnrollmentKeys(indexer),
        owner=owner,
        enroll_limit=RateLimiter(
            "enrollment", options.enroll_rate, max(5.0, options.enroll_rate * 10)
        ),
        auth_limit=RateLimiter(
            "authentication", options.auth_rate, max(5.0, options.auth_rate * 10)
        ),
    )
    config.observe(log_level_observer)

    def resize_events(changed: dict[str, dict[str, Any]]) -> None:
        if "events.queue_size" in changed:
            st.events = deque(st.events, maxlen=max(1, int(changed["events.queue_size"]["new"])))

    def results_interval(changed: dict[str, dict[str, Any]]) -> None:
        if "comms.results_flush_ms" in changed:
            st.results.interval = max(0.001, float(changed["comms.results_flush_ms"]["new"]) / 1000)

    config.observe(resize_events)
    config.observe(results_interval)
    return st


async def release_previous(st: ServerState) -> None:
    """Hand back at once what an earlier run of this node still held (a crash, a restart)."""
    released = (
        await st.indexer.post("/leases/release-previous", {"owner": st.owner}, idempotent=True)
    )["released"]
    if released:
        log.info(
            "handed back %d command(s) an earlier run of node %s still held",
            released,
            st.options.node_id,
        )


async def release_previous_later(st: ServerState) -> None:
    """Once more when the earlier run's last pull must have ended: behind a proxy that does
    not pass on a closed connection (HAProxy), a long-poll the earlier run left waiting on
    an indexer still claims for it until its wait runs out, after the hand-back at start;
    those commands would otherwise wait out their lease."""
    await asyncio.sleep(st.options.pull_wait + 5.0)
    try:
        await release_previous(st)
    except Exception as exc:  # the leases lapse by themselves; this only saves the wait
        log.warning("could not hand back what an earlier run still held: %s", exc)


async def heartbeat_loop(st: ServerState) -> None:
    """Register this node so that per-node server commands are written for it."""
    o = st.options
    scheme = "https" if o.tls_cert else "http"
    body = {
        "url": f"{scheme}://{o.host}:{o.comms_port}",
        "info": {
            "role": "server",
            "version": __version__,
            "comms": f"{scheme}://{o.host}:{o.comms_port}",
            "management": f"{scheme}://{o.host}:{o.management_port}",
        },
    }
    while True:
        try:
            await st.indexer.post(f"/nodes/{o.node_id}/heartbeat", body, retries=0)
        except Exception as exc:
            log.warning("heartbeat failed: %s", exc)
        await asyncio.sleep(o.heartbeat_interval)


async def removed_loop(st: ServerState, interval: float = 5.0) -> None:
    """Follow the agents removed through any node, so that a deleted agent's still-valid
    token is refused here too within `interval` (the node that saw the deletion refuses it
    at once)."""
    since = 0.0
    while True:
        try:
            while True:
                page = await st.indexer.get("/agents/removed", since=since, limit=10_000)
                items = page.get("items") or []
                for item in items:
                    st.removed.add(str(item["id"]))
                newest = max((float(i["removed_at"]) for i in items), default=since)
                if len(items) < 10_000 or newest == since:
                    break
                since = newest
            since = max(since, newest)
        except Exception as exc:
            log.warning("could not follow removed agents: %s", exc)
        await asyncio.sleep(interval)


async def prepare(st: ServerState) -> None:
    """Wait for the indexer, make sure an admin exists, load RBAC and live settings."""
    deadline = time.monotonic() + 120
    while True:
        try:
            await st.indexer.post(f"/nodes/{st.options.node_id}/heartbeat", {}, retries=0)
            break
        except IndexerError as exc:
            if exc.status < 500 or time.monotonic() > deadline:
                raise
            log.warning("waiting for the indexer at %s: %s", st.options.indexer_url, exc)
            await asyncio.sleep(1.0)
    password = await ensure_admin(st.indexer, st.options.data_dir)
    if password is not None:  # the password itself stays out of logs
        print(
            f"created user 'admin'; its password is in "
            f"{st.options.data_dir / 'admin.password'} (0600)",
            flush=True,
        )
    kid = await st.enrollment_keys.register_configured(st.options.enrollment_key)
    if kid is not None:
        log.info("configured enrollment key registered as %s", kid)
    await release_previous(st)
    await st.rbac.refresh()
    outcome = await handlers.server_config(st, actions.ServerConfig())
    log.info("live configuration loaded (%s)", outcome.message)


class _Server(uvicorn.Server):
    """Two servers share one loop: signals are handled once, by `serve`, not by each."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve(options: ServerOptions) -> None:
    st = build_state(options)
    await prepare(st)
    puller = Puller(st)
    st.presence.on_connected = puller.claim_for
    st.results.start()
    st.delivered.start()
    st.held.start()
    st.progress.start()
    st.targets.start()
    await st.engine.start(lambda: st.events)
    gctune.settle()  # what a node keeps for its life is never walked by the GC again
    loops = [
        asyncio.create_task(coro, name=name)
        for name, coro in (
            ("heartbeat", heartbeat_loop(st)),
            ("presence", st.presence.run()),
            ("pull-agent", puller.agent_loop()),
            ("pull-server", puller.server_loop()),
            ("renew", puller.renew_loop()),
            ("away", puller.away_loop()),
            ("removed", removed_loop(st)),
            ("release-previous", release_previous_later(st)),
        )
    ]
    limits = serving.Limits(
        header_timeout=options.header_timeout,
        body_timeout=options.body_timeout,
        max_connections=options.max_connections,
    )
    servers = [
        _Server(
            serving.config(
                app,
                options.host,
                port,
                limits,
                options.forwarded_allow_ips,
                lifespan="off",
                timeout_keep_alive=75,
                timeout_graceful_shutdown=3,
                ssl_certfile=options.tls_cert,
                ssl_keyfile=options.tls_key,
            )
        )
        for app, port in (
            (create_comms_app(st), options.comms_port),
            (create_management_app(st), options.management_port),
        )
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runs = [asyncio.create_task(s.serve()) for s in servers]
    scheme = "https" if options.tls_cert else "http"
    print(
        f"server {options.node_id}: Comms API {scheme}://{options.host}:{options.comms_port}, "
        f"Management API {scheme}://{options.host}:{options.management_port}, "
        f"indexer {options.indexer_url}",
        flush=True,
    )
    await asyncio.wait(
        [asyncio.create_task(stop.wait()), *runs], return_when=asyncio.FIRST_COMPLETED
    )
    failed = any(
        r.done() and (r.cancelled() or r.exception() is not None or not stop.is_set()) for r in runs
    )
    log.info("server %s stopping", options.node_id)
    st.stopping.set()
    for box in st.mailboxes.boxes():
        box.wake()
    for s in servers:
        s.should_exit = True
    await asyncio.gather(*runs, return_exceptions=True)
    for t in loops:
        t.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
    await st.engine.stop()
    await st.results.stop()
    await st.delivered.stop()
    await st.held.stop()
    await st.progress.stop()
    await st.targets.stop()
    await st.packages.close()
    await release_all(st)
    await st.indexer.close()
    if failed:
        raise SystemExit("an API server stopped unexpectedly (port in use?); see the log")


async def release_all(st: ServerState) -> None:
    """On a clean stop, hand un-acked commands back at once instead of after the lease."""
    ids = st.mailboxes.held_ids()
    if not ids:
        return
    try:
        await st.indexer.post(
            "/leases/release", {"owner": st.owner, "ids": ids}, retries=1, idempotent=True
        )
        log.info("released %d un-acked command(s) on stop", len(ids))
    except Exception as exc:
        log.warning(
            "could not release %d command(s) on stop (their leases will lapse): %s", len(ids), exc
        )
