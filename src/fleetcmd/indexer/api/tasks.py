"""Tasks: submit, read, list, cancel (the task manager's front door)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from fleetcmd.indexer.state import IndexerState, authorized
from fleetcmd.indexer.task_manager import TaskRequest

router = APIRouter(tags=["tasks"])
Auth = Annotated[IndexerState, Depends(authorized)]


class TaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    source: str = "management-api"
    user: str | None = Field(default=None, min_length=1, max_length=128)
    proof: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="The person's user proof (`POST /user-proofs`).",
    )
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    timeout: float | None = Field(default=None, gt=0, le=30 * 86400)
    expires_in: float | None = Field(default=None, gt=0, le=30 * 86400)
    rollout: dict[str, Any] | None = None


@router.post("/tasks", status_code=202)
async def submit_task(body: TaskIn, st: Auth, response: Response) -> dict[str, Any]:
    """Filed under the user its proof names, else in the node's own name (audited)."""
    people = body.type == "rbac-change" and bool(body.params.get("changes"))
    who = await run_in_threadpool(st.proofs.attribute, body.user, body.proof, people=people)
    req = TaskRequest(
        body.type,
        body.params,
        body.source,
        who.user,
        body.idempotency_key,
        body.timeout,
        body.expires_in,
        body.rollout,
        who.audit(body.type, body.source),
    )
    task, created = await run_in_threadpool(st.tasks.submit, req)
    if created:
        st.metrics.tasks.labels(body.type, body.source).inc()
    else:
        response.status_code = 200
    if body.rollout is not None:
        st.waker.fire("rollout")
    return {"data": task.to_json(), "created": created}


@router.get("/tasks")
async def list_tasks(
    st: Auth,
    status: str | None = None,
    type: str | None = None,
    user: str | None = None,
    source: str | None = None,
    since: float | None = None,
    until: float | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    page = await run_in_threadpool(
        lambda: st.store.list_tasks(
            status=status,
            type_=type,
            user=user,
            source=source,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
        )
    )
    return {"data": page.to_json()}


@router.get("/tasks/{task_id}")
async def get_task(task_id: int, st: Auth) -> dict[str, Any]:
    task = await run_in_threadpool(st.store.get_task, task_id)
    return {"data": task.to_json()}


@router.post("/tasks/{task_id}/cancel")
async def cancel_task(task_id: int, st: Auth) -> dict[str, Any]:
    n = await run_in_threadpool(st.store.cancel_task, task_id)
    task = await run_in_threadpool(st.store.get_task, task_id)
    return {"data": task.to_json(), "cancelled_commands": n}
