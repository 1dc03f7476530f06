"""The `fleetcmd` command line: one sub-command per role, plus tasks.

Each role adds its own commands from its package (`<role>/cli.py: register(app)`), so this file
stays a table of contents. Distributions other than the product add theirs through the
`fleetcmd.cli` entry-point group: the lab (`fleetcmd-lab`, folder `lab/`) adds `bench`. Without
the lab, `fleetcmd bench` says how to get it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from fleetcmd.logsetup import setup_logging
from fleetcmd.role_settings import IndexerSettings
from fleetcmd.settings import check_private, fail, settings_or_exit

app = typer.Typer(
    help="fleetcmd: tasks in, commands out, every result recorded.",
    no_args_is_help=True,
    add_completion=False,
)


_IX = IndexerSettings.model_validate({})


@app.command()
def indexer(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(help="TOML file with an \\[indexer] table (docs/configuration.md)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = _IX.host,
    port: Annotated[int, typer.Option()] = _IX.port,
    store: Annotated[
        str | None,
        typer.Option(help="sqlite:///PATH or postgresql://USER@HOST/DB (no password here)."),
    ] = None,
    store_password_file: Annotated[
        Path | None,
        typer.Option(help="File (0600) with the PostgreSQL password (or FLEETCMD_STORE_PASSWORD)."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data folder (default ./data).")] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="File (0600) holding the node credential (else FLEETCMD_TOKEN, else "
            "DATA_DIR/node.token)."
        ),
    ] = None,
    command_manager: Annotated[
        bool, typer.Option(help="Run the command manager worker.")
    ] = _IX.command_manager,
    dispatcher: Annotated[
        bool, typer.Option(help="Push events to the event subscribers from this indexer.")
    ] = _IX.dispatcher,
    retention_days: Annotated[
        float,
        typer.Option(
            help="Finished tasks older than this many days leave the store with their "
            "commands (checked hourly; 0 keeps everything).",
            min=0,
        ),
    ] = _IX.retention_days,
    upkeep_interval: Annotated[
        float,
        typer.Option(
            help="Seconds between checks of the store's dead rows and statistics (vacuumed "
            "and analyzed here where PostgreSQL's autovacuum is off; 0 never checks).",
            min=0,
        ),
    ] = _IX.upkeep_interval,
    node_silent_after: Annotated[
        float,
        typer.Option(
            help="Seconds without a heartbeat after which a server node's undelivered agent "
            "commands go to the nodes its agents reach now (0: wait for its leases to lapse).",
            min=0,
        ),
    ] = _IX.node_silent_after,
    command_key: Annotated[
        Path | None,
        typer.Option(
            help="Command-signing private key (default DATA_DIR/command-signing.key, made on "
            "first start; public keys go to command-keys.pub beside it)."
        ),
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Serve HTTPS with this cert.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Private key of --tls-cert.")] = None,
    header_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a request's line and headers may take.")
    ] = _IX.header_timeout,
    body_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a request's body may take after its headers.")
    ] = _IX.body_timeout,
    max_connections: Annotated[
        int, typer.Option(min=1, help="Open connections accepted; more are answered 503.")
    ] = _IX.max_connections,
    log_level: Annotated[str, typer.Option()] = _IX.log_level,
) -> None:
    """Run the indexer: store, task manager, commands stream, command manager."""
    import uvicorn

    from fleetcmd import serving
    from fleetcmd.indexer.app import IndexerOptions, create_app
    from fleetcmd.indexer.signing import KEY_FILE, CommandSigner
    from fleetcmd.settings import data_dir as make_dir
    from fleetcmd.settings import redact
    from fleetcmd.store import open_store
    from fleetcmd.store.base import SchemaTooNew

    cfg = settings_or_exit(IndexerSettings, ctx, config)
    setup_logging(cfg.log_level)
    d = make_dir(cfg.data_dir)
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        fail("indexer", "give both tls_cert and tls_key (--tls-cert, --tls-key), or neither")
    try:
        credential = cfg.secret("token", d)
        url = cfg.store_url(d)
        key_path = (cfg.command_key or d / KEY_FILE).resolve()
        if key_path.exists():
            check_private(key_path, "command-signing key")
        if cfg.tls_key is not None:
            check_private(cfg.tls_key, "TLS private key")
    except (OSError, ValueError) as exc:
        fail("indexer", str(exc))
    assert credential is not None
    signer = CommandSigner.from_files(key_path)
    try:
        st = open_store(url)
    except SchemaTooNew as exc:
        fail("indexer", str(exc))
    app_ = create_app(
        st,
        IndexerOptions(
            token=credential,
            run_command_manager=cfg.command_manager,
            run_dispatcher=cfg.dispatcher,
            retention_days=cfg.retention_days,
            upkeep_interval=cfg.upkeep_interval,
            node_silent_after=cfg.node_silent_after,
            signer=signer,
        ),
    )
    scheme = "https" if cfg.tls_cert else "http"
    typer.echo(
        f"indexer listening on {scheme}://{cfg.host}:{cfg.port} (store "
        f"{redact(st.url).split('@')[-1]}); node credential from {cfg.secret_where('token', d)}; "
        f"commands signed with key {signer.key_id}"
    )
    indexer_state = app_.state.indexer

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            indexer_state.stop()  # open long-polls answer now, so the stop takes milliseconds
            super().handle_exit(sig, frame)

    limits = serving.Limits(
        header_timeout=cfg.header_timeout,
        body_timeout=cfg.body_timeout,
        max_connections=cfg.max_connections,
    )
    # Server nodes keep their connections for 5 s; the indexer keeps them longer, so that a
    # node never reuses one the indexer is closing (a write lost that way is not repeated).
    _Server(
        serving.config(
            app_,
            cfg.host,
            cfg.port,
            limits,
            timeout_keep_alive=75,
            timeout_graceful_shutdown=3,
            ssl_certfile=str(cfg.tls_cert) if cfg.tls_cert else None,
            ssl_keyfile=str(cfg.tls_key) if cfg.tls_key else None,
        )
    ).run()


command_key_app = typer.Typer(
    help="Rotate the indexer's command-signing key.", no_args_is_help=True
)
app.add_typer(command_key_app, name="command-key")


def _key_path(data_dir: Path | None, key: Path | None) -> Path:
    from fleetcmd.indexer.signing import KEY_FILE
    from fleetcmd.settings import data_dir as make_dir

    return (key or make_dir(data_dir) / KEY_FILE).resolve()


@command_key_app.command("next")
def command_key_next(
    data_dir: Annotated[Path | None, typer.Option(help="The indexer's data folder.")] = None,
    key: Annotated[Path | None, typer.Option(help="The current key, if not in DATA_DIR.")] = None,
) -> None:
    """Step 1: make the next key. Restart the indexer: it publishes the next key, endorsed
    by the current one, and agents add it to the keys they trust."""
    from fleetcmd.indexer.signing import make_next

    path = _key_path(data_dir, key)
    try:
        kid = make_next(path)
    except (FileExistsError, FileNotFoundError) as exc:
        typer.echo(f"fleetcmd command-key next: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"next command-signing key {kid} made; restart the indexer to publish it")


@command_key_app.command("promote")
def command_key_promote(
    data_dir: Annotated[Path | None, typer.Option(help="The indexer's data folder.")] = None,
    key: Annotated[Path | None, typer.Option(help="The current key, if not in DATA_DIR.")] = None,
) -> None:
    """Step 2: the next key becomes the signing key (the old one is kept, retired). Restart
    the indexer."""
    from fleetcmd.indexer.signing import promote

    try:
        old, new = promote(_key_path(data_dir, key))
    except FileNotFoundError as exc:
        typer.echo(f"fleetcmd command-key promote: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"command-signing key {new} is now current ({old} retired); restart the indexer")


config_app = typer.Typer(help="Check the roles' configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(
    file: Annotated[Path, typer.Argument(help="A role's TOML file (\\[indexer], \\[server], …).")],
) -> None:
    """Check a configuration file: its table names a role, every key is known and its value
    valid, and the files it names exist (secret files and private keys 0600). Exit 1 with
    every problem named."""
    from fleetcmd.role_settings import check_config
    from fleetcmd.settings import ConfigError

    try:
        role, problems = check_config(file)
    except ConfigError as exc:
        role, problems = "?", exc.problems
    if problems:
        typer.echo(f"{file}: {len(problems)} problem(s)", err=True)
        for line in problems:
            typer.echo(f"  {line}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{file}: [{role}] ok")


store_app = typer.Typer(
    help="Back up a store, or restore a backup into a fresh store.", no_args_is_help=True
)
app.add_typer(store_app, name="store")

_StoreOption = Annotated[
    str | None,
    typer.Option(help="Store URL (default: the indexer's, from --config or the data folder)."),
]
_ConfigOption = Annotated[
    Path | None, typer.Option(help="The indexer's TOML file (its store and password).")
]
_DataOption = Annotated[Path | None, typer.Option(help="The indexer's data folder.")]
_PasswordOption = Annotated[
    Path | None, typer.Option(help="File (0600) with the PostgreSQL password.")
]


def _store_url(ctx: typer.Context, config: Path | None) -> str:
    from fleetcmd.settings import data_dir as make_dir

    cfg = settings_or_exit(IndexerSettings, ctx, config)
    try:
        return cfg.store_url(make_dir(cfg.data_dir))
    except (OSError, ValueError) as exc:
        fail("store", str(exc))


@store_app.command("backup")
def store_backup(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="Backup file to write (0600; never overwritten).")],
    store: _StoreOption = None,
    config: _ConfigOption = None,
    data_dir: _DataOption = None,
    store_password_file: _PasswordOption = None,
) -> None:
    """Back up a store while it runs: SQLite with its online backup API, PostgreSQL with
    pg_dump of the store's schema."""
    from fleetcmd.settings import redact
    from fleetcmd.store.backup import BackupError, backup

    url = _store_url(ctx, config)
    try:
        done = backup(url, out.resolve())
    except BackupError as exc:
        fail("store backup", str(exc))
    typer.echo(
        f"backed up {redact(url)} (schema version {done.schema_version}) to {done.path} "
        f"({done.size} bytes, {done.kind})"
    )


