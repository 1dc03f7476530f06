"""Rollouts: progress per wave, and the control actions (pause, resume, abort, rollback)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from fleetcmd.indexer import rollouts
from fleetcmd.indexer.state import IndexerState, authorized

router = APIRouter(tags=["rollouts"])
Auth = Annotated[IndexerState, Depends(authorized)]


@router.get("/tasks/{task_id}/rollout")
async def get_rollout(task_id: int, st: Auth) -> dict[str, Any]:
    return {"data": await run_in_threadpool(rollouts.progress, st.store, task_id)}


class ControlIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str | None = Field(default=None, min_length=1, max_length=128)
    proof: str | None = Field(default=None, min_length=1, max_length=4096)
    source: str = Field(default="management-api", min_length=1, max_length=64)
    reason: str = Field(default="", max_length=1000)
    address: str | None = Field(default=None, max_length=128)
    node: str | None = Field(default=None, max_length=128)


@router.post("/tasks/{task_id}/rollout/{action}")
async def control_rollout(
    task_id: int,
    action: Literal["pause", "resume", "abort", "rollback"],
    body: ControlIn,
    st: Auth,
) -> dict[str, Any]:
    """Recorded under the user its proof names, else in the node's own name."""
    who = await run_in_threadpool(st.proofs.attribute, body.user, body.proof)
    data = await run_in_threadpool(
        lambda: rollouts.control(
            st.store,
            task_id,
            action,
            who.user,
            body.source,
            body.reason,
            address=body.address,
            node=body.node,
        )
    )
    st.waker.fire("rollout")
    return {"data": data}
