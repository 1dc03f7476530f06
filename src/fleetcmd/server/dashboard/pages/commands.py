"""One command: target, action, timeline, lease and its result (what the receiver answered)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from fleetcmd.server.dashboard.pages import Viewing
from fleetcmd.server.dashboard.render import page

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
    return page(request, "command.html", v, cmd=cmd, parent=parent)
