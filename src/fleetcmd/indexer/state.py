"""What the indexer's routes share: the store, the managers, the waker, metrics."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fleetcmd.httpkit import Waker, check_bearer
from fleetcmd.indexer.command_manager import CommandManager
from fleetcmd.indexer.rollouts import RolloutScheduler
from fleetcmd.indexer.scheduler import Scheduler
from fleetcmd.indexer.signing import CommandSigner
from fleetcmd.indexer.task_manager import TaskManager
from fleetcmd.indexer.user_proofs import UserProofs
from fleetcmd.indexer.windows import WindowGate
from fleetcmd.store.base import SqlStore


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.tasks = Counter(
            "fleetcmd_tasks_submitted_total", "Tasks accepted", ["type", "source"], registry=r
        )
        self.claimed = Counter(
            "fleetcmd_commands_claimed_total",
            "Commands claimed by pullers",
            ["target_type"],
            registry=r,
        )
        self.results = Counter(
            "fleetcmd_command_results_total", "Results recorded", ["outcome"], registry=r
        )
        self.swept = Counter(
            "fleetcmd_commands_swept_total", "Time-driven status moves", ["kind"], registry=r
        )
        self.expansion = Histogram(
            "fleetcmd_expansion_seconds",
            "Command manager expansions",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
        )
        self.pull_wait = Histogram(
            "fleetcmd_pull_seconds",
            "Pull long-poll duration",
            registry=r,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30),
        )
        self.children = Counter(
            "fleetcmd_child_commands_total", "Child commands written", registry=r
        )
        self.waiting = Gauge("fleetcmd_pulls_waiting", "Long-polls waiting for work", registry=r)
        self.subscriber_lag = Gauge(
            "fleetcmd_subscriber_lag_events",
            "Events a subscriber has still to look at",
            ["subscriber"],
            registry=r,
        )
        self.subscriber_delivered = Counter(
            "fleetcmd_subscriber_delivered_events_total",
            "Events delivered to a subscriber",
            ["subscriber"],
            registry=r,
        )
        self.subscriber_failures = Counter(
            "fleetcmd_subscriber_failures_total",
            "Failed deliveries to a subscriber",
            ["subscriber"],
            registry=r,
        )
        self.subscriber_paused = Gauge(
            "fleetcmd_subscriber_paused",
            "1 while a subscriber is paused (failing, or by an administrator)",
            ["subscriber"],
            registry=r,
        )
        self.upkeep = Counter(
            "fleetcmd_store_upkeep_total",
            "Tables vacuumed or analyzed by the store's upkeep",
            ["step", "table"],
            registry=r,
        )


@dataclass
class IndexerState:
    store: SqlStore
    token: str
    tasks: TaskManager
    commands: CommandManager
    rollouts: RolloutScheduler
    schedules: Scheduler
    windows: WindowGate
    waker: Waker
    metrics: Metrics
    signer: CommandSigner
    proofs: UserProofs
    attach_limit: int = 64 * 1024
    started_at: float = 0.0
    stopping: bool = False  # set on SIGTERM/SIGINT: long-polls answer at once
    upkeep_due: asyncio.Event = field(default_factory=asyncio.Event)  # run upkeep now

    def stop(self) -> None:
        self.stopping = True
        self.waker.fire_all()


def state(request: Request) -> IndexerState:
    st: IndexerState = request.app.state.indexer
    return st


async def authorized(request: Request) -> IndexerState:
    """Dependency: node-to-node calls carry the indexer's credential as a bearer token.
    (async: a plain `def` dependency costs a threadpool hop on every request)"""
    st = state(request)
    check_bearer(request, st.token)
    return st
