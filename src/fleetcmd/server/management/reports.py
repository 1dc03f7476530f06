"""What the fleet reported, for operators: alerts (the engine's rules), vulnerabilities (its
CVE matching) and SCA results (the agents' scans), read from the indexer's indexes and
narrowed to the agents the caller may read (`agent:read`); and the content manager's feed
status, which concerns every agent. The dashboard reads through the same functions.

Every document of these indexes belongs to one agent, named by its id: `alerts/<agent>/...`,
`sca-results/<agent>/<policy>`, `vulnerabilities/<agent>`."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query

from fleetcmd.errors import Forbidden, InvalidParams
from fleetcmd.server.access import Reader, agents_groups
from fleetcmd.server.indexer_client import IndexerError
from fleetcmd.server.management.auth import State, require
from fleetcmd.server.management.fleet import agent_doc
from fleetcmd.server.rbac import EVERYTHING, User
from fleetcmd.server.state import ServerState

router = APIRouter(tags=["reports"])
AgentReader = Annotated[User, Depends(require("agent:read"))]
Limit = Annotated[int, Query(ge=1, le=1000)]
Cursor = Annotated[str | None, Query(max_length=512)]
AgentFilter = Annotated[str | None, Query(min_length=1, max_length=64)]
AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
Order = Literal["asc", "desc"]
ALERTS, VULNERABILITIES, SCA_RESULTS = "alerts", "vulnerabilities", "sca-results"
CONTENT_STATUS = "content-status"
# A reader scoped to a few agents skips the others' documents: read this many indexer pages
# at most to fill one page (the page may come back short; `next_cursor` goes on).
FILL_PAGES = 5


def _agent_of(doc_id: str) -> str:
    return doc_id.split("/", 1)[0]


def _item(doc_id: str, body: Any) -> dict[str, Any]:
    return {"id": doc_id, **body} if isinstance(body, dict) else {"id": doc_id, "body": body}


async def readable_agent(st: ServerState, reader: Reader, agent_id: str) -> dict[str, Any]:
    """The agent's document if the reader may see it: 404 for an unknown agent, 403 for one
    outside the reader's scope."""
    if not AGENT_ID.fullmatch(agent_id):
        raise InvalidParams(f"bad agent id {agent_id!r}")
    agent = await agent_doc(st, agent_id)
    if not reader.agent(agent):
        raise Forbidden(
            f"user '{reader.user.name}' may not agent:read on agent:id:{agent_id}",
            action="agent:read",
        )
    return agent


async def agent_documents(
    st: ServerState,
    reader: Reader,
    index: str,
    *,
    agent: str | None = None,
    cursor: str | None = None,
    limit: int = 100,
    order: Order = "asc",
) -> dict[str, Any]:
    """One page of `index` (`{"items", "next_cursor"}`, documents in id order), only of the
    agents the reader may see; `agent` narrows it to one agent."""
    if agent is not None:
        await readable_agent(st, reader, agent)
        if index == VULNERABILITIES:  # one document per agent, its id the agent's
            try:
                body = await st.indexer.get(f"/indexes/{index}/{quote(agent, safe='')}")
            except IndexerError as exc:
                if exc.status == 404:
                    return {"items": [], "next_cursor": None}
                raise
            return {"items": [_item(agent, body)], "next_cursor": None}
        page = await _page(st, index, f"{agent}/", cursor, limit, order)
        return {
            "items": [_item(k, v) for k, v in page["items"].items()],
            "next_cursor": page["next_cursor"],
        }
    if reader.scope.all_agents:
        page = await _page(st, index, "", cursor, limit, order)
        return {
            "items": [_item(k, v) for k, v in page["items"].items()],
            "next_cursor": page["next_cursor"],
        }
    items: list[dict[str, Any]] = []
    for _ in range(FILL_PAGES):
        page = await _page(st, index, "", cursor, limit, order)
        docs: dict[str, Any] = page["items"]
        groups = await agents_groups(st, {_agent_of(k) for k in docs})
        last = next(reversed(docs), None)
        for doc_id, body in docs.items():
            owner = _agent_of(doc_id)
            if owner in groups and reader.scope.agent(owner, groups[owner]):
                items.append(_item(doc_id, body))
                if len(items) == limit:  # full: the next page starts after this document
                    more = doc_id != last or page["next_cursor"] is not None
                    return {"items": items, "next_cursor": doc_id if more else None}
        cursor = page["next_cursor"]
        if cursor is None:
            break
    return {"items": items, "next_cursor": cursor}


async def _page(
    st: ServerState, index: str, prefix: str, cursor: str | None, limit: int, order: Order
) -> dict[str, Any]:
    page: dict[str, Any] = await st.indexer.get(
        f"/indexes/{index}", prefix=prefix, cursor=cursor, limit=limit, order=order
    )
    return page


async def content_status(st: ServerState, reader: Reader) -> list[dict[str, Any]]:
    """The last poll of each CTI feed (`content-status/<feed>`). Content goes to every agent,
    so, like a task that reaches every agent, it needs `agent:read` on everything."""
    if not reader.everything:
        raise Forbidden(
            f"user '{reader.user.name}' may not agent:read on {EVERYTHING} (the content "
            "status concerns every agent)",
            action="agent:read",
        )
    docs: dict[str, Any] = (await st.indexer.get(f"/indexes/{CONTENT_STATUS}"))["items"]
    return [{"feed": feed, **body} for feed, body in sorted(docs.items()) if isinstance(body, dict)]


@router.get("/alerts")
async def list_alerts(
    st: State,
    user: AgentReader,
    agent: AgentFilter = None,
    cursor: Cursor = None,
    limit: Limit = 100,
    order: Order = "asc",
) -> dict[str, Any]:
    """Alerts raised by the engine (`<agent>/<epoch ms>-<rule>-<digest>`: per agent, in time
    order; `order=desc` for the newest first)."""
    reader = Reader(st, user, "agent:read")
    return {
        "data": await agent_documents(
            st, reader, ALERTS, agent=agent, cursor=cursor, limit=limit, order=order
        )
    }


@router.get("/vulnerabilities")
async def list_vulnerabilities(
    st: State,
    user: AgentReader,
    agent: AgentFilter = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    """Each agent's CVE findings from its last inventory (one document per agent)."""
    reader = Reader(st, user, "agent:read")
    return {
        "data": await agent_documents(
            st, reader, VULNERABILITIES, agent=agent, cursor=cursor, limit=limit
        )
    }


@router.get("/sca-results")
async def list_sca_results(
    st: State,
    user: AgentReader,
    agent: AgentFilter = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    """Each agent's latest scan of each SCA policy (`<agent>/<policy>`)."""
    reader = Reader(st, user, "agent:read")
    return {
        "data": await agent_documents(
            st, reader, SCA_RESULTS, agent=agent, cursor=cursor, limit=limit
        )
    }


@router.get("/content/status")
async def get_content_status(st: State, user: AgentReader) -> dict[str, Any]:
    """The content manager's last poll of each feed: serial, applied and refused items."""
    return {"data": {"items": await content_status(st, Reader(st, user, "agent:read"))}}
