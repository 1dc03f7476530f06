"""Command-line entry points of the server role: `fleetcmd server`, `fleetcmd task …`,
`fleetcmd audit export` and `fleetcmd subscriber …`."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from fleetcmd.role_settings import ServerSettings
from fleetcmd.server import export_cli, rollout_cli, schedule_cli, subscriber_cli, task_cli


def register(app: typer.Typer) -> None:
    """Add this role's commands to the `fleetcmd` CLI."""
    app.command("server")(server)
    task_cli.app.command("export")(export_cli.export_task)
    app.add_typer(task_cli.app, name="task")
    app.add_typer(export_cli.audit_app, name="audit")
    app.add_typer(subscriber_cli.app, name="subscriber")
    app.add_typer(rollout_cli.app, name="rollout")
    app.add_typer(schedule_cli.app, name="schedule")
    app.add_typer(schedule_cli.window_app, name="window")
    app.add_typer(schedule_cli.freeze_app, name="freeze")


_SV = ServerSettings.model_validate({})


def server(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option(help="TOML file with a \\[server] table (docs/configuration.md).")
    ] = None,
    indexer: Annotated[
        str | None, typer.Option(help="Indexer URL, e.g. http://127.0.0.1:9200 (required).")
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="File (0600) holding the node credential (else FLEETCMD_TOKEN, else "
            "DATA_DIR/node.token)."
        ),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data folder (default ./data).")] = None,
    node_id: Annotated[
        str | None, typer.Option(help="Node id (default server-<hostname>-<comms port>).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = _SV.host,
    management_port: Annotated[int, typer.Option()] = _SV.management_port,
    comms_port: Annotated[int, typer.Option()] = _SV.comms_port,
    enrollment_key_file: Annotated[
        Path | None,
        typer.Option(
            help="File (0600) holding the key agents enroll with (else FLEETCMD_ENROLLMENT_KEY, "
            "else DATA_DIR/enrollment.key)."
        ),
    ] = None,
    jwt_key_file: Annotated[
        Path | None,
        typer.Option(
            help="File (0600) holding the token signing key shared by server nodes (else "
            "FLEETCMD_JWT_KEY, else DATA_DIR/comms-jwt.key)."
        ),
    ] = None,
    pull_wait: Annotated[
        float, typer.Option(help="Long-poll wait on the indexer, s.")
    ] = _SV.pull_wait,
    lease: Annotated[float, typer.Option(help="Lease on pulled commands, s.")] = _SV.lease,
    enroll_rate: Annotated[
        float,
        typer.Option(
            help="Enrollments per second per client address, bursts of 10x (0: no limit)."
        ),
    ] = _SV.enroll_rate,
    auth_rate: Annotated[
        float,
        typer.Option(
            help="Agent authentications per second per client address, bursts of 10x (0: no limit)."
        ),
    ] = _SV.auth_rate,
    tls_cert: Annotated[
        Path | None, typer.Option(help="Serve both APIs over HTTPS with this certificate.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Private key of --tls-cert.")] = None,
    ca: Annotated[
        Path | None, typer.Option(help="CA certificate that signed an https indexer's certificate.")
    ] = None,
    forwarded_allow_ips: Annotated[
        str,
        typer.Option(
            help="Comma-separated addresses of reverse proxies whose X-Forwarded-For names the "
            "client (for audit records, login throttling and rate limits); default none: "
            "the client is the peer address."
        ),
    ] = _SV.forwarded_allow_ips,
    header_timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds a request's line and headers may take to arrive."),
    ] = _SV.header_timeout,
    body_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, help="Seconds a request's body may take to arrive after its headers."
        ),
    ] = _SV.body_timeout,
    max_connections: Annotated[
        int, typer.Option(min=1, help="Open connections each API accepts; more are answered 503.")
    ] = _SV.max_connections,
    log_level: Annotated[str, typer.Option()] = _SV.log_level,
) -> None:
    """Run a server node: Management API, Comms API and the command puller."""
    from fleetcmd.logsetup import setup_logging
    from fleetcmd.model.params import NAME_RE
    from fleetcmd.server.config import ServerOptions
    from fleetcmd.server.node import default_node_id, serve
    from fleetcmd.settings import check_private, fail, settings_or_exit
    from fleetcmd.settings import data_dir as make_dir

    cfg = settings_or_exit(ServerSettings, ctx, config)
    setup_logging(cfg.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if cfg.indexer is None:
        fail(
            "server",
            "indexer is required: --indexer, FLEETCMD_SERVER_INDEXER or indexer = "
            "in the [server] table of --config",
        )
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        fail("server", "give both tls_cert and tls_key (--tls-cert, --tls-key), or neither")
    d = make_dir(cfg.data_dir)
    nid = cfg.node_id or default_node_id(cfg.comms_port)
    if not NAME_RE.fullmatch(nid):
        fail("server", f"node id {nid!r}: letters, digits, '.', '_' or '-'")
    # Secrets come from files or the environment, never from the command line (`ps`).
    try:
        credential = cfg.secret("token", d)
        key = cfg.secret("enrollment_key", d)
        jwt = cfg.secret("jwt_key", d)
        if cfg.tls_key is not None:
            check_private(cfg.tls_key, "TLS private key")
    except (OSError, ValueError) as exc:
        fail("server", str(exc))
    assert credential and key and jwt
    options = ServerOptions(
        indexer_url=cfg.indexer,
        token=credential,
        data_dir=d,
        node_id=nid,
        host=cfg.host,
        management_port=cfg.management_port,
        comms_port=cfg.comms_port,
        enrollment_key=key,
        jwt_key=jwt,
        log_level=cfg.log_level,
        pull_wait=cfg.pull_wait,
        lease=cfg.lease,
        enroll_rate=cfg.enroll_rate,
        auth_rate=cfg.auth_rate,
        tls_cert=str(cfg.tls_cert) if cfg.tls_cert else None,
        tls_key=str(cfg.tls_key) if cfg.tls_key else None,
        ca=str(cfg.ca) if cfg.ca else None,
        forwarded_allow_ips=cfg.forwarded_allow_ips,
        header_timeout=cfg.header_timeout,
        body_timeout=cfg.body_timeout,
        max_connections=cfg.max_connections,
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(serve(options))
    else:
        uvloop.run(serve(options))
