"""The indexer's command-signing public keys, as agents get them (docs/security.md).

Handed over at enrollment and at init, and on `GET /agents/command-keys` when an agent meets a
key id it does not know (a rotation). Public keys: the cache only spares the indexer."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from fleetcmd.server.comms.auth import AgentId, State
from fleetcmd.server.state import ServerState

router = APIRouter(tags=["commands"])
CACHE_SECONDS = 30.0
# An agent asks only when it meets a key id it does not know (a rotation just happened):
# answer from the indexer then, but not more than once a second whoever asks.
FRESH_SECONDS = 1.0


async def command_keys(st: ServerState, max_age: float = CACHE_SECONDS) -> dict[str, Any]:
    cached = st.command_keys
    if cached is not None and time.monotonic() - cached[0] < max_age:
        return cached[1]
    keys: dict[str, Any] = await st.indexer.get("/command-keys")
    st.command_keys = (time.monotonic(), keys)
    return keys


@router.get("/agents/command-keys")
async def get_command_keys(agent_id: AgentId, st: State) -> dict[str, Any]:
    """The current signing key and the next one, endorsed by the current key."""
    return {"data": await command_keys(st, FRESH_SECONDS)}
