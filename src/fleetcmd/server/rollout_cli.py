"""`fleetcmd rollout …`: watch and steer a task's rollout through the Management API, with the
same log-in as `fleetcmd task …`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fleetcmd.server.task_cli import Api, DataDir, PasswordOpt, UserOpt, _print, _session

app = typer.Typer(help="Show and control staged rollouts (Management API).", no_args_is_help=True)
Reason = Annotated[str, typer.Option(help="Why (kept in the audit trail).")]


def _table(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    if "waves" not in r:  # a rollback task
        typer.echo(f"task {r['task_id']} is the rollback of task {r['rollback_of']}")
        return
    title = (
        f"task {r['task_id']}: {r['state']} (wave {r['current_wave']}, "
        f"errors {r['errors']}/{r['delivered']} delivered)"
    )
    if r.get("reason"):
        title += f" - {r['reason']}"
    if r.get("rollback_task_id"):
        title += f" - rollback task {r['rollback_task_id']}"
    cols = (
        "pending",
        "in_flight",
        "succeeded",
        "failed",
        "timed_out",
        "offline_waiting",
        "expired",
        "cancelled",
    )
    table = Table("wave", "size", *cols, title=title)
    for w in r["waves"]:
        name = f"{w['wave']} (canary)" if w["canary"] else str(w["wave"])
        table.add_row(name, str(w["size"]), *(str(w[c]) for c in cols))
    Console().print(table)


@app.command()
def status(
    task_id: int,
    json_: Annotated[bool, typer.Option("--json", help="Print the JSON document.")] = False,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """State and per-wave progress of a task's rollout."""
    r = _session(api, user, password, data_dir).call("GET", f"/tasks/{task_id}/rollout")
    if json_:
        _print(r)
    else:
        _table(r)


def _control(
    action: str,
    task_id: int,
    reason: str,
    api: str,
    user: str,
    password: str | None,
    data_dir: Path,
) -> None:
    r = _session(api, user, password, data_dir).call(
        "POST", f"/tasks/{task_id}/rollout/{action}", json={"reason": reason}
    )
    _table(r)


@app.command()
def pause(
    task_id: int,
    reason: Reason = "",
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """Stop releasing commands; released ones no agent has taken yet are held back."""
    _control("pause", task_id, reason, api, user, password, data_dir)


@app.command()
def resume(
    task_id: int,
    reason: Reason = "",
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """Continue a paused rollout (the error threshold counts again from here)."""
    _control("resume", task_id, reason, api, user, password, data_dir)


@app.command()
def abort(
    task_id: int,
    reason: Reason = "",
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """End the rollout: every command not yet delivered ends `cancelled`."""
    _control("abort", task_id, reason, api, user, password, data_dir)


@app.command()
def rollback(
    task_id: int,
    reason: Reason = "",
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """End the rollout and send the inverse to every agent that applied the change."""
    _control("rollback", task_id, reason, api, user, password, data_dir)
