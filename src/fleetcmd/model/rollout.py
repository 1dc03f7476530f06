"""Rollout policies: how an agent-bound task reaches its agents in stages (docs/rollouts.md).

A policy splits the task's targets into a canary and waves, caps how many commands are in
flight, and says what to do when too many delivered commands fail. The policy is parsed here
(pydantic, at the edge); the waves it plans are plain lists of agent ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleetcmd.errors import InvalidParams
from fleetcmd.model.catalog import REVERSIBLE

# A command of a wave not yet released waits in the stream under this target type: no claimer
# asks for it, so releasing it is one UPDATE of the target type (no status move, no recount).
HELD = "agent-held"
WAVE_ACTION = "rollout-wave"
HELD_EXPIRY = 365 * 86400.0


class State(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


FINAL_STATES = frozenset({State.COMPLETED, State.ABORTED, State.ROLLED_BACK})
# Which control action may be taken from which state.
CONTROLS: dict[str, frozenset[State]] = {
    "pause": frozenset({State.RUNNING}),
    "resume": frozenset({State.PAUSED}),
    "abort": frozenset({State.RUNNING, State.PAUSED}),
    "rollback": frozenset({State.RUNNING, State.PAUSED, State.COMPLETED, State.ABORTED}),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Canary(_Strict):
    """The first wave: a number of targets, a percentage of them, or named agents."""

    count: int | None = Field(default=None, ge=1, le=100_000)
    percent: float | None = Field(default=None, gt=0, le=100)
    agents: list[str] | None = Field(default=None, min_length=1, max_length=10_000)

    @model_validator(mode="after")
    def _one(self) -> Canary:
        if sum(x is not None for x in (self.count, self.percent, self.agents)) != 1:
            raise ValueError("canary: give exactly one of 'count', 'percent' or 'agents'")
        return self


class Waves(_Strict):
    """The waves after the canary: each `size` targets (a count, or "25%" of all targets);
    `pause` seconds after a wave settles before the next starts; `spread` seconds over which
    a wave's commands are released evenly instead of all at once."""

    size: int | str = 1
    pause: float = Field(default=0.0, ge=0, le=7 * 86400)
    spread: float = Field(default=0.0, ge=0, le=7 * 86400)

    @field_validator("size")
    @classmethod
    def _size(cls, v: int | str) -> int | str:
        if isinstance(v, int):
            if not 1 <= v <= 1_000_000:
                raise ValueError("waves.size: a count must be between 1 and 1000000")
            return v
        text = v.strip()
        if not text.endswith("%"):
            raise ValueError('waves.size: a count (10) or a percentage ("25%")')
        try:
            pct = float(text[:-1])
        except ValueError:
            raise ValueError(f"waves.size: {v!r} is not a percentage") from None
        if not 0 < pct <= 100:
            raise ValueError("waves.size: a percentage must be above 0 and at most 100")
        return text


class Threshold(_Strict):
    """Trips when delivered commands that failed or timed out reach `count`, or exceed
    `percent` of the commands delivered so far (offline, expired and cancelled never count)."""

    count: int | None = Field(default=None, ge=1)
    percent: float | None = Field(default=None, ge=0, lt=100)

    @model_validator(mode="after")
    def _one(self) -> Threshold:
        if (self.count is None) == (self.percent is None):
            raise ValueError("error_threshold: give exactly one of 'count' or 'percent'")
        return self

    def tripped(self, errors: int, delivered: int) -> bool:
        if errors <= 0:
            return False
        if self.count is not None:
            return errors >= self.count
        assert self.percent is not None
        return delivered > 0 and errors * 100.0 > self.percent * delivered


class RolloutPolicy(_Strict):
    canary: Canary | None = None
    waves: Waves = Field(default_factory=Waves)
    max_in_flight: int | None = Field(default=None, ge=1, le=1_000_000)
    error_threshold: Threshold | None = None
    on_trip: Literal["pause", "rollback"] = "pause"
    # How long a released command waits for an offline agent before it ends `expired`.
    offline_grace: float | None = Field(default=None, gt=0, le=30 * 86400)

    @model_validator(mode="after")
    def _shape(self) -> RolloutPolicy:
        if self.on_trip == "rollback" and self.error_threshold is None:
            raise ValueError("on_trip 'rollback' needs an 'error_threshold'")
        return self


