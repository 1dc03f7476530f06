"""`fleetcmd task export` and `fleetcmd audit export`: the Management API's streamed exports
to a file or standard output. A file is written beside itself (`FILE.part`) and renamed
only when the whole stream has arrived: a cut transfer never leaves a short file that looks
whole."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from fleetcmd.server.task_cli import Api, DataDir, PasswordOpt, UserOpt, _fail, _session

audit_app = typer.Typer(help="The audit trail (Management API).", no_args_is_help=True)
FormatOpt = Annotated[str, typer.Option("--format", help="ndjson or csv.")]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="File to write (default: standard output).")
]


def _when(value: str | None) -> float | None:
    """Epoch seconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return _fail(f"{value!r} is neither epoch seconds nor an ISO 8601 time")
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _download(
    api: str,
    user: str,
    password: str | None,
    data_dir: Path,
    path: str,
    params: dict[str, Any],
    output: Path | None,
) -> None:
    session = _session(api, user, password, data_dir)
    part = output.with_name(output.name + ".part") if output else None
    try:
        with session.http.stream("GET", path, params=params, timeout=None) as resp:
            if resp.status_code >= 400:
                resp.read()
                session._check(resp)
            sink = part.open("wb") if part else sys.stdout.buffer
            try:
                for chunk in resp.iter_bytes():
                    sink.write(chunk)
            finally:
                if part:
                    sink.close()
                else:
                    sink.flush()
    except httpx.HTTPError as exc:
        if part:
            part.unlink(missing_ok=True)
        _fail(f"export cut short: {exc}")
    if part and output:
        os.replace(part, output)
        typer.echo(f"wrote {output}", err=True)


def export_task(
    task_id: int,
    format_: FormatOpt = "ndjson",
    output: OutputOpt = None,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """A task's commands and their results, as NDJSON or CSV, streamed."""
    _download(
        api, user, password, data_dir, f"/tasks/{task_id}/export", {"format": format_}, output
    )


@audit_app.command("export")
def export_audit(
    since: Annotated[str | None, typer.Option(help="From (inclusive): epoch s or ISO.")] = None,
    until: Annotated[str | None, typer.Option(help="To (exclusive): epoch s or ISO.")] = None,
    actor: Annotated[str | None, typer.Option()] = None,
    action: Annotated[str | None, typer.Option(help="Exact, or a prefix ending in '*'.")] = None,
    outcome: Annotated[str | None, typer.Option()] = None,
    format_: FormatOpt = "ndjson",
    output: OutputOpt = None,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """The audit trail over a time range, oldest first, as NDJSON or CSV, streamed."""
    params = {
        k: v
        for k, v in {
            "format": format_,
            "since": _when(since),
            "until": _when(until),
            "actor": actor,
            "action": action,
            "outcome": outcome,
        }.items()
        if v is not None
    }
    _download(api, user, password, data_dir, "/audit/export", params, output)
