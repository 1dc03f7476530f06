"""People: users, roles and their assignment. Every change is an `rbac-change` task (row 15)
that carries it: the task manager writes the `rbac` index and the task in one transaction,
and each server node reloads its cache when its command arrives. This node reloads at once,
so the answer already reflects the change."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetcmd.errors import Conflict, InvalidParams, NotFound
from fleetcmd.model.params import NAME_RE
from fleetcmd.server import audit
from fleetcmd.server.indexer_client import IndexerError
from fleetcmd.server.management.auth import State, deny, require, token_user
from fleetcmd.server.rbac import BUILTIN_ROLES, User, hash_password, parse_policies
from fleetcmd.server.state import ServerState
from fleetcmd.server.tokens import bearer

router = APIRouter(tags=["security"])
UserReader = Annotated[User, Depends(require("user:read"))]
UserCreator = Annotated[User, Depends(require("user:create"))]
UserUpdater = Annotated[User, Depends(require("user:update"))]
RoleReader = Annotated[User, Depends(require("role:read"))]
RoleCreator = Annotated[User, Depends(require("role:create"))]
RoleUpdater = Annotated[User, Depends(require("role:update"))]
RoleDeleter = Annotated[User, Depends(require("role:delete"))]
MIN_PASSWORD = 10


def _password(v: str) -> str:
    if len(v) < MIN_PASSWORD:
        raise ValueError(f"a password needs at least {MIN_PASSWORD} characters")
    return v


def _name(v: str) -> str:
    if not NAME_RE.fullmatch(v):
        raise ValueError("names are 1-128 letters, digits, '.', '_' or '-'")
    return v


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    password: str = Field(max_length=1024)
    roles: list[str] = Field(default_factory=list, max_length=32)

    _n = field_validator("name")(_name)
    _p = field_validator("password")(_password)


class UserPatch(BaseModel):
    """Assign roles and/or disable (or enable) a user; either revokes its tokens."""

    model_config = ConfigDict(extra="forbid")
    roles: list[str] | None = Field(default=None, max_length=32)
    disabled: bool | None = None


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str = Field(max_length=1024)
    current_password: str | None = Field(default=None, max_length=1024)

    _p = field_validator("password")(_password)


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actions: list[str] = Field(min_length=1, max_length=64)
    resources: list[str] = Field(default_factory=lambda: ["*:*:*"], min_length=1, max_length=1000)

    @field_validator("actions")
    @classmethod
    def _actions(cls, v: list[str]) -> list[str]:
        for a in v:
            if not 1 <= len(a) <= 128 or not all(c.isalnum() or c in ":*-_." for c in a):
                raise ValueError(f"bad action {a!r} (e.g. 'task:create', 'agent:*')")
        return v

    @field_validator("resources")
    @classmethod
    def _resources(cls, v: list[str]) -> list[str]:
        for r in v:
            if len(r) > 256 or r.count(":") != 2:
                raise ValueError(
                    f"bad resource {r!r}: '<kind>:<attribute>:<value>', e.g. "
                    "'agent:group:web', 'agent:id:*', '*:*:*'"
                )
        return v


class RoleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policies: list[PolicyIn] = Field(min_length=1, max_length=64)
    description: str = Field(default="", max_length=512)


async def apply(
    st: ServerState,
    request: Request,
    actor: User,
    action: str,
    target: str,
    change: dict[str, Any],
    details: dict[str, Any],
) -> None:
    """File the `rbac-change` task that carries `change`, reload, audit (either outcome)."""
    payload = {
        "type": "rbac-change",
        "source": "management-api",
        "user": actor.name,
        "params": {"reason": f"{action} {target} by {actor.name}", "changes": [change]},
    }
    try:
        _, resp = await st.indexer.call("POST", "/tasks", json=payload, retries=0)
    except IndexerError as exc:
        await audit.record(
            st,
            action,
            actor=actor.name,
            outcome=audit.FAILURE,
            request=request,
            target=target,
            details={**details, "error": exc.body},
        )
        raise
    await st.rbac.refresh()
    await audit.record(
        st,
        action,
        actor=actor.name,
        request=request,
        target=target,
        details={**details, "task_id": resp["data"]["id"]},
    )


def _user(st: ServerState, name: str) -> User:
    user = st.rbac.users.get(name)
    if user is None:
        raise NotFound(f"user '{name}' not found")
    return user


def _known_roles(st: ServerState, roles: list[str]) -> None:
    unknown = sorted(set(roles) - set(st.rbac.roles))
    if unknown:
        raise InvalidParams(f"unknown role(s): {', '.join(unknown)}", known=sorted(st.rbac.roles))


@router.get("/security/users")
async def list_users(st: State, _: UserReader) -> dict[str, Any]:
    return {"data": {"items": [u.to_json() for _, u in sorted(st.rbac.users.items())]}}


@router.get("/security/users/me")
async def whoami(request: Request, st: State) -> dict[str, Any]:
    """The caller's user and every action its roles grant (any authenticated user)."""
    user = token_user(st, bearer(request.headers.get("authorization", "")))
    return {"data": {**user.to_json(), "policies": [p.to_json() for p in st.rbac.policies(user)]}}


@router.get("/security/users/{name}")
async def get_user(name: str, st: State, _: UserReader) -> dict[str, Any]:
    return {"data": _user(st, name).to_json()}


