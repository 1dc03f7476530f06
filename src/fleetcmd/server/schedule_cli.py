"""`fleetcmd schedule …`, `fleetcmd window …` and `fleetcmd freeze …`: schedules, maintenance
windows and freezes through the Management API, with the same log-in as `fleetcmd task …`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fleetcmd.server.task_cli import (
    Api,
    DataDir,
    PasswordOpt,
    Session,
    UserOpt,
    _parse_params,
    _print,
    _session,
)

app = typer.Typer(help="File tasks at a time or on a recurrence (RRULE).", no_args_is_help=True)
window_app = typer.Typer(
    help="Maintenance windows: when windowed tasks may reach agents.", no_args_is_help=True
)
freeze_app = typer.Typer(
    help="Blackout periods: no task reaches frozen agents.", no_args_is_help=True
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the JSON document.")]


def _delete(session: Session, path: str) -> None:
    resp = session.http.delete(path)
    if resp.status_code != 204:
        Session._check(resp)  # exits with the error the API gave


def _line(s: dict[str, Any]) -> str:
    nxt = s["next"][0]["local"] if s["next"] else "-"
    rule = s["rrule"] or f"once at {s['start_local']}"
    return (
        f"{s['id']:>5}  {s['status']:<7} {s['name']}  [{s['task']['type']}]  {rule} "
        f"({s['tz']})  next {nxt}  filed {s['filed']}"
    )


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="A name people recognise.")],
    type_: Annotated[str, typer.Argument(metavar="TYPE", help="Task type.")],
    params: Annotated[str | None, typer.Option(help="Parameters as a JSON object.")] = None,
    param: Annotated[
        list[str] | None, typer.Option("-p", "--param", help="key=value (JSON values allowed).")
    ] = None,
    rrule: Annotated[
        str | None, typer.Option(help="RFC 5545 rule, e.g. FREQ=DAILY;BYHOUR=2;BYMINUTE=0.")
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(help="Local time in --tz of the first (or only) run, e.g. 2026-12-24T02:00."),
    ] = None,
    tz: Annotated[str, typer.Option(help="IANA time zone, e.g. Europe/Paris.")] = "UTC",
    missed: Annotated[
        str, typer.Option(help="Occurrences missed while no indexer ran: run-once or skip.")
    ] = "run-once",
    timeout: Annotated[float | None, typer.Option(help="Execution timeout, s.")] = None,
    expires_in: Annotated[float | None, typer.Option(help="Delivery window, s.")] = None,
    override_freeze: Annotated[
        bool, typer.Option(help="File through freezes (needs freeze:override).")
    ] = False,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """File TYPE at --start, or on --rrule from --start (default: now), in --tz."""
    task: dict[str, Any] = {"type": type_, "params": _parse_params(params, param or [])}
    for key, value in (("timeout", timeout), ("expires_in", expires_in)):
        if value is not None:
            task[key] = value
    if override_freeze:
        task["override_freeze"] = True
    body: dict[str, Any] = {"name": name, "task": task, "tz": tz, "missed": missed}
    if rrule is not None:
        body["rrule"] = rrule
    if start is not None:
        body["start"] = start
    s = _session(api, user, password, data_dir).call("POST", "/schedules", json=body)
    typer.echo(f"schedule {s['id']} created; next: " + ", ".join(n["local"] for n in s["next"]))


@app.command("list")
def list_(
    json_: JsonOpt = False,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """Schedules you may read, with their next occurrence."""
    items = _session(api, user, password, data_dir).call("GET", "/schedules")["items"]
    if json_:
        _print(items)
        return
    for s in items:
        typer.echo(_line(s))


@app.command()
def show(
    schedule_id: int,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """A schedule, its next five occurrences and the last ones it handled."""
    _print(_session(api, user, password, data_dir).call("GET", f"/schedules/{schedule_id}"))


def _verb(verb: str) -> Any:
    def run(
        schedule_id: int,
        api: Api = "http://127.0.0.1:55000",
        user: UserOpt = "admin",
        password: PasswordOpt = None,
        data_dir: DataDir = Path("./data"),
    ) -> None:
        session = _session(api, user, password, data_dir)
        if verb == "delete":
            _delete(session, f"/schedules/{schedule_id}")
            typer.echo(f"schedule {schedule_id} deleted (the tasks it filed stay)")
            return
        s = session.call("POST", f"/schedules/{schedule_id}/{verb}")
        typer.echo(_line(s))

    run.__doc__ = {
        "pause": "Stop filing (until resumed).",
        "resume": "File again from now (what fell while paused is not filed).",
        "delete": "Remove the schedule (the tasks it filed stay).",
    }[verb]
    return run


for _name in ("pause", "resume", "delete"):
    app.command(_name)(_verb(_name))


@freeze_app.command("create")
def freeze_create(
    name: Annotated[str, typer.Argument()],
    selector: Annotated[str, typer.Argument(help="Agents frozen, e.g. 'group = payment'.")],
    starts_at: Annotated[str, typer.Option(help="ISO time with offset, e.g. 2026-12-20T00:00Z.")],
    ends_at: Annotated[str, typer.Option(help="ISO time with offset.")],
    reason: Annotated[str, typer.Option()] = "",
    mode: Annotated[
        str, typer.Option(help="refuse the tasks, or hold their commands until it ends.")
    ] = "refuse",
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """Refuse tasks that would reach the agents SELECTOR matches, between the two times."""
    body = {
        "name": name,
        "selector": selector,
        "starts_at": starts_at,
        "ends_at": ends_at,
        "reason": reason,
        "mode": mode,
    }
    f = _session(api, user, password, data_dir).call("POST", "/freezes", json=body)
    typer.echo(f"freeze {f['id']} '{f['name']}': {f['starts_at']} to {f['ends_at']}")


@freeze_app.command("list")
def freeze_list(
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    _print(_session(api, user, password, data_dir).call("GET", "/freezes")["items"])


@freeze_app.command("delete")
def freeze_delete(
    freeze_id: int,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    _delete(_session(api, user, password, data_dir), f"/freezes/{freeze_id}")
    typer.echo(f"freeze {freeze_id} deleted")


@window_app.command("create")
def window_create(
    name: Annotated[str, typer.Argument()],
    selector: Annotated[str, typer.Argument(help="Agents it covers, e.g. 'group = web'.")],
    rrule: Annotated[str, typer.Option(help="When it opens, e.g. FREQ=WEEKLY;BYDAY=SU;BYHOUR=2.")],
    duration: Annotated[float, typer.Option(help="How long it stays open, s.")],
    tz: Annotated[str, typer.Option(help="IANA time zone of the rule.")] = "UTC",
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """Tasks filed with --window reach the agents SELECTOR matches only while it is open."""
    body = {"name": name, "selector": selector, "rrule": rrule, "duration": duration, "tz": tz}
    w = _session(api, user, password, data_dir).call("POST", "/windows", json=body)
    opens = ", ".join(f"{n['opens']} to {n['closes']}" for n in w["next"][:3])
    typer.echo(f"window {w['id']} '{w['name']}': next {opens}")


@window_app.command("list")
def window_list(
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    _print(_session(api, user, password, data_dir).call("GET", "/windows")["items"])


@window_app.command("delete")
def window_delete(
    window_id: int,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    _delete(_session(api, user, password, data_dir), f"/windows/{window_id}")
    typer.echo(f"window {window_id} deleted")
