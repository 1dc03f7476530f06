"""The commands stream as servers see it: pull (long-poll claim), mark, leases, results."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from fleetcmd.httpkit import wait_for
from fleetcmd.indexer.approvals import Approvals
from fleetcmd.indexer.delivery import outgoing
from fleetcmd.indexer.results import record_results
from fleetcmd.indexer.state import IndexerState, authorized
from fleetcmd.model.progress import OUTPUT_MAX
from fleetcmd.model.status import FINAL
from fleetcmd.model.wire import NodeResultsIn, ProgressIn
from fleetcmd.store import Beat, ClaimFilter, Result

log = logging.getLogger("fleetcmd.sweeper")

# A lease owner is a server node id (up to 128 characters) and its incarnation: NODE#INC.
OWNER_MAX = 160
router = APIRouter(tags=["stream"])
Auth = Annotated[IndexerState, Depends(authorized)]
# Waits are cut into slices so a wake-up missed across processes costs at most one slice.
SLICE = 5.0


class PullIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    owner: str = Field(min_length=1, max_length=OWNER_MAX)
    target_type: Literal["agent", "server"]
    node: str | None = Field(default=None, max_length=128)
    target_ids: list[str] | None = Field(default=None, max_length=50_000)
    limit: int = Field(default=500, ge=1, le=10_000)
    wait: float = Field(default=20.0, ge=0, le=60)
    lease: float = Field(default=60.0, ge=1, le=3600)


@router.post("/pull")
async def pull(body: PullIn, st: Auth, request: Request) -> dict[str, Any]:
    """Claim a batch at once if any is waiting; else wait for new commands up to `wait`.
    A long-poll whose caller went away (a server killed while it waited) claims nothing:
    what it claimed would sit under a dead owner's lease until the lease lapsed."""
    started = time.monotonic()
    where = ClaimFilter(
        body.target_type, body.node, tuple(body.target_ids) if body.target_ids is not None else None
    )
    deadline = started + body.wait
    st.metrics.waiting.inc()
    claimed: list[Any] = []
    try:
        while True:
            event = st.waker.event(body.target_type)
            if await request.is_disconnected():
                break
            claimed = await run_in_threadpool(
                st.store.claim, body.owner, where, body.limit, body.lease
            )
            remaining = deadline - time.monotonic()
            if claimed or remaining <= 0 or st.stopping:
                break
            await wait_for(event, min(remaining, SLICE))
    finally:
        st.metrics.waiting.dec()
    st.metrics.pull_wait.observe(time.monotonic() - started)
    if claimed:
        st.metrics.claimed.labels(body.target_type).inc(len(claimed))
    docs, refused = await run_in_threadpool(outgoing, st.store, claimed, st.attach_limit, st.signer)
    if refused:  # ended here, or they would be claimed and refused again every lease
        await run_in_threadpool(record_results, st.store, refused)
    return {"data": {"commands": docs, "lease": body.lease}}


class MarkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    owner: str | None = Field(default=None, max_length=OWNER_MAX)
    ids: list[int] = Field(max_length=50_000)
    status: Literal["sent", "delivered"]


@router.post("/commands/mark")
async def mark(body: MarkIn, st: Auth) -> dict[str, Any]:
    moved = await run_in_threadpool(st.store.mark, body.owner, body.ids, body.status)
    return {"data": {"moved": moved, "refused": sorted(set(body.ids) - set(moved))}}


class HeartbeatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    beats: list[ProgressIn] = Field(max_length=50_000)


@router.post("/commands/heartbeat")
async def heartbeat(body: HeartbeatIn, st: Auth) -> dict[str, Any]:
    """Heartbeats of running commands, many agents' in one write (the servers' bulker):
    `running` maps each id running now to the next output chunk it takes."""
    beats = [
        Beat(b.id, b.interval, b.percent, b.message, tuple((c.seq, c.data) for c in b.output))
        for b in body.beats
    ]
    running = await run_in_threadpool(st.store.command_heartbeats, beats)
    return {"data": {"running": {str(k): v for k, v in running.items()}}}


class LeaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    owner: str = Field(min_length=1, max_length=OWNER_MAX)
    ids: list[int] = Field(max_length=50_000)
    lease: float = Field(default=60.0, ge=1, le=3600)


@router.post("/leases/renew")
async def renew(body: LeaseIn, st: Auth) -> dict[str, Any]:
    held = await run_in_threadpool(st.store.renew, body.owner, body.ids, body.lease)
    return {"data": {"held": held, "lost": sorted(set(body.ids) - set(held))}}


@router.post("/leases/release")
async def release(body: LeaseIn, st: Auth) -> dict[str, Any]:
    n = await run_in_threadpool(st.store.release, body.owner, body.ids)
    return {"data": {"released": n}}


class IncarnationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    owner: str = Field(min_length=3, max_length=OWNER_MAX, pattern=r"^.+#[A-Za-z0-9]+$")