@router.post("/security/users", status_code=201)
async def create_user(
    body: UserIn, request: Request, st: State, actor: UserCreator
) -> dict[str, Any]:
    if body.name in st.rbac.users:
        raise Conflict(f"user '{body.name}' already exists")
    _known_roles(st, body.roles)
    digest = await asyncio.to_thread(hash_password, body.password)
    await apply(
        st,
        request,
        actor,
        "user.create",
        f"user:{body.name}",
        {
            "kind": "user",
            "name": body.name,
            "op": "create",
            "set": {"password_hash": digest, "roles": body.roles},
        },
        {"roles": body.roles},
    )
    return {"data": _user(st, body.name).to_json()}


@router.patch("/security/users/{name}")
async def update_user(
    name: str, body: UserPatch, request: Request, st: State, actor: UserUpdater
) -> dict[str, Any]:
    """Assign roles and/or disable; every token the user holds stops working."""
    before = _user(st, name)
    changes = body.model_dump(exclude_none=True)
    if not changes:
        raise InvalidParams("nothing to change: give 'roles' and/or 'disabled'")
    if name == actor.name and (
        body.disabled or (body.roles is not None and body.roles != list(before.roles))
    ):
        raise Conflict("you cannot disable yourself or change your own roles")
    if body.roles is not None:
        _known_roles(st, body.roles)
    action = (
        "user.disable"
        if body.disabled
        else "user.enable"
        if body.disabled is False
        else "user.assign"
    )
    await apply(
        st,
        request,
        actor,
        action,
        f"user:{name}",
        {"kind": "user", "name": name, "set": changes, "revoke_tokens": True},
        {"before": {"roles": list(before.roles), "disabled": before.disabled}, "after": changes},
    )
    return {"data": _user(st, name).to_json()}


@router.put("/security/users/{name}/password")
async def change_password(
    name: str, body: PasswordIn, request: Request, st: State
) -> dict[str, Any]:
    """`user:update`, or the user itself with its `current_password`. Revokes its tokens."""
    actor = token_user(st, bearer(request.headers.get("authorization", "")))
    target = _user(st, name)
    if name == actor.name and not st.rbac.allowed(actor, "user:update"):
        if (
            body.current_password is None
            or await st.rbac.verify(name, body.current_password) is None
        ):
            await audit.record(
                st,
                "user.password",
                actor=actor.name,
                outcome=audit.FAILURE,
                request=request,
                target=f"user:{name}",
                details={"reason": "current password wrong or missing"},
            )
            raise InvalidParams("give your 'current_password' to change it")
    elif not st.rbac.allowed(actor, "user:update"):
        await deny(st, request, actor, "user:update", f"user:{name}")
    digest = await asyncio.to_thread(hash_password, body.password)
    await apply(
        st,
        request,
        actor,
        "user.password",
        f"user:{target.name}",
        {"kind": "user", "name": name, "set": {"password_hash": digest}, "revoke_tokens": True},
        {},
    )
    return {"data": _user(st, name).to_json()}


def _role(st: ServerState, name: str) -> dict[str, Any]:
    if name not in st.rbac.roles:
        raise NotFound(f"role '{name}' not found")
    return {
        "name": name,
        "builtin": name in BUILTIN_ROLES,
        "description": st.rbac.descriptions.get(name, ""),
        "policies": [p.to_json() for p in st.rbac.roles[name]],
        "users": sorted(u.name for u in st.rbac.users.values() if name in u.roles),
    }


@router.get("/security/roles")
async def list_roles(st: State, _: RoleReader) -> dict[str, Any]:
    return {"data": {"items": [_role(st, n) for n in sorted(st.rbac.roles)]}}


@router.get("/security/roles/{name}")
async def get_role(name: str, st: State, _: RoleReader) -> dict[str, Any]:
    return {"data": _role(st, name)}


@router.put("/security/roles/{name}")
async def put_role(
    name: str, body: RoleIn, request: Request, st: State, actor: RoleCreator
) -> dict[str, Any]:
    """Create or replace a role (needs role:create, and role:update to replace)."""
    try:
        _name(name)
    except ValueError as exc:
        raise InvalidParams(str(exc)) from None
    if name in BUILTIN_ROLES:
        raise Conflict(f"role '{name}' is built in and cannot be changed")
    exists = name in st.rbac.roles
    if exists and not st.rbac.allowed(actor, "role:update"):
        await deny(st, request, actor, "role:update", f"role:{name}")
    doc = body.model_dump()
    if not parse_policies(doc["policies"]):
        raise InvalidParams("a role needs at least one policy")
    await apply(
        st,
        request,
        actor,
        "role.update" if exists else "role.create",
        f"role:{name}",
        {"kind": "role", "name": name, "op": "update" if exists else "create", "set": doc},
        {"policies": doc["policies"]},
    )
    return {"data": _role(st, name)}


@router.delete("/security/roles/{name}")
async def delete_role(name: str, request: Request, st: State, actor: RoleDeleter) -> dict[str, Any]:
    _role(st, name)
    await apply(
        st,
        request,
        actor,
        "role.delete",
        f"role:{name}",
        {"kind": "role", "name": name, "op": "delete"},
        {},
    )
    return {"data": {"deleted": name}}
