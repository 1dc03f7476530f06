"""Prometheus metrics of a server node (served on both APIs' `/metrics`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class ServerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.connected = Gauge(
            "fleetcmd_server_connected_agents", "Agents polling this node right now", registry=r
        )
        self.mailbox_depth = Gauge(
            "fleetcmd_server_mailbox_commands",
            "Commands in agent mailboxes, not yet acked",
            registry=r,
        )
        self.pulls = Counter(
            "fleetcmd_server_pulls_total",
            "Pulls from the indexer stream",
            ["target_type"],
            registry=r,
        )
        self.pulled = Counter(
            "fleetcmd_server_commands_pulled_total",
            "Commands claimed from the stream",
            ["target_type"],
            registry=r,
        )
        self.polls = Counter(
            "fleetcmd_server_agent_polls_total",
            "Agent long-polls answered",
            ["outcome"],
            registry=r,
        )
        self.acks = Counter("fleetcmd_server_acks_total", "Commands acked by agents", registry=r)
        self.heartbeats = Counter(
            "fleetcmd_server_heartbeats_total",
            "Heartbeats of running commands from agents",
            registry=r,
        )
        self.results = Counter(
            "fleetcmd_server_results_total",
            "Results passed to the indexer",
            ["outcome"],
            registry=r,
        )
        self.handled = Counter(
            "fleetcmd_server_commands_handled_total",
            "Server-bound commands handled",
            ["action", "status"],
            registry=r,
        )
        self.lost = Counter(
            "fleetcmd_server_leases_lost_total",
            "Commands dropped from mailboxes (lease lost or mark refused)",
            registry=r,
        )
        self.released = Counter(
            "fleetcmd_server_leases_released_total",
            "Commands released because their agent went away",
            registry=r,
        )
        self.enrolled = Counter("fleetcmd_server_enrollments_total", "Agents enrolled", registry=r)
        self.bulk = Histogram(
            "fleetcmd_server_bulk_seconds",
            "Bulk request latency",
            ["kind"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
        )
