"""Results from agents, coalesced into bulk writes; idempotent per command id.

`record` is the logic; the FastAPI route documents it in the OpenAPI and `fastpath.py`
serves the same function without FastAPI's per-request cost."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request

from fleetcmd.model.actions import ACTIONS
from fleetcmd.model.wire import AgentResultsIn, ResultIn
from fleetcmd.server import audit
from fleetcmd.server.comms.auth import AgentId, State
from fleetcmd.server.comms.ownership import owned_by
from fleetcmd.server.state import ServerState

router = APIRouter(tags=["results"])
log = logging.getLogger("fleetcmd.server.comms.results")


def removes_agent(action: str) -> bool:
    """A successful result of this action removes the agent (model/actions.py)."""
    model = ACTIONS.get(action)
    return model is not None and model.removes_agent


async def record(
    st: ServerState, agent_id: str, results: list[ResultIn], address: str | None
) -> list[dict[str, Any]]:
    """Pass this agent's results to the indexer (in bulk with other agents'); one outcome per
    result: recorded, duplicate, refused with why, or ignored when not the agent's."""
    ids = list(dict.fromkeys(r.id for r in results))
    owned = await owned_by(st, agent_id, ids)
    # A result implies the agent holds the command, acked or not.
    st.mailboxes.drop([cid for cid in ids if cid in owned])
    mine = [r for r in results if r.id in owned]
    outcomes = await st.results.submit_many([r.model_dump() for r in mine]) if mine else []
    by_id = {r.id: o for r, o in zip(mine, outcomes, strict=True)}
    answer = []
    for r in results:
        outcome = by_id.get(r.id, "ignored: not a command of this agent")
        st.metrics.results.labels(outcome.split(":")[0]).inc()
        if r.id in owned:
            log.info(
                "result of command %s (%s) from agent %s: %s -> %s",
                r.id,
                owned[r.id],
                agent_id,
                r.status,
                outcome,
            )
            if (
                removes_agent(owned[r.id])
                and r.status == "success"
                and outcome in ("recorded", "duplicate")
            ):
                if agent_id not in st.removed:
                    await audit.record(
                        st,
                        "agent.remove",
                        actor=f"agent:{agent_id}",
                        address=address,
                        target=agent_id,
                        details={"command": r.id, "effect": "token and secret refused"},
                    )
                st.removed.add(agent_id)
        answer.append({"id": r.id, "outcome": outcome})
    return answer


@router.post("/agents/results")
async def post_results(
    body: AgentResultsIn, request: Request, agent_id: AgentId, st: State
) -> dict[str, Any]:
    answer = await record(st, agent_id, body.results, audit.client_address(request))
    return {"data": {"results": answer}}
