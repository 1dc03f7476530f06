"""The approval policy (two-person rule, docs/security.md): which tasks wait for approvals
from people other than their requester before anything is written for them.

Kept as one document (`settings/approval-policy`), set by an administrator through the
Management API; the indexer's task manager reads it in the task's own transaction."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

POLICY_INDEX, POLICY_DOC = "settings", "approval-policy"
DECISIONS = ("approved", "rejected")


class ApprovalRule(BaseModel):
    """Tasks of `task_types` (fnmatch patterns) need `approvals` approvals within `within`
    seconds, when they reach at least `min_agents` agents or (`targets_all`) every agent;
    with neither, every such task does."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    task_types: list[str] = Field(min_length=1, max_length=64)
    min_agents: int | None = Field(default=None, ge=1)
    targets_all: bool = False
    approvals: int = Field(default=1, ge=1, le=10)
    within: float = Field(default=86400.0, ge=1, le=30 * 86400)

    def matches(self, task_type: str, agents: int | None, everything: bool) -> bool:
        if not any(fnmatch.fnmatchcase(task_type, p) for p in self.task_types):
            return False
        if self.min_agents is None and not self.targets_all:
            return True
        big = self.min_agents is not None and agents is not None and agents >= self.min_agents
        return big or (self.targets_all and everything)


class ApprovalPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rules: list[ApprovalRule] = Field(default_factory=list, max_length=100)

    def required(self, task_type: str, agents: int | None, everything: bool) -> Required | None:
        """The most approvals any matching rule asks, within the shortest of their times."""
        hits = [r for r in self.rules if r.matches(task_type, agents, everything)]
        if not hits:
            return None
        return Required(
            max(r.approvals for r in hits),
            min(r.within for r in hits),
            [i for i, r in enumerate(self.rules) if r in hits],
        )


@dataclass(frozen=True)
class Required:
    approvals: int
    within: float
    rules: list[int]  # which rules of the policy asked (their positions)
