"""`fleetcmd task …`: file and follow tasks through the Management API, for people."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from fleetcmd.model.status import FINAL_TASK_STATUSES

app = typer.Typer(help="File, list, cancel and watch tasks (Management API).", no_args_is_help=True)

FINAL = {*FINAL_TASK_STATUSES, "timeout", "partial"}
Api = Annotated[
    str, typer.Option(help="Management API URL.", envvar="FLEETCMD_API", show_envvar=False)
]
UserOpt = Annotated[str, typer.Option("--user", help="User name.")]
PasswordOpt = Annotated[
    str | None,
    typer.Option(
        help="Password (default: FLEETCMD_PASSWORD, else DATA_DIR/admin.password).",
        envvar="FLEETCMD_PASSWORD",
        show_envvar=False,
    ),
]
DataDir = Annotated[Path, typer.Option(help="Where admin.password is.")]


class Session:
    """An authenticated Management API client; errors become readable exits."""

    def __init__(self, api: str, user: str, password: str | None, data_dir: Path) -> None:
        if password is None:
            path = data_dir / "admin.password"
            if not path.exists():
                _fail(
                    f"no password: pass --password, set FLEETCMD_PASSWORD or run where "
                    f"{path} exists"
                )
            password = path.read_text().strip()
        self.http = httpx.Client(base_url=api.rstrip("/"), timeout=30.0)
        body = self._check(self.http.post("/security/user/authenticate", auth=(user, password)))
        self.http.headers["Authorization"] = f"Bearer {body['data']['token']}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._check(self.http.request(method, path, **kwargs))["data"]

    @staticmethod
    def _check(resp: httpx.Response) -> dict[str, Any]:
        try:
            body = resp.json()
        except ValueError:
            _fail(f"HTTP {resp.status_code}: {resp.text[:300]}")
        if resp.status_code >= 400:
            _fail(f"HTTP {resp.status_code} {body.get('error', '')}: {body.get('message', body)}")
        return dict(body)


def _fail(message: str) -> Any:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _session(api: str, user: str, password: str | None, data_dir: Path) -> Session:
    try:
        return Session(api, user, password, data_dir)
    except httpx.HTTPError as exc:
        return _fail(f"cannot reach {api}: {exc}")


def _parse_params(params: str | None, pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if params:
        try:
            loaded = json.loads(params)
        except json.JSONDecodeError as exc:
            _fail(f"--params is not JSON: {exc}")
        if not isinstance(loaded, dict):
            _fail("--params must be a JSON object")
        out.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"-p {pair!r}: expected key=value")
        try:
            out[key] = json.loads(value)  # numbers, lists, booleans
        except json.JSONDecodeError:
            out[key] = value
    return out


def _print(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


@app.command()
def create(
    type_: Annotated[
        str, typer.Argument(metavar="TYPE", help="Task type, e.g. group-configuration-change.")
    ],
    params: Annotated[str | None, typer.Option(help="Parameters as a JSON object.")] = None,
    param: Annotated[
        list[str] | None, typer.Option("-p", "--param", help="key=value (JSON values allowed).")
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option()] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds each command has to answer once delivered (default: its type's).",
            min=0.001,
        ),
    ] = None,
    expires_in: Annotated[
        float | None,
        typer.Option(
            help="Seconds the commands may wait for an offline agent before they end expired.",
            min=0.001,
        ),
    ] = None,
    rollout: Annotated[
        str | None, typer.Option(help="A rollout policy as a JSON object (docs/rollouts.md).")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--watch", help="Then watch it until it is final.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="File nothing: show what it would reach (counts, first page) and a preview "
            "token that files it on exactly those agents (--preview-token).",
        ),
    ] = False,
    preview_token: Annotated[
        str | None, typer.Option(help="File it on the agents a --dry-run froze.")
    ] = None,
    window: Annotated[
        str | None,
        typer.Option(
            help="Run its commands only in their agents' maintenance windows; one not "
            "delivered before its window closes waits for the 'next' or ends ('expire')."
        ),
    ] = None,
    override_freeze: Annotated[
        bool, typer.Option(help="File it through current freezes (needs freeze:override).")
    ] = False,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """File a task; prints it (with its id), or watches it with --watch."""
    body: dict[str, Any] = {"type": type_, "params": _parse_params(params, param or [])}
    if dry_run:
        _print(_session(api, user, password, data_dir).call("POST", "/tasks/preview", json=body))
        return
    if preview_token:
        body["preview_token"] = preview_token
    if idempotency_key:
        body["idempotency_key"] = idempotency_key
    if window:
        body["window"] = window
    if override_freeze:
        body["override_freeze"] = True
    for key, value in (("timeout", timeout), ("expires_in", expires_in)):
        if value is not None:
            body[key] = value
    if rollout:
        try:
            body["rollout"] = json.loads(rollout)
        except json.JSONDecodeError as exc:
            _fail(f"--rollout is not JSON: {exc}")
    task = _session(api, user, password, data_dir).call("POST", "/tasks", json=body)
    if follow:
        typer.echo(f"task {task['id']} accepted: {task['type']}")
        watch(task["id"], api=api, user=user, password=password, data_dir=data_dir)
    else:
        _print(task)


@app.command()
def get(
    task_id: int,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """Show a task: status and counts per command status."""
    _print(_session(api, user, password, data_dir).call("GET", f"/tasks/{task_id}"))


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option()] = None,
    type_: Annotated[str | None, typer.Option("--type")] = None,
    limit: Annotated[int, typer.Option()] = 50,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """List recent tasks."""
    from rich.console import Console
    from rich.table import Table

    query = {
        k: v for k, v in {"status": status, "type": type_, "limit": limit}.items() if v is not None
    }
    page = _session(api, user, password, data_dir).call("GET", "/tasks", params=query)
    table = Table("id", "type", "status", "done/total", "user", "source", "created")
    for t in page["items"]:
        table.add_row(
            str(t["id"]),
            t["type"],
            t["status"],
            f"{t['done']}/{t['total']}",
            t["user"],
            t["source"],
            str(t["created_at"]),
        )
    Console().print(table)


@app.command()
def cancel(
    task_id: int,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """Cancel a task: commands not yet final end `cancelled`."""
    _print(_session(api, user, password, data_dir).call("POST", f"/tasks/{task_id}/cancel"))


@app.command()
def watch(
    task_id: int,
    interval: Annotated[float, typer.Option(help="Refresh, s.")] = 0.5,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """Live progress bar with counts per status until the task is final; below it, the
    running commands (at most ten) with what their agents report (percent, message)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    session = _session(api, user, password, data_dir)
    with Progress(
        TextColumn("{task.fields[label]} [bold]{task.fields[status]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
    ) as progress:
        bar = progress.add_task("", total=None, label=f"task {task_id}", status="…", counts="")
        rows: dict[int, Any] = {}  # running command id -> its row
        while True:
            t = session.call("GET", f"/tasks/{task_id}")
            counts = " ".join(f"{k}={v}" for k, v in sorted(t["counts"].items()) if v)
            progress.update(
                bar,
                total=t["total"] or None,
                completed=t["done"],
                status=t["status"],
                counts=counts,
            )
            _show_running(progress, rows, session, task_id, bool(t["counts"].get("running")))
            if t["status"] in FINAL and t.get("completed_at"):
                break
            time.sleep(interval)
    typer.echo(f"task {task_id}: {t['status']} ({counts})")
    if t["status"] != "success":
        raise typer.Exit(2)


RUNNING_SHOWN = 10


def _show_running(
    progress: Any, rows: dict[int, Any], session: Any, task_id: int, any_: bool
) -> None:
    """One row per running command: its agent, percent and message; rows of commands that
    stopped running go."""
    page = (
        session.call(
            "GET",
            "/commands",
            params={"task_id": task_id, "status": "running", "limit": RUNNING_SHOWN},
        )["items"]
        if any_
        else []
    )
    seen = set()
    for c in page:
        seen.add(c["id"])
        p = c.get("progress") or {}
        percent = p.get("percent")
        fields = {
            "label": f"  #{c['id']} {c['target']['id']}",
            "status": "running",
            "counts": p.get("message") or "",
        }
        if c["id"] not in rows:
            rows[c["id"]] = progress.add_task(
                "", total=100 if percent is not None else None, **fields
            )
        progress.update(
            rows[c["id"]],
            total=100 if percent is not None else None,
            completed=percent or 0,
            **fields,
        )
    for cid in [i for i in rows if i not in seen]:
        progress.remove_task(rows.pop(cid))


@app.command()
def rerun(
    task_id: int,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status", help="Re-run where commands ended so (default: failure, timeout, expired)."
        ),
    ] = None,
    follow: Annotated[bool, typer.Option("--watch", help="Then watch the re-run.")] = False,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """File the task again, on exactly the agents whose commands ended in those statuses."""
    body = {"statuses": status} if status else {}
    task = _session(api, user, password, data_dir).call(
        "POST", f"/tasks/{task_id}/rerun", json=body
    )
    if follow:
        typer.echo(f"task {task['id']} (re-run of {task_id}) accepted")
        watch(task["id"], api=api, user=user, password=password, data_dir=data_dir)
    else:
        _print(task)


