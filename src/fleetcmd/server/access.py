"""What a person may reach: a task's targets checked before it is filed, and lists narrowed
to what the user may read. Shared by the Management API and the dashboard.

A task *reaches* agents (named, or through a group), groups (whose configuration or
membership it changes), or everything (every agent, the servers, content used anywhere).
Creating it needs `task:create:<type>` on every agent it reaches, and, for the types that
change groups, `group:update` on those groups (a `mode: set` assignment changes every group it
takes an agent out of, too); reaching everything needs `*:*:*`. The check
runs against the agents and groups indexes at creation time, so a group named in the task is
expanded to its current members exactly as the task manager will expand it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fleetcmd.errors import FleetError, Forbidden
from fleetcmd.model import params as p
from fleetcmd.model.catalog import validate
from fleetcmd.model.targets import Reach
from fleetcmd.server.rbac import Scope, User
from fleetcmd.server.state import ServerState

LOOKUP_CHUNK = 200  # agent ids per indexer lookup (they travel in the query string)
GROUP_PAGE = 5000


def reach_of(type_: str, params: dict[str, Any]) -> Reach | None:
    """The reach of a stored task (None: its params no longer validate; only admins see it)."""
    try:
        _, parsed = validate(type_, params)
    except FleetError:
        return None
    return parsed.reach()


async def agents_groups(st: ServerState, ids: Iterable[str]) -> dict[str, list[str]]:
    """Current groups of each known agent among `ids` (unknown ids are left out)."""
    ids = list(dict.fromkeys(ids))
    chunks = [ids[i : i + LOOKUP_CHUNK] for i in range(0, len(ids), LOOKUP_CHUNK)]
    pages = await asyncio.gather(
        *(st.indexer.get("/agents", scope_ids=",".join(c), limit=len(c)) for c in chunks)
    )
    return {a["id"]: list(a.get("groups", [])) for page in pages for a in page["items"]}


async def _outside(st: ServerState, scope: Scope, reach: Reach) -> list[str]:
    """Agents the reach touches that are outside `scope` (a few, for the message)."""
    if scope.all_agents:
        return []
    outside: list[str] = []
    known = await agents_groups(st, reach.agents)
    outside += [a for a in reach.agents if not scope.agent(a, known.get(a, []))]
    for group in reach.groups:
        if scope.agents_of_group(group):
            continue
        cursor: str | None = None
        while len(outside) < 20:
            page = await st.indexer.get("/agents", group=group, cursor=cursor, limit=GROUP_PAGE)
            outside += [
                a["id"] for a in page["items"] if not scope.agent(a["id"], a.get("groups", []))
            ]
            cursor = page["next_cursor"]
            if not cursor:
                break
    return outside[:20]


async def check_task(st: ServerState, user: User, type_: str, params: dict[str, Any]) -> None:
    """403 unless `user` may file this task on everything it reaches. Params the catalog
    refuses pass through, so the task manager's own 4xx reaches the caller unchanged."""
    try:
        _, parsed = validate(type_, params)
    except FleetError:
        return
    if isinstance(parsed, p.RbacChange) and parsed.changes:
        raise Forbidden("users and roles change through /security/users and /security/roles")
    action = f"task:create:{type_}"
    scope = st.rbac.scope(user, action)
    if scope is None:
        raise Forbidden(
            f"user '{user.name}' may not {action}", action=action, roles=list(user.roles)
        )
    reach = parsed.reach()
    if reach.everything and not scope.everything:
        raise Forbidden(
            f"user '{user.name}' may not {action} on every agent or server (needs {'*:*:*'})",
            action=action,
            roles=list(user.roles),
        )
    # A selector's agents are known only when the task is written: the indexer narrows them
    # to the user's scope (`task_scope`) instead.
    outside = [] if reach.selector is not None else await _outside(st, scope, reach)
    if outside:
        raise Forbidden(
            f"user '{user.name}' may not {action} on agent(s) " + ", ".join(outside[:5]),
            action=action,
            agents=outside,
        )
    gscope = st.rbac.scope(user, "group:update")
    denied = [g for g in reach.changes_groups if gscope is None or not gscope.group(g)]
    if denied:
        raise Forbidden(
            f"user '{user.name}' may not group:update on group(s) " + ", ".join(denied),
            action="group:update",
            groups=denied,
        )
    if _sets_groups(parsed) and not (gscope is not None and gscope.all_groups):
        dropped = await _dropped_groups(st, parsed)
        denied = sorted(g for g in dropped if gscope is None or not gscope.group(g))
        if denied:
            raise Forbidden(
                f"user '{user.name}' may not group:update on group(s) "
                + ", ".join(denied[:20])
                + " (mode 'set' would remove the agents from them)",
                action="group:update",
                groups=denied[:100],
            )


