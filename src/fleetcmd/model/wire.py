"""The bodies that cross between roles over HTTP, one model per contract, imported by both
sides: a field or a limit is one edit.

- A task as a person or service files it (`POST /tasks` on the Management API), and as the
  server forwards it to the indexer, with who filed it and their proof (`TaskToIndexer`).
- A command result as an agent posts it to its server (`POST /agents/results`) and as the
  server passes it on, coalesced with other agents', to the indexer (`POST /results`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetcmd.model.progress import (
    HEARTBEAT_MAX,
    HEARTBEAT_MIN,
    OUTPUT_CHUNK,
    OUTPUT_CHUNKS_PER_BEAT,
)
from fleetcmd.model.selectors import LABEL_KEY_RE

MAX_WINDOW = 30 * 86400  # the longest execution timeout or delivery window, seconds


class TaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    timeout: float | None = Field(default=None, gt=0, le=MAX_WINDOW)
    expires_in: float | None = Field(default=None, gt=0, le=MAX_WINDOW)
    rollout: dict[str, Any] | None = None  # a rollout policy (docs/rollouts.md)
    # From `POST /tasks/preview`: the task reaches exactly the agents the preview froze.
    preview_token: str | None = Field(default=None, min_length=1, max_length=128)
    # File through a current freeze (needs `freeze:override`; audited).
    override_freeze: bool = False
    # Run its agent commands only inside their agents' maintenance windows: one not
    # delivered before its window closes waits for the next ("next") or ends ("expire").
    window: Literal["next", "expire"] | None = None


class ScopeIn(BaseModel):
    """Where a scoped user may file a task (id and group patterns of their policies): the
    indexer narrows a selector's matches to it. Absent: every agent."""

    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(default_factory=list, max_length=1000)
    groups: list[str] = Field(default_factory=list, max_length=1000)


class Filer(BaseModel):
    """Who asks, as the server forwards it: the user, their proof, their scope."""

    source: str = "management-api"
    user: str | None = Field(default=None, min_length=1, max_length=128)
    proof: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="The person's user proof (`POST /user-proofs`).",
    )
    scope: ScopeIn | None = None


class TaskToIndexer(TaskIn, Filer):
    pass


class PreviewIn(BaseModel):
    """`POST /tasks/preview`: what a task would reach, without filing it."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)


class PreviewToIndexer(PreviewIn, Filer):
    pass


RerunStatus = Literal["success", "failure", "timeout", "expired", "cancelled"]
RERUN_DEFAULT: tuple[RerunStatus, ...] = ("failure", "timeout", "expired")


class RerunIn(BaseModel):
    """`POST /tasks/{id}/rerun`: the same task again, on the agents whose commands ended so."""

    model_config = ConfigDict(extra="forbid")
    statuses: list[RerunStatus] = Field(
        default_factory=lambda: list(RERUN_DEFAULT), min_length=1, max_length=5
    )
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    timeout: float | None = Field(default=None, gt=0, le=MAX_WINDOW)
    expires_in: float | None = Field(default=None, gt=0, le=MAX_WINDOW)


class RerunToIndexer(RerunIn, Filer):
    pass


class DecisionIn(BaseModel):
    """`POST /tasks/{id}/approve` or `/reject` (a rejection says why)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=1000)


class DecisionToIndexer(DecisionIn, Filer):
    pass


class LabelsIn(BaseModel):
    """`PUT /agents/{id}/labels`: the agent's labels, replaced whole."""

    model_config = ConfigDict(extra="forbid")
    labels: dict[str, str] = Field(max_length=64)

    @field_validator("labels")
    @classmethod
    def _shape(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not LABEL_KEY_RE.fullmatch(key):
                raise ValueError(
                    f"label key {key!r}: 1-63 letters, digits, '.', '_' or '-', "
                    "starting with a letter or digit"
                )
            if not 0 < len(value) <= 256 or any(c in value for c in "\x00\n\r"):
                raise ValueError(f"label {key!r}: a value is 1-256 characters on one line")
        return v


class ResultIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int = Field(ge=1, le=2**63 - 1)
    status: Literal["success", "failure"]
    code: int = Field(default=0, ge=-(2**31), le=2**31 - 1)  # an exit code fits 32 bits
    message: str = Field(default="", max_length=8000)
    data: Any = None


class AgentResultsIn(BaseModel):
    """One agent's batch (its outbox sends at most this many at once)."""

    model_config = ConfigDict(extra="forbid")
    results: list[ResultIn] = Field(max_length=10_000)


class ChunkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq: int = Field(ge=0, le=2**31 - 1)  # 0, 1, 2, … per command: taken only in order
    data: str = Field(max_length=OUTPUT_CHUNK)


class ProgressIn(BaseModel):
    """One running command's heartbeat: the agent still executes it, and says when to expect
    the next; with, optionally, how far it got and the output it wrote since the last one."""

    model_config = ConfigDict(extra="forbid")
    id: int = Field(ge=1, le=2**63 - 1)
    interval: float = Field(default=10.0, ge=HEARTBEAT_MIN, le=HEARTBEAT_MAX)
    percent: float | None = Field(default=None, ge=0, le=100)
    message: str | None = Field(default=None, max_length=500)
    output: list[ChunkIn] = Field(default_factory=list, max_length=OUTPUT_CHUNKS_PER_BEAT)


class AgentProgressIn(BaseModel):
    """`POST /agents/commands/progress`: heartbeats of the commands one agent is running."""

    model_config = ConfigDict(extra="forbid")
    progress: list[ProgressIn] = Field(min_length=1, max_length=1000)


class NodeResultsIn(BaseModel):
    """A server node's batch, many agents' results coalesced (server/bulker.py)."""

    model_config = ConfigDict(extra="forbid")
    results: list[ResultIn] = Field(max_length=50_000)
