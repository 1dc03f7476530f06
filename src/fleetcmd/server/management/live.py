"""Live views for people: a task's progress as server-sent events, and the fleet summary.

The indexer keeps exact per-status counts in a handful of rows, so watching a task is a cheap
`GET /tasks/{id}` every half second per viewer; only changes are sent. Streams end after a
short lifetime and the browser's EventSource reconnects on its own (`retry:`), so a stopping
server never waits on an open stream for long."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from fleetcmd.model.status import AWAITING_APPROVAL
from fleetcmd.server.access import Reader
from fleetcmd.server.indexer_client import IndexerError, IndexerUnavailable
from fleetcmd.server.management.auth import State, deny, require
from fleetcmd.server.rbac import User
from fleetcmd.server.state import ServerState

router = APIRouter(tags=["live"])
AgentReader = Annotated[User, Depends(require("agent:read"))]
TaskReader = Annotated[User, Depends(require("task:read"))]

POLL_INTERVAL = 0.5
STREAM_LIFETIME = 15.0
KEEPALIVE = 10.0
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
PROGRESS_KEYS = (
    "id",
    "status",
    "counts",
    "total",
    "done",
    "progress",
    "completed_at",
    "updated_at",
)

Disconnected = Callable[[], Awaitable[bool]]
Visible = Callable[[list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]]


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _progress(st: ServerState, task_id: int, parents: Iterable[int]) -> dict[str, Any]:
    task = await st.indexer.get(f"/tasks/{task_id}")
    doc = {k: task.get(k) for k in PROGRESS_KEYS}
    doc["parents"] = {}
    for pid in parents:
        cmd = await st.indexer.get(f"/commands/{pid}")
        if cmd.get("task_id") == task_id:
            doc["parents"][str(pid)] = {"status": cmd["status"], "counts": cmd.get("counts", {})}
    return doc


async def task_events(
    st: ServerState,
    task_id: int,
    disconnected: Disconnected,
    parents: Iterable[int] = (),
    interval: float = POLL_INTERVAL,
    lifetime: float = STREAM_LIFETIME,
) -> AsyncIterator[str]:
    """`progress` events (status, counts, parents' counts) on every change, then `done`."""
    parents = list(parents)[:10]
    yield "retry: 1000\n\n"
    started = last_sent = time.monotonic()
    last: dict[str, Any] | None = None
    while not await disconnected():
        try:
            doc = await _progress(st, task_id, parents)
        except IndexerUnavailable:
            yield sse("stale", {"message": "the indexer is unavailable; retrying"})
            await asyncio.sleep(2.0)
            continue
        except IndexerError as exc:
            yield sse("error", exc.body)
            return
        now = time.monotonic()
        if doc != last:
            yield sse("progress", doc)
            last, last_sent = doc, now
        if doc["completed_at"]:
            yield sse("done", {"status": doc["status"]})
            return
        if now - started > lifetime:
            return
        if now - last_sent > KEEPALIVE:
            yield ": keep-alive\n\n"
            last_sent = now
        await asyncio.sleep(interval)


async def command_events(
    st: ServerState,
    command_id: int,
    disconnected: Disconnected,
    after: int = -1,
    interval: float = POLL_INTERVAL,
    lifetime: float = STREAM_LIFETIME,
) -> AsyncIterator[str]:
    """A long command, live (issue 17.3): `progress` events (status, percent, message) on
    every change, `output` events with the chunks after `after` in order (the event id is
    the last chunk's seq, so a reconnecting EventSource asks from there), then `done`."""
    yield "retry: 1000\n\n"
    started = last_sent = time.monotonic()
    last: dict[str, Any] | None = None
    while not await disconnected():
        try:
            page = await st.indexer.get(f"/commands/{command_id}/output", after=after, limit=200)
            cmd = await st.indexer.get(f"/commands/{command_id}")
        except IndexerUnavailable:
            yield sse("stale", {"message": "the indexer is unavailable; retrying"})
            await asyncio.sleep(2.0)
            continue
        except IndexerError as exc:
            yield sse("error", exc.body)
            return
        now = time.monotonic()
        doc = {"status": cmd["status"], "progress": cmd.get("progress"), "output": cmd["output"]}
        if doc != last:
            yield sse("progress", doc)
            last, last_sent = doc, now
        if page["chunks"]:
            after = int(page["next"])
            yield f"id: {after}\n" + sse("output", {"chunks": page["chunks"]})
            last_sent = now
            continue  # more may be waiting: read on at once
        if page["done"]:
            yield sse("done", {"status": cmd["status"], "truncated": page["truncated"]})
            return
        if now - started > lifetime:
            return
        if now - last_sent > KEEPALIVE:
            yield ": keep-alive\n\n"
            last_sent = now
        await asyncio.sleep(interval)


async def tasks_events(
    st: ServerState,
    disconnected: Disconnected,
    limit: int = 10,
    interval: float = 1.0,
    lifetime: float = STREAM_LIFETIME,
    visible: Visible | None = None,
) -> AsyncIterator[str]:
    """`tasks` events: the tasks still running (in progress, then pending), on every change."""
    yield "retry: 2000\n\n"
    started = last_sent = time.monotonic()
    last: list[dict[str, Any]] | None = None
    while not await disconnected():
        try:
            running = await active_tasks(st, limit, visible)
        except IndexerError:
            yield sse("stale", {"message": "the indexer is unavailable; retrying"})
            await asyncio.sleep(2.0)
            continue
        now = time.monotonic()
        if running != last:
            yield sse("tasks", running)
            last, last_sent = running, now
        if now - started > lifetime:
            return
        if now - last_sent > KEEPALIVE:
            yield ": keep-alive\n\n"
            last_sent = now
        await asyncio.sleep(interval)


async def active_tasks(
    st: ServerState, limit: int = 10, visible: Visible | None = None
) -> list[dict[str, Any]]:
    """The newest tasks not yet final: in progress first, then pending, then those waiting
    for approval (those `visible` keeps, for a user whose roles are scoped)."""
    out: list[dict[str, Any]] = []
    for status in ("in_progress", "pending", AWAITING_APPROVAL):
        page = await st.indexer.get("/tasks", status=status, limit=limit)
        out.extend(await visible(page["items"]) if visible else page["items"])
    return [
        {k: t.get(k) for k in (*PROGRESS_KEYS, "type", "user", "source", "created_at")}
        for t in out[:limit]
    ]


def event_stream(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)


@router.get("/agents/summary")
async def agent_summary(st: State, user: AgentReader) -> dict[str, Any]:
    """Agents by status, version and group (exact counts, kept by the indexer); for a user
    whose roles are scoped, counted over the agents it may read."""
    return {"data": await summary_for(st, user)}


async def summary_for(st: ServerState, user: User) -> dict[str, Any]:
    scoped = await Reader(st, user, "agent:read").agent_filter()
    if scoped is None:
        return dict(await st.indexer.get("/agents/summary"))
    out: dict[str, Any] = {"by_status": {}, "by_version": {}, "by_group": {}, "total": 0}
    cursor: str | None = None
    while True:
        page = await st.indexer.get("/agents", cursor=cursor, limit=5000, **scoped)
        for a in page["items"]:
            for key, value in (
                ("by_status", a["status"]),
                ("by_version", a.get("version") or "unknown"),
                *(("by_group", g) for g in a.get("groups", [])),
            ):
                out[key][value] = out[key].get(value, 0) + 1
            out["total"] += 1
        cursor = page["next_cursor"]
        if not cursor:
            return out


@router.get(
    "/tasks/{task_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`progress` events on every change, then `done`",
        }
    },
)
async def watch_task(
    task_id: int, request: Request, st: State, user: TaskReader
) -> StreamingResponse:
    """Server-sent events: the task's status and counts per status, until it is final."""
    task = await st.indexer.get(f"/tasks/{task_id}")  # 404 before the stream starts
    if not await Reader(st, user, "task:read").task(task):
        await deny(st, request, user, "task:read", f"task:{task_id}")
    return event_stream(task_events(st, task_id, lambda: st.closed(request)))
