"""Schedules in the dashboard: the list with each schedule's next occurrences, a form to
create one (a task type, its parameters as JSON, a start, a rule and a zone), pause, resume
and delete. The Management API's functions do the checks and the audit."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from fleetcmd.errors import FleetError, Forbidden
from fleetcmd.model.catalog import CATALOG
from fleetcmd.model.schedules import ScheduleIn, WindowIn
from fleetcmd.server.dashboard.pages import Viewing, read_form
from fleetcmd.server.dashboard.render import page, redirect
from fleetcmd.server.dashboard.session import Denied
from fleetcmd.server.indexer_client import IndexerError
from fleetcmd.server.management.schedules import (
    change_schedule,
    file_schedule,
    file_window,
    readable,
    remove_window,
)

router = APIRouter()
SOURCE = "dashboard"
FIELDS = ("name", "type", "params", "start", "rrule", "tz", "missed")
DEFAULTS = {
    "type": "vulnerability-rescan",
    "params": '{"group": "default"}',
    "rrule": "FREQ=DAILY;BYHOUR=2;BYMINUTE=0",
    "tz": "UTC",
    "missed": "run-once",
}


WINDOW_FIELDS = ("name", "selector", "rrule", "start", "tz", "duration")
WINDOW_DEFAULTS = {
    "selector": "group = default",
    "rrule": "FREQ=WEEKLY;BYDAY=SU;BYHOUR=2",
    "tz": "UTC",
    "duration": "7200",
}


def _types() -> list[str]:
    return sorted(t for t, spec in CATALOG.items() if spec.attended)


async def _render(
    request: Request,
    v: Viewing,
    values: dict[str, str],
    error: str | None = None,
    status: int = 200,
    wvalues: dict[str, str] | None = None,
    werror: str | None = None,
) -> Response:
    items = (await v.st.indexer.get("/schedules"))["items"]
    items = [s for s in items if await readable(v.st, v.user, "task:read", s)]
    return page(
        request,
        "schedules.html",
        v,
        status,
        items=items,
        values=values,
        error=error,
        types=_types(),
        windows=(await v.st.indexer.get("/windows"))["items"],
        wvalues=wvalues or dict(WINDOW_DEFAULTS),
        werror=werror,
    )


@router.get("/schedules")
async def schedules(request: Request, v: Viewing) -> Response:
    v.require("task:read")
    return await _render(request, v, dict(DEFAULTS))


def _body(values: dict[str, str]) -> ScheduleIn:
    try:
        params: Any = json.loads(values.get("params") or "{}")
    except json.JSONDecodeError as exc:
        raise FleetError(f"parameters: not JSON ({exc})") from None
    if not isinstance(params, dict):
        raise FleetError("parameters: a JSON object")
    body: dict[str, Any] = {
        "name": values.get("name", "").strip(),
        "task": {"type": values.get("type", ""), "params": params},
        "tz": values.get("tz", "").strip() or "UTC",
        "missed": values.get("missed", "run-once"),
    }
    for key in ("start", "rrule"):
        if values.get(key, "").strip():
            body[key] = values[key].strip()
    return ScheduleIn.model_validate(body)


@router.post("/schedules")
async def create(request: Request, v: Viewing) -> Response:
    form = await read_form(request)
    v.require("task:create")
    values = {k: form.get(k, "") for k in FIELDS}
    try:
        created = await file_schedule(v.st, request, v.user, _body(values), SOURCE)
    except ValidationError as exc:
        message = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'schedule'}: {e['msg']}" for e in exc.errors()
        )
        return await _render(request, v, values, message, 422)
    except Forbidden as exc:
        return await _render(request, v, values, exc.message, 403)
    except FleetError as exc:
        return await _render(request, v, values, exc.message, 422)
    except IndexerError as exc:
        return await _render(request, v, values, str(exc.body.get("message")), exc.status)
    return redirect(request, f"/app/schedules?created={created['id']}")


@router.post("/schedules/{schedule_id}/{verb}")
async def change(schedule_id: int, verb: str, request: Request, v: Viewing) -> Response:
    await read_form(request)
    v.require("task:cancel")
    if verb not in ("pause", "resume", "delete"):
        raise FleetError(f"no such action on a schedule: {verb}")
    try:
        await change_schedule(v.st, request, v.user, schedule_id, verb)
    except Forbidden as exc:
        raise Denied(exc.message, "task:cancel") from None
    return redirect(request, "/app/schedules")


@router.post("/windows")
async def create_window(request: Request, v: Viewing) -> Response:
    form = await read_form(request)
    v.require("window:create")
    wvalues = {k: form.get(k, "") for k in WINDOW_FIELDS}
    try:
        body = {k: wvalues[k].strip() for k in ("name", "selector", "rrule", "tz")}
        if wvalues["start"].strip():
            body["start"] = wvalues["start"].strip()
        await file_window(
            v.st,
            request,
            v.user,
            WindowIn.model_validate({**body, "duration": float(wvalues["duration"] or 0)}),
        )
    except ValueError as exc:  # a pydantic ValidationError, or a duration that is no number
        errors = (
            exc.errors() if isinstance(exc, ValidationError) else [{"loc": (), "msg": str(exc)}]
        )
        message = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'window'}: {e['msg']}" for e in errors
        )
        return await _render(
            request, v, dict(DEFAULTS), wvalues=wvalues, werror=message, status=422
        )
    except IndexerError as exc:
        return await _render(
            request,
            v,
            dict(DEFAULTS),
            wvalues=wvalues,
            werror=str(exc.body.get("message")),
            status=exc.status,
        )
    return redirect(request, "/app/schedules#windows")


@router.post("/windows/{window_id}/delete")
async def delete_window(window_id: int, request: Request, v: Viewing) -> Response:
    await read_form(request)
    v.require("window:delete")
    await remove_window(v.st, request, v.user, window_id)
    return redirect(request, "/app/schedules#windows")
