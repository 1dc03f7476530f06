"""Schedules, freezes and maintenance windows on the Management API. A schedule is checked
as its task would be when filed (the creator's reach over its params, a freeze override's
permission) and keeps the creator's scope: the indexer files each occurrence as the creator.
Freezes are the system's (`freeze:create`, `freeze:delete`: administrators), and so are
windows (`window:create`, `window:delete`); every change is audited."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from fleetcmd.errors import FleetError
from fleetcmd.model.schedules import FreezeIn, ScheduleIn, WindowIn
from fleetcmd.server import audit
from fleetcmd.server.access import Reader, check_task, task_scope
from fleetcmd.server.config import check_timeout
from fleetcmd.server.indexer_client import IndexerError
from fleetcmd.server.management.auth import State, deny, require, user_proof
from fleetcmd.server.rbac import User
from fleetcmd.server.state import ServerState

router = APIRouter(tags=["schedules"])
Creator = Annotated[User, Depends(require("task:create"))]
Reader_ = Annotated[User, Depends(require("task:read"))]
Canceller = Annotated[User, Depends(require("task:cancel"))]
FreezeCreator = Annotated[User, Depends(require("freeze:create"))]
FreezeDeleter = Annotated[User, Depends(require("freeze:delete"))]
WindowCreator = Annotated[User, Depends(require("window:create"))]
WindowDeleter = Annotated[User, Depends(require("window:delete"))]
OVERRIDE = "freeze:override"


def source_of(request: Request) -> str:
    dashboard = request.headers.get("x-fleetcmd-source", "").lower() == "dashboard"
    return "dashboard" if dashboard else "management-api"


async def check_override(st: ServerState, request: Request, user: User, wanted: bool) -> None:
    """403 (audited) when a filer asks to pass a freeze without `freeze:override`."""
    if wanted and not st.rbac.can(user, OVERRIDE):
        await deny(st, request, user, OVERRIDE)


async def _audited(
    st: ServerState,
    request: Request,
    user: User,
    action: str,
    target: str | None,
    details: dict[str, Any],
    call: Any,
) -> Any:
    try:
        out = await call
    except (IndexerError, FleetError) as exc:
        error = exc.body if isinstance(exc, IndexerError) else exc.message
        await audit.record(
            st,
            action,
            actor=user.name,
            outcome=audit.FAILURE if isinstance(exc, IndexerError) else audit.DENIED,
            request=request,
            target=target,
            details={**details, "error": error},
        )
        raise
    if isinstance(out, dict) and target is None and "id" in out:
        target = f"{action.split('.')[0]}:{out['id']}"
    await audit.record(st, action, actor=user.name, request=request, target=target, details=details)
    return out


async def file_schedule(
    st: ServerState, request: Request, user: User, body: ScheduleIn, source: str
) -> dict[str, Any]:
    """Check the task as if filed now, forward the schedule, audit (shared with the dashboard)."""
    details = {"name": body.name, "type": body.task.type, "rrule": body.rrule, "tz": body.tz}

    async def create() -> Any:
        check_timeout(st.config, body.task.timeout)
        await check_task(st, user, body.task.type, body.task.params)
        await check_override(st, request, user, body.task.override_freeze)
        payload = {
            **body.model_dump(exclude_none=True),
            "user": user.name,
            "source": source,
            "proof": user_proof(request),
            "scope": task_scope(st, user, body.task.type),
        }
        return await st.indexer.post("/schedules", payload, retries=0)

    out: dict[str, Any] = await _audited(
        st, request, user, "schedule.create", None, details, create()
    )
    return out


async def readable(st: ServerState, user: User, action: str, sched: dict[str, Any]) -> bool:
    if sched["user"] == user.name:
        return True
    task = {"id": sched["id"], "user": sched["user"], **sched["task"]}
    return await Reader(st, user, action).task(task)


async def _mine(
    st: ServerState, request: Request, user: User, action: str, schedule_id: int
) -> dict[str, Any]:
    sched: dict[str, Any] = await st.indexer.get(f"/schedules/{schedule_id}")
    if not await readable(st, user, action, sched):
        await deny(st, request, user, action, f"schedule:{schedule_id}")
    return sched


@router.post("/schedules", status_code=201)
async def create_schedule(
    body: ScheduleIn, request: Request, user: Creator, st: State
) -> dict[str, Any]:
    """A task filed at `start` (local time in `tz`), or on the RRULE `rrule` from `start`;
    `missed` says what happens to occurrences that fell while no indexer ran."""
    return {"data": await file_schedule(st, request, user, body, source_of(request))}


@router.get("/schedules")
async def list_schedules(st: State, user: Reader_) -> dict[str, Any]:
    """The schedules whose task the caller may read, each with its next five occurrences."""
    items = (await st.indexer.get("/schedules"))["items"]
    return {"data": {"items": [s for s in items if await readable(st, user, "task:read", s)]}}


@router.get("/schedules/{schedule_id}")
async def show_schedule(
    schedule_id: int, request: Request, st: State, user: Reader_
) -> dict[str, Any]:
    """The schedule, its next occurrences and the last 50 it handled (task ids, outcomes)."""
    return {"data": await _mine(st, request, user, "task:read", schedule_id)}


async def change_schedule(
    st: ServerState, request: Request, user: User, schedule_id: int, verb: str
) -> Any:
    sched = await _mine(st, request, user, "task:cancel", schedule_id)
    target = f"schedule:{schedule_id}"
    details = {"name": sched["name"]}
    if verb == "delete":
        call = st.indexer.request("DELETE", f"/schedules/{schedule_id}", retries=0)
    else:
        call = st.indexer.post(f"/schedules/{schedule_id}/{verb}", {}, retries=0)
    return await _audited(st, request, user, f"schedule.{verb}", target, details, call)


@router.post("/schedules/{schedule_id}/pause")
async def pause_schedule(
    schedule_id: int, request: Request, st: State, user: Canceller
) -> dict[str, Any]:
    return {"data": await change_schedule(st, request, user, schedule_id, "pause")}


@router.post("/schedules/{schedule_id}/resume")
async def resume_schedule(
    schedule_id: int, request: Request, st: State, user: Canceller
) -> dict[str, Any]:
    """Goes on from now: occurrences that fell while it was paused are not filed."""
    return {"data": await change_schedule(st, request, user, schedule_id, "resume")}


@router.delete("/schedules/{schedule_id}", status_code=204)
async def delete_schedule(
    schedule_id: int, request: Request, st: State, user: Canceller
) -> Response:
    """The schedule goes; the tasks it filed stay."""
    await change_schedule(st, request, user, schedule_id, "delete")
    return Response(status_code=204)


@router.post("/freezes", status_code=201)
async def create_freeze(
    body: FreezeIn, request: Request, user: FreezeCreator, st: State
) -> dict[str, Any]:
    """No task reaches the agents `selector` matches between `starts_at` and `ends_at`
    unless its filer holds `freeze:override` and sets `override_freeze`."""
    payload = {**body.model_dump(mode="json"), "user": user.name, "proof": user_proof(request)}
    details = {"name": body.name, "selector": body.selector}
    call = st.indexer.post("/freezes", payload, retries=0)
    return {"data": await _audited(st, request, user, "freeze.create", None, details, call)}


@router.get("/freezes")
async def list_freezes(st: State, user: Reader_, current: bool = False) -> dict[str, Any]:
    return {"data": await st.indexer.get("/freezes", current=current)}


@router.delete("/freezes/{freeze_id}", status_code=204)
async def delete_freeze(
    freeze_id: int, request: Request, user: FreezeDeleter, st: State
) -> Response:
    call = st.indexer.request("DELETE", f"/freezes/{freeze_id}", retries=0)
    await _audited(st, request, user, "freeze.delete", f"freeze:{freeze_id}", {}, call)
    return Response(status_code=204)


@router.post("/windows", status_code=201)
async def create_window(
    body: WindowIn, request: Request, user: WindowCreator, st: State
) -> dict[str, Any]:
    """The agents `selector` matches may run windowed tasks from each opening of `rrule`
    (local times in `tz`) for `duration` seconds."""
    return {"data": await file_window(st, request, user, body)}


async def file_window(
    st: ServerState, request: Request, user: User, body: WindowIn
) -> dict[str, Any]:
    """Forward and audit a new window (shared with the dashboard)."""
    payload = {**body.model_dump(), "user": user.name, "proof": user_proof(request)}
    details = {"name": body.name, "selector": body.selector, "rrule": body.rrule}
    call = st.indexer.post("/windows", payload, retries=0)
    out: dict[str, Any] = await _audited(st, request, user, "window.create", None, details, call)
    return out


async def remove_window(st: ServerState, request: Request, user: User, window_id: int) -> None:
    call = st.indexer.request("DELETE", f"/windows/{window_id}", retries=0)
    await _audited(st, request, user, "window.delete", f"window:{window_id}", {}, call)


@router.get("/windows")
async def list_windows(st: State, user: Reader_) -> dict[str, Any]:
    """Each window, whether it is open, and its next five openings."""
    return {"data": await st.indexer.get("/windows")}


@router.delete("/windows/{window_id}", status_code=204)
async def delete_window(
    window_id: int, request: Request, user: WindowDeleter, st: State
) -> Response:
    await remove_window(st, request, user, window_id)
    return Response(status_code=204)


@router.get("/tasks/{task_id}/windows")
async def task_windows(task_id: int, request: Request, st: State, user: Reader_) -> dict[str, Any]:
    """A windowed task's held and pending commands, and its "missed window" count."""
    task = await st.indexer.get(f"/tasks/{task_id}")
    if not await Reader(st, user, "task:read").task(task):
        await deny(st, request, user, "task:read", f"task:{task_id}")
    return {"data": await st.indexer.get(f"/tasks/{task_id}/windows")}
