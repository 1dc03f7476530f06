"""Event subscribers on the Management API (administrators: `subscriber:manage`, which acts on
the whole system, `*:*:*`): register a webhook or a syslog destination with filters, list
them with their lag and failures, pause, resume, replay from an event or a time, remove.
Every change is audited. A webhook's signing secret is in the answer that creates it, once."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from fleetcmd.model.subscriptions import ReplayIn, SubscriberIn
from fleetcmd.server import audit
from fleetcmd.server.management.auth import State, require
from fleetcmd.server.rbac import User
from fleetcmd.server.state import ServerState

router = APIRouter(tags=["subscribers"])
Admin = Annotated[User, Depends(require("subscriber:manage"))]


@router.get("/subscribers")
async def list_subscribers(st: State, _: Admin) -> dict[str, Any]:
    """Each with `state` (active, paused), `cursor`, `lag` (events still to look at),
    `delivered`, `failures` (in a row), `failing_since` and `last_error`."""
    return {"data": await st.indexer.get("/subscribers")}


@router.post("/subscribers", status_code=201)
async def create_subscriber(
    body: SubscriberIn, request: Request, st: State, user: Admin
) -> dict[str, Any]:
    """201 with the subscriber; for a webhook, `secret` (HMAC-SHA256 key of its signatures),
    shown only here. 409 when the name is taken."""
    return {"data": await register(st, request, user, body)}


async def register(
    st: ServerState, request: Request, user: User, body: SubscriberIn
) -> dict[str, Any]:
    """Register and audit (shared with the dashboard)."""
    out: dict[str, Any] = await st.indexer.post(
        "/subscribers", {"subscriber": body.model_dump(mode="json"), "user": user.name}
    )
    await audit.record(
        st,
        "subscriber.create",
        actor=user.name,
        request=request,
        target=f"subscriber:{out['id']}",
        details={"name": body.name, "kind": body.kind, "url": body.url},
    )
    return out


@router.get("/subscribers/{sub_id}")
async def get_subscriber(sub_id: int, st: State, _: Admin) -> dict[str, Any]:
    return {"data": await st.indexer.get(f"/subscribers/{sub_id}")}


async def change(
    st: ServerState, request: Request, user: User, sub_id: int, verb: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Pause, resume or replay, audited (shared with the dashboard)."""
    out: dict[str, Any] = await st.indexer.post(f"/subscribers/{sub_id}/{verb}", body)
    await audit.record(
        st,
        f"subscriber.{verb}",
        actor=user.name,
        request=request,
        target=f"subscriber:{sub_id}",
        details=body,
    )
    return {"data": out}


@router.post("/subscribers/{sub_id}/pause")
async def pause(sub_id: int, request: Request, st: State, user: Admin) -> dict[str, Any]:
    return await change(st, request, user, sub_id, "pause", {})


@router.post("/subscribers/{sub_id}/resume")
async def resume(sub_id: int, request: Request, st: State, user: Admin) -> dict[str, Any]:
    """Active again (failures forgotten); delivery goes on from its cursor."""
    return await change(st, request, user, sub_id, "resume", {})


@router.post("/subscribers/{sub_id}/replay")
async def replay(
    sub_id: int, body: ReplayIn, request: Request, st: State, user: Admin
) -> dict[str, Any]:
    """Deliver again from `from_event` (an event id) or `from_time` (epoch seconds)."""
    return await change(st, request, user, sub_id, "replay", body.model_dump(exclude_none=True))


@router.delete("/subscribers/{sub_id}")
async def delete_subscriber(
    sub_id: int, request: Request, st: State, user: Admin
) -> dict[str, Any]:
    out = await st.indexer.request("DELETE", f"/subscribers/{sub_id}")
    await audit.record(
        st, "subscriber.delete", actor=user.name, request=request, target=f"subscriber:{sub_id}"
    )
    return {"data": out}
