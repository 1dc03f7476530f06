"""The audit trail: append records, read them back with filters. Nothing else: there is no
route that changes or deletes a record, and the store's triggers refuse it anyway."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from fleetcmd.indexer.state import IndexerState, authorized

router = APIRouter(tags=["audit"])
Auth = Annotated[IndexerState, Depends(authorized)]


class AuditRecordIn(BaseModel):
    """Who (`actor`), what (`action`, `target`, `details`), from where (`address`, `node`),
    and how it ended (`outcome`: success, failure, denied, throttled, ...)."""

    model_config = ConfigDict(extra="forbid")
    actor: str = Field(min_length=1, max_length=256)
    action: str = Field(min_length=1, max_length=128, pattern=r"^[a-z][a-z0-9_.:-]*$")
    outcome: str = Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z_-]*$")
    address: str | None = Field(default=None, max_length=128)
    target: str | None = Field(default=None, max_length=512)
    node: str | None = Field(default=None, max_length=128)
    at: float | None = Field(default=None, gt=0)
    details: dict[str, Any] = Field(default_factory=dict)


class AuditIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    records: list[AuditRecordIn] = Field(min_length=1, max_length=1000)


@router.post("/audit", status_code=201)
async def append(body: AuditIn, st: Auth) -> dict[str, Any]:
    ids = await run_in_threadpool(st.store.append_audit, [r.model_dump() for r in body.records])
    return {"data": {"ids": ids}}


@router.get("/audit")
async def list_audit(
    st: Auth,
    actor: Annotated[str | None, Query(max_length=256)] = None,
    action: Annotated[str | None, Query(max_length=128)] = None,
    outcome: Annotated[str | None, Query(max_length=32)] = None,
    target: Annotated[str | None, Query(max_length=512)] = None,
    since: float | None = None,
    until: float | None = None,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    order: Literal["desc", "asc"] = "desc",
) -> dict[str, Any]:
    """Newest first (`order=asc`: oldest first, for exports); `action=task.*` matches by
    prefix; `next_cursor` pages on."""
    page = await run_in_threadpool(
        lambda: st.store.list_audit(
            actor=actor,
            action=action,
            outcome=outcome,
            target=target,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
            oldest_first=order == "asc",
        )
    )
    return {"data": page.to_json()}
