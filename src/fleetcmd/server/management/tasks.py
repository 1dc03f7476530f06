"""Tasks: file, read, list, cancel. The caller's roles are checked against everything a task
reaches; the indexer's task manager validates and answers."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from fleetcmd.errors import FleetError
from fleetcmd.model.wire import TaskIn
from fleetcmd.server import audit
from fleetcmd.server.access import Reader, check_task, task_scope
from fleetcmd.server.config import check_timeout
from fleetcmd.server.indexer_client import IndexerError
from fleetcmd.server.management.auth import State, deny, require, user_proof
from fleetcmd.server.rbac import User
from fleetcmd.server.state import ServerState

router = APIRouter(tags=["tasks"])
Creator = Annotated[User, Depends(require("task:create"))]
Reader_ = Annotated[User, Depends(require("task:read"))]
Canceller = Annotated[User, Depends(require("task:cancel"))]
HOP_KEY_PREFIX = "hop:"  # keys the server makes for tasks filed without one


async def file_task(
    st: ServerState, request: Request, user: User, body: TaskIn, source: str
) -> tuple[int, dict[str, Any]]:
    """Check the targets, file the task, audit the outcome (shared with the dashboard)."""
    details: dict[str, Any] = {"type": body.type, "source": source}
    if body.override_freeze and not st.rbac.can(user, "freeze:override"):
        await deny(st, request, user, "freeze:override")
    try:
        check_timeout(st.config, body.timeout)
        await check_task(st, user, body.type, body.params)
    except FleetError as exc:
        await audit.record(
            st,
            "task.create",
            actor=user.name,
            outcome=audit.DENIED,
            request=request,
            details={**details, "reason": exc.message},
        )
        raise
    payload = {
        **body.model_dump(exclude_none=True),
        "user": user.name,
        "source": source,
        "proof": user_proof(request),
        "scope": task_scope(st, user, body.type),
    }
    # Every task crosses to the indexer with a key, so that a retry after a lost answer
    # returns the task it wrote instead of writing a second one.
    ours = body.idempotency_key is None
    if ours:
        payload["idempotency_key"] = f"{HOP_KEY_PREFIX}{uuid.uuid4().hex}"
    try:
        status, resp = await st.indexer.call(
            "POST", "/tasks", json=payload, retries=1, idempotent=True
        )
    except IndexerError as exc:
        await audit.record(
            st,
            "task.create",
            actor=user.name,
            outcome=audit.FAILURE,
            request=request,
            details={**details, "error": exc.body},
        )
        raise
    task = resp["data"]
    # A key only this call knew was replayed: its first attempt wrote the task.
    created = ours or bool(resp.get("created", status == 202))
    if ours:
        status, resp = 202, {**resp, "created": True}
    await audit.record(
        st,
        "task.create",
        actor=user.name,
        request=request,
        target=f"task:{task['id']}",
        details={**details, "created": created},
    )
    return status, resp


async def cancel(st: ServerState, request: Request, user: User, task_id: int) -> Any:
    """Cancel a task the user may cancel (its whole reach), audited."""
    task = await st.indexer.get(f"/tasks/{task_id}")
    if not await Reader(st, user, "task:cancel").task(task):
        await deny(st, request, user, "task:cancel", f"task:{task_id}")
    try:
        out = await st.indexer.post(f"/tasks/{task_id}/cancel", {}, retries=1, idempotent=True)
    except IndexerError as exc:
        await audit.record(
            st,
            "task.cancel",
            actor=user.name,
            outcome=audit.FAILURE,
            request=request,
            target=f"task:{task_id}",
            details={"error": exc.body},
        )
        raise
    await audit.record(
        st,
        "task.cancel",
        actor=user.name,
        request=request,
        target=f"task:{task_id}",
        details={"type": task["type"]},
    )
    return out


@router.post("/tasks", status_code=202)
async def create_task(
    body: TaskIn, request: Request, response: Response, user: Creator, st: State
) -> dict[str, Any]:
    """202 with the task; 200 when an idempotency key replays an earlier task. 403 when the
    caller may not file this type on every agent, group or server it reaches."""
    source = (
        "dashboard"
        if request.headers.get("x-fleetcmd-source", "").lower() == "dashboard"
        else "management-api"
    )
    status, resp = await file_task(st, request, user, body, source)
    response.status_code = 202 if status == 202 else 200
    return {"data": resp["data"], "created": bool(resp.get("created", status == 202))}


@router.get("/tasks")
async def list_tasks(
    st: State,
    user: Reader_,
    status: str | None = None,
    type: str | None = None,
    user_: Annotated[str | None, Query(alias="user")] = None,
    source: str | None = None,
    since: float | None = None,
    until: float | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    """Only the tasks whose whole reach the caller may read (a page may come back short)."""
    page = await st.indexer.get(
        "/tasks",
        status=status,
        type=type,
        user=user_,
        source=source,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
    page["items"] = await Reader(st, user, "task:read").tasks(page["items"])
    return {"data": page}


@router.get("/tasks/{task_id}")
async def get_task(task_id: int, request: Request, st: State, user: Reader_) -> dict[str, Any]:
    task = await st.indexer.get(f"/tasks/{task_id}")
    if not await Reader(st, user, "task:read").task(task):
        await deny(st, request, user, "task:read", f"task:{task_id}")
    return {"data": task}


@router.post("/tasks/{task_id}/cancel")
async def cancel_task(task_id: int, request: Request, st: State, user: Canceller) -> dict[str, Any]:
    return {"data": await cancel(st, request, user, task_id)}
