"""Rollouts: per-wave progress and the control actions. The indexer applies each action and
audits it in the same transaction; a refused one (wrong state, unknown task) is audited here."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from fleetcmd.server import audit
from fleetcmd.server.access import Reader as ReadScope
from fleetcmd.server.indexer_client import IndexerError
from fleetcmd.server.management.auth import State, deny, require, user_proof
from fleetcmd.server.rbac import User
from fleetcmd.server.state import ServerState

router = APIRouter(tags=["rollouts"])
Reader = Annotated[User, Depends(require("task:read"))]
Controller = Annotated[User, Depends(require("rollout:control"))]


@router.get("/tasks/{task_id}/rollout")
async def get_rollout(task_id: int, request: Request, st: State, user: Reader) -> dict[str, Any]:
    """State, policy and per-wave counts (pending, in flight, succeeded, failed, timed out,
    offline-waiting, expired); for a rollback task, the rollout it undoes."""
    await check_task_access(st, request, user, "task:read", task_id)
    return {"data": await st.indexer.get(f"/tasks/{task_id}/rollout")}


async def check_task_access(
    st: ServerState, request: Request, user: User, action: str, task_id: int
) -> None:
    """403 unless `action` is granted on everything the task reaches (scoped roles)."""
    task = await st.indexer.get(f"/tasks/{task_id}")
    if not await ReadScope(st, user, action).task(task):
        await deny(st, request, user, action, f"task:{task_id}")


class ControlIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=1000)


@router.post("/tasks/{task_id}/rollout/{action}")
async def control_rollout(
    task_id: int,
    action: Literal["pause", "resume", "abort", "rollback"],
    request: Request,
    user: Controller,
    st: State,
    body: ControlIn | None = None,
) -> dict[str, Any]:
    source = (
        "dashboard"
        if request.headers.get("x-fleetcmd-source", "").lower() == "dashboard"
        else "management-api"
    )
    await check_task_access(st, request, user, "rollout:control", task_id)
    payload = {
        "user": user.name,
        "proof": user_proof(request),
        "source": source,
        "reason": body.reason if body else "",
        "address": audit.client_address(request),
        "node": st.options.node_id,
    }
    try:
        data = await st.indexer.post(f"/tasks/{task_id}/rollout/{action}", payload, retries=0)
    except IndexerError as exc:
        await audit.record(
            st,
            f"rollout.{action}",
            actor=user.name,
            outcome=audit.FAILURE,
            request=request,
            target=f"task:{task_id}",
            details={"status": exc.status, "message": exc.body.get("message")},
        )
        raise
    return {"data": data}
