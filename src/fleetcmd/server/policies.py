"""Policies: what a role grants, on which resources, and whether one set of policies covers
another (nobody may create or grant more than they hold).

A policy grants `actions` on `resources`. Actions are `<noun>:<verb>` (`task:create`,
`user:update`), optionally narrowed (`task:create:agent-upgrade`): a granted `task:create`
covers every type. Resources are `<kind>:<attribute>:<value>`. Patterns use fnmatch's `*`,
`?` and `[...]`.

Every action acts on one kind of resource, named by its noun (`KINDS`): the fleet's actions on
agents and groups (`agent:id:<id>`, `agent:group:<group>`, `group:id:<group>`), `user:*` on
users (`user:id:<name>`), `role:*` on roles (`role:id:<name>`), and the system's actions (the
audit trail, metrics, enrollment keys) on everything only (`*:*:*`). So `*` on
`agent:group:web` is everything one may do to the web agents and nothing else."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

EVERYTHING = "*:*:*"
FLEET = ("agent", "group")
KINDS: dict[str, tuple[str, ...]] = {
    "task": FLEET,
    "rollout": FLEET,
    "agent": FLEET,
    "command": FLEET,
    "group": FLEET,
    "user": ("user",),
    "role": ("role",),
}
_WILD = frozenset("*?[")


def user_resource(name: str) -> str:
    return f"user:id:{name}"


def role_resource(name: str) -> str:
    return f"role:id:{name}"


def kinds_of(action: str) -> tuple[str, ...] | None:
    """The kinds of resource `action` acts on; None: the whole system (`*:*:*` only)."""
    return KINDS.get(action.partition(":")[0])


def action_matches(pattern: str, action: str) -> bool:
    """`task:create` covers `task:create:agent-upgrade`; `*` patterns as in fnmatch."""
    return fnmatch.fnmatchcase(action, pattern) or action.startswith(pattern + ":")


@dataclass(frozen=True)
class Policy:
    actions: tuple[str, ...]
    resources: tuple[str, ...] = (EVERYTHING,)

    def grants(self, action: str) -> bool:
        return any(action_matches(pattern, action) for pattern in self.actions)

    def to_json(self) -> dict[str, Any]:
        return {"actions": list(self.actions), "resources": list(self.resources)}


def parse_policies(raw: Any) -> tuple[Policy, ...]:
    """Policies from a role document; anything malformed is skipped (and grants nothing)."""
    out: list[Policy] = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict):
            continue
        actions = item.get("actions")
        resources = item.get("resources", [EVERYTHING])
        if isinstance(actions, list) and isinstance(resources, list):
            out.append(Policy(tuple(str(a) for a in actions), tuple(str(r) for r in resources)))
    return tuple(out)


# -- pattern containment ---------------------------------------------------------------------
# A token is "*", "?", a set "[...]" (longer than one character) or one literal character.


@lru_cache(maxsize=4096)
def _tokens(pattern: str) -> tuple[str, ...]:
    """Split a pattern as fnmatch reads it (an unclosed `[` is a literal)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "[":
            j = i + 1 if i < n and pattern[i] == "!" else i
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j < n:
                out.append(pattern[i - 1 : j + 1])
                i = j + 1
                continue
        if c == "*" and out and out[-1] == "*":
            continue
        out.append(c)
    return tuple(out)


def _one(outer: str, inner: str) -> bool:
    """One non-star outer token matches everything the single inner token matches."""
    if inner == "*":
        return False
    if outer == "?":
        return True
    if inner == "?" or len(inner) > 1:
        return False  # an unknown character: only `?` or `*` is sure to match it
    return outer == inner if len(outer) == 1 else fnmatch.fnmatchcase(inner, outer)


def _covers_tokens(outer: Sequence[str], inner: Sequence[str]) -> bool:
    """Every string `inner` matches, `outer` matches: `outer`'s stars absorb any run of
    `inner`'s tokens, its other tokens match one token each (sound; it may answer no where
    only a union of patterns would cover)."""
    reach = [True] + [False] * len(inner)  # reach[j]: outer so far covers inner[:j]
    for tok in outer:
        if tok == "*":
            for j in range(1, len(reach)):
                reach[j] = reach[j] or reach[j - 1]
        else:
            reach = [False] + [reach[j] and _one(tok, inner[j]) for j in range(len(inner))]
        if not any(reach):
            return False
    return reach[-1]


def resource_covers(outer: str, inner: str) -> bool:
    """Every resource the pattern `inner` matches, `outer` matches too."""
    if outer in (inner, EVERYTHING):  # real resources all have three parts
        return True
    if not _WILD & set(inner):
        return fnmatch.fnmatchcase(inner, outer)
    return _covers_tokens(_tokens(outer), _tokens(inner))


def _action_covers_tokens(outer: str, inner: Sequence[str]) -> bool:
    if _covers_tokens(_tokens(outer), inner):
        return True
    # A plain action also grants its sub-actions: `task:create` -> `task:create:<type>`.
    return not _WILD & set(outer) and _covers_tokens((*outer, ":", "*"), inner)


def action_covers(outer: str, inner: str) -> bool:
    """Every action the pattern `inner` grants, `outer` grants too. (Actions that code asks
    about never contain wildcard characters, so a wildcard pattern grants no sub-actions.)"""
    if outer == inner:
        return True
    if not _action_covers_tokens(outer, _tokens(inner)):
        return False
    return bool(_WILD & set(inner)) or _action_covers_tokens(outer, (*inner, ":", "*"))


def uncovered(held: Sequence[Policy], wanted: Iterable[Policy], limit: int = 10) -> list[str]:
    """What `wanted` grants that `held` does not (`"<action> on <resource>"`, at most
    `limit`); empty when every pair is granted by one of the held policies."""
    out: list[str] = []
    for q in wanted:
        covered = [
            {r for r in q.resources if any(resource_covers(x, r) for x in p.resources)}
            for p in held
        ]
        for a in q.actions:
            reach: set[str] = set()
            for p, resources in zip(held, covered, strict=True):
                if any(action_covers(x, a) for x in p.actions):
                    reach |= resources
            for r in q.resources:
                if r not in reach:
                    out.append(f"{a} on {r}")
                    if len(out) >= limit:
                        return out
    return out


def reaches_kind(pattern: str, kind: str) -> bool:
    """Whether `pattern` matches some resource of `kind` (`user:id:bob` is a `user`)."""
    tokens = _tokens(pattern)
    prefix = kind + ":"
    return any(fnmatch.fnmatchcase(prefix, "".join(tokens[:k])) for k in range(1, len(tokens) + 1))


READ_ACTIONS = ("task:read", "command:read", "agent:read", "group:read", "metrics:read")
BUILTIN_ROLES: dict[str, tuple[Policy, ...]] = {
    "administrator": (Policy(("*",)),),
    "operator": (
        Policy((*READ_ACTIONS, "task:create", "task:cancel", "rollout:control", "group:update")),
    ),
    "readonly": (Policy(READ_ACTIONS),),
    "approver": (Policy((*READ_ACTIONS, "task:approve")),),
}
ROLE_DESCRIPTIONS = {
    "administrator": "everything, including users, roles and the audit trail",
    "operator": "file, cancel and steer (rollouts) tasks of every type, read the fleet",
    "readonly": "read tasks, commands, agents and groups",
    "approver": "read the fleet and approve or reject tasks others filed (docs/security.md)",
}
