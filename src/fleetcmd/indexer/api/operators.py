"""Operators' control (docs/commands.md, docs/security.md): previews that freeze a task's
targets, re-runs on the agents that failed, approvals of held tasks, the approval policy and
agents' labels. Each is the task manager's, the approvals' or the store's, behind a route."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from fleetcmd.errors import Forbidden
from fleetcmd.indexer.approvals import Approvals
from fleetcmd.indexer.state import IndexerState, authorized
from fleetcmd.indexer.task_manager import TaskRequest
from fleetcmd.model.approvals import POLICY_DOC, POLICY_INDEX, ApprovalPolicy
from fleetcmd.model.targets import AgentScope, AgentSelection
from fleetcmd.model.wire import (
    DecisionToIndexer,
    Filer,
    LabelsIn,
    PreviewToIndexer,
    RerunToIndexer,
    ScopeIn,
)

router = APIRouter(tags=["operators"])
Auth = Annotated[IndexerState, Depends(authorized)]
PREVIEW_TTL = 900.0  # a preview's token files a task for 15 minutes


def scope_of(scope: ScopeIn | None) -> AgentScope | None:
    return None if scope is None else AgentScope(tuple(scope.ids), tuple(scope.groups))


async def _person(st: IndexerState, body: Filer) -> str:
    """The user a proof names: previews, re-runs and decisions are people's."""
    who = await run_in_threadpool(st.proofs.attribute, body.user, body.proof)
    if not who.proven:
        raise Forbidden("this request needs a person's user proof")
    return who.user


@router.post("/tasks/preview")
async def preview(body: PreviewToIndexer, st: Auth) -> dict[str, Any]:
    """What a task would reach now, frozen under a token; nothing is filed."""
    user = await _person(st, body)
    req = TaskRequest(body.type, body.params, body.source, user, scope=scope_of(body.scope))
    return {"data": await run_in_threadpool(st.tasks.preview, req, PREVIEW_TTL)}


@router.post("/tasks/{task_id}/rerun", status_code=202)
async def rerun(task_id: int, body: RerunToIndexer, st: Auth) -> dict[str, Any]:
    user = await _person(st, body)
    req = TaskRequest(
        "",
        {},
        body.source,
        user,
        body.idempotency_key,
        body.timeout,
        body.expires_in,
        scope=scope_of(body.scope),
    )
    task, created = await run_in_threadpool(st.tasks.rerun, task_id, list(body.statuses), req)
    return {"data": task.to_json(), "created": created}


async def _decide(st: IndexerState, task_id: int, body: DecisionToIndexer, what: str) -> Any:
    user = await _person(st, body)
    approvals = Approvals(st.tasks)
    task = await run_in_threadpool(approvals.decide, task_id, user, what, body.reason)
    if task.status != "awaiting-approval":
        st.waker.fire("rollout")
    return {"data": task.to_json()}


@router.post("/tasks/{task_id}/approve")
async def approve(task_id: int, body: DecisionToIndexer, st: Auth) -> dict[str, Any]:
    return await _decide(st, task_id, body, "approved")


@router.post("/tasks/{task_id}/reject")
async def reject(task_id: int, body: DecisionToIndexer, st: Auth) -> dict[str, Any]:
    return await _decide(st, task_id, body, "rejected")


@router.get("/tasks/{task_id}/approvals")
async def decisions(task_id: int, st: Auth) -> dict[str, Any]:
    await run_in_threadpool(st.store.get_task, task_id)  # 404 for an unknown task
    return {"data": {"items": await run_in_threadpool(st.store.task_decisions, task_id)}}


@router.get("/tasks/{task_id}/targets")
async def frozen_targets(task_id: int, st: Auth) -> dict[str, Any]:
    """The summary of a task's frozen target set (null when it has none)."""

    def read() -> dict[str, Any] | None:
        task = st.store.get_task(task_id)
        if task.target_set is None:
            return None
        with st.store.reading() as tx:
            return tx.selection_summary(AgentSelection(frozen=task.target_set))

    return {"data": await run_in_threadpool(read)}


@router.get("/approval-policy")
async def get_policy(st: Auth) -> dict[str, Any]:
    def read() -> Any:
        with st.store.reading() as tx:
            return tx.document(POLICY_INDEX, POLICY_DOC)

    doc = await run_in_threadpool(read)
    return {"data": ApprovalPolicy.model_validate(doc or {}).model_dump(mode="json")}


@router.put("/approval-policy")
async def put_policy(body: ApprovalPolicy, st: Auth) -> dict[str, Any]:
    def write() -> int:
        with st.store.transaction() as tx:
            return tx.put_document(POLICY_INDEX, POLICY_DOC, body.model_dump(mode="json"))

    version = await run_in_threadpool(write)
    return {"data": {**body.model_dump(mode="json"), "version": version}}


@router.put("/agents/{agent_id}/labels")
async def put_labels(agent_id: str, body: LabelsIn, st: Auth) -> dict[str, Any]:
    before = await run_in_threadpool(st.store.put_labels, agent_id, body.labels)
    return {"data": {"agent": agent_id, "labels": body.labels, "before": before}}


@router.get("/agents/{agent_id}/labels")
async def get_labels(agent_id: str, st: Auth) -> dict[str, Any]:
    labels = await run_in_threadpool(st.store.get_labels, agent_id)
    return {"data": {"agent": agent_id, "labels": labels}}
