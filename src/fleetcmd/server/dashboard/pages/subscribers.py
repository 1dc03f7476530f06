"""Event subscribers (administrators): the list with state, lag and failures, pause and
resume, and a form to register a webhook or a syslog collector (the secret shown once)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from fleetcmd.errors import InvalidParams
from fleetcmd.model.subscriptions import KINDS, SubscriberIn
from fleetcmd.server.dashboard.pages import Viewing, read_form
from fleetcmd.server.dashboard.render import page, redirect
from fleetcmd.server.management.subscribers import change, register

router = APIRouter()
MANAGE = "subscriber:manage"


@router.get("/subscribers")
async def subscribers(request: Request, v: Viewing) -> Response:
    v.require(MANAGE)
    data = await v.st.indexer.get("/subscribers")
    return page(request, "subscribers.html", v, subscribers=data["items"], kinds=KINDS, made=None)


@router.post("/subscribers")
async def create(request: Request, v: Viewing) -> Response:
    form = await read_form(request)
    v.require(MANAGE)
    kinds = [k for k in KINDS if form.get(f"kind_{k}")]
    statuses = [s.strip() for s in form.get("statuses", "").split(",") if s.strip()]
    try:
        body = SubscriberIn.model_validate(
            {
                "name": form.get("name", "").strip(),
                "kind": form.get("kind", ""),
                "url": form.get("url", "").strip(),
                "filters": {"kinds": kinds or list(KINDS), "statuses": statuses},
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidParams(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    made = await register(v.st, request, v.user, body)
    data = await v.st.indexer.get("/subscribers")
    return page(request, "subscribers.html", v, subscribers=data["items"], kinds=KINDS, made=made)


@router.post("/subscribers/{sub_id}/{verb}")
async def act(sub_id: int, verb: str, request: Request, v: Viewing) -> Response:
    await read_form(request)
    v.require(MANAGE)
    if verb not in ("pause", "resume"):
        raise InvalidParams(f"no such action {verb[:20]!r}: pause or resume")
    await change(v.st, request, v.user, sub_id, verb, {})
    return redirect(request, "/app/subscribers")
