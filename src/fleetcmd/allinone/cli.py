"""`fleetcmd up`."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def up(
        agents: Annotated[int, typer.Option(help="Local agents to start.")] = 3,
        data_dir: Annotated[Path, typer.Option(help="Data folder.")] = Path("./data"),
        store: Annotated[
            str | None, typer.Option(help="Store URL (default: SQLite in the data folder).")
        ] = None,
        host: Annotated[
            str,
            typer.Option(
                "--bind", "--host", help="Address every role binds: loopback unless told otherwise."
            ),
        ] = "127.0.0.1",
        indexer_port: Annotated[int, typer.Option()] = 9200,
        management_port: Annotated[int, typer.Option()] = 55000,
        comms_port: Annotated[int, typer.Option()] = 27000,
        content: Annotated[bool, typer.Option(help="Run the content manager.")] = True,
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
        ] = 60.0,
    ) -> None:
        """Start indexer, server, dashboard and N local agents; Ctrl-C stops them all."""
        from fleetcmd.allinone.up import AllInOne, Ports

        system = AllInOne(
            data_dir.resolve(),
            store,
            agents,
            host,
            Ports(indexer_port, management_port, comms_port),
            content=content,
            feed=feed,
            trust_keys=[k.resolve() for k in trust_key or []],
            content_interval=content_interval,
        )
        if feed and not trust_key:
            raise typer.BadParameter("--trust-key is required with --feed")

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
