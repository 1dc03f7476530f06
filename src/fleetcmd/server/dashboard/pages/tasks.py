"""Tasks: the filtered list, a task's live progress, command tree and commands, cancel."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from starlette.responses import Response

from fleetcmd.errors import Forbidden, InvalidParams
from fleetcmd.model.catalog import CATALOG, Expansion
from fleetcmd.server import audit
from fleetcmd.server.dashboard.pager import Pager
from fleetcmd.server.dashboard.pages import Viewing, read_form
from fleetcmd.server.dashboard.render import page, redirect
from fleetcmd.server.dashboard.session import Denied
from fleetcmd.server.indexer_client import IndexerError
from fleetcmd.server.management.auth import user_proof
from fleetcmd.server.management.export import Format, may_read_task, task_export
from fleetcmd.server.management.live import event_stream, task_events
from fleetcmd.server.management.tasks import cancel as cancel_task

router = APIRouter()
TREE_PEEK = 25  # first commands looked at to draw the tree (roots come first by id)


def _epoch(value: str | None) -> float | None:
    """A `datetime-local` input (read as UTC) to epoch seconds."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


@router.get("/tasks")
async def list_tasks(request: Request, v: Viewing) -> Response:
    v.require("task:read")
    q = request.query_params
    pager = Pager.of(request, 50, 200)
    filters = {k: q.get(k) or None for k in ("type", "status", "user", "source")}
    since, until = _epoch(q.get("since")), _epoch(q.get("until"))
    data = await v.st.indexer.get(
        "/tasks", **filters, since=since, until=until, cursor=pager.cursor, limit=pager.size
    )
    return page(
        request,
        "tasks.html",
        v,
        tasks=await v.reader("task:read").tasks(data["items"]),
        pager=pager,
        next=pager.next(data["next_cursor"]),
        prev=pager.previous(),
        filters={**filters, "since": q.get("since", ""), "until": q.get("until", "")},
        types=sorted(CATALOG),
    )


async def _tree(v: Viewing, task: dict[str, Any]) -> dict[str, Any]:
    """Parent -> children: the task's first commands with, for expanded ones, their counts.

    Roots are written before their children, so they are among the first ids; a task the
    task manager expanded itself has one flat level of per-agent commands."""
    spec = CATALOG.get(task["type"])
    first = await v.st.indexer.get("/commands", task_id=task["id"], limit=TREE_PEEK)
    first["items"] = await v.reader("command:read").commands(first["items"])
    roots = [c for c in first["items"] if c["parent_id"] is None]
    expanded = [c for c in roots if c["expanded"]]
    details = await asyncio.gather(
        *(v.st.indexer.get(f"/commands/{c['id']}") for c in expanded[:10])
    )
    counts = {d["id"]: d.get("counts", {}) for d in details}
    flat = spec is not None and spec.expansion is Expansion.BY_TASK_MANAGER
    return {
        "roots": roots if not flat else [],
        "counts": counts,
        "flat": flat,
        "more_roots": bool(first["next_cursor"]) and not expanded and not flat,
        "expansion": spec.expansion.value if spec else "unknown",
        "receiver": spec.receiver.value if spec else "unknown",
    }


@router.get("/tasks/{task_id}")
async def task_detail(task_id: int, request: Request, v: Viewing) -> Response:
    v.require("task:read")
    q = request.query_params
    pager = Pager.of(request, 50, 500)
    filters = {
        "status": q.get("status") or None,
        "target_id": q.get("target_id") or None,
        "parent_id": int(q["parent_id"]) if q.get("parent_id", "").isdigit() else None,
    }
    task = await v.st.indexer.get(f"/tasks/{task_id}")
    if not await v.reader("task:read").task(task):
        v.deny("task:read", f"task {task_id}")
    tree, commands, rollout = await asyncio.gather(
        _tree(v, task),
        v.st.indexer.get(
            "/commands", task_id=task_id, **filters, cursor=pager.cursor, limit=pager.size
        ),
        _rollout(v, task_id),
    )
    return page(
        request,
        "task.html",
        v,
        task=task,
        tree=tree,
        rollout=rollout,
        commands=await v.reader("command:read").commands(commands["items"]),
        pager=pager,
        next=pager.next(commands["next_cursor"]),
        prev=pager.previous(),
        filters=filters,
        parents=",".join(str(i) for i in tree["counts"]),
        created=request.query_params.get("created"),
    )