@router.post("/leases/release-previous")
async def release_previous(body: IncarnationIn, st: Auth) -> dict[str, Any]:
    """A restarted server node (owner `NODE#INCARNATION`) hands back, at once, the leases its
    earlier incarnations held: what a crashed node had claimed is not stuck for a lease."""
    n = await run_in_threadpool(st.store.release_previous, body.owner)
    return {"data": {"released": n}}


@router.post("/results")
async def results(body: NodeResultsIn, st: Auth) -> dict[str, Any]:
    """Record a batch of results; idempotent per command id (a repeat is reported, not redone)."""
    items = [Result(r.id, r.status, r.code, r.message, r.data) for r in body.results]
    outcome = await run_in_threadpool(record_results, st.store, items)
    for o in outcome:
        st.metrics.results.labels(o["outcome"].split(":")[0]).inc()
    st.waker.fire("rollout")  # a result may settle a wave or trip a threshold
    return {"data": {"results": outcome}}


@router.get("/commands")
async def list_commands(
    st: Auth,
    task_id: int | None = None,
    parent_id: int | None = None,
    status: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
) -> dict[str, Any]:
    page = await run_in_threadpool(
        lambda: st.store.list_commands(
            task_id=task_id,
            parent_id=parent_id,
            status=status,
            target_type=target_type,
            target_id=target_id,
            cursor=cursor,
            limit=limit,
        )
    )
    return {"data": page.to_json()}


class TargetsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[int] = Field(max_length=50_000)


@router.post("/commands/targets")
async def command_targets(body: TargetsIn, st: Auth) -> dict[str, Any]:
    """Target and action of many commands in one call (ids not found are left out)."""
    found = await run_in_threadpool(st.store.command_targets, body.ids)
    return {
        "data": {
            "targets": {
                str(cid): {"type": t, "id": tid, "action": action}
                for cid, (t, tid, action) in found.items()
            }
        }
    }


@router.get("/commands/{command_id}")
async def get_command(command_id: int, st: Auth) -> dict[str, Any]:
    cmd = await run_in_threadpool(st.store.get_command, command_id)
    doc = cmd.to_json()
    if cmd.expanded:
        doc["counts"] = await run_in_threadpool(st.store.counts, "parent", cmd.id)
    return {"data": doc}


@router.get("/commands/{command_id}/output")
async def get_output(
    command_id: int,
    st: Auth,
    after: Annotated[int, Query(ge=-1)] = -1,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """A command's output chunks after `after`, in order; `next` is the `after` to ask with
    next, `done` whether the command is final (no chunk will follow what is kept)."""
    cmd = await run_in_threadpool(st.store.get_command, command_id)
    got = await run_in_threadpool(st.store.command_output, command_id, after, limit)
    return {"data": _output_page(cmd, got, after)}


def _output_page(cmd: Any, got: list[Any], after: int) -> dict[str, Any]:
    last = got[-1].seq if got else after
    return {
        "id": cmd.id,
        "status": cmd.status,
        "chunks": [{"seq": o.seq, "at": o.at, "data": o.data} for o in got],
        "next": last,
        "total_chunks": cmd.output_chunks,
        "bytes": cmd.output_bytes,
        "truncated": cmd.output_bytes >= OUTPUT_MAX,
        "done": cmd.status in FINAL and last + 1 >= cmd.output_chunks,
    }


async def sweeper(
    st: IndexerState, interval: float, disconnect_after: float, node_silent_after: float = 0.0
) -> None:
    """Time-driven moves (lapsed leases, missed deadlines, execution timeouts, the commands
    of server nodes that fell silent, approvals that did not come in time, previews nobody
    filed)."""
    approvals = Approvals(st.tasks)
    rounds = 0
    started = time.monotonic()
    while True:
        try:
            # Heartbeats reach the store through an indexer: one just started (all of them
            # were down, say) has not yet heard from the nodes that are alive.
            silent_after = (
                node_silent_after
                if node_silent_after > 0 and time.monotonic() - started >= node_silent_after
                else None
            )
            report = await run_in_threadpool(
                st.store.sweep, None, 5000, disconnect_after, silent_after
            )
            for node, n in report.silent_nodes.items():
                log.warning(
                    "server node %s sent no heartbeat for %.0f s: %d command(s) it held go "
                    "to the nodes its agents reach now",
                    node,
                    node_silent_after,
                    n,
                )
            await run_in_threadpool(approvals.expire)
            rounds += 1
            if rounds % 60 == 0:
                await run_in_threadpool(st.store.purge_target_sets)
            for kind in ("lease_lapsed", "expired", "timed_out", "disconnected", "node_silent"):
                n = getattr(report, kind)
                if n:
                    st.metrics.swept.labels(kind).inc(n)
        except Exception:  # the sweeper must outlive a store hiccup
            log.exception("sweep failed")
        await asyncio.sleep(interval)
