"""Heartbeats (and, with them, progress) of the commands agents are running, coalesced into
bulk writes as results are: thousands of agents' beats become one indexer request, one store
write. An agent sends nothing for a command that finishes within a few seconds (most)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter

from fleetcmd.model.wire import AgentProgressIn, ProgressIn
from fleetcmd.server.comms.auth import AgentId, State
from fleetcmd.server.comms.ownership import owned_by
from fleetcmd.server.state import ServerState

router = APIRouter(tags=["commands"])
log = logging.getLogger("fleetcmd.server.comms.progress")


async def report(st: ServerState, agent_id: str, beats: list[ProgressIn]) -> dict[str, Any]:
    """Pass this agent's heartbeats on. `running`: the ids the stream records running now,
    `next`: for each, the output chunks kept so far (the next `seq` taken; the agent drops
    those below and sends the rest again), `stopped`: the others (final, not delivered, or
    not this agent's): nothing waits for them, and the agent may stop reporting on them."""
    ids = list(dict.fromkeys(b.id for b in beats))
    owned = await owned_by(st, agent_id, ids)
    mine = [b for b in beats if b.id in owned]
    answers = await st.progress.submit_many([b.model_dump() for b in mine]) if mine else []
    kept = {b.id: n for b, n in zip(mine, answers, strict=True) if n is not None}
    st.metrics.heartbeats.inc(len(mine))
    return {
        "running": sorted(kept),
        "stopped": sorted(set(ids) - set(kept)),
        "next": {str(k): v for k, v in sorted(kept.items())},
    }


@router.post("/agents/commands/progress")
async def post_progress(body: AgentProgressIn, agent_id: AgentId, st: State) -> dict[str, Any]:
    """The agent still executes these commands (it has run each for a few seconds): each is
    `running` until its result, or ends `timeout` after two of its intervals without a beat."""
    return {"data": await report(st, agent_id, body.progress)}
