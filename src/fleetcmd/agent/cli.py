"""Command-line entry points of the agent role: `fleetcmd agent` and `fleetcmd agent-status`.

Imports stay inside the commands: the agent process must not pay for the other roles
(fastapi, pydantic, uvicorn…), only for typer, which the CLI already loaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer


def register(app: typer.Typer) -> None:
    """Add this role's commands to the `fleetcmd` CLI."""
    app.command("agent")(agent)
    app.command("agent-status")(agent_status)


def agent(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option(help="TOML file with an \\[agent] table (docs/configuration.md).")
    ] = None,
    server: Annotated[
        str | None, typer.Option(help="Comms API URL, e.g. http://127.0.0.1:27000 (required).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Agent name (used at enrollment).")] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="State folder: credentials, journal, outbox, content.")
    ] = None,
    enrollment_key: Annotated[
        str,
        typer.Option(
            help="Key to enroll with. Visible to every user of the host (`ps`): for a try-out "
            "only; use --enrollment-key-file or FLEETCMD_ENROLLMENT_KEY.",
        ),
    ] = "",
    enrollment_key_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding the enrollment key (0600): read only to enroll, so the key "
            "is on no command line and in no environment."
        ),
    ] = None,
    groups: Annotated[
        str, typer.Option(help="Comma-separated groups asked for at enrollment.")
    ] = "",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    trust_key: Annotated[
        list[str] | None,
        typer.Option(
            help="Public key (PEM/base64 file, or base64) whose signature on agent packages is "
            "accepted; repeatable. Without one, upgrades are refused."
        ),
    ] = None,
    upgrade_deadline: Annotated[
        float, typer.Option(help="Seconds a new version has to check in before it is rolled back.")
    ] = 120.0,
    heartbeat_after: Annotated[
        float,
        typer.Option(help="Seconds a command runs before the agent starts heartbeating it."),
    ] = 2.0,
    heartbeat_interval: Annotated[
        float,
        typer.Option(
            help="Seconds between heartbeats of a running command (two missed: it times out)."
        ),
    ] = 10.0,
    command_key: Annotated[
        list[str] | None,
        typer.Option(
            help="The indexer's command-signing public key(s): a file (e.g. the indexer's "
            "command-keys.pub) or base64; repeatable. Without it, the keys the server hands "
            "over at enrollment are pinned on first use."
        ),
    ] = None,
    ca: Annotated[
        Path | None,
        typer.Option(help="CA certificate to verify an https server with (default: the system's)."),
    ] = None,
) -> None:
    """Run an agent: enroll once, then long-poll the server and execute its commands."""
    import os

    from fleetcmd.agent.__main__ import OPTIONS_ENV
    from fleetcmd.agent.state import StateDir
    from fleetcmd.agent.upgrade import Versions, pythonpath, running
    from fleetcmd.role_settings import AgentSettings
    from fleetcmd.settings import check_private, fail, settings_or_exit

    cfg = settings_or_exit(AgentSettings, ctx, config)
    for key in ("server", "name", "state_dir"):
        if getattr(cfg, key) is None:
            fail(
                "agent",
                f"{key} is required: --{key.replace('_', '-')}, {AgentSettings.env_name(key)} "
                f"or {key} = in the [agent] table of --config",
            )
    assert cfg.server and cfg.name and cfg.state_dir

    def absolute(specs: list[str]) -> list[str]:
        # Files are named by absolute path: the agent runs from another working folder.
        return [str(Path(k).resolve()) if len(k) < 4096 and Path(k).is_file() else k for k in specs]

    if enrollment_key:
        typer.echo(
            "fleetcmd agent: warning: --enrollment-key is visible to every user of this host; "
            "use --enrollment-key-file or FLEETCMD_ENROLLMENT_KEY",
            err=True,
        )
    if enrollment_key and cfg.enrollment_key_file is not None:
        fail("agent", "give --enrollment-key or --enrollment-key-file, not both")
    key_file = cfg.enrollment_key_file
    env_key = os.environ.get("FLEETCMD_ENROLLMENT_KEY", "").strip()
    if key_file is not None and (cfg.source("enrollment_key_file") == "flag" or not env_key):
        try:
            check_private(key_file, "enrollment key file")
        except FileNotFoundError:
            fail("agent", f"no enrollment key file at {key_file}")
        except ValueError as exc:
            fail("agent", str(exc))
    else:
        key_file = None
    if cfg.ca is not None and not cfg.ca.is_file():
        fail("agent", f"no CA file at {cfg.ca}")
    state_dir = cfg.state_dir
    options = {
        "server": cfg.server,
        "enrollment_key": enrollment_key or ("" if key_file else env_key),
        "enrollment_key_file": str(key_file.resolve()) if key_file else "",
        "name": cfg.name,
        "state_dir": str(state_dir.resolve()),
        "groups": [g.strip() for g in cfg.groups.split(",") if g.strip()],
        "log_level": cfg.log_level,
        "trust_keys": absolute(cfg.trust_key),
        "upgrade_deadline": cfg.upgrade_deadline,
        "heartbeat_after": cfg.heartbeat_after,
        "heartbeat_interval": cfg.heartbeat_interval,
        "command_keys": absolute(cfg.command_key),
        "ca": str(cfg.ca.resolve()) if cfg.ca else None,
    }
    # The version to run: an upgraded one (or the previous one, if an upgrade on trial did not
    # come up: see agent/upgrade.py), else this installation.
    src = running().src
    folder = StateDir(state_dir)
    if state_dir.is_dir() and folder.running_pid() is None:  # a running agent keeps its trial
        src = Versions(folder).boot_target() or src
    # Same pid, fresh interpreter without the CLI's heavy imports (see agent/__main__.py).
    # The key travels in OPTIONS_ENV, which the agent removes at once; not in its own variable.
    env = {
        **{k: v for k, v in os.environ.items() if k != "FLEETCMD_ENROLLMENT_KEY"},
        OPTIONS_ENV: json.dumps(options),
        "PYTHONPATH": pythonpath(src, os.environ.get("PYTHONPATH")),
    }
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "fleetcmd.agent"], env)


