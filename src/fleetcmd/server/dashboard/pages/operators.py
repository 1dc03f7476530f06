"""Operators' control in the dashboard: the queue of tasks waiting for my approval (each with
what it reaches), approving or rejecting one, and re-running a task on the agents whose
commands ended in chosen statuses. The Management API's functions do the work and the audit."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from fleetcmd.errors import Forbidden
from fleetcmd.model.wire import DecisionIn, RerunIn
from fleetcmd.server.dashboard.pages import Viewing, read_form
from fleetcmd.server.dashboard.render import page, redirect
from fleetcmd.server.dashboard.session import Denied
from fleetcmd.server.management.operators import decide, rerun_task, waiting_for

router = APIRouter()
RERUN_STATUSES = ("failure", "timeout", "expired", "cancelled", "success")


@router.get("/approvals")
async def queue(request: Request, v: Viewing) -> Response:
    v.require("task:approve")
    tasks = sorted(await waiting_for(v.st, v.user), key=lambda t: t["id"])
    targets = await asyncio.gather(
        *(v.st.indexer.get(f"/tasks/{t['id']}/targets") for t in tasks[:50])
    )
    return page(request, "approvals.html", v, items=list(zip(tasks[:50], targets, strict=True)))


async def _decide(task_id: int, verb: str, request: Request, v: Viewing) -> Response:
    form = await read_form(request)
    v.require("task:approve")
    try:
        await decide(
            v.st, request, v.user, task_id, DecisionIn(reason=form.get("reason", "")[:1000]), verb
        )
    except Forbidden as exc:
        raise Denied(exc.message, "task:approve") from None
    return redirect(request, f"/app/tasks/{task_id}?{verb}d=1")


@router.post("/tasks/{task_id}/approve")
async def approve(task_id: int, request: Request, v: Viewing) -> Response:
    return await _decide(task_id, "approve", request, v)


@router.post("/tasks/{task_id}/reject")
async def reject(task_id: int, request: Request, v: Viewing) -> Response:
    return await _decide(task_id, "reject", request, v)


@router.post("/tasks/{task_id}/rerun")
async def rerun(task_id: int, request: Request, v: Viewing) -> Response:
    form = await read_form(request)
    v.require("task:create")
    chosen = [s for s in RERUN_STATUSES if form.get(f"status_{s}") == "yes"]
    body = RerunIn.model_validate({"statuses": chosen} if chosen else {})
    try:
        task = await rerun_task(v.st, request, v.user, task_id, body)
    except Forbidden as exc:
        raise Denied(exc.message, "task:create") from None
    return redirect(request, f"/app/tasks/{task['id']}?created=1")
