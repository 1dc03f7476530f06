"""Parameter schemas of the 15 task types (pydantic at the edge, strict: unknown keys refused).

Each type also answers, by itself, what it names, what it reaches (RBAC) and which agents its
commands are written for (model/targets.py), and what of it is stored: callers never keep
their own list of task types. A type that leaves `reach` to the base class is refused by the
catalog's completeness test (tests/unit/test_catalog_complete.py): nothing falls back to a
default reach silently."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from fleetcmd.model import selectors
from fleetcmd.model.targets import EVERYTHING, AgentSelection, Lookup, Names, Reach

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# Content documents shared by every group live under `content/` in the sca and
# active-response indexes, beside the per-group `<group>/<id>` documents.
RESERVED_GROUPS = frozenset({"content"})


def _name(value: str, what: str) -> str:
    if what == "group" and value in RESERVED_GROUPS:
        raise ValueError(f"group name {value!r} is reserved")
    if not NAME_RE.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} must be 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def names(self) -> Names:
        """Agents and groups named by these params, which must exist when the task is filed."""
        return Names()

    def reach(self) -> Reach:
        """What filing the task touches (server/access.py checks it against the user)."""
        raise NotImplementedError(f"{type(self).__name__} does not say what it reaches")

    def selection(self, lookup: Lookup) -> AgentSelection | None:
        """The agents the task manager writes commands for (agent-bound types only)."""
        return None

    def stored(self) -> dict[str, Any]:
        """What the task and its commands keep (secrets such as password hashes out)."""
        return self.model_dump(mode="json")

    def agent_args(self) -> dict[str, Any]:
        """The arguments of the command each selected agent gets (model/actions.py)."""
        return self.stored()


class Everything(Params):
    """Types applied by every server node, or to content any group may use: they reach
    everything, so only a user whose scope is everything files them."""

    def reach(self) -> Reach:
        return EVERYTHING


class AgentSelector(Params):
    """Which agents an agent-bound task reaches: a list, a group, all of them, or those a
    `selector` expression matches (model/selectors.py, docs/commands.md)."""

    agents: list[str] | None = Field(default=None, max_length=100_000)
    group: str | None = None
    all: bool = False
    selector: str | None = Field(default=None, max_length=selectors.MAX_LENGTH)

    @field_validator("selector")
    @classmethod
    def _parses(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                selectors.parse(v)
            except selectors.SelectorError as exc:
                raise PydanticCustomError(
                    "selector", "{message} (line {line}, column {column})", exc.to_json()
                ) from None
        return v

    @model_validator(mode="after")
    def _one_selector(self) -> AgentSelector:
        chosen = sum(
            [self.agents is not None, self.group is not None, self.all, self.selector is not None]
        )
        if chosen != 1:
            raise ValueError("choose exactly one of 'agents', 'group', 'all' or 'selector'")
        if self.agents is not None and not self.agents:
            raise ValueError("'agents' must not be empty")
        if self.group is not None:
            _name(self.group, "group")
        return self

    def names(self) -> Names:
        return Names(tuple(self.agents or ()), (self.group,) if self.group else ())

    def reach(self) -> Reach:
        if self.all:
            return EVERYTHING
        if self.selector is not None:
            return Reach(selector=self.selector)
        return Reach(agents=tuple(self.agents or ()), groups=(self.group,) if self.group else ())

    def selection(self, lookup: Lookup | None = None) -> AgentSelection:
        if self.all:
            return AgentSelection(all=True)
        if self.selector is not None:
            return AgentSelection(selector=selectors.parse(self.selector))
        if self.group is not None:
            return AgentSelection(groups=(self.group,))
        return AgentSelection(ids=tuple(dict.fromkeys(self.agents or ())))

    def agent_args(self) -> dict[str, Any]:
        return {k: v for k, v in self.stored().items() if k not in SELECTOR_FIELDS}


SELECTOR_FIELDS = frozenset(AgentSelector.model_fields)


class GroupAssignmentChange(Params):
    """Set, add or remove groups of agents; or delete a group from every agent."""

    agents: list[str] | None = Field(default=None, max_length=100_000)
    from_group: str | None = None
    groups: list[str] = Field(default_factory=list, max_length=128)
    mode: Literal["set", "add", "remove"] = "set"
    delete_group: str | None = None

    @field_validator("groups")
    @classmethod
    def _group_names(cls, v: list[str]) -> list[str]:
        for g in v:
            _name(g, "group")
        if len(set(v)) != len(v):
            raise ValueError("'groups' lists a group twice")
        return v

    @model_validator(mode="after")
    def _shape(self) -> GroupAssignmentChange:
        if self.delete_group is not None:
            _name(self.delete_group, "group")
            if self.agents is not None or self.from_group is not None or self.groups:
                raise ValueError("'delete_group' takes no 'agents', 'from_group' or 'groups'")
            return self
        if (self.agents is None) == (self.from_group is None):
            raise ValueError("choose exactly one of 'agents' or 'from_group' (or 'delete_group')")
        if self.agents is not None and not self.agents:
            raise ValueError("'agents' must not be empty")
        if self.mode != "set" and not self.groups:
            raise ValueError(f"mode '{self.mode}' needs at least one group")
        return self

    def names(self) -> Names:
        named = [g for g in (self.from_group, self.delete_group) if g]
        return Names(tuple(self.agents or ()), (*self.groups, *named))

    def reach(self) -> Reach:
        if self.delete_group is not None:
            g = (self.delete_group,)
            return Reach(groups=g, changes_groups=g)
        source = (self.from_group,) if self.from_group else ()
        # `set` (and `remove`) take agents out of the group they are moved from, too.
        return Reach(
            agents=tuple(self.agents or ()),
            groups=source,
            changes_groups=tuple(self.groups) + (source if self.mode != "add" else ()),
        )


class GroupConfigurationChange(Params):
    group: str
    configuration: dict[str, Any]

    @field_validator("group")
    @classmethod
    def _g(cls, v: str) -> str:
        return _name(v, "group")

    # Names no group that must exist: it creates the group it names.
    def reach(self) -> Reach:
        return Reach(groups=(self.group,), changes_groups=(self.group,))


class AgentUpgrade(AgentSelector):
    version: str = Field(min_length=1, max_length=64)
    package: str | None = Field(default=None, max_length=128)


class AgentPackageNew(Everything):
    package: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class AgentRename(Params):
    agent: str = Field(min_length=1, max_length=64)
    name: str

    @field_validator("name")
    @classmethod
    def _n(cls, v: str) -> str:
        return _name(v, "agent name")

    def names(self) -> Names:
        return Names(agents=(self.agent,))

    def reach(self) -> Reach:
        return Reach(agents=(self.agent,))


class ScaPolicyChange(Params):
    group: str
    policy_id: str
    policy: dict[str, Any] | None = None
    delete: bool = False

    @model_validator(mode="after")
    def _shape(self) -> ScaPolicyChange:
        _name(self.group, "group")
        _name(self.policy_id, "policy_id")
        if self.delete == (self.policy is not None):
            raise ValueError("give either 'policy' (to set it) or 'delete': true")
        return self

    def names(self) -> Names:
        return Names(groups=(self.group,))

    def reach(self) -> Reach:
        return Reach(groups=(self.group,), changes_groups=(self.group,))


class ScaContentUpdate(Everything):
    policy_id: str
    version: str = Field(min_length=1, max_length=64)

    @field_validator("policy_id")
    @classmethod
    def _p(cls, v: str) -> str:
        return _name(v, "policy_id")

    def selection(self, lookup: Lookup) -> AgentSelection:
        """The agents of every group that uses the policy."""
        return AgentSelection(groups=tuple(lookup.groups_with_document("sca", self.policy_id)))


class VulnerabilityRescan(AgentSelector):
    reason: str = Field(default="", max_length=256)


class CveContentUpdate(Everything):
    version: str = Field(min_length=1, max_length=64)


class ActiveResponseConfiguration(Params):
    group: str
    name: str
    definition: dict[str, Any] | None = None
    enabled: bool = True

    @model_validator(mode="after")
    def _shape(self) -> ActiveResponseConfiguration:
        _name(self.group, "group")
        _name(self.name, "active response name")
        if self.enabled and self.definition is None:
            raise ValueError("an enabled active response needs its 'definition'")
        return self

    def names(self) -> Names:
        return Names(groups=(self.group,))

    def reach(self) -> Reach:
        return Reach(groups=(self.group,), changes_groups=(self.group,))

    def selection(self, lookup: Lookup) -> AgentSelection:
        return AgentSelection(groups=(self.group,))


class ActiveResponseExecution(Params):
    name: str
    arguments: list[str] = Field(default_factory=list, max_length=64)
    target: AgentSelector
    reason: str = Field(default="", max_length=512)

    @field_validator("name")
    @classmethod
    def _n(cls, v: str) -> str:
        return _name(v, "active response name")

    def names(self) -> Names:
        return self.target.names()

    def reach(self) -> Reach:
        return self.target.reach()

    def selection(self, lookup: Lookup | None = None) -> AgentSelection:
        return self.target.selection()


class RulesetUpdate(Everything):
    version: str = Field(min_length=1, max_length=64)
    rules: list[dict[str, Any]] | None = None


class ServerConfigChange(Everything):
    settings: dict[str, Any] = Field(min_length=1)


class AgentDeletion(Params):
    agent: str = Field(min_length=1, max_length=64)

    def names(self) -> Names:
        return Names(agents=(self.agent,))

    def reach(self) -> Reach:
        return Reach(agents=(self.agent,))


USER_FIELDS = frozenset({"password_hash", "roles", "disabled"})
ROLE_FIELDS = frozenset({"policies", "description"})
REDACTED = "<redacted>"


class RbacDocChange(Params):
    """One change to the `rbac` index, applied by the task manager in the task's transaction.

    `users/<name>`: password_hash (argon2), roles, disabled; `revoke_tokens` bumps the user's
    token generation so every token issued before stops working. `roles/<name>`: policies
    (`[{"actions": [...], "resources": [...]}]`), description."""

    kind: Literal["user", "role"]
    name: str
    op: Literal["create", "update", "delete"] = "update"
    set: dict[str, Any] = Field(default_factory=dict)
    revoke_tokens: bool = False

    @model_validator(mode="after")
    def _shape(self) -> RbacDocChange:
        _name(self.name, self.kind)
        allowed = USER_FIELDS if self.kind == "user" else ROLE_FIELDS
        unknown = sorted(set(self.set) - allowed)
        if unknown:
            raise ValueError(f"a {self.kind} has no field(s) {unknown}; known: {sorted(allowed)}")
        if self.op == "delete" and (self.set or self.kind == "user"):
            raise ValueError("only roles are deleted (disable a user instead), with no 'set'")
        if self.op == "create" and self.kind == "user" and "password_hash" not in self.set:
            raise ValueError("a new user needs a password_hash")
        return self

    def redacted(self) -> dict[str, Any]:
        """What the task keeps: never the password hash."""
        doc = self.model_dump(mode="json")
        if "password_hash" in doc["set"]:
            doc["set"]["password_hash"] = REDACTED
        return doc


class RbacChange(Everything):
    """Servers refresh their RBAC cache; with `changes`, the rbac index changes first (the
    Management API's /security routes file these; a plain task carries only a reason)."""

    reason: str = Field(default="", max_length=256)
    changes: list[RbacDocChange] = Field(default_factory=list, max_length=100)

    def stored(self) -> dict[str, Any]:
        return {"reason": self.reason, "changes": [c.redacted() for c in self.changes]}
