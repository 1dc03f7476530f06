"""Event subscribers, as the servers' Management API forwards them: register (the webhook
secret is in this one answer), list with their lag, pause, resume, replay, remove. Who may
do it is the server's check (`subscriber:manage`); the indexer trusts its node credential."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from fleetcmd.indexer.state import IndexerState, authorized
from fleetcmd.model.subscriptions import ReplayIn, SubscriberIn

router = APIRouter(tags=["subscribers"])
Auth = Annotated[IndexerState, Depends(authorized)]


class NewSubscriber(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subscriber: SubscriberIn
    user: str = Field(min_length=1, max_length=256)


def _with_lag(st: IndexerState, sub: dict[str, Any]) -> dict[str, Any]:
    sub["lag"] = st.store.lag((sub["cursor"]["tx"], sub["cursor"]["id"]))
    sub.pop("owner_until", None)
    return sub


@router.post("/subscribers", status_code=201)
async def create(body: NewSubscriber, st: Auth) -> dict[str, Any]:
    doc = body.subscriber.model_dump(mode="json")
    sub = await run_in_threadpool(st.store.create_subscriber, doc, body.user)
    return {"data": sub}


@router.get("/subscribers")
async def list_all(st: Auth) -> dict[str, Any]:
    def read() -> list[dict[str, Any]]:
        return [_with_lag(st, s) for s in st.store.list_subscribers()]

    return {"data": {"items": await run_in_threadpool(read)}}


@router.get("/subscribers/{sub_id}")
async def get_one(sub_id: int, st: Auth) -> dict[str, Any]:
    return {"data": await run_in_threadpool(lambda: _with_lag(st, st.store.subscriber(sub_id)))}


@router.delete("/subscribers/{sub_id}")
async def remove(sub_id: int, st: Auth) -> dict[str, Any]:
    await run_in_threadpool(st.store.delete_subscriber, sub_id)
    return {"data": {"id": sub_id, "deleted": True}}


@router.post("/subscribers/{sub_id}/pause")
async def pause(sub_id: int, st: Auth) -> dict[str, Any]:
    return {"data": await run_in_threadpool(st.store.set_subscriber_state, sub_id, "paused")}


@router.post("/subscribers/{sub_id}/resume")
async def resume(sub_id: int, st: Auth) -> dict[str, Any]:
    return {"data": await run_in_threadpool(st.store.set_subscriber_state, sub_id, "active")}


@router.post("/subscribers/{sub_id}/replay")
async def replay(sub_id: int, body: ReplayIn, st: Auth) -> dict[str, Any]:
    """Deliver again from just before `from_event`, or from `from_time`: the subscriber is
    active afterwards (receivers de-duplicate by event id)."""
    sub = await run_in_threadpool(
        lambda: st.store.set_subscriber_state(
            sub_id, "active", from_event=body.from_event, from_time=body.from_time
        )
    )
    return {"data": sub}
