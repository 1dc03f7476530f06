"""One command: target, action, timeline, lease, its result (what the receiver answered),
and, for a long one, its progress and output, live."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from fleetcmd.errors import InvalidParams
from fleetcmd.server.dashboard.pages import Viewing
from fleetcmd.server.dashboard.render import page
from fleetcmd.server.management.live import command_events, event_stream

router = APIRouter()


@router.get("/commands/{command_id}")
async def command_detail(command_id: int, request: Request, v: Viewing) -> Response:
    v.require("command:read")
    cmd = await v.st.indexer.get(f"/commands/{command_id}")
    if not await v.reader("command:read").commands([cmd]):
        v.deny("command:read", f"command {command_id}")
    parent = (
        await v.st.indexer.get(f"/commands/{cmd['parent_id']}")
        if cmd["parent_id"] is not None
        else None
    )
    output = await v.st.indexer.get(f"/commands/{command_id}/output", limit=1000)
    return page(
        request,
        "command.html",
        v,
        cmd=cmd,
        parent=parent,
        output="".join(c["data"] for c in output["chunks"]),
        output_next=output["next"],
        output_done=output["done"],
        output_truncated=output["truncated"],
    )


@router.get("/commands/{command_id}/events")
async def command_stream(command_id: int, request: Request, v: Viewing) -> Response:
    """Server-sent events: a long command's progress and output, as its agent reports them."""
    v.require("command:read")
    cmd = await v.st.indexer.get(f"/commands/{command_id}")
    if not await v.reader("command:read").commands([cmd]):
        v.deny("command:read", f"command {command_id}")
    try:
        given = request.headers.get("last-event-id") or request.query_params.get("after")
        after = int(given) if given else -1
    except ValueError:
        raise InvalidParams("after must be an output chunk's number") from None
    return event_stream(
        command_events(v.st, command_id, lambda: v.st.closed(request), max(-1, after))
    )
