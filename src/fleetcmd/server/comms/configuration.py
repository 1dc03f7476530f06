"""Configuration an agent may read: its own assignment (R7) and its groups' content (R3)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from fleetcmd.errors import Forbidden, InvalidParams
from fleetcmd.server.comms.auth import AgentId, State
from fleetcmd.server.comms.keys import command_keys

router = APIRouter(tags=["configuration"])
POLICY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


async def _agent(st: State, agent_id: str) -> dict[str, Any]:
    agent: dict[str, Any] = await st.indexer.get(f"/agents/{quote(agent_id, safe='')}")
    return agent


async def _merged(st: State, groups: list[str]) -> dict[str, Any]:
    data: dict[str, Any] = await st.indexer.get("/configs/merged", groups=",".join(groups))
    return data


@router.get("/agents/init")
async def init(agent_id: AgentId, st: State) -> dict[str, Any]:
    """R7: on start, the agent learns its current groups and merged configuration."""
    agent = await _agent(st, agent_id)
    merged = await _merged(st, agent["groups"])
    return {
        "data": {
            "id": agent["id"],
            "name": agent["name"],
            "groups": agent["groups"],
            "config": merged["config"],
            "config_hash": merged["config_hash"],
            "version": agent["version"],
            "command_keys": await command_keys(st),
        }
    }


class AppliedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config_hash: str = Field(pattern=r"^[0-9a-f]{64}$")


@router.post("/agents/state")
async def applied(body: AppliedIn, agent_id: AgentId, st: State) -> dict[str, Any]:
    """The configuration the agent runs once it applied its init: the agents index shows it
    from then on (group commands report it in their results)."""
    await st.indexer.post(
        "/agents/updates", {"updates": [{"id": agent_id, "config_hash": body.config_hash}]}
    )
    return {"data": {"config_hash": body.config_hash}}


@router.get("/agents/groups/{name}/configuration")
async def group_configuration(name: str, agent_id: AgentId, st: State) -> dict[str, Any]:
    """R3: a group's configuration, only for a group the agent belongs to."""
    agent = await _agent(st, agent_id)
    if name not in agent["groups"]:
        raise Forbidden(f"group '{name}' is not one of this agent's groups", group=name)
    group = await st.indexer.get(f"/groups/{quote(name, safe='')}")
    return {
        "data": {
            "group": name,
            "config": group.get("configuration") or {},
            "config_hash": group.get("config_hash"),
            "version": group.get("version"),
        }
    }


@router.get("/agents/configuration")
async def merged_configuration(agent_id: AgentId, st: State, groups: str = "") -> dict[str, Any]:
    """The merged configuration of the agent's own ordered group list (for `config_ref`)."""
    wanted = [g for g in groups.split(",") if g]
    agent = await _agent(st, agent_id)
    if wanted != agent["groups"]:
        raise Forbidden("the group list is not this agent's", groups=wanted)
    merged = await _merged(st, wanted)
    return {
        "data": {"groups": wanted, "config": merged["config"], "config_hash": merged["config_hash"]}
    }


@router.get("/agents/sca/{policy_id}")
async def sca_policy(policy_id: str, agent_id: AgentId, st: State) -> dict[str, Any]:
    """Row 7: the current content of an SCA policy, for a command too large to carry it."""
    if not POLICY_ID.fullmatch(policy_id):
        raise InvalidParams(f"bad policy id {policy_id!r}", policy_id=policy_id)
    policy = await st.indexer.get(f"/indexes/sca/content/{policy_id}")
    return {"data": {"policy_id": policy_id, "policy": policy}}