def task_scope(st: ServerState, user: User, type_: str) -> dict[str, list[str]] | None:
    """Where `user` may file `type_`, as the indexer narrows a selector, a preview or a
    re-run to it (None: every agent)."""
    scope = st.rbac.scope(user, f"task:create:{type_}")
    if scope is None:
        return {"ids": [], "groups": []}
    if scope.all_agents:
        return None
    return {
        "ids": [
            pat.removeprefix("agent:id:") for pat in scope.patterns if pat.startswith("agent:id:")
        ],
        "groups": scope.group_patterns(),
    }


def _sets_groups(parsed: p.Params) -> bool:
    return (
        isinstance(parsed, p.GroupAssignmentChange)
        and parsed.delete_group is None
        and parsed.mode == "set"
    )


async def _dropped_groups(st: ServerState, parsed: p.Params) -> set[str]:
    """The groups a `mode: set` assignment takes from the agents it reaches (each one's
    current groups that the new list does not keep), as the command manager will expand it."""
    assert isinstance(parsed, p.GroupAssignmentChange)
    current: list[list[str]] = []
    if parsed.agents:
        current = list((await agents_groups(st, parsed.agents)).values())
    cursor: str | None = None
    while parsed.from_group:
        page = await st.indexer.get(
            "/agents", group=parsed.from_group, cursor=cursor, limit=GROUP_PAGE
        )
        current += [list(a.get("groups", [])) for a in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    kept = set(parsed.groups)
    return {g for groups in current for g in groups if g not in kept}


@dataclass
class Reader:
    """Narrows what one user reads with one action (`agent:read`, `task:read`, ...)."""

    st: ServerState
    user: User
    action: str
    scope: Scope = field(init=False)

    def __post_init__(self) -> None:
        scope = self.st.rbac.scope(self.user, self.action)
        self.scope = scope if scope is not None else Scope(())

    @property
    def everything(self) -> bool:
        return self.scope.all_agents and self.scope.everything

    async def agent_filter(self) -> dict[str, str] | None:
        """Indexer query params that keep only readable agents (None: no narrowing)."""
        if self.scope.all_agents:
            return None
        groups = self.scope.group_patterns()
        if any(c in g for g in groups for c in "*?["):
            existing = [g["name"] for g in (await self.st.indexer.get("/groups"))["items"]]
            groups = [g for g in existing if self.scope.agents_of_group(g)]
        return {"scope_groups": ",".join(groups), "scope_ids": ",".join(self.scope.agent_ids())}

    def agent(self, doc: dict[str, Any]) -> bool:
        return self.scope.agent(doc["id"], doc.get("groups", []))

    def group(self, name: str) -> bool:
        return self.scope.group(name)

    async def tasks(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The tasks whose whole reach is readable."""
        if self.everything:
            return tasks
        reaches = {t["id"]: reach_of(t["type"], t.get("params") or {}) for t in tasks}
        ids = [a for r in reaches.values() if r for a in r.agents]
        known = await agents_groups(self.st, ids) if ids else {}
        out = []
        for t in tasks:
            r = reaches[t["id"]]
            if r is None or (r.everything and not self.scope.everything):
                continue
            # What a selector matched is frozen inside the indexer: its filer and the users
            # who read every agent see it.
            if r.selector is not None and not (
                self.scope.all_agents or t.get("user") == self.user.name
            ):
                continue
            if all(self.scope.agents_of_group(g) for g in r.groups) and all(
                self.scope.agent(a, known.get(a, [])) for a in r.agents
            ):
                out.append(t)
        return out

    async def task(self, task: dict[str, Any]) -> bool:
        return bool(await self.tasks([task]))

    async def commands(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Agent commands by their agent; the others by their task."""
        if self.everything:
            return commands
        agent_ids = [c["target"]["id"] for c in commands if c["target"]["type"] == "agent"]
        known = await agents_groups(self.st, agent_ids) if agent_ids else {}
        task_ids = {c["task_id"] for c in commands if c["target"]["type"] != "agent"}
        readable: set[int] = set()
        for tid in task_ids:
            if await self.task(await self.st.indexer.get(f"/tasks/{tid}")):
                readable.add(tid)
        return [
            c
            for c in commands
            if (
                c["target"]["type"] == "agent"
                and self.scope.agent(c["target"]["id"], known.get(c["target"]["id"], []))
            )
            or (c["target"]["type"] != "agent" and c["task_id"] in readable)
        ]
