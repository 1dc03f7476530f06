"""Parameter schemas of the 15 task types (pydantic at the edge, strict: unknown keys refused)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


class AgentSelector(Params):
    """Which agents an agent-bound task reaches: a list, a group, or all of them."""

    agents: list[str] | None = Field(default=None, max_length=100_000)
    group: str | None = None
    all: bool = False

    @model_validator(mode="after")
    def _one_selector(self) -> AgentSelector:
        chosen = sum([self.agents is not None, self.group is not None, self.all])
        if chosen != 1:
            raise ValueError("choose exactly one of 'agents', 'group' or 'all'")
        if self.agents is not None and not self.agents:
            raise ValueError("'agents' must not be empty")
        if self.group is not None:
            _name(self.group, "group")
        return self


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


class GroupConfigurationChange(Params):
    group: str
    configuration: dict[str, Any]

    @field_validator("group")
    @classmethod
    def _g(cls, v: str) -> str:
        return _name(v, "group")


class AgentUpgrade(AgentSelector):
    version: str = Field(min_length=1, max_length=64)
    package: str | None = Field(default=None, max_length=128)


class AgentPackageNew(Params):
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


class ScaContentUpdate(Params):
    policy_id: str
    version: str = Field(min_length=1, max_length=64)

    @field_validator("policy_id")
    @classmethod
    def _p(cls, v: str) -> str:
        return _name(v, "policy_id")


class VulnerabilityRescan(AgentSelector):
    reason: str = Field(default="", max_length=256)


class CveContentUpdate(Params):
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


class ActiveResponseExecution(Params):
    name: str
    arguments: list[str] = Field(default_factory=list, max_length=64)
    target: AgentSelector
    reason: str = Field(default="", max_length=512)

    @field_validator("name")
    @classmethod
    def _n(cls, v: str) -> str:
        return _name(v, "active response name")


class RulesetUpdate(Params):
    version: str = Field(min_length=1, max_length=64)
    rules: list[dict[str, Any]] | None = None


class ServerConfigChange(Params):
    settings: dict[str, Any] = Field(min_length=1)


class AgentDeletion(Params):
    agent: str = Field(min_length=1, max_length=64)


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


class RbacChange(Params):
    """Servers refresh their RBAC cache; with `changes`, the rbac index changes first (the
    Management API's /security routes file these; a plain task carries only a reason)."""

    reason: str = Field(default="", max_length=256)
    changes: list[RbacDocChange] = Field(default_factory=list, max_length=100)

    def redacted(self) -> dict[str, Any]:
        return {"reason": self.reason, "changes": [c.redacted() for c in self.changes]}