def parse_policy(task_type: str, raw: Any) -> RolloutPolicy:
    """Validate a task's `rollout`; InvalidParams (422) says which field is wrong."""
    if not isinstance(raw, dict):
        raise InvalidParams("'rollout' must be an object")
    try:
        policy = RolloutPolicy.model_validate(raw)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(["rollout", *(str(x) for x in e["loc"])]), "error": e["msg"]}
            for e in exc.errors()
        ]
        raise InvalidParams(
            "invalid rollout: " + "; ".join(f"{e['field']}: {e['error']}" for e in errors),
            errors=errors,
        ) from None
    if policy.on_trip == "rollback" and task_type not in REVERSIBLE:
        raise InvalidParams(
            f"invalid rollout: on_trip 'rollback' needs a change with an inverse; "
            f"'{task_type}' has none",
            reversible=sorted(REVERSIBLE),
        )
    return policy


def plan_waves(policy: RolloutPolicy, targets: list[str]) -> list[list[str]]:
    """Split ordered targets into the canary (if any) and the waves; every target once."""
    total = len(targets)
    rest = list(targets)
    waves: list[list[str]] = []
    if policy.canary is not None and total:
        c = policy.canary
        if c.agents is not None:
            named = set(c.agents)
            canary = [a for a in rest if a in named]
            rest = [a for a in rest if a not in named]
        else:
            n = c.count if c.count is not None else math.ceil(total * (c.percent or 0) / 100)
            canary, rest = rest[: max(1, n)], rest[max(1, n) :]
        if canary:
            waves.append(canary)
    size = policy.waves.size
    step = size if isinstance(size, int) else max(1, math.ceil(total * float(size[:-1]) / 100))
    for i in range(0, len(rest), step):
        waves.append(rest[i : i + step])
    return waves


@dataclass
class WaveProgress:
    """One wave's numbers, from counts kept in the store (never a scan of the stream)."""

    wave: int
    size: int
    released: int
    offline: int
    counts: dict[str, int]
    started_at: float | None
    settled_at: float | None
    canary: bool = False

    @property
    def held(self) -> int:
        return self.size - self.released

    @property
    def waiting(self) -> int:
        """Released but not yet claimed (online agents about to take it, or offline ones)."""
        return max(0, self.counts.get("pending", 0) - self.held)

    @property
    def in_flight(self) -> int:
        moving = sum(self.counts.get(s, 0) for s in ("processing", "sent", "delivered", "running"))
        return moving + max(0, self.waiting - self.offline)

    @property
    def errors(self) -> int:
        return self.counts.get("failure", 0) + self.counts.get("timeout", 0)

    @property
    def delivered(self) -> int:
        return sum(
            self.counts.get(s, 0) for s in ("delivered", "running", "success", "failure", "timeout")
        )

    def to_json(self) -> dict[str, Any]:
        c = self.counts
        return {
            "wave": self.wave,
            "canary": self.canary,
            "size": self.size,
            "pending": self.held,
            "in_flight": self.in_flight,
            "succeeded": c.get("success", 0),
            "failed": c.get("failure", 0),
            "timed_out": c.get("timeout", 0),
            "offline_waiting": min(self.offline, self.waiting),
            "expired": c.get("expired", 0),
            "cancelled": c.get("cancelled", 0),
            "started_at": self.started_at,
            "settled_at": self.settled_at,
        }


@dataclass
class Rollout:
    task_id: int
    policy: RolloutPolicy
    state: State
    current_wave: int
    reason: str | None
    inverse: dict[str, Any] | None
    rollback_task_id: int | None
    baseline_errors: int
    baseline_delivered: int
    next_at: float | None
    created_at: float
    updated_at: float
    waves: list[WaveProgress] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(w.errors for w in self.waves)

    @property
    def delivered(self) -> int:
        return sum(w.delivered for w in self.waves)

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "state": str(self.state),
            "policy": self.policy.model_dump(mode="json", exclude_none=True),
            "current_wave": self.current_wave,
            "reason": self.reason,
            "rollback_task_id": self.rollback_task_id,
            "errors": self.errors,
            "delivered": self.delivered,
            "errors_since_resume": self.errors - self.baseline_errors,
            "delivered_since_resume": self.delivered - self.baseline_delivered,
            "waves": [w.to_json() for w in self.waves],
            "totals": {
                k: sum(int(w.to_json()[k]) for w in self.waves)
                for k in (
                    "size",
                    "pending",
                    "in_flight",
                    "succeeded",
                    "failed",
                    "timed_out",
                    "offline_waiting",
                    "expired",
                    "cancelled",
                )
            },
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
