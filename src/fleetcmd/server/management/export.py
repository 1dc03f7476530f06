"""Exports: a task's commands and results, and the audit trail over a time range, as NDJSON or
CSV, streamed. The server walks the indexer's keyset pages (`/commands?task_id=…&cursor=`,
`/audit?order=asc&cursor=`) one page at a time and writes each page out before it asks for
the next, so a task of 100,000 commands costs the memory of one page, not of the task.

The first page is read before the answer starts: a task that does not exist or a bad filter
is a 4xx JSON answer. A failure later (the indexer gone mid-way) aborts the transfer, so the
client sees a cut stream (chunked encoding without its last chunk), never a short file that
looks whole. The dashboard's download buttons use the same functions."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import StreamingResponse

from fleetcmd.server import audit
from fleetcmd.server.access import Reader
from fleetcmd.server.management.auth import State, deny, require
from fleetcmd.server.rbac import User
from fleetcmd.server.state import ServerState

router = APIRouter(tags=["export"])
TaskReader = Annotated[User, Depends(require("task:read"))]
AuditReader = Annotated[User, Depends(require("audit:read"))]
Format = Literal["ndjson", "csv"]
PAGE = 1000  # rows per indexer page: one page is what an export holds in memory

COMMAND_COLUMNS = (
    "id",
    "task_id",
    "parent_id",
    "source",
    "user",
    "target_type",
    "target_id",
    "action",
    "status",
    "result_code",
    "result_message",
    "result_data",
    "created_at",
    "sent_at",
    "delivered_at",
    "completed_at",
    "attempts",
    "expanded",
)
AUDIT_COLUMNS = ("id", "at", "actor", "action", "outcome", "address", "target", "node", "details")
MEDIA = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): such
# text cells get a leading apostrophe in CSV exports; NDJSON carries values unchanged.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

Pages = AsyncIterator[list[dict[str, Any]]]


async def pages(st: ServerState, path: str, params: dict[str, Any], page: int = PAGE) -> Pages:
    """The first page read now (errors raise before any byte is sent); an iterator of it and
    the pages after it, walked by the indexer's keyset cursor."""
    first = await st.indexer.get(path, **params, limit=page)

    async def walk(data: dict[str, Any]) -> Pages:
        # `data` is the only reference to a page: each is freed once the next is read
        while True:
            items, cursor = data["items"], data.get("next_cursor")
            del data
            yield items
            if not cursor:
                return
            data = await st.indexer.get(path, **params, cursor=cursor, limit=page)

    return walk(first)


def command_row(c: dict[str, Any]) -> dict[str, Any]:
    """A command flattened for CSV (NDJSON carries the command document as the API has it)."""
    result = c.get("result") or {}
    return {
        "id": c["id"],
        "task_id": c["task_id"],
        "parent_id": c["parent_id"],
        "source": c["source"],
        "user": c["user"],
        "target_type": c["target"]["type"],
        "target_id": c["target"]["id"],
        "action": c["action"]["name"],
        "status": c["status"],
        "result_code": result.get("code"),
        "result_message": result.get("message"),
        "result_data": result.get("data"),
        "created_at": c["created_at"],
        "sent_at": c["sent_at"],
        "delivered_at": c["delivered_at"],
        "completed_at": c["completed_at"],
        "attempts": c["attempts"],
        "expanded": c["expanded"],
    }


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        value = json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


async def ndjson(items: Pages) -> AsyncIterator[bytes]:
    async for part in items:
        if part:
            yield "".join(json.dumps(i, separators=(",", ":")) + "\n" for i in part).encode()


async def csv_lines(
    items: Pages, columns: tuple[str, ...], flat: Callable[[dict[str, Any]], dict[str, Any]]
) -> AsyncIterator[bytes]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(columns)
    async for part in items:
        for item in part:
            row = flat(item)
            writer.writerow([_cell(row.get(col)) for col in columns])
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode()


def download(
    items: Pages,
    fmt: Format,
    filename: str,
    columns: tuple[str, ...],
    flat: Callable[[dict[str, Any]], dict[str, Any]],
) -> StreamingResponse:
    body = ndjson(items) if fmt == "ndjson" else csv_lines(items, columns, flat)
    return StreamingResponse(
        body,
        media_type=MEDIA[fmt],
        headers={
            "Content-Disposition": f'attachment; filename="{filename}.{fmt}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def may_read_task(st: ServerState, user: User, task_id: int) -> bool:
    """Reading a task needs its whole reach: whoever may read it may read every command of it
    (404 for a task that does not exist)."""
    return await Reader(st, user, "task:read").task(await st.indexer.get(f"/tasks/{task_id}"))


async def task_export(st: ServerState, task_id: int, fmt: Format) -> StreamingResponse:
    """Every command of the task with its result, in id order (parents before children)."""
    items = await pages(st, "/commands", {"task_id": task_id})
    return download(items, fmt, f"task-{task_id}-commands", COMMAND_COLUMNS, command_row)


async def audit_export(
    st: ServerState, fmt: Format, filters: dict[str, Any], since: float | None, until: float | None
) -> StreamingResponse:
    """The trail from `since` (inclusive) to `until` (exclusive), oldest first."""
    params = {**filters, "since": since, "until": until, "order": "asc"}
    items = await pages(st, "/audit", params)
    return download(items, fmt, "audit", AUDIT_COLUMNS, lambda r: r)


@router.get("/tasks/{task_id}/export")
async def export_task(
    task_id: int,
    request: Request,
    st: State,
    user: TaskReader,
    format: Format = "ndjson",
) -> StreamingResponse:
    """The task's commands and results as NDJSON (one command document a line, as
    `GET /commands` has them) or CSV (one flattened row a command; JSON cells for result
    data), streamed in id order. Needs `task:read` on the task's whole reach, as reading it."""
    if not await may_read_task(st, user, task_id):
        await deny(st, request, user, "task:read", f"task:{task_id}")
    response = await task_export(st, task_id, format)
    await audit.record(
        st,
        "task.export",
        actor=user.name,
        request=request,
        target=f"task:{task_id}",
        details={"format": format},
    )
    return response


@router.get("/audit/export")
async def export_audit(
    request: Request,
    st: State,
    user: AuditReader,
    format: Format = "ndjson",
    since: Annotated[float | None, Query(description="epoch seconds, inclusive")] = None,
    until: Annotated[float | None, Query(description="epoch seconds, exclusive")] = None,
    actor: Annotated[str | None, Query(max_length=256)] = None,
    action: Annotated[
        str | None, Query(max_length=128, description="exact, or a prefix ending in '*'")
    ] = None,
    outcome: Annotated[str | None, Query(max_length=32)] = None,
) -> StreamingResponse:
    """The audit trail over a time range, oldest first, as NDJSON or CSV, streamed."""
    response = await audit_export(
        st, format, {"actor": actor, "action": action, "outcome": outcome}, since, until
    )
    await audit.record(
        st,
        "audit.export",
        actor=user.name,
        request=request,
        details={"format": format, "since": since, "until": until},
    )
    return response
