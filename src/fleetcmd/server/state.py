"""What a server node's loops and routes share, wired once in `node.py`."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from fleetcmd.ratelimit import RateLimiter
from fleetcmd.server.bulker import Bulker
from fleetcmd.server.config import ServerConfig, ServerOptions
from fleetcmd.server.engine import Engine
from fleetcmd.server.enrollment_keys import EnrollmentKeys
from fleetcmd.server.indexer_client import IndexerClient
from fleetcmd.server.logins import LoginThrottle
from fleetcmd.server.mailbox import Mailboxes
from fleetcmd.server.metrics import ServerMetrics
from fleetcmd.server.packages import PackageStore
from fleetcmd.server.presence import Presence
from fleetcmd.server.rbac import RbacCache
from fleetcmd.server.tokens import TokenIssuer


@dataclass
class RemovedAgents:
    """Ids of agents removed from the fleet: their still-valid tokens are refused at once
    instead of working until they expire. Filled when a `delete` result passes through this
    node, when the indexer reports an agent removed, and by following the indexer's list of
    removed agents (`node.removed_loop`)."""

    ids: set[str] = field(default_factory=set)

    def add(self, agent_id: str) -> None:
        self.ids.add(agent_id)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self.ids


@dataclass
class ServerState:
    options: ServerOptions
    indexer: IndexerClient
    config: ServerConfig
    metrics: ServerMetrics
    mailboxes: Mailboxes
    presence: Presence
    rbac: RbacCache
    tokens: TokenIssuer
    results: Bulker[dict[str, Any], str]
    delivered: Bulker[int, bool]  # command id -> delivered now (acks)
    held: Bulker[int, bool]  # command id -> lease renewed: still this node's, undelivered
    # a heartbeat -> the next output chunk its command takes, None: not running
    progress: Bulker[dict[str, Any], int | None]
    targets: Bulker[int, dict[str, Any] | None]  # command id -> {type, id, action}
    engine: Engine
    packages: PackageStore
    enrollment_keys: EnrollmentKeys
    # Lease owner of this process: NODE#INCARNATION, new at every start, so that a restarted
    # node can hand back what its crashed predecessor held (puller.py, store release_previous).
    owner: str = ""
    # Per client address, on the Comms API's enrollment and authentication routes.
    enroll_limit: RateLimiter = field(default_factory=lambda: RateLimiter("enrollment", 0, 1))
    auth_limit: RateLimiter = field(default_factory=lambda: RateLimiter("authentication", 0, 1))
    removed: RemovedAgents = field(default_factory=RemovedAgents)
    logins: LoginThrottle = field(default_factory=LoginThrottle)
    # Agent events on their way to the engine: bounded, oldest dropped first.
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10_000))
    started_at: float = field(default_factory=time.time)
    # Set when the node stops: long-polls answer at once and live streams end, so the APIs
    # shut down in milliseconds instead of waiting for open requests.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def closed(self, request: Request) -> bool:
        """A live stream ends when its client left or the node is stopping."""
        return self.stopping.is_set() or await request.is_disconnected()

    # (fetched at, keys) of the indexer's command-signing public keys (comms/keys.py).
    command_keys: tuple[float, dict[str, Any]] | None = None


async def server_state(request: Request) -> ServerState:
    # async: a plain `def` dependency costs a threadpool hop on every request
    st: ServerState = request.app.state.server
    return st
