"""Templates, the filters they use, and the headers every dashboard page carries."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fleetcmd import __version__
from fleetcmd.model.status import FINAL, Status
from fleetcmd.model.status import TASK_STATUSES as MODEL_TASK_STATUSES
from fleetcmd.server.dashboard.session import Viewer, apply_refresh

HERE = Path(__file__).parent
DASH = "\u2013"  # what an empty cell shows
STATIC = HERE / "static"

# No asset comes from elsewhere; styles are allowed inline for progress-bar widths only.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' "
    "'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

# Bar order: finished outcomes first (good, bad, silent, never reached, stopped), then live.
STATUS_ORDER = (
    "success",
    "failure",
    "timeout",
    "expired",
    "cancelled",
    "running",
    "delivered",
    "sent",
    "processing",
    "pending",
    "held",
)
STATUS_HELP = {
    "success": "reached the target and succeeded",
    "failure": "reached the target and failed",
    "timeout": "reached the target, no result within its execution timeout",
    "expired": "never reached: the target was offline until the delivery deadline",
    "cancelled": "stopped: the task was cancelled",
    "running": "the agent is executing it and reporting (heartbeats)",
    "delivered": "the target holds it and is executing",
    "sent": "handed to the Comms API, not yet acknowledged",
    "processing": "claimed by a server or the command manager",
    "pending": "waiting in the commands stream",
    "held": "waiting for the agent's maintenance window to open",
    "awaiting-approval": "held by the approval policy: nothing is sent until others approve",
    "rejected": "refused by an approver: nothing was sent",
    "approval-expired": "the approvals did not come in time: nothing was sent",
}
TASK_STATUSES = MODEL_TASK_STATUSES
AGENT_STATUSES = ("active", "disconnected", "never_connected")
SOURCES = ("dashboard", "management-api", "content-manager", "engine", "command-manager")


def _asset_versions() -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        for p in STATIC.iterdir()
        if p.is_file()
    }


def _epoch(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def utc(value: Any) -> str:
    ts = _epoch(value)
    if ts is None:
        return DASH
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(value: Any) -> Markup:
    """Relative time with the exact UTC time on hover."""
    ts = _epoch(value)
    if ts is None:
        return Markup('<span class="muted">never</span>')
    delta = time.time() - ts
    future = delta < 0
    delta = abs(delta)
    if delta < 60:
        text = f"{int(delta)} s"
    elif delta < 3600:
        text = f"{int(delta // 60)} min"
    elif delta < 86400:
        text = f"{delta / 3600:.1f} h"
    else:
        text = f"{delta / 86400:.1f} d"
    text = f"in {text}" if future else f"{text} ago"
    return Markup('<time datetime="{}" title="{}">{}</time>').format(
        datetime.fromtimestamp(ts, UTC).isoformat(), utc(ts), text
    )


def num(value: Any) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return DASH


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def segments(counts: dict[str, int]) -> list[tuple[str, int, float]]:
    """(status, count, percent) in bar order, non-zero only."""
    total = sum(counts.values()) or 1
    return [(s, counts[s], 100.0 * counts[s] / total) for s in STATUS_ORDER if counts.get(s)]


def is_final(status: str) -> bool:
    return status in {s.value for s in FINAL} or status in (
        "success",
        "failure",
        "expired",
        "cancelled",
    )


def query(request: Request, **changes: Any) -> str:
    """The current URL's query string with some parameters changed (None drops them)."""
    params = dict(request.query_params)
    for k, v in changes.items():
        if v is None or v == "":
            params.pop(k, None)
        else:
            params[k] = str(v)
    return ("?" + urlencode(params)) if params else "?"


env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters.update(ago=ago, num=num, pretty=pretty, utc=utc, segments=segments)
env.globals.update(
    STATUS_ORDER=STATUS_ORDER,
    STATUS_HELP=STATUS_HELP,
    STATUSES=list(Status),
    TASK_STATUSES=TASK_STATUSES,
    AGENT_STATUSES=AGENT_STATUSES,
    SOURCES=SOURCES,
    is_final=is_final,
    version=__version__,
    assets=_asset_versions(),
)


def page(
    request: Request, template: str, viewer: Viewer | None, status_code: int = 200, **context: Any
) -> Response:
    """Render a page with the layout's context (user, permissions, CSRF token, nav)."""
    html = env.get_template(template).render(
        request=request,
        viewer=viewer,
        q=lambda **kw: query(request, **kw),
        path=request.url.path,
        **context,
    )
    response = HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
    return apply_refresh(request, response)


def redirect(request: Request, url: str) -> Response:
    """303 after a post (or a login), carrying a refreshed token if one is due."""
    return apply_refresh(
        request, RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})
    )
