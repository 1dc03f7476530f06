"""What agents report on their own: events (for the engine's rules), SCA scans (for the
`sca-results` index) and package inventory (for the engine's CVE matching). Events answer at
once, the engine works behind the queue; scans and inventories are stored before the answer,
so an agent keeps what the indexer did not take and sends it again."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleetcmd.model import sca
from fleetcmd.model.params import NAME_RE
from fleetcmd.server.comms.auth import AgentId, State

router = APIRouter(tags=["telemetry"])


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[dict[str, Any]] = Field(max_length=10_000)


class ScaCheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128)
    title: str = Field(default="", max_length=1024)
    status: Literal["passed", "failed", "not_applicable"]
    reason: str = Field(default="", max_length=8192)
    remediation: str | None = Field(default=None, max_length=4096)


class ScaScanIn(BaseModel):
    """An event `{"module": "sca", "type": "sca"}`: one policy evaluated by the agent. Its
    other fields (the agent's own summary) are for the rules; the index recounts the checks."""

    model_config = ConfigDict(extra="ignore")
    policy_id: str
    policy_version: str = Field(default="", max_length=128)
    policy_name: str = Field(default="", max_length=256)
    evaluated_at: str | None = Field(default=None, max_length=64)
    results: list[ScaCheckIn] = Field(max_length=2000)

    @field_validator("policy_id")
    @classmethod
    def _policy_id(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError("must be 1-128 letters, digits, '.', '_' or '-'")
        return v


def sca_scans(events: list[dict[str, Any]]) -> list[ScaScanIn]:
    """The SCA scans among the events, each checked; a bad one refuses the whole post (422,
    naming the event), before anything is stored or queued."""
    scans: list[ScaScanIn] = []
    errors: list[Any] = []
    for i, e in enumerate(events):
        if e.get("module") != "sca" or e.get("type") != "sca":
            continue
        try:
            scans.append(ScaScanIn.model_validate(e))
        except ValidationError as exc:
            errors += [{**err, "loc": ("events", i, *err["loc"])} for err in exc.errors()]
    if errors:
        raise RequestValidationError(errors)
    return scans


@router.post("/agents/events")
async def events(body: EventsIn, agent_id: AgentId, st: State) -> dict[str, Any]:
    """SCA scans are written to `sca-results/<agent>/<policy>` (the latest replaces the
    previous one) before anything is queued: if the indexer does not take them the agent gets
    the error and posts the same events again, and the rules see each event once. Events are
    queued in memory, bounded (`events.queue_size`), for the engine; the oldest go first when
    the engine falls behind. The agent id is the token's, never the event's."""
    now = time.time()
    for scan in sca_scans(body.events):
        doc = sca.result_document(agent_id, scan.model_dump(exclude_none=True), now)
        await st.indexer.put(
            f"/indexes/{sca.RESULTS_INDEX}/{sca.result_id(agent_id, scan.policy_id)}", doc
        )
    for e in body.events:
        st.events.append({"agent": agent_id, "received_at": now, "event": e})
    if body.events:
        st.engine.wakeup.set()
    return {"data": {"accepted": len(body.events)}}


class PackageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=256)
    version: str = Field(min_length=1, max_length=128)
    source: str = Field(default="", max_length=64)


class InventoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    packages: list[PackageIn] = Field(max_length=50_000)


@router.post("/agents/inventory")
async def inventory(body: InventoryIn, agent_id: AgentId, st: State) -> dict[str, Any]:
    """The agent's full package list replaces the previous one (`packages/<agent id>`), and
    the engine matches it against the CVE data (rows 8 and 9)."""
    packages = [p.model_dump() for p in body.packages]
    await st.indexer.put(
        f"/indexes/packages/{agent_id}",
        {"agent": agent_id, "updated_at": time.time(), "packages": packages},
    )
    st.engine.inventory(agent_id, packages)
    return {"data": {"accepted": len(body.packages)}}
