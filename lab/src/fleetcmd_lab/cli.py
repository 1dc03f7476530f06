"""`fleetcmd bench …`: the lab's commands, added to the product's CLI through the `fleetcmd.cli`
entry point (lab/pyproject.toml). Each command imports its benchmark only when it runs."""

from __future__ import annotations

from typing import Annotated

import typer

bench_app = typer.Typer(help="Benchmarks that print their figures.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    from fleetcmd_lab.chaos import cli as chaos_cli

    chaos_cli.register(bench_app)
    app.add_typer(bench_app, name="bench")


LogDir = Annotated[
    str | None,
    typer.Option(help="Keep the processes' logs in a run folder under this one."),
]


Profile = Annotated[
    str | None,
    typer.Option(
        help="Sample the server and indexer with py-spy during the measured phase; "
        "collapsed stacks go to this folder."
    ),
]


@bench_app.command("fanout")
def bench_fanout(
    agents: Annotated[int, typer.Option(help="Agents in the group.")] = 100_000,
    store: Annotated[
        str | None,
        typer.Option(help="sqlite (default) or postgresql://…; a scratch file or schema is used."),
    ] = None,
) -> None:
    """Group change to N agents: seconds to commit all children, ratio to a raw bulk insert."""
    from fleetcmd_lab.bench import fanout

    fanout.run(agents, store)


@bench_app.command("preview")
def bench_preview(
    agents: Annotated[int, typer.Option(help="Agents in the store.")] = 100_000,
    store: Annotated[
        str | None,
        typer.Option(help="sqlite (default) or postgresql://…; a scratch file or schema is used."),
    ] = None,
) -> None:
    """Task previews over N agents (selectors compiled to SQL, the matches frozen, counts
    by status/group/node/version): seconds per selector, and filing from the token."""
    from fleetcmd_lab.bench import preview

    preview.run(agents, store)


@bench_app.command("delivery")
def bench_delivery(
    agents: Annotated[int, typer.Option(help="Simulated agents.")] = 10_000,
    store: Annotated[str | None, typer.Option(help="sqlite (default) or postgresql://…")] = None,
    log_dir: LogDir = None,
    profile: Profile = None,
) -> None:
    """N simulated agents on one server; one task to all: seconds until every result."""
    from fleetcmd_lab.bench import delivery

    delivery.run(agents, store, log_dir=log_dir, profile=profile)


@bench_app.command("storm")
def bench_storm(
    agents: Annotated[int, typer.Option(help="Simulated agents.")] = 10_000,
    store: Annotated[str | None, typer.Option(help="sqlite (default) or postgresql://…")] = None,
    kill_at: Annotated[
        float,
        typer.Option(help="Fraction of the task's results recorded when the server is killed."),
    ] = 0.5,
    log_dir: LogDir = None,
) -> None:
    """A server killed and restarted under N agents with a task in flight: seconds until all
    poll again, API latency meanwhile, requests per agent, and that no result was lost."""
    from fleetcmd_lab.bench import storm

    storm.run(agents, store, log_dir=log_dir, kill_at=kill_at)


@bench_app.command("rollout")
def bench_rollout(
    agents: Annotated[int, typer.Option(help="Simulated agents.")] = 10_000,
    store: Annotated[str | None, typer.Option(help="sqlite (default) or postgresql://…")] = None,
    wave_percent: Annotated[float, typer.Option(help="Wave size, % of the agents.")] = 25.0,
    pause: Annotated[float, typer.Option(help="Seconds between waves.")] = 2.0,
    spread: Annotated[float, typer.Option(help="Seconds over which a wave is released.")] = 3.0,
) -> None:
    """A canary + waves rollout to N simulated agents: how closely the waves kept time."""
    from fleetcmd_lab.bench import rollout

    rollout.run(agents, store, wave_percent=wave_percent, pause=pause, spread=spread)


@bench_app.command("latency")
def bench_latency(
    tasks: Annotated[int, typer.Option(help="Sequential small tasks.")] = 500,
    store: Annotated[str | None, typer.Option(help="sqlite (default) or postgresql://…")] = None,
    log_dir: LogDir = None,
    profile: Profile = None,
) -> None:
    """One agent, sequential tasks: p50/p99/max to delivery and to the result."""
    from fleetcmd_lab.bench import latency

    latency.run(tasks, store, log_dir=log_dir, profile=profile)


@bench_app.command("events")
def bench_events(
    agents: Annotated[
        int, typer.Option(help="Seeded agents; their results make the backlog of events.")
    ] = 100_000,
    tasks: Annotated[int, typer.Option(help="Sequential tasks for each latency part.")] = 500,
    store: Annotated[str | None, typer.Option(help="sqlite (default) or postgresql://…")] = None,
    batch: Annotated[int, typer.Option(help="The subscribers' events per batch.")] = 200,
    slow_delay: Annotated[
        float, typer.Option(help="Seconds the lagging subscriber's receiver takes per batch.")
    ] = 1.0,
    catch_up: Annotated[
        bool, typer.Option(help="Also measure latency while a subscriber catches up.")
    ] = True,
    log_dir: LogDir = None,
) -> None:
    """Events/s pushed to one webhook subscriber from a backlog; live-path latency with no
    subscriber and while one lags the whole backlog behind (ratios, targets)."""
    from fleetcmd_lab.bench import events

    events.run(agents, tasks, store, batch, slow_delay, catch_up, log_dir=log_dir)


@bench_app.command("backlog")
def bench_backlog(
    commands: Annotated[int, typer.Option(help="Finished commands already in the stream.")] = (
        1_000_000
    ),
    agents: Annotated[int, typer.Option(help="Agents in the fan-out.")] = 100_000,
    tasks: Annotated[int, typer.Option(help="Sequential tasks for the latency part.")] = 500,
    store: Annotated[str | None, typer.Option(help="sqlite (default) or postgresql://…")] = None,
    log_dir: LogDir = None,
) -> None:
    """Fan-out and latency on an empty store and with a backlog (% slower); retention of the
    backlog while latency is measured."""
    from fleetcmd_lab.bench import backlog

    backlog.run(commands, agents, tasks, store, log_dir=log_dir)


@bench_app.command("footprint")
def bench_footprint(
    idle: Annotated[float, typer.Option(help="Seconds the agent idles, connected.")] = 300.0,
    changes: Annotated[int, typer.Option(help="Configuration changes applied after.")] = 100,
    store: Annotated[str | None, typer.Option(help="sqlite (default) or postgresql://…")] = None,
    log_dir: LogDir = None,
) -> None:
    """One real agent: idle and peak RSS, idle CPU, CPU for N configuration changes."""
    from fleetcmd_lab.bench import footprint

    footprint.run(idle, changes, store, log_dir=log_dir)


@bench_app.command("multinode")
def bench_multinode(
    store: Annotated[str, typer.Option(help="postgresql://… (a scratch schema is used)")],
    agents: Annotated[int, typer.Option(help="Simulated agents, split across servers.")] = 2000,
    tasks: Annotated[int, typer.Option(help="Group changes filed back to back.")] = 5,
    log_dir: LogDir = None,
) -> None:
    """2 indexers + 2 servers on one PostgreSQL: duplicates, losses, throughput."""
    from fleetcmd_lab.bench import multinode

    multinode.run(agents, tasks, store, log_dir=log_dir)


@bench_app.command("topology")
def bench_topology(
    store: Annotated[str, typer.Option(help="postgresql://… (a scratch schema is used)")],
    agents: Annotated[int, typer.Option(help="Simulated agents, all through HAProxy.")] = 2000,
    log_dir: LogDir = None,
) -> None:
    """2 indexers + 2 servers behind HAProxy (deploy/haproxy.cfg): a server killed, then an
    indexer, each just after a task to all agents was filed; time to every result, losses."""
    from fleetcmd_lab.bench import topology

    topology.run(agents, store, log_dir=log_dir)
