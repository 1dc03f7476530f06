"""What agents report on their own: events (for the engine's rules) and package inventory
(for its CVE matching). Both answer at once; the engine works behind the queue."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from fleetcmd.server.comms.auth import AgentId, State

router = APIRouter(tags=["telemetry"])


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[dict[str, Any]] = Field(max_length=10_000)


@router.post("/agents/events")
async def events(body: EventsIn, agent_id: AgentId, st: State) -> dict[str, Any]:
    """Queued in memory, bounded (`events.queue_size`), for the engine; the oldest go first
    when the engine falls behind. The agent id is the token's, never the event's."""
    now = time.time()
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
    await st.indexer.put(f"/indexes/packages/{agent_id}", {
        "agent": agent_id, "updated_at": time.time(), "packages": packages})
    st.engine.inventory(agent_id, packages)
    return {"data": {"accepted": len(body.packages)}}
