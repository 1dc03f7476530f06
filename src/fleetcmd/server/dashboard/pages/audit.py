"""The audit trail: who did what, when, from where, and how it ended (read-only)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.responses import Response

from fleetcmd.server import audit
from fleetcmd.server.dashboard.pager import Pager
from fleetcmd.server.dashboard.pages import Viewing
from fleetcmd.server.dashboard.pages.tasks import _epoch, export_format
from fleetcmd.server.dashboard.render import page
from fleetcmd.server.management.export import audit_export

router = APIRouter()
OUTCOMES = ("success", "failure", "denied", "throttled", "refused")
ACTIONS = (
    "user.login",
    "task.*",
    "task.create",
    "task.cancel",
    "user.*",
    "role.*",
    "content.refuse",
)


@router.get("/audit")
async def audit_trail(request: Request, v: Viewing) -> Response:
    v.require("audit:read")
    q = request.query_params
    pager = Pager.of(request, 50, 500)
    filters = {k: (q.get(k) or "").strip()[:128] or None for k in ("actor", "action", "outcome")}
    data = await v.st.indexer.get(
        "/audit",
        **filters,
        since=_epoch(q.get("since")),
        until=_epoch(q.get("until")),
        cursor=pager.cursor,
        limit=pager.size,
    )
    return page(
        request,
        "audit.html",
        v,
        records=data["items"],
        pager=pager,
        next=pager.next(data["next_cursor"]),
        prev=pager.previous(),
        filters={**filters, "since": q.get("since", ""), "until": q.get("until", "")},
        export_query="".join(
            f"&{k}={quote(value)}"
            for k in ("actor", "action", "outcome", "since", "until")
            if (value := q.get(k) or "")
        ),
        outcomes=OUTCOMES,
        actions=ACTIONS,
    )


@router.get("/audit/export")
async def export(request: Request, v: Viewing) -> Response:
    """The trail as filtered on the page (actor, action, outcome, since, until), oldest first."""
    v.require("audit:read")
    q = request.query_params
    fmt = export_format(request)
    filters = {k: (q.get(k) or "").strip()[:128] or None for k in ("actor", "action", "outcome")}
    since, until = _epoch(q.get("since")), _epoch(q.get("until"))
    response = await audit_export(v.st, fmt, filters, since, until)
    await audit.record(
        v.st,
        "audit.export",
        actor=v.name,
        request=request,
        details={"format": fmt, "since": since, "until": until, "source": "dashboard"},
    )
    return response
