"""Create-task forms: file a task of any attended type, errors next to their fields."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from fleetcmd.errors import Forbidden, NotFound
from fleetcmd.model.wire import PreviewIn, TaskIn
from fleetcmd.server.dashboard.forms import FORMS, FieldErrors, TaskForm, map_api_errors
from fleetcmd.server.dashboard.pages import Viewing, read_form
from fleetcmd.server.dashboard.render import page, redirect
from fleetcmd.server.indexer_client import IndexerError, IndexerUnavailable
from fleetcmd.server.management.operators import preview_task
from fleetcmd.server.management.tasks import file_task

router = APIRouter()
SOURCE = "dashboard"


def _form(task_type: str) -> TaskForm:
    form = FORMS.get(task_type)
    if form is None:
        raise NotFound(f"no form for task type '{task_type}'")
    return form


async def _groups(v: Viewing) -> list[str]:
    if not v.can("group:read"):
        return []
    reader = v.reader("group:read")
    return [
        g["name"] for g in (await v.st.indexer.get("/groups"))["items"] if reader.group(g["name"])
    ][:1000]


async def _render(
    request: Request,
    v: Viewing,
    form: TaskForm,
    values: dict[str, str],
    errors: dict[str, str] | None = None,
    general: list[str] | None = None,
    status: int = 200,
    preview: dict[str, Any] | None = None,
) -> Response:
    return page(
        request,
        "create.html",
        v,
        status,
        form=form,
        values=values,
        errors=errors or {},
        general=general or [],
        groups=await _groups(v),
        idempotency_key=values.get("idempotency_key") or uuid.uuid4().hex,
        preview=preview,
    )


@router.get("/tasks/new")
async def choose(request: Request, v: Viewing) -> Response:
    v.require("task:create")
    return page(request, "new.html", v, forms=sorted(FORMS.values(), key=lambda f: f.number))


@router.get("/tasks/new/{task_type}")
async def show(task_type: str, request: Request, v: Viewing) -> Response:
    v.require("task:create")
    form = _form(task_type)
    values = {f.name: f.default for f in form.fields}
    for name in form.names():  # prefilled from links (an agent's page, the agents list)
        given = request.query_params.getlist(name)
        if given:
            values[name] = "\n".join(given)
    return await _render(request, v, form, values)


def _seconds(values: dict[str, str], name: str) -> float | None:
    raw = values.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise FieldErrors({name: "a number of seconds"}) from None


@router.post("/tasks/new/{task_type}")
async def submit(task_type: str, request: Request, v: Viewing) -> Response:
    values = await read_form(request)
    v.require("task:create")
    form = _form(task_type)
    try:
        params = form.build(values)
        body: dict[str, Any] = {"type": form.type, "params": params}
        for name in ("timeout", "expires_in"):
            seconds = _seconds(values, name)
            if seconds is not None:
                body[name] = seconds
    except FieldErrors as exc:
        return await _render(request, v, form, values, exc.errors, status=422)
    if values.get("idempotency_key"):
        body["idempotency_key"] = values["idempotency_key"][:200]
    previewing = values.get("action") == "preview"
    if values.get("preview_token") and not previewing:
        body["preview_token"] = values["preview_token"][:128]
    try:
        if previewing:
            # The preview step: what it would reach, frozen under a token the next post
            # files it with (the same fields; changing them is refused by the indexer).
            shown = await preview_task(
                v.st, request, v.user, PreviewIn(type=form.type, params=body["params"])
            )
            return await _render(request, v, form, values, preview=shown)
        _, resp = await file_task(v.st, request, v.user, TaskIn(**body), SOURCE)
    except ValidationError as exc:
        return await _render(
            request,
            v,
            form,
            values,
            status=422,
            general=[f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()],
        )
    except Forbidden as exc:
        return await _render(request, v, form, values, general=[exc.message], status=403)
    except IndexerUnavailable:
        return await _render(
            request,
            v,
            form,
            values,
            general=["The indexer is unavailable; nothing was filed. Try again."],
            status=503,
        )
    except IndexerError as exc:
        errors, general = map_api_errors(form, exc.body, values)
        return await _render(request, v, form, values, errors, general, status=exc.status)
    return redirect(request, f"/app/tasks/{resp['data']['id']}?created=1")
