"""Tasks: submit, read, list, cancel (the task manager's front door)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from starlette.concurrency import run_in_threadpool

from fleetcmd.indexer.api.operators import scope_of
from fleetcmd.indexer.state import IndexerState, authorized
from fleetcmd.indexer.task_manager import TaskRequest
from fleetcmd.model.wire import TaskToIndexer

router = APIRouter(tags=["tasks"])
Auth = Annotated[IndexerState, Depends(authorized)]


@router.post("/tasks", status_code=202)
async def submit_task(body: TaskToIndexer, st: Auth, response: Response) -> dict[str, Any]:
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
        scope_of(body.scope),
        body.preview_token,
        override_freeze=body.override_freeze,
        window=body.window,
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
