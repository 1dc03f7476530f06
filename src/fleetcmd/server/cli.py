"""Command-line entry points of the server role: `fleetcmd server` and `fleetcmd task …`."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from fleetcmd.server import rollout_cli, task_cli


def register(app: typer.Typer) -> None:
    """Add this role's commands to the `fleetcmd` CLI."""
    app.command("server")(server)
    app.add_typer(task_cli.app, name="task")
    app.add_typer(rollout_cli.app, name="rollout")


def server(
    indexer: Annotated[str, typer.Option(help="Indexer URL, e.g. http://127.0.0.1:9200.")],
    token: Annotated[
        str | None,
        typer.Option(
            help="Node credential for the indexer (default: FLEETCMD_TOKEN, else DATA_DIR/"
            "node.token).",
            envvar="FLEETCMD_TOKEN",
            show_envvar=False,
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(help="File holding the node credential (instead of --token; keep it 0600)."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data folder (default ./data).")] = None,
    node_id: Annotated[
        str | None, typer.Option(help="Node id (default server-<hostname>-<comms port>).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    management_port: Annotated[int, typer.Option()] = 55000,
    comms_port: Annotated[int, typer.Option()] = 27000,
    enrollment_key: Annotated[
        str | None,
        typer.Option(
            help="Key agents enroll with (default: FLEETCMD_ENROLLMENT_KEY, else the 0600 file "
            "DATA_DIR/enrollment.key).",
            envvar="FLEETCMD_ENROLLMENT_KEY",
            show_envvar=False,
        ),
    ] = None,
    enrollment_key_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding the enrollment key (instead of --enrollment-key; keep it 0600)."
        ),
    ] = None,
    jwt_key: Annotated[
        str | None,
        typer.Option(
            help="Token signing key shared by server nodes (default: DATA_DIR/comms-jwt.key).",
            envvar="FLEETCMD_JWT_KEY",
            show_envvar=False,
        ),
    ] = None,
    pull_wait: Annotated[float, typer.Option(help="Long-poll wait on the indexer, s.")] = 20.0,
    lease: Annotated[float, typer.Option(help="Lease on pulled commands, s.")] = 60.0,
    enroll_rate: Annotated[
        float,
        typer.Option(
            help="Enrollments per second per client address, bursts of 10x (0: no limit)."
        ),
    ] = 10.0,
    auth_rate: Annotated[
        float,
        typer.Option(
            help="Agent authentications per second per client address, bursts of 10x (0: no limit)."
        ),
    ] = 50.0,
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
    ] = "",
    header_timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds a request's line and headers may take to arrive."),
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, help="Seconds a request's body may take to arrive after its headers."
        ),
    ] = 60.0,
    max_connections: Annotated[
        int, typer.Option(min=1, help="Open connections each API accepts; more are answered 503.")
    ] = 16_384,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Run a server node: Management API, Comms API and the command puller."""
    from fleetcmd.logsetup import setup_logging
    from fleetcmd.model.params import NAME_RE
    from fleetcmd.server.config import ServerOptions
    from fleetcmd.server.node import default_node_id, serve
    from fleetcmd.settings import data_dir as make_dir
    from fleetcmd.settings import node_token, read_secret, secret_file

    setup_logging(log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("give both --tls-cert and --tls-key, or neither")
    d = make_dir(data_dir)
    nid = node_id or default_node_id(comms_port)
    if not NAME_RE.fullmatch(nid):
        raise typer.BadParameter(f"node id {nid!r}: letters, digits, '.', '_' or '-'")
    # Secrets from files stay off the command line and out of the environment (`ps`).
    if enrollment_key and enrollment_key_file is not None:
        raise typer.BadParameter(
            "give --enrollment-key (or FLEETCMD_ENROLLMENT_KEY) or --enrollment-key-file, not both"
        )
    try:
        credential = node_token(d, token, token_file)
        key = enrollment_key or (
            read_secret(enrollment_key_file)
            if enrollment_key_file
            else secret_file(d / "enrollment.key")
        )
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    options = ServerOptions(
        indexer_url=indexer,
        token=credential,
        data_dir=d,
        node_id=nid,
        host=host,
        management_port=management_port,
        comms_port=comms_port,
        enrollment_key=key,
        jwt_key=jwt_key or secret_file(d / "comms-jwt.key"),
        log_level=log_level,
        pull_wait=pull_wait,
        lease=lease,
        enroll_rate=enroll_rate,
        auth_rate=auth_rate,
        tls_cert=str(tls_cert) if tls_cert else None,
        tls_key=str(tls_key) if tls_key else None,
        ca=str(ca) if ca else None,
        forwarded_allow_ips=forwarded_allow_ips,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        max_connections=max_connections,
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(serve(options))
    else:
        uvloop.run(serve(options))
