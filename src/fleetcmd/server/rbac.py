"""The RBAC cache: users and roles from the indexer's `rbac` index, and the one place that
decides whether a user may perform an action on a resource (the policies themselves, and which
resources each action acts on, are in `fleetcmd.server.policies`). A role is a list of
policies:

    {"actions": ["task:create", "task:read", "agent:read"],
     "resources": ["agent:group:web", "group:id:web"]}

A check always names a resource: an agent or a group for the fleet's actions (routes narrow
with `fleetcmd.server.access`), `user:id:<name>` and `role:id:<name>` for people, `*:*:*` for
the system's actions (audit trail, metrics, enrollment keys) and for tasks that reach every
agent or the servers. Policies only grant; a user holds the union of its roles, and may create
or grant nothing its own policies do not cover (`uncovered`).

Users are documents `users/<name>` = {"password_hash" (argon2), "roles", "disabled",
"generation"}. Tokens carry the generation they were issued under: disabling a user, or
changing its roles or password, bumps it and so revokes every token issued before."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from fleetcmd.server.indexer_client import IndexerClient, IndexerError
from fleetcmd.server.policies import (
    BUILTIN_ROLES,
    EVERYTHING,
    ROLE_DESCRIPTIONS,
    Policy,
    kinds_of,
    parse_policies,
    reaches_kind,
    uncovered,
)

log = logging.getLogger("fleetcmd.server.rbac")

ADMIN = "admin"
_hasher = PasswordHasher()
# Resources no real one equals: a pattern that matches them is unscoped for that kind.
_ANY_AGENT = "agent:id:\x7f"
_ANY_GROUP = "group:id:\x7f"
_ANY_RESOURCE = "\x7f:\x7f:\x7f"


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    roles: tuple[str, ...]
    disabled: bool = False
    generation: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "roles": list(self.roles),
            "disabled": self.disabled,
            "generation": self.generation,
        }


@dataclass(frozen=True)
class Scope:
    """Where one action is granted to one user: the resource patterns of its policies."""

    patterns: tuple[str, ...]

    def _any(self, resource: str) -> bool:
        return any(fnmatch.fnmatchcase(resource, p) for p in self.patterns)

    def covers(self, resource: str) -> bool:
        """Granted on `resource` (`*:*:*`: on everything)."""
        return self.everything if resource == EVERYTHING else self._any(resource)

    def reaches(self, kinds: Iterable[str]) -> bool:
        """Granted on some resource of one of `kinds`."""
        return any(reaches_kind(p, kind) for p in self.patterns for kind in kinds)

    @property
    def everything(self) -> bool:
        return self._any(_ANY_RESOURCE)

    @property
    def all_agents(self) -> bool:
        return self._any(_ANY_AGENT)

    @property
    def all_groups(self) -> bool:
        return self._any(_ANY_GROUP)

    def agent(self, agent_id: str, groups: Iterable[str]) -> bool:
        return self._any(f"agent:id:{agent_id}") or any(
            self._any(f"agent:group:{g}") for g in groups
        )

    def agents_of_group(self, group: str) -> bool:
        """Every agent of `group` is in scope by its membership alone."""
        return self.all_agents or self._any(f"agent:group:{group}")

    def group(self, name: str) -> bool:
        return self._any(f"group:id:{name}")

    def agent_ids(self) -> list[str]:
        return [
            p.removeprefix("agent:id:")
            for p in self.patterns
            if p.startswith("agent:id:") and not _wild(p)
        ]

    def group_patterns(self) -> list[str]:
        return [
            p.removeprefix("agent:group:") for p in self.patterns if p.startswith("agent:group:")
        ]


def _wild(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@dataclass
class RbacCache:
    indexer: IndexerClient
    users: dict[str, User] = field(default_factory=dict)
    roles: dict[str, tuple[Policy, ...]] = field(default_factory=lambda: dict(BUILTIN_ROLES))
    descriptions: dict[str, str] = field(default_factory=lambda: dict(ROLE_DESCRIPTIONS))
    loaded_at: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def refresh(self) -> dict[str, int]:
        """Reload users and roles from the indexer (on start, on `rbac-refresh`, on a miss)."""
        async with self._lock:
            docs: dict[str, Any] = (await self.indexer.get("/indexes/rbac"))["items"]
            users: dict[str, User] = {}
            roles = dict(BUILTIN_ROLES)
            descriptions = dict(ROLE_DESCRIPTIONS)
            for doc_id, body in docs.items():
                kind, _, name = doc_id.partition("/")
                if not isinstance(body, dict) or not name:
                    continue
                if kind == "users" and isinstance(body.get("password_hash"), str):
                    users[name] = User(
                        name,
                        body["password_hash"],
                        tuple(str(r) for r in body.get("roles", [])),
                        bool(body.get("disabled", False)),
                        int(body.get("generation", 0)),
                    )
                elif kind == "roles" and name not in BUILTIN_ROLES:
                    roles[name] = parse_policies(body.get("policies"))
                    descriptions[name] = str(body.get("description", ""))
            self.users, self.roles, self.descriptions = users, roles, descriptions
            self.loaded_at = time.monotonic()
        log.info("RBAC cache loaded: %d users, %d roles", len(users), len(roles))
        return {"users": len(users), "roles": len(roles)}

    async def verify(self, name: str, password: str) -> User | None:
        """Check a password; an unknown name triggers one reload (the user may be new).
        A disabled user never verifies."""
        user = self.users.get(name)
        if user is None and time.monotonic() - self.loaded_at > 1.0:
            await self.refresh()
            user = self.users.get(name)
        if user is None:
            # Spend the same time as a real check, so timing does not reveal who exists.
            await asyncio.to_thread(_dummy_verify, password)
            return None
        try:
            await asyncio.to_thread(_hasher.verify, user.password_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        return None if user.disabled else user

    def policies(self, user: User) -> Iterable[Policy]:
        for role in user.roles:
            yield from self.roles.get(role, ())

    def scope(self, user: User, action: str) -> Scope | None:
        """Where `action` is granted to `user`, or None if nowhere."""
        patterns = tuple(
            r for pol in self.policies(user) if pol.grants(action) for r in pol.resources
        )
        return Scope(patterns) if patterns else None

    def allowed(self, user: User, action: str, resource: str) -> bool:
        """`action` granted to `user` on `resource` (`agent:id:a1`, `user:id:bob`, `*:*:*`)."""
        scope = self.scope(user, action)
        return scope is not None and scope.covers(resource)

    def can(self, user: User, action: str) -> bool:
        """`action` granted on some resource of the kind it acts on (agents or groups for the
        fleet, users, roles); the system's actions need everything. The route then checks
        the resources it touches."""
        scope = self.scope(user, action)
        if scope is None:
            return False
        kinds = kinds_of(action)
        return scope.everything if kinds is None else scope.reaches(kinds)

    def held(self, user: User) -> tuple[Policy, ...]:
        return tuple(self.policies(user))

    def beyond(self, user: User, policies: Iterable[Policy]) -> list[str]:
        """What `policies` grant that `user` does not hold (empty: `user` may grant them)."""
        return uncovered(self.held(user), policies)

    def role_policies(self, roles: Iterable[str]) -> list[Policy]:
        return [pol for role in roles for pol in self.roles.get(role, ())]


_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(12))


def _dummy_verify(password: str) -> None:
    with contextlib.suppress(VerificationError, InvalidHashError):
        _hasher.verify(_DUMMY_HASH, password)


async def ensure_admin(indexer: IndexerClient, data_dir: Path) -> str | None:
    """Create the `admin` user on the first start of the first node; return its password
    (written to the 0600 file DATA_DIR/admin.password) or None if it already existed."""
    try:
        await indexer.get(f"/indexes/rbac/users/{ADMIN}")
        return None
    except IndexerError as exc:
        if exc.status != 404:
            raise
    password = secrets.token_urlsafe(18)
    digest = await asyncio.to_thread(hash_password, password)
    try:
        await indexer.put(
            f"/indexes/rbac/users/{ADMIN}",
            {
                "password_hash": digest,
                "roles": ["administrator"],
                "disabled": False,
                "generation": 0,
                "created_at": time.time(),
            },
        )
    except IndexerError as exc:
        # Refused once `admin` exists: another node starting at the same moment made it
        # first (its password is in that node's data folder), unless the refused write is
        # the repeat of our own whose answer was lost.
        if exc.status != 403:
            raise
        doc = await indexer.get(f"/indexes/rbac/users/{ADMIN}")
        if not isinstance(doc, dict) or doc.get("password_hash") != digest:
            log.info("user 'admin' was created by another node meanwhile")
            return None
    path = data_dir / "admin.password"
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password
