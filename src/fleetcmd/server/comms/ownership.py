"""Which command ids are an agent's own: asked by its acks and its results."""

from __future__ import annotations

from fleetcmd.server.state import ServerState


async def owned_by(st: ServerState, agent_id: str, ids: list[int]) -> dict[int, str]:
    """id -> action name for the ids that are this agent's commands. Ids this node handed to
    the agent are known; the others (e.g. handed by a node since restarted) are looked up,
    all of them, through a bulker: after a restart thousands of agents post at once, and one
    lookup per id would exhaust the connections to the indexer (found by the chaos runs)."""
    box = st.mailboxes.get(agent_id)
    history = box.history if box is not None else {}
    owned = {cid: history[cid] for cid in ids if cid in history}
    unknown = [cid for cid in ids if cid not in owned]
    if unknown:
        for cid, target in zip(unknown, await st.targets.submit_many(unknown), strict=True):
            if target is not None and target["type"] == "agent" and target["id"] == agent_id:
                owned[cid] = str(target["action"])
    return owned
