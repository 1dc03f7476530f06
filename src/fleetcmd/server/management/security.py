"""People: users, roles and their assignment. Every change is an `rbac-change` task (row 15)
that carries it: the task manager writes the `rbac` index and the task in one transaction,
and each server node reloads its cache when its command arrives. This node reloads at once,
so the answer already reflects the change.

Each route checks its action on the user or role it touches (`user:id:<name>`,
`role:id:<name>`), and nobody creates, grants or changes more than they hold: the roles given
to a user, the policies of a role, and the user or role being changed must all be covered by
the caller's own policies."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetcmd.errors import Conflict, InvalidParams, NotFound
from fleetcmd.model.params import NAME_RE
from fleetcmd.server import audit
from fleetcmd.server.indexer_client import IndexerError
from fleetcmd.server.management.auth import State, deny, require, token_user, user_proof
from fleetcmd.server.policies import Policy, parse_policies, role_resource, user_resource
from fleetcmd.server.rbac import BUILTIN_ROLES, User, hash_password
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
GIVEN = "the roles given grant more than you hold"


def _password(v: str) -> str:
    if len(v) < MIN_PASSWORD:
        raise ValueError(f"a password needs at least {MIN_PASSWORD} characters")
    return v


def _name(v: str) -> str:
    if not NAME_RE.fullmatch(v):
        raise ValueError("names are 1-128 letters, digits, '.', '_' or '-'")
    return v


# The names the indexer records tasks under when a node files them in its own name.
SERVICE_NAMES = frozenset(
    {"node", "system", "engine", "content-manager", "command-manager", "fleetcmd-up"}
)


def _person(v: str) -> str:
    if v in SERVICE_NAMES:
        raise ValueError(f"'{v}' names a service in the task list and audit trail, not a person")
    return _name(v)


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    password: str = Field(max_length=1024)
    roles: list[str] = Field(default_factory=list, max_length=32)

    _n = field_validator("name")(_person)
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
        "proof": user_proof(request),
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


async def _check(
    st: ServerState, request: Request, actor: User, action: str, resource: str, target: str
) -> None:
    """403 (audited if a change) unless `action` is granted to `actor` on `resource`."""
    if not st.rbac.allowed(actor, action, resource):
        await deny(st, request, actor, action, target)


async def _within(
    st: ServerState,
    request: Request,
    actor: User,
    action: str,
    target: str,
    policies: list[Policy] | tuple[Policy, ...],
    why: str,
) -> None:
    """403 (audited) if `policies` grant anything `actor` does not hold itself."""
    beyond = st.rbac.beyond(actor, policies)
    if beyond:
        await deny(
            st,
            request,
            actor,
            action,
            target,
            why=f"{why} ({', '.join(beyond[:3])})",
            beyond=beyond,
        )


@router.get("/security/users")
async def list_users(st: State, actor: UserReader) -> dict[str, Any]:
    """The users the caller may read."""
    return {
        "data": {
            "items": [
                u.to_json()
                for name, u in sorted(st.rbac.users.items())
                if st.rbac.allowed(actor, "user:read", user_resource(name))
            ]
        }
    }


@router.get("/security/users/me")
async def whoami(request: Request, st: State) -> dict[str, Any]:
    """The caller's user and every action its roles grant (any authenticated user)."""
    user = token_user(st, bearer(request.headers.get("authorization", "")))
    return {"data": {**user.to_json(), "policies": [p.to_json() for p in st.rbac.policies(user)]}}


@router.get("/security/users/{name}")
async def get_user(name: str, request: Request, st: State, actor: UserReader) -> dict[str, Any]:
    await _check(st, request, actor, "user:read", user_resource(name), f"user:{name}")
    return {"data": _user(st, name).to_json()}


