"""The audit trail, read-only: who did what, when, from where, and how it ended."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from fleetcmd.server.management.auth import State, require
from fleetcmd.server.rbac import User

router = APIRouter(tags=["audit"])
AuditReader = Annotated[User, Depends(require("audit:read"))]


@router.get("/audit")
async def list_audit(
    st: State,
    _: AuditReader,
    actor: Annotated[str | None, Query(max_length=256)] = None,
    action: Annotated[
        str | None, Query(max_length=128, description="exact, or a prefix ending in '*'")
    ] = None,
    outcome: Annotated[str | None, Query(max_length=32)] = None,
    target: Annotated[str | None, Query(max_length=512)] = None,
    since: Annotated[float | None, Query(description="epoch seconds, inclusive")] = None,
    until: Annotated[float | None, Query(description="epoch seconds, exclusive")] = None,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Newest first; `next_cursor` pages on. Records are never changed or deleted: this
    API has no route that could."""
    return {
        "data": await st.indexer.get(
            "/audit",
            actor=actor,
            action=action,
            outcome=outcome,
            target=target,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
        )
    }
