"""Who is calling: the agent id in a valid token of an agent that was not removed."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from fleetcmd.errors import Forbidden
from fleetcmd.server.state import ServerState, server_state
from fleetcmd.server.tokens import AGENT, bearer

State = Annotated[ServerState, Depends(server_state)]


class AgentRemoved(Forbidden):
    code = "agent_removed"


async def current_agent(request: Request, st: State) -> str:
    agent_id = st.tokens.verify(bearer(request.headers.get("authorization", "")), AGENT)
    if agent_id in st.removed:
        raise AgentRemoved(f"agent {agent_id} was removed from the fleet")
    return agent_id


AgentId = Annotated[str, Depends(current_agent)]
