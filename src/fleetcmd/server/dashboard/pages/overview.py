"""The overview: the fleet at a glance, what is running now, what went wrong lately."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from fleetcmd.server.dashboard.pages import Viewing
from fleetcmd.server.dashboard.render import page
from fleetcmd.server.management import reports
from fleetcmd.server.management.live import (
    active_tasks,
    event_stream,
    summary_for,
    tasks_events,
)

router = APIRouter()
TOP = 12


def _top(counts: dict[str, int], n: int = TOP) -> tuple[list[tuple[str, int]], int]:
    """The n largest entries, and how many more there are."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ranked[:n], max(0, len(ranked) - n)


async def _recent_problems(v: Viewing, limit: int = 8) -> list[dict[str, Any]]:
    pages = await asyncio.gather(
        *(v.st.indexer.get("/tasks", status=s, limit=limit) for s in ("failure", "expired"))
    )
    tasks = await v.reader("task:read").tasks([t for p in pages for t in p["items"]])
    return sorted(tasks, key=lambda t: -int(t["id"]))[:limit]


async def _content(v: Viewing) -> list[dict[str, Any]] | None:
    """The feeds' last polls, for those who may read what concerns every agent."""
    reader = v.reader("agent:read")
    return await reports.content_status(v.st, reader) if reader.everything else None


@router.get("/")
async def overview(request: Request, v: Viewing) -> Response:
    summary, running, problems, nodes, content = await asyncio.gather(
        summary_for(v.st, v.user),
        active_tasks(v.st, 10, v.reader("task:read").tasks),
        _recent_problems(v),
        v.st.indexer.get("/nodes"),
        _content(v),
    )
    versions, more_versions = _top(summary["by_version"])
    groups, more_groups = _top(summary["by_group"])
    return page(
        request,
        "overview.html",
        v,
        summary=summary,
        running=running,
        problems=problems,
        versions=versions,
        more_versions=more_versions,
        groups=groups,
        more_groups=more_groups,
        nodes=nodes["items"],
        content=content,
    )


@router.get("/live/tasks")
async def live_tasks(request: Request, v: Viewing) -> Response:
    """Server-sent events: the running tasks, for the overview's progress bars."""
    return event_stream(
        tasks_events(v.st, lambda: v.st.closed(request), visible=v.reader("task:read").tasks)
    )
