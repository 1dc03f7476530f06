"""The bodies that cross between roles over HTTP, one model per contract, imported by both
sides: a field or a limit is one edit.

- A task as a person or service files it (`POST /tasks` on the Management API), and as the
  server forwards it to the indexer, with who filed it and their proof (`TaskToIndexer`).
- A command result as an agent posts it to its server (`POST /agents/results`) and as the
  server passes it on, coalesced with other agents', to the indexer (`POST /results`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_WINDOW = 30 * 86400  # the longest execution timeout or delivery window, seconds


class TaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    timeout: float | None = Field(default=None, gt=0, le=MAX_WINDOW)
    expires_in: float | None = Field(default=None, gt=0, le=MAX_WINDOW)
    rollout: dict[str, Any] | None = None  # a rollout policy (docs/rollouts.md)


class TaskToIndexer(TaskIn):
    source: str = "management-api"
    user: str | None = Field(default=None, min_length=1, max_length=128)
    proof: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="The person's user proof (`POST /user-proofs`).",
    )


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


class NodeResultsIn(BaseModel):
    """A server node's batch, many agents' results coalesced (server/bulker.py)."""

    model_config = ConfigDict(extra="forbid")
    results: list[ResultIn] = Field(max_length=50_000)
