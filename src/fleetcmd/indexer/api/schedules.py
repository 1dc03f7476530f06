"""Schedules, freezes and maintenance windows: the scheduler's, the freeze calendar's and the
window gate's front door."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from fleetcmd.errors import NotFound
from fleetcmd.indexer import freezes
from fleetcmd.indexer.api.operators import scope_of
from fleetcmd.indexer.state import IndexerState, authorized
from fleetcmd.model.schedules import FreezeToIndexer, ScheduleToIndexer, WindowToIndexer

router = APIRouter(tags=["schedules"])
Auth = Annotated[IndexerState, Depends(authorized)]


@router.post("/schedules", status_code=201)
async def create_schedule(body: ScheduleToIndexer, st: Auth) -> dict[str, Any]:
    """Filed under the user its proof names (each occurrence is filed as that user)."""
    who = await run_in_threadpool(st.proofs.attribute, body.user, body.proof)
    view = await run_in_threadpool(
        st.schedules.create,
        body,
        who.user,
        body.source,
        scope_of(body.scope),
        who.proven,
    )
    st.waker.fire("schedule")
    return {"data": view}


@router.get("/schedules")
async def list_schedules(st: Auth, user: str | None = None) -> dict[str, Any]:
    return {"data": {"items": await run_in_threadpool(st.schedules.list, user)}}


@router.get("/schedules/{schedule_id}")
async def show_schedule(schedule_id: int, st: Auth) -> dict[str, Any]:
    return {"data": await run_in_threadpool(st.schedules.show, schedule_id)}


@router.post("/schedules/{schedule_id}/pause")
async def pause_schedule(schedule_id: int, st: Auth) -> dict[str, Any]:
    return {"data": await run_in_threadpool(st.schedules.pause, schedule_id)}


@router.post("/schedules/{schedule_id}/resume")
async def resume_schedule(schedule_id: int, st: Auth) -> dict[str, Any]:
    view = await run_in_threadpool(st.schedules.resume, schedule_id)
    st.waker.fire("schedule")
    return {"data": view}


@router.delete("/schedules/{schedule_id}")
async def delete_schedule(schedule_id: int, st: Auth) -> dict[str, Any]:
    await run_in_threadpool(st.schedules.delete, schedule_id)
    return {"data": {"deleted": schedule_id}}


@router.post("/freezes", status_code=201)
async def create_freeze(body: FreezeToIndexer, st: Auth) -> dict[str, Any]:
    who = await run_in_threadpool(st.proofs.attribute, body.user, body.proof)
    return {"data": await run_in_threadpool(freezes.create, st.store, body, who.user)}


@router.get("/freezes")
async def list_freezes(st: Auth, current: bool = False) -> dict[str, Any]:
    since = st.schedules.clock() if current else None
    rows = await run_in_threadpool(st.store.list_freezes, since)
    return {"data": {"items": [freezes.view(f) for f in rows]}}


@router.delete("/freezes/{freeze_id}")
async def delete_freeze(freeze_id: int, st: Auth) -> dict[str, Any]:
    await run_in_threadpool(freezes.delete, st.store, freeze_id)
    return {"data": {"deleted": freeze_id}}


@router.post("/windows", status_code=201)
async def create_window(body: WindowToIndexer, st: Auth) -> dict[str, Any]:
    who = await run_in_threadpool(st.proofs.attribute, body.user, body.proof)
    view = await run_in_threadpool(st.windows.create, body, who.user)
    st.waker.fire("window")
    return {"data": view}


@router.get("/windows")
async def list_windows(st: Auth) -> dict[str, Any]:
    return {"data": {"items": await run_in_threadpool(st.windows.list)}}


@router.delete("/windows/{window_id}")
async def delete_window(window_id: int, st: Auth) -> dict[str, Any]:
    await run_in_threadpool(st.windows.delete, window_id)
    return {"data": {"deleted": window_id}}


@router.get("/tasks/{task_id}/windows")
async def task_windows(task_id: int, st: Auth) -> dict[str, Any]:
    """Held, pending and "missed window" counts of a task that requires windows."""
    report = await run_in_threadpool(st.store.task_window_report, task_id)
    if report is None:
        raise NotFound(f"task {task_id} does not wait for maintenance windows")
    return {"data": report}
