"""`fleetcmd subscriber …`: register and look after event subscribers (webhooks, syslog)
through the Management API (administrators: `subscriber:manage`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fleetcmd.server.task_cli import Api, DataDir, PasswordOpt, UserOpt, _fail, _print, _session

app = typer.Typer(
    help="Event subscribers: webhooks and syslog destinations (Management API).",
    no_args_is_help=True,
)


@app.command()
def add(
    name: str,
    webhook: Annotated[str | None, typer.Option(help="POST batches to this http(s) URL.")] = None,
    syslog: Annotated[
        str | None, typer.Option(help="RFC 5424 over TCP to HOST:PORT.", metavar="HOST:PORT")
    ] = None,
    tls: Annotated[bool, typer.Option(help="Syslog over TLS.")] = False,
    ca_file: Annotated[str | None, typer.Option(help="CA to trust for syslog TLS.")] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option("--kind", help="task, command, audit, alert, agent (repeat; default all)."),
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option("--status", help="Only these statuses of commands, tasks, agents."),
    ] = None,
    action: Annotated[
        list[str] | None, typer.Option("--action", help="Only these audit actions (task.*).")
    ] = None,
    options: Annotated[
        str | None, typer.Option(help="Delivery options as JSON (docs/indexer.md).")
    ] = None,
    from_time: Annotated[
        float | None, typer.Option(help="Start from events at or after this epoch time.")
    ] = None,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """Register a subscriber; prints it, with a webhook's signing secret (shown only now)."""
    if (webhook is None) == (syslog is None):
        _fail("give --webhook URL or --syslog HOST:PORT")
    opts: dict[str, Any] = {}
    if options:
        try:
            opts = json.loads(options)
        except json.JSONDecodeError as exc:
            _fail(f"--options is not JSON: {exc}")
    if tls:
        opts["tls"] = True
    if ca_file:
        opts["ca_file"] = ca_file
    filters: dict[str, Any] = {}
    for key, value in (("kinds", kind), ("statuses", status), ("actions", action)):
        if value:
            filters[key] = value
    body: dict[str, Any] = {
        "name": name,
        "kind": "webhook" if webhook else "syslog",
        "url": webhook or f"tcp://{syslog}",
        "filters": filters,
        "options": opts,
    }
    if from_time is not None:
        body["from_time"] = from_time
    _print(_session(api, user, password, data_dir).call("POST", "/subscribers", json=body))


@app.command("list")
def list_(
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """Subscribers with their state, lag, deliveries and failures."""
    from rich.console import Console
    from rich.table import Table

    items = _session(api, user, password, data_dir).call("GET", "/subscribers")["items"]
    table = Table("id", "name", "kind", "url", "state", "lag", "delivered", "failures", "error")
    for s in items:
        table.add_row(
            str(s["id"]),
            s["name"],
            s["kind"],
            s["url"],
            s["state"],
            str(s["lag"]),
            str(s["delivered"]),
            str(s["failures"]),
            (s["last_error"] or "")[:60],
        )
    Console().print(table)


def _verb(
    sub_id: int, verb: str, body: dict[str, Any], api: str, user: str, pw: str | None, dd: Path
) -> None:
    _print(_session(api, user, pw, dd).call("POST", f"/subscribers/{sub_id}/{verb}", json=body))


@app.command()
def pause(
    sub_id: int,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """Stop delivering (the cursor stays: resume goes on from it)."""
    _verb(sub_id, "pause", {}, api, user, password, data_dir)


@app.command()
def resume(
    sub_id: int,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """Deliver again from the cursor (after a pause, or once a failing receiver is back)."""
    _verb(sub_id, "resume", {}, api, user, password, data_dir)


@app.command()
def replay(
    sub_id: int,
    from_event: Annotated[int | None, typer.Option(help="From this event id.")] = None,
    from_time: Annotated[float | None, typer.Option(help="From this epoch time.")] = None,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """Deliver again from an event id or a time (receivers de-duplicate by event id)."""
    body = {
        k: v for k, v in {"from_event": from_event, "from_time": from_time}.items() if v is not None
    }
    _verb(sub_id, "replay", body, api, user, password, data_dir)


@app.command()
def remove(
    sub_id: int,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """Remove a subscriber (its cursor goes with it)."""
    _print(_session(api, user, password, data_dir).call("DELETE", f"/subscribers/{sub_id}"))
