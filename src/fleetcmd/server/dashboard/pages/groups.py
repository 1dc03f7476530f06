"""Groups: the list, and a group's members, configuration and configuration history."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.responses import Response

from fleetcmd.server.dashboard.pager import Pager
from fleetcmd.server.dashboard.pages import Viewing
from fleetcmd.server.dashboard.render import page

router = APIRouter()


@router.get("/groups")
async def list_groups(request: Request, v: Viewing) -> Response:
    v.require("group:read")
    reader = v.reader("group:read")
    groups = [g for g in (await v.st.indexer.get("/groups"))["items"] if reader.group(g["name"])]
    return page(request, "groups.html", v, groups=groups, can_create=v.can("task:create"))


@router.get("/groups/{name}")
async def group_detail(name: str, request: Request, v: Viewing) -> Response:
    v.require("group:read")
    if not v.reader("group:read").group(name):
        v.deny("group:read", f"group {name}")
    group = await v.st.indexer.get(f"/groups/{quote(name, safe='')}")
    pager = Pager.of(request, 50, 500)
    scoped: dict[str, str] = {"scope_ids": ""}  # members hidden without agent:read
    if v.can("agent:read"):
        scoped = await v.reader("agent:read").agent_filter() or {}
    members = await v.st.indexer.get(
        "/agents", group=group["name"], cursor=pager.cursor, limit=pager.size, **scoped
    )
    shown = request.query_params.get("version")
    history = group.get("history", [])
    selected = next((h for h in history if str(h["version"]) == shown), None)
    config = group.get("configuration")
    if selected is not None and selected["config_hash"] != group.get("config_hash"):
        config = (await v.st.indexer.get(f"/configs/{selected['config_hash']}"))["config"]
    return page(
        request,
        "group.html",
        v,
        group=group,
        members=members["items"],
        pager=pager,
        next=pager.next(members["next_cursor"]),
        prev=pager.previous(),
        history=history,
        selected=selected,
        config=config,
        can_create=v.can("task:create"),
    )
