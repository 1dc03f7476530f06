"""The agent's long-poll for commands and its acknowledgement that it holds them.

`take` and `acknowledge` are the logic; the FastAPI routes below document them in the
OpenAPI and `fastpath.py` serves the same functions without FastAPI's per-request cost."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from fleetcmd.httpkit import wait_for
from fleetcmd.server.comms.auth import AgentId, State
from fleetcmd.server.comms.ownership import owned_by
from fleetcmd.server.mailbox import CONFIRM_AFTER, Entry
from fleetcmd.server.state import ServerState

router = APIRouter(tags=["commands"])
# An agent polls again within a second of each answer; a longer gap means it was away.
RETURNING_AFTER = 5.0
MAX_WAIT = 60.0
log = logging.getLogger("fleetcmd.server.comms.checkin")


class PollQuery(BaseModel):
    wait: float = Field(default=30.0, ge=0, le=MAX_WAIT)


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[int] = Field(max_length=10_000)


async def take(st: ServerState, agent_id: str, wait: float) -> list[dict[str, Any]]:
    """Answer at once if the mailbox holds commands, else when one lands, else after `wait`."""
    wait = min(wait, float(st.config.get("comms.max_poll_wait")))
    box = st.mailboxes.box(agent_id)
    # Back after a gap: it may have polled another node meanwhile, which now owns it in the
    # indexer; report it again so that this node is handed its commands.
    returning = box.polls == 0 and time.monotonic() - box.last_poll > RETURNING_AFTER
    box.polls += 1
    box.poll_wait = max(wait, 1.0)
    box.generation += 1
    mine = box.generation
    if box.polls > 1:
        box.wake()  # an older poll of this agent is still waiting: it yields to this one
    st.presence.seen(agent_id, returning)
    deadline = time.monotonic() + wait
    ready: list[dict[str, Any]] = []
    try:
        while True:
            now = time.monotonic()
            event = box.event
            if box.generation != mine:
                break  # superseded: its client has gone (a proxy cut it, say)
            entries = box.ready(now)
            ready = await _still_ours(st, agent_id, entries, now)
            if box.generation != mine:
                # Superseded while confirming: offer them to the newest poll instead.
                for e in entries:
                    e.handed_at = None
                box.wake()
                ready = []
                break
            remaining = deadline - now
            if ready or remaining <= 0 or st.stopping.is_set():
                break
            nxt = box.next_redelivery(now)
            await wait_for(event, remaining if nxt is None else min(remaining, nxt + 0.01))
    finally:
        box.polls -= 1
        box.last_poll = time.monotonic()
    st.metrics.polls.labels("commands" if ready else "empty").inc()
    for c in ready:
        log.info(
            "command %s (task %s) %s handed to agent %s",
            c["id"],
            c.get("task_id"),
            c["action"]["name"],
            agent_id,
        )
    return ready


async def _still_ours(
    st: ServerState, agent_id: str, entries: list[Entry], now: float
) -> list[dict[str, Any]]:
    """The commands of `entries` that the stream still holds for this node, undelivered.
    Entries confirmed a moment ago (a fresh fan-out) are handed as they are; older ones are
    renewed first, and those the stream no longer leases to this node (cancelled, expired,
    released, taken over) leave the mailbox instead of reaching the agent."""
    stale = [e for e in entries if now - e.confirmed_at > CONFIRM_AFTER]
    if not stale:
        return [e.command for e in entries]
    ids = [int(e.command["id"]) for e in stale]
    try:
        held = await st.held.submit_many(ids)
    except Exception as exc:  # unknown: hand nothing stale now; offered again later
        log.warning(
            "could not confirm %d command(s) of agent %s before hand-out: %s",
            len(ids),
            agent_id,
            exc,
        )
        gone: set[int] = set(ids)
    else:
        gone = {cid for cid, ok in zip(ids, held, strict=True) if not ok}
        if gone:
            st.mailboxes.drop(sorted(gone))
            st.metrics.lost.inc(len(gone))
            st.metrics.mailbox_depth.set(st.mailboxes.depth())
            log.info(
                "command(s) %s of agent %s are no longer this node's to deliver "
                "(final or taken over); not handed out",
                sorted(gone),
                agent_id,
            )
    return [e.command for e in entries if int(e.command["id"]) not in gone]


async def acknowledge(st: ServerState, agent_id: str, ids: list[int]) -> list[int]:
    """The agent journaled these commands: they move to `delivered` (timeout clock starts).
    Returns the ids the stream now records as delivered to this agent (now or by an earlier
    ack): the agent executes those and nothing else, so a command that went final before
    its ack (cancelled, expired) or that another node holds now never runs."""
    # Handed by this node, or (asked again after this node or the agent restarted) aimed
    # at this agent in the stream: the agent holds a command signed for it.
    unique = list(dict.fromkeys(ids))
    owned = await owned_by(st, agent_id, unique)
    mine = [cid for cid in unique if cid in owned]
    if not mine:
        return []
    box = st.mailboxes.get(agent_id)
    fresh = {cid for cid in mine if box is not None and cid in box.entries}
    st.mailboxes.drop(sorted(fresh))  # whatever the verdict, it is never offered again
    confirmed = await st.delivered.submit_many(mine)
    st.metrics.acks.inc(len(fresh))
    for cid, ok in zip(mine, confirmed, strict=True):
        if not ok and cid in fresh:
            log.info(
                "command %s acked by agent %s but no longer deliverable: the agent "
                "is told not to run it",
                cid,
                agent_id,
            )
    st.metrics.mailbox_depth.set(st.mailboxes.depth())
    return [cid for cid, ok in zip(mine, confirmed, strict=True) if ok]


@router.get("/agents/commands")
async def poll(
    agent_id: AgentId, st: State, wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 30.0
) -> dict[str, Any]:
    """Answer at once if the mailbox holds commands, else when one lands, else after `wait`."""
    return {"data": {"commands": await take(st, agent_id, wait)}}


@router.post("/agents/commands/ack")
async def ack(body: AckIn, agent_id: AgentId, st: State) -> dict[str, Any]:
    """The agent journaled these commands: they move to `delivered` (timeout clock starts)."""
    return {"data": {"acked": await acknowledge(st, agent_id, body.ids)}}