@router.post("/security/users", status_code=201)
async def create_user(
    body: UserIn, request: Request, st: State, actor: UserCreator
) -> dict[str, Any]:
    target = f"user:{body.name}"
    await _check(st, request, actor, "user:create", user_resource(body.name), target)
    if body.name in st.rbac.users:
        raise Conflict(f"user '{body.name}' already exists")
    _known_roles(st, body.roles)
    await _within(
        st, request, actor, "user:create", target, st.rbac.role_policies(body.roles), GIVEN
    )
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
    target = f"user:{name}"
    await _check(st, request, actor, "user:update", user_resource(name), target)
    before = _user(st, name)
    changes = body.model_dump(exclude_none=True)
    if not changes:
        raise InvalidParams("nothing to change: give 'roles' and/or 'disabled'")
    if name == actor.name and (
        body.disabled or (body.roles is not None and body.roles != list(before.roles))
    ):
        raise Conflict("you cannot disable yourself or change your own roles")
    await _within(
        st,
        request,
        actor,
        "user:update",
        target,
        st.rbac.role_policies(before.roles),
        f"user '{name}' holds more than you",
    )
    if body.roles is not None:
        _known_roles(st, body.roles)
        await _within(
            st, request, actor, "user:update", target, st.rbac.role_policies(body.roles), GIVEN
        )
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
    """`user:update` on a user who holds no more than the caller, or the user itself with its
    `current_password`. Revokes its tokens."""
    actor = token_user(st, bearer(request.headers.get("authorization", "")), request)
    target = _user(st, name)
    may_update = st.rbac.allowed(actor, "user:update", user_resource(name))
    if name == actor.name and not may_update:
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
    elif not may_update:
        await deny(st, request, actor, "user:update", f"user:{name}")
    elif name != actor.name:
        # Setting the password of a broader user would be taking over its account.
        await _within(
            st,
            request,
            actor,
            "user:update",
            f"user:{name}",
            st.rbac.role_policies(target.roles),
            f"user '{name}' holds more than you",
        )
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


def _role(st: ServerState, name: str, reader: User) -> dict[str, Any]:
    """The role and those of its users `reader` may read."""
    if name not in st.rbac.roles:
        raise NotFound(f"role '{name}' not found")
    return {
        "name": name,
        "builtin": name in BUILTIN_ROLES,
        "description": st.rbac.descriptions.get(name, ""),
        "policies": [p.to_json() for p in st.rbac.roles[name]],
        "users": sorted(
            u.name
            for u in st.rbac.users.values()
            if name in u.roles and st.rbac.allowed(reader, "user:read", user_resource(u.name))
        ),
    }


@router.get("/security/roles")
async def list_roles(st: State, actor: RoleReader) -> dict[str, Any]:
    """The roles the caller may read."""
    return {
        "data": {
            "items": [
                _role(st, n, actor)
                for n in sorted(st.rbac.roles)
                if st.rbac.allowed(actor, "role:read", role_resource(n))
            ]
        }
    }


@router.get("/security/roles/{name}")
async def get_role(name: str, request: Request, st: State, actor: RoleReader) -> dict[str, Any]:
    await _check(st, request, actor, "role:read", role_resource(name), f"role:{name}")
    return {"data": _role(st, name, actor)}


@router.put("/security/roles/{name}")
async def put_role(
    name: str, body: RoleIn, request: Request, st: State, actor: RoleCreator
) -> dict[str, Any]:
    """Create or replace a role (role:create on it, and role:update to replace), granting
    nothing the caller does not hold."""
    try:
        _name(name)
    except ValueError as exc:
        raise InvalidParams(str(exc)) from None
    if name in BUILTIN_ROLES:
        raise Conflict(f"role '{name}' is built in and cannot be changed")
    target = f"role:{name}"
    await _check(st, request, actor, "role:create", role_resource(name), target)
    exists = name in st.rbac.roles
    if exists:
        await _check(st, request, actor, "role:update", role_resource(name), target)
        await _within(
            st,
            request,
            actor,
            "role:update",
            target,
            st.rbac.roles[name],
            f"role '{name}' grants more than you hold",
        )
    doc = body.model_dump()
    policies = parse_policies(doc["policies"])
    if not policies:
        raise InvalidParams("a role needs at least one policy")
    await _within(
        st,
        request,
        actor,
        "role:update" if exists else "role:create",
        target,
        policies,
        "the role would grant more than you hold",
    )
    await apply(
        st,
        request,
        actor,
        "role.update" if exists else "role.create",
        f"role:{name}",
        {"kind": "role", "name": name, "op": "update" if exists else "create", "set": doc},
        {"policies": doc["policies"]},
    )
    return {"data": _role(st, name, actor)}


@router.delete("/security/roles/{name}")
async def delete_role(name: str, request: Request, st: State, actor: RoleDeleter) -> dict[str, Any]:
    target = f"role:{name}"
    await _check(st, request, actor, "role:delete", role_resource(name), target)
    _role(st, name, actor)
    await _within(
        st,
        request,
        actor,
        "role:delete",
        target,
        st.rbac.roles[name],
        f"role '{name}' grants more than you hold",
    )
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