def status_of(state_dir: Path) -> dict[str, Any]:
    """What agent-status prints; reads the folder only, works whether the agent runs or not."""
    from fleetcmd.agent.journal import read_counts
    from fleetcmd.agent.state import StateDir
    from fleetcmd.agent.upgrade import Versions

    d = StateDir(state_dir)
    creds = d.credentials()
    applied = d.load_state()
    versions = Versions(d)
    marker = versions.marker()
    current = versions.current()
    sca_results = {}
    for pid in d.list_content(d.sca_results_dir):
        res = d.get_content(d.sca_results_dir, pid)
        if isinstance(res, dict):
            sca_results[pid] = {
                "version": res.get("policy_version"),
                "summary": res.get("summary"),
                "evaluated_at": res.get("evaluated_at"),
                "unsent": bool(res.get("pending_events")),
            }
    doc: dict[str, Any] = {
        "id": creds.id if creds else None,
        "name": applied.name if applied else None,
        "groups": applied.groups if applied else [],
        "config_hash": applied.config_hash if applied else None,
        "config": applied.config if applied else {},
        "version": applied.version if applied else None,
        "removed": applied.removed if applied else False,
        "sca_policies": d.list_content(d.sca_dir),
        "sca_results": sca_results,
        "active_responses": d.list_content(d.ar_dir),
        "command_keys": _pinned_keys(d.root / "command-keys.json"),
        "upgrade": {
            "current": current.to_json() if current else None,
            "last": {k: marker.get(k) for k in ("command_id", "state", "reason", "from", "to")}
            if marker
            else None,
        },
        "executed": 0,
        "outbox": 0,
        "pid": d.running_pid(),
    }
    if d.db_path.exists():
        doc["executed"], doc["outbox"] = read_counts(d.db_path)
    return doc


def _pinned_keys(path: Path) -> list[str]:
    """Ids of the command-signing keys pinned or learned by endorsement (not --command-key)."""
    try:
        keys = json.loads(path.read_text()).get("keys")
    except (FileNotFoundError, ValueError, AttributeError):
        return []
    return sorted(keys) if isinstance(keys, dict) else []


def agent_status(
    state_dir: Annotated[Path, typer.Option(help="The agent's state folder.")],
) -> None:
    """Print an agent's state as JSON: id, name, groups, config hash, version, content,
    SCA results, the last upgrade."""
    if not state_dir.is_dir():
        typer.echo(f"fleetcmd agent-status: no state folder at {state_dir}", err=True)
        raise typer.Exit(1)
    json.dump(status_of(state_dir), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
