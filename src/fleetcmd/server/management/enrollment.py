"""Enrollment keys on the Management API: list, create, rotate, revoke (administrators only:
the `enrollment-key:manage` action, which no read-only pattern matches)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from fleetcmd.server import audit
from fleetcmd.server.management.auth import State, require
from fleetcmd.server.rbac import User

router = APIRouter(tags=["security"])
log = logging.getLogger("fleetcmd.server.management.enrollment")
Admin = Annotated[User, Depends(require("enrollment-key:manage"))]
KeyId = Annotated[str, Path(pattern=r"^[A-Za-z0-9-]{1,64}$")]
YEAR = 366 * 86_400.0


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = Field(default="", max_length=256)
    expires_in: float | None = Field(
        default=None, gt=0, le=10 * YEAR, description="Seconds until the key expires (none: never)."
    )


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace: float = Field(
        default=3600.0,
        ge=0,
        le=YEAR,
        description="Seconds the old key keeps working (0: revoked at once).",
    )
    expires_in: float | None = Field(default=None, gt=0, le=10 * YEAR)


@router.get("/security/enrollment-keys")
async def list_keys(st: State, _: Admin) -> dict[str, Any]:
    return {"data": {"items": await st.enrollment_keys.list()}}


@router.post("/security/enrollment-keys", status_code=201)
async def create_key(body: KeyIn, request: Request, st: State, user: Admin) -> dict[str, Any]:
    """A new key, shown once in `key`; only its hash is stored."""
    key, doc = await st.enrollment_keys.create(user.name, body.description, body.expires_in)
    log.info("enrollment key %s created by %s", doc["id"], user.name)
    await audit.record(
        st,
        "enrollment-key.create",
        actor=user.name,
        request=request,
        target=doc["id"],
        details={"expires_at": doc["expires_at"]},
    )
    return {"data": {**doc, "key": key}}


@router.post("/security/enrollment-keys/{key_id}/rotate", status_code=201)
async def rotate_key(
    key_id: KeyId, body: RotateIn, request: Request, st: State, user: Admin
) -> dict[str, Any]:
    """A new key replaces this one, which keeps working for `grace` seconds."""
    key, new, old = await st.enrollment_keys.rotate(key_id, user.name, body.grace, body.expires_in)
    log.info("enrollment key %s rotated to %s by %s", key_id, new["id"], user.name)
    await audit.record(
        st,
        "enrollment-key.rotate",
        actor=user.name,
        request=request,
        target=key_id,
        details={
            "replaced_by": new["id"],
            "grace": body.grace,
            "old_expires_at": old["expires_at"],
        },
    )
    return {"data": {**new, "key": key, "replaces": old}}


@router.delete("/security/enrollment-keys/{key_id}")
async def revoke_key(key_id: KeyId, request: Request, st: State, user: Admin) -> dict[str, Any]:
    """Revoked at once: no agent enrolls with it again (enrolled agents are unaffected)."""
    doc = await st.enrollment_keys.revoke(key_id, user.name)
    log.info("enrollment key %s revoked by %s", key_id, user.name)
    await audit.record(st, "enrollment-key.revoke", actor=user.name, request=request, target=key_id)
    return {"data": doc}
