"""Dashboard pages, one module per area of the product."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import Depends, Request

from fleetcmd.server.dashboard.session import Viewer, check_post, viewer
from fleetcmd.server.state import ServerState

Viewing = Annotated[Viewer, Depends(viewer)]
MAX_FORM = 1024 * 1024


async def read_form(request: Request) -> dict[str, str]:
    """A posted urlencoded form (last value wins), CSRF-checked."""
    body = await request.body()
    form = dict(parse_qsl(body[:MAX_FORM].decode("utf-8", "replace"), keep_blank_values=True))
    check_post(request, form)
    return form


def server(v: Viewer) -> ServerState:
    return v.st
