"""Row 3: agents download packages this node keeps (`fleetcmd.server.packages`)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import FileResponse

from fleetcmd.server.comms.auth import AgentId, State

router = APIRouter(tags=["packages"])
log = logging.getLogger("fleetcmd.server.comms.packages")


@router.get("/agents/packages/{name}")
async def package(name: str, agent_id: AgentId, st: State) -> FileResponse:
    """Row 3: the package bytes, with the digest and signature the agent must verify."""
    path, meta = await st.packages.open(name)
    log.info("agent %s downloads package %s", agent_id, meta.id)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=name,
        headers={
            "X-Package-Sha256": meta.sha256,
            "X-Package-Signature": meta.signature,
            "X-Package-Name": meta.name,
            "X-Package-Version": meta.version,
        },
    )
