"""Alerts: what the engine's rules raised, the newest first, optionally for one agent."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from fleetcmd.server.dashboard.pager import Pager
from fleetcmd.server.dashboard.pages import Viewing
from fleetcmd.server.dashboard.render import page
from fleetcmd.server.management import reports

router = APIRouter()


@router.get("/alerts")
async def list_alerts(request: Request, v: Viewing) -> Response:
    v.require("agent:read")
    pager = Pager.of(request, 50, 500)
    agent = (request.query_params.get("agent") or "").strip()[:64] or None
    data = await reports.agent_documents(
        v.st,
        v.reader("agent:read"),
        reports.ALERTS,
        agent=agent,
        cursor=pager.cursor,
        limit=pager.size,
        order="desc",
    )
    return page(
        request,
        "alerts.html",
        v,
        alerts=data["items"],
        agent=agent,
        pager=pager,
        next=pager.next(data["next_cursor"]),
        prev=pager.previous(),
    )
