"""Operators' control on the Management API: preview a task's targets (frozen under a token),
re-run a task on the agents whose commands ended in given statuses, approve or reject tasks an
approval policy holds, the policy itself, and agents' labels. Each step is checked here
against the caller's roles, done by the indexer, and audited."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request

from fleetcmd.errors import FleetError
from fleetcmd.model.approvals import ApprovalPolicy
from fleetcmd.model.status import AWAITING_APPROVAL
from fleetcmd.model.wire import DecisionIn, LabelsIn, PreviewIn, RerunIn
from fleetcmd.server import audit
from fleetcmd.server.access import Reader, check_task, task_scope
from fleetcmd.server.config import check_timeout
from fleetcmd.server.indexer_client import IndexerError
from fleetcmd.server.management.auth import State, deny, require, user_proof
from fleetcmd.server.management.fleet import agent_doc
from fleetcmd.server.rbac import User
from fleetcmd.server.state import ServerState

router = APIRouter(tags=["operators"])
Creator = Annotated[User, Depends(require("task:create"))]
Approver = Annotated[User, Depends(require("task:approve"))]
TaskReader = Annotated[User, Depends(require("task:read"))]
PolicyReader = Annotated[User, Depends(require("approval-policy:read"))]
PolicyWriter = Annotated[User, Depends(require("approval-policy:update"))]
AgentReader = Annotated[User, Depends(require("agent:read"))]
AgentWriter = Annotated[User, Depends(require("agent:update"))]


def _source(request: Request) -> str:
    dashboard = request.headers.get("x-fleetcmd-source", "").lower() == "dashboard"
    return "dashboard" if dashboard else "management-api"


async def _audited(
    st: ServerState,
    request: Request,
    user: User,
    action: str,
    target: str | None,
    details: dict[str, Any],
    call: Any,
) -> Any:
    """Run `call` (an awaitable), auditing its success or its failure."""
    try:
        out = await call
    except (IndexerError, FleetError) as exc:
        error = exc.body if isinstance(exc, IndexerError) else exc.to_json()
        await audit.record(
            st,
            action,
            actor=user.name,
            outcome=audit.FAILURE,
            request=request,
            target=target,
            details={**details, "error": error},
        )
        raise
    await audit.record(st, action, actor=user.name, request=request, target=target, details=details)
    return out


async def preview_task(
    st: ServerState, request: Request, user: User, body: PreviewIn
) -> dict[str, Any]:
    """The preview (shared with the dashboard's forms): checked as filing is, nothing filed."""
    await check_task(st, user, body.type, body.params)
    payload = {
        **body.model_dump(),
        "user": user.name,
        "source": _source(request),
        "proof": user_proof(request),
        "scope": task_scope(st, user, body.type),
    }
    out: dict[str, Any] = await st.indexer.post("/tasks/preview", payload)
    return out


@router.post("/tasks/preview")
async def preview(body: PreviewIn, request: Request, user: Creator, st: State) -> dict[str, Any]:
    """How many agents the task would reach now, by status, group, node and version, how
    many the caller's scope leaves out, the first page, and a `preview_token` that files
    the task on exactly this set (for 15 minutes). Nothing is filed."""
    return {"data": await preview_task(st, request, user, body)}


@router.post("/tasks/{task_id}/rerun", status_code=202)
async def rerun(
    task_id: int, body: RerunIn, request: Request, user: Creator, st: State
) -> dict[str, Any]:
    """A new task of the same type and params (`rerun_of`), reaching exactly the agents whose
    commands of `task_id` ended in `statuses`. Needs what filing it needs."""
    return {"data": await rerun_task(st, request, user, task_id, body), "created": True}


async def rerun_task(
    st: ServerState, request: Request, user: User, task_id: int, body: RerunIn
) -> dict[str, Any]:
    task = await st.indexer.get(f"/tasks/{task_id}")
    if not await Reader(st, user, "task:read").task(task):
        await deny(st, request, user, "task:read", f"task:{task_id}")
    check_timeout(st.config, body.timeout)
    await check_task(st, user, task["type"], task["params"])
    payload = {
        **body.model_dump(exclude_none=True),
        "user": user.name,
        "source": _source(request),
        "proof": user_proof(request),
        "scope": task_scope(st, user, task["type"]),
    }
    details = {"type": task["type"], "rerun_of": task_id, "statuses": list(body.statuses)}
    out = await _audited(
        st,
        request,
        user,
        "task.rerun",
        f"task:{task_id}",
        details,
        st.indexer.post(f"/tasks/{task_id}/rerun", payload, retries=0),
    )
    return dict(out)


async def decide(
    st: ServerState, request: Request, user: User, task_id: int, body: DecisionIn, verb: str
) -> dict[str, Any]:
    task = await st.indexer.get(f"/tasks/{task_id}")
    if not await Reader(st, user, "task:approve").task(task):
        await deny(st, request, user, "task:approve", f"task:{task_id}")
    payload = {**body.model_dump(), "user": user.name, "proof": user_proof(request)}
    out = await _audited(
        st,
        request,
        user,
        f"task.{verb}",
        f"task:{task_id}",
        {"type": task["type"], "requester": task["user"], "reason": body.reason},
        st.indexer.post(f"/tasks/{task_id}/{verb}", payload, retries=0),
    )
    return {"data": out}


@router.post("/tasks/{task_id}/approve")
async def approve(
    task_id: int, body: DecisionIn, request: Request, user: Approver, st: State
) -> dict[str, Any]:
    """One approval from someone other than the requester; the last one needed writes the
    task's commands (409 when it is not awaiting approval, 403 for its requester)."""
    return await decide(st, request, user, task_id, body, "approve")


@router.post("/tasks/{task_id}/reject")
async def reject(
    task_id: int, body: DecisionIn, request: Request, user: Approver, st: State
) -> dict[str, Any]:
    """End a held task as `rejected`, with a reason; nothing of it is ever written."""
    return await decide(st, request, user, task_id, body, "reject")


@router.get("/tasks/{task_id}/approvals")
async def decisions(task_id: int, request: Request, user: TaskReader, st: State) -> Any:
    task = await st.indexer.get(f"/tasks/{task_id}")
    if not await Reader(st, user, "task:read").task(task):
        await deny(st, request, user, "task:read", f"task:{task_id}")
    return {"data": await st.indexer.get(f"/tasks/{task_id}/approvals")}


@router.get("/tasks/{task_id}/targets")
async def targets(task_id: int, request: Request, user: TaskReader, st: State) -> Any:
    """What a task with frozen targets reaches (a held task: what approving it sends to)."""
    task = await st.indexer.get(f"/tasks/{task_id}")
    if not await Reader(st, user, "task:read").task(task):
        await deny(st, request, user, "task:read", f"task:{task_id}")
    return {"data": await st.indexer.get(f"/tasks/{task_id}/targets")}


async def waiting_for(st: ServerState, user: User) -> list[dict[str, Any]]:
    """Held tasks `user` may approve: filed by someone else, not yet decided by `user`."""
    page = await st.indexer.get("/tasks", status=AWAITING_APPROVAL, limit=1000)
    mine = [
        t
        for t in page["items"]
        if t["user"] != user.name
        and user.name not in ((t.get("approval") or {}).get("approved_by") or [])
    ]
    return await Reader(st, user, "task:approve").tasks(mine)


@router.get("/approvals")
async def queue(user: Approver, st: State) -> dict[str, Any]:
    """The tasks waiting for the caller's approval, oldest first."""
    items = sorted(await waiting_for(st, user), key=lambda t: t["id"])
    return {"data": {"items": items}}


@router.get("/approval-policy")
async def get_policy(user: PolicyReader, st: State) -> Any:
    return {"data": await st.indexer.get("/approval-policy")}


@router.put("/approval-policy")
async def put_policy(
    body: ApprovalPolicy, request: Request, user: PolicyWriter, st: State
) -> dict[str, Any]:
    """Replace the approval policy (administrators: it acts on the whole system)."""
    before = await st.indexer.get("/approval-policy")
    out = await _audited(
        st,
        request,
        user,
        "approval-policy.update",
        "approval-policy",
        {"before": before, "after": body.model_dump(mode="json")},
        st.indexer.put("/approval-policy", body.model_dump(mode="json")),
    )
    return {"data": out}


async def _agent(st: ServerState, request: Request, user: User, agent_id: str, action: str) -> str:
    """The agent's indexer path, once the caller may `action` on it."""
    agent = await agent_doc(st, agent_id)
    if not Reader(st, user, action).agent(agent):
        await deny(st, request, user, action, f"agent:id:{agent_id}")
    return f"/agents/{quote(agent_id, safe='')}/labels"


@router.put("/agents/{agent_id}/labels")
async def put_labels(
    agent_id: str, body: LabelsIn, request: Request, user: AgentWriter, st: State
) -> dict[str, Any]:
    """Replace the agent's labels (selectors match `label.<key> = <value>`)."""
    path = await _agent(st, request, user, agent_id, "agent:update")
    out = await _audited(
        st,
        request,
        user,
        "agent.labels",
        f"agent:id:{agent_id}",
        {"labels": body.labels},
        st.indexer.put(path, body.model_dump()),
    )
    return {"data": {"agent": agent_id, "labels": out["labels"]}}


@router.get("/agents/{agent_id}/labels")
async def get_labels(agent_id: str, request: Request, user: AgentReader, st: State) -> Any:
    path = await _agent(st, request, user, agent_id, "agent:read")
    return {"data": await st.indexer.get(path)}
