"""`fleetcmd up`."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from fleetcmd.role_settings import UpSettings

_UP = UpSettings.model_validate({})


def register(app: typer.Typer) -> None:
    @app.command()
    def up(
        ctx: typer.Context,
        config: Annotated[
            Path | None,
            typer.Option(help="TOML file with an \\[up] table (docs/configuration.md)."),
        ] = None,
        agents: Annotated[int, typer.Option(help="Local agents to start.")] = _UP.agents,
        data_dir: Annotated[Path, typer.Option(help="Data folder.")] = _UP.data_dir,
        store: Annotated[
            str | None,
            typer.Option(help="Store URL (default: SQLite in the data folder; no password here)."),
        ] = None,
        store_password_file: Annotated[
            Path | None,
            typer.Option(
                help="File (0600) with the PostgreSQL password (or FLEETCMD_STORE_PASSWORD)."
            ),
        ] = None,
        host: Annotated[
            str,
            typer.Option(
                "--bind", "--host", help="Address every role binds: loopback unless told otherwise."
            ),
        ] = _UP.host,
        indexer_port: Annotated[int, typer.Option()] = _UP.indexer_port,
        management_port: Annotated[int, typer.Option()] = _UP.management_port,
        comms_port: Annotated[int, typer.Option()] = _UP.comms_port,
        content: Annotated[bool, typer.Option(help="Run the content manager.")] = _UP.content,
        feed: Annotated[
            str | None, typer.Option(help="CTI feed folder or URL (default: the sample feed).")
        ] = None,
        trust_key: Annotated[
            list[Path] | None,
            typer.Option(
                help="Public key the feed and agent packages are signed with "
                "(required with --feed; repeatable)."
            ),
        ] = None,
        content_interval: Annotated[
            float,
            typer.Option(
                help="Seconds between the content manager's polls of the feed (poll at once "
                "with `fleetcmd content poll`).",
                min=0.1,
            ),
        ] = _UP.content_interval,
    ) -> None:
        """Start indexer, server, dashboard and N local agents; Ctrl-C stops them all."""
        from fleetcmd.allinone.up import AllInOne, Ports
        from fleetcmd.settings import fail, settings_or_exit

        cfg = settings_or_exit(UpSettings, ctx, config)
        if cfg.feed and not cfg.trust_key:
            fail("up", "trust_key (--trust-key) is required with feed (--feed)")
        d = cfg.data_dir.resolve()
        try:
            store_url = cfg.store_url(d) if cfg.store else None
        except (OSError, ValueError) as exc:
            fail("up", str(exc))
        system = AllInOne(
            d,
            store_url,
            cfg.agents,
            cfg.host,
            Ports(cfg.indexer_port, cfg.management_port, cfg.comms_port),
            content=cfg.content,
            feed=cfg.feed,
            trust_keys=[k.resolve() for k in cfg.trust_key],
            content_interval=cfg.content_interval,
        )

        def _stop(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _stop)
        try:
            system.start(typer.echo)
            system.supervise(typer.echo)
        except KeyboardInterrupt:
            typer.echo("\nstopping…")
        except RuntimeError as exc:
            typer.echo(f"fleetcmd up failed: {exc}", err=True)
            system.failures.append(str(exc))
        finally:
            # A second Ctrl-C must not leave processes behind: stop() runs to its end.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            code = system.stop(typer.echo)
        typer.echo(
            "stopped"
            if code == 0
            else f"stopped; {len(system.failures)} failure(s) during the run (above)"
        )
        raise typer.Exit(code)