@store_app.command("restore")
def store_restore(
    ctx: typer.Context,
    backup_file: Annotated[Path, typer.Argument(help="A file `fleetcmd store backup` wrote.")],
    store: _StoreOption = None,
    config: _ConfigOption = None,
    data_dir: _DataOption = None,
    store_password_file: _PasswordOption = None,
) -> None:
    """Restore a backup into a fresh store (a SQLite file that does not exist yet; a
    PostgreSQL database without the backup's schema), in one step: whole or not at all.
    Start the indexer on it afterwards."""
    from fleetcmd.settings import redact
    from fleetcmd.store.backup import BackupError, restore
    from fleetcmd.store.base import SchemaTooNew

    url = _store_url(ctx, config)
    try:
        done = restore(url, backup_file.resolve())
    except (BackupError, SchemaTooNew) as exc:
        fail("store restore", str(exc))
    typer.echo(f"restored {backup_file} into {redact(url)} (schema version {done.schema_version})")


@app.command()
def certs(
    directory: Annotated[Path, typer.Argument(help="Folder for the CA and certificates.")],
    hosts: Annotated[
        str, typer.Option(help="Comma-separated names and addresses the certificate is for.")
    ] = "localhost,127.0.0.1,::1",
    days: Annotated[int, typer.Option(help="Validity of the certificates.")] = 365,
) -> None:
    """Make a local CA and a server certificate for development (not for production)."""
    from fleetcmd.tls import make_dev_certs

    made = make_dev_certs(directory, [h.strip() for h in hosts.split(",") if h.strip()], days)
    for what, path in made.items():
        typer.echo(f"{what:12} {path}")


