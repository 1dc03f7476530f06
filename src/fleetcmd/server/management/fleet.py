"""Read-only views of the fleet: agents, groups and commands (the indexer's filters),
narrowed to what the caller's roles may read."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request

from fleetcmd.errors import NotFound
from fleetcmd.server.access import Reader
from fleetcmd.server.management.auth import State, deny, require
from fleetcmd.server.rbac import User
from fleetcmd.server.state import ServerState

router = APIRouter(tags=["fleet"])
AgentReader = Annotated[User, Depends(require("agent:read"))]
GroupReader = Annotated[User, Depends(require("group:read"))]
CommandReader = Annotated[User, Depends(require("command:read"))]


@router.get("/agents")
async def list_agents(
    st: State,
    user: AgentReader,
    group: str | None = None,
    status: str | None = None,
    node: str | None = None,
    search: Annotated[str | None, Query(max_length=128)] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    scoped = await Reader(st, user, "agent:read").agent_filter() or {}
    return {
        "data": await st.indexer.get(
            "/agents",
            group=group,
            status=status,
            node=node,
            search=search,
            cursor=cursor,
            limit=limit,
            **scoped,
        )
    }


async def agent_doc(st: ServerState, agent_id: str) -> dict[str, Any]:
    """One agent from the indexer (also for the dashboard). The indexer's `/agents/summary`
    and `/agents/removed` share the path of an agent id: an answer that is not the agent
    asked for is a 404."""
    doc = await st.indexer.get(f"/agents/{quote(agent_id, safe='')}")
    if not isinstance(doc, dict) or doc.get("id") != agent_id:
        raise NotFound(f"agent {agent_id} not found")
    return doc


@router.get("/agents/{agent_id}")
async def get_agent(
    agent_id: str, request: Request, st: State, user: AgentReader
) -> dict[str, Any]:
    agent = await agent_doc(st, agent_id)
    if not Reader(st, user, "agent:read").agent(agent):
        await deny(st, request, user, "agent:read", f"agent:id:{agent_id}")
    return {"data": agent}


@router.get("/groups")
async def list_groups(st: State, user: GroupReader) -> dict[str, Any]:
    data = await st.indexer.get("/groups")
    reader = Reader(st, user, "group:read")
    data["items"] = [g for g in data["items"] if reader.group(g["name"])]
    return {"data": data}


@router.get("/groups/{name}")
async def get_group(name: str, request: Request, st: State, user: GroupReader) -> dict[str, Any]:
    if not Reader(st, user, "group:read").group(name):
        await deny(st, request, user, "group:read", f"group:id:{name}")
    return {"data": await st.indexer.get(f"/groups/{quote(name, safe='')}")}


@router.get("/commands")
async def list_commands(
    st: State,
    user: CommandReader,
    task_id: int | None = None,
    parent_id: int | None = None,
    status: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
) -> dict[str, Any]:
    """Only the commands the caller may read (a page may come back short)."""
    page = await st.indexer.get(
        "/commands",
        task_id=task_id,
        parent_id=parent_id,
        status=status,
        target_type=target_type,
        target_id=target_id,
        cursor=cursor,
        limit=limit,
    )
    page["items"] = await Reader(st, user, "command:read").commands(page["items"])
    return {"data": page}


@router.get("/commands/{command_id}")
async def get_command(
    command_id: int, request: Request, st: State, user: CommandReader
) -> dict[str, Any]:
    command = await st.indexer.get(f"/commands/{command_id}")
    if not await Reader(st, user, "command:read").commands([command]):
        await deny(st, request, user, "command:read", f"command:{command_id}")
    return {"data": command}


@router.get("/commands/{command_id}/output")
async def get_command_output(
    command_id: int,
    request: Request,
    st: State,
    user: CommandReader,
    after: Annotated[int, Query(ge=-1)] = -1,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """A long command's output, chunks after `after` in order (issue 17.3): who may read the
    command may read its output."""
    command = await st.indexer.get(f"/commands/{command_id}")
    if not await Reader(st, user, "command:read").commands([command]):
        await deny(st, request, user, "command:read", f"command:{command_id}")
    return {
        "data": await st.indexer.get(f"/commands/{command_id}/output", after=after, limit=limit)
    }
