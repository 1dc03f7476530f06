"""`fleetcmd bench chaos`: a long fault-injection run for one seed; exits 1 on a violation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(bench_app: typer.Typer) -> None:
    bench_app.command("chaos")(chaos)


def chaos(
    minutes: Annotated[float, typer.Option(help="Minutes of fault injection.")] = 5.0,
    seed: Annotated[int, typer.Option(help="Fixes the fault plan; replay a failure with it.")] = 1,
    store: Annotated[
        str,
        typer.Option(help="sqlite, or a postgresql:// URL (a fresh schema is used and dropped)."),
    ] = "sqlite",
    agents: Annotated[int, typer.Option(help="Real agent processes.")] = 20,
    sims: Annotated[int, typer.Option(help="Simulated agents (two processes).")] = 500,
    lease: Annotated[float, typer.Option(help="Servers' lease on pulled commands, s.")] = 10.0,
    kinds: Annotated[str, typer.Option(help="Comma-separated fault kinds (default: all).")] = "",
    restart_postgres: Annotated[
        bool,
        typer.Option(
            help="Also restart the local PostgreSQL cluster under load (shared machines: only "
            "when nobody else uses it)."
        ),
    ] = False,
    folder: Annotated[
        Path | None,
        typer.Option(
            help="Run folder (kept); default a temporary one, removed when the run is clean."
        ),
    ] = None,
    task_interval: Annotated[float, typer.Option(help="Mean seconds between tasks.")] = 2.0,
) -> None:
    """Break the running system on purpose (kills, stops, cuts, full disk, storms), then
    check that no task, command or result was lost and nothing ran twice."""
    from fleetcmd_lab.chaos.faults import KINDS
    from fleetcmd_lab.chaos.runner import ChaosConfig, run

    wanted = [k.strip() for k in kinds.split(",") if k.strip()] or None
    for k in wanted or []:
        if k not in KINDS:
            raise typer.BadParameter(f"unknown fault kind {k!r}; kinds: {', '.join(KINDS)}")
    if restart_postgres and not store.startswith("postgres"):
        raise typer.BadParameter("--restart-postgres needs a postgresql:// store")
    cfg = ChaosConfig(
        seed=seed,
        store=store,
        duration=minutes * 60,
        agents=agents,
        sims=sims,
        lease=lease,
        task_timeout=60.0,
        kinds=wanted,
        restart_postgres=restart_postgres,
        root=folder,
        drain_timeout=300.0,
        task_interval=task_interval,
        disk_mb=512,
    )
    result = run(cfg, say=lambda m: typer.echo(m))
    typer.echo(f"faults injected: {dict(result.faults)}")
    for name, vs in result.report.checks.items():
        typer.echo(f"  {'ok  ' if not vs else 'FAIL'} {name}" + (f" ({len(vs)})" if vs else ""))
        for v in vs[:10]:
            typer.echo(f"         {v}")
    typer.echo(json.dumps(result.to_json(), default=str))
    if result.violations:
        typer.echo(
            f"{len(result.violations)} violation(s); replay with --seed {seed}; "
            f"evidence in {result.root}",
            err=True,
        )
        raise typer.Exit(1)