async def _rollout(v: Viewing, task_id: int) -> dict[str, Any] | None:
    """The task's rollout with its waves, the rollout a rollback task undoes, or None."""
    try:
        data: dict[str, Any] = await v.st.indexer.get(f"/tasks/{task_id}/rollout")
    except IndexerError as exc:
        if exc.status == 404:
            return None
        raise
    return data


@router.post("/tasks/{task_id}/rollout/{action}")
async def control_rollout(
    task_id: int,
    action: Literal["pause", "resume", "abort", "rollback"],
    request: Request,
    v: Viewing,
) -> Response:
    """The rollout buttons: applied and audited by the indexer; a refusal is audited here."""
    form = await read_form(request)
    v.require("rollout:control")
    if not await v.reader("rollout:control").task(await v.st.indexer.get(f"/tasks/{task_id}")):
        v.deny("rollout:control", f"task {task_id}")
    payload = {
        "user": v.name,
        "proof": user_proof(request),
        "source": "dashboard",
        "reason": form.get("reason", "")[:1000],
        "address": audit.client_address(request),
        "node": v.st.options.node_id,
    }
    try:
        await v.st.indexer.post(f"/tasks/{task_id}/rollout/{action}", payload, retries=0)
    except IndexerError as exc:
        await audit.record(
            v.st,
            f"rollout.{action}",
            actor=v.name,
            outcome=audit.FAILURE,
            request=request,
            target=f"task:{task_id}",
            details={"status": exc.status, "message": exc.body.get("message")},
        )
        raise
    return redirect(request, f"/app/tasks/{task_id}?rollout={action}")


@router.get("/tasks/{task_id}/events")
async def task_stream(task_id: int, request: Request, v: Viewing) -> Response:
    """Server-sent events: progress of one task (and of the parents shown in its tree)."""
    v.require("task:read")
    parents = [int(p) for p in request.query_params.get("parents", "").split(",") if p.isdigit()]
    if not await v.reader("task:read").task(await v.st.indexer.get(f"/tasks/{task_id}")):
        v.deny("task:read", f"task {task_id}")
    return event_stream(task_events(v.st, task_id, lambda: v.st.closed(request), parents))


@router.post("/tasks/{task_id}/cancel")
async def cancel(task_id: int, request: Request, v: Viewing) -> Response:
    await read_form(request)
    v.require("task:cancel")
    try:
        await cancel_task(v.st, request, v.user, task_id)
    except Forbidden as exc:
        raise Denied(exc.message, "task:cancel") from None
    return redirect(request, f"/app/tasks/{task_id}?cancelled=1")


def export_format(request: Request) -> Format:
    fmt = request.query_params.get("format", "csv")
    if fmt == "csv":
        return "csv"
    if fmt == "ndjson":
        return "ndjson"
    raise InvalidParams(f"format must be csv or ndjson, not {fmt[:20]!r}")


@router.get("/tasks/{task_id}/export")
async def export(task_id: int, request: Request, v: Viewing) -> Response:
    """The download buttons: the Management API's export, with the session's user."""
    v.require("task:read")
    fmt = export_format(request)
    if not await may_read_task(v.st, v.user, task_id):
        v.deny("task:read", f"task {task_id}")
    response = await task_export(v.st, task_id, fmt)
    await audit.record(
        v.st,
        "task.export",
        actor=v.name,
        request=request,
        target=f"task:{task_id}",
        details={"format": fmt, "source": "dashboard"},
    )
    return response