@app.command()
def approve(
    task_id: int,
    reason: Annotated[str, typer.Option(help="Why (kept in the audit trail).")] = "",
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """Approve a task awaiting approval (someone else filed it); the last approval files it."""
    _print(
        _session(api, user, password, data_dir).call(
            "POST", f"/tasks/{task_id}/approve", json={"reason": reason}
        )
    )


@app.command()
def reject(
    task_id: int,
    reason: Annotated[str, typer.Option(help="Why it is refused (required).")],
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """Reject a task awaiting approval: it ends `rejected` and nothing of it is written."""
    _print(
        _session(api, user, password, data_dir).call(
            "POST", f"/tasks/{task_id}/reject", json={"reason": reason}
        )
    )


@app.command()
def approvals(
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """The tasks waiting for your approval."""
    _print(_session(api, user, password, data_dir).call("GET", "/approvals")["items"])


@app.command("approval-policy")
def approval_policy(
    set_: Annotated[
        str | None,
        typer.Option("--set", help="Replace the policy with this JSON (docs/security.md)."),
    ] = None,
    api: Api = "http://127.0.0.1:55000",
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    data_dir: DataDir = Path("./data"),
) -> None:
    """Show the approval policy, or replace it (administrators)."""
    session = _session(api, user, password, data_dir)
    if set_ is None:
        _print(session.call("GET", "/approval-policy"))
        return
    try:
        policy = json.loads(set_)
    except json.JSONDecodeError as exc:
        _fail(f"--set is not JSON: {exc}")
    _print(session.call("PUT", "/approval-policy", json=policy))