def _register_roles() -> None:
    from fleetcmd.agent import cli as agent_cli
    from fleetcmd.allinone import cli as allinone_cli
    from fleetcmd.content import cli as content_cli
    from fleetcmd.server import cli as server_cli

    allinone_cli.register(app)
    server_cli.register(app)
    agent_cli.register(app)
    content_cli.register(app)


# Entry points of this group are `register(app)` functions of other distributions.
PLUGIN_GROUP = "fleetcmd.cli"
LAB_MISSING = (
    "fleetcmd bench: the benchmarks and chaos runs are in the lab, a distribution of their "
    "own that is not installed here: install fleetcmd-lab (from a checkout: "
    "`.venv/bin/pip install -e lab`, which `make venv` does)."
)


def _register_plugins() -> None:
    from importlib.metadata import entry_points

    registered: set[str] = set()
    problems: list[str] = []
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()(app)
        except ImportError as exc:  # installed metadata whose package is gone
            problems.append(f"({ep.value} could not be loaded: {exc})")
            continue
        registered.add(ep.name)
    if "bench" not in registered:
        message = " ".join([LAB_MISSING, *problems])

        @app.command(
            "bench",
            help="Benchmarks and chaos runs: needs fleetcmd-lab.",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
            add_help_option=False,
        )
        def bench_missing() -> None:
            typer.echo(message, err=True)
            raise typer.Exit(2)


_register_roles()
_register_plugins()


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
