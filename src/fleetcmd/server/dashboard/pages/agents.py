"""Agents: the searchable, paginated list and one agent's page."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.responses import Response

from fleetcmd.server.dashboard.pager import Pager
from fleetcmd.server.dashboard.pages import Viewing
from fleetcmd.server.dashboard.render import page
from fleetcmd.server.indexer_client import IndexerError
from fleetcmd.server.management import reports
from fleetcmd.server.management.fleet import agent_doc
from fleetcmd.server.management.live import summary_for

router = APIRouter()
RECENT_COMMANDS = 25
COMMAND_PAGE = 500  # the API pages an agent's commands oldest first: read a bounded window
COMMAND_PAGES = 10
FINDINGS = 200
RECENT_ALERTS = 10


@router.get("/agents")
async def list_agents(request: Request, v: Viewing) -> Response:
    v.require("agent:read")
    q = request.query_params
    pager = Pager.of(request, 50, 500)
    filters = {k: (q.get(k) or "").strip() or None for k in ("search", "status", "group", "node")}
    scoped = await v.reader("agent:read").agent_filter() or {}
    data, summary = await asyncio.gather(
        v.st.indexer.get("/agents", **filters, **scoped, cursor=pager.cursor, limit=pager.size),
        summary_for(v.st, v.user),
    )
    return page(
        request,
        "agents.html",
        v,
        agents=data["items"],
        pager=pager,
        next=pager.next(data["next_cursor"]),
        prev=pager.previous(),
        filters=filters,
        summary=summary,
        can_create=v.can("task:create"),
    )


async def _document(v: Viewing, index: str, doc_id: str) -> dict[str, Any] | None:
    try:
        doc = await v.st.indexer.get(f"/indexes/{index}/{quote(doc_id, safe='')}")
    except IndexerError:
        return None
    return doc if isinstance(doc, dict) else None


async def _latest_commands(v: Viewing, agent_id: str) -> tuple[list[dict[str, Any]], bool]:
    """The agent's newest commands, and whether older-than-window ones were left unread."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(COMMAND_PAGES):
        data = await v.st.indexer.get(
            "/commands", target_type="agent", target_id=agent_id, cursor=cursor, limit=COMMAND_PAGE
        )
        items = (items + await v.reader("command:read").commands(data["items"]))[-RECENT_COMMANDS:]
        cursor = data["next_cursor"]
        if not cursor:
            break
    return list(reversed(items)), cursor is not None


@router.get("/agents/{agent_id}")
async def agent_detail(agent_id: str, request: Request, v: Viewing) -> Response:
    v.require("agent:read")
    agent = await agent_doc(v.st, agent_id)
    if not v.reader("agent:read").agent(agent):
        v.deny("agent:read", f"agent {agent_id}")
    # Read as the Management API's /sca-results, /vulnerabilities and /alerts read them.
    reader, aid = v.reader("agent:read"), agent["id"]
    (commands, more), sca, vulns, alerts, packages = await asyncio.gather(
        _latest_commands(v, aid),
        reports.agent_documents(v.st, reader, reports.SCA_RESULTS, agent=aid, limit=FINDINGS),
        reports.agent_documents(v.st, reader, reports.VULNERABILITIES, agent=aid),
        reports.agent_documents(
            v.st, reader, reports.ALERTS, agent=aid, limit=RECENT_ALERTS, order="desc"
        ),
        _document(v, "packages", aid),
    )
    vulnerabilities = vulns["items"][0] if vulns["items"] else None
    findings = sorted(
        (vulnerabilities or {}).get("findings") or [], key=lambda f: -float(f.get("cvss") or 0)
    )[:FINDINGS]
    return page(
        request,
        "agent.html",
        v,
        agent=agent,
        commands=commands,
        more=more,
        sca=sca["items"],
        vulnerabilities=vulnerabilities,
        findings=findings,
        alerts=alerts["items"],
        more_alerts=alerts["next_cursor"] is not None,
        packages=packages,
        can_create=v.can("task:create"),
    )
