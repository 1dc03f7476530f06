"""Agent connection state, written to the indexer in batches.

The indexer only hands this node the commands of agents whose `node` is this node, so a new
connection is flushed within ~50 ms (its waiting commands become claimable at once); refreshes
of `last_seen` go out at most once a second."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fleetcmd.server.indexer_client import IndexerClient

log = logging.getLogger("fleetcmd.server.presence")

NEW_CONNECTION_FLUSH = 0.03
FLUSH_INTERVAL = 1.0
# Re-report a steadily polling agent this often (the indexer disconnects it after ~60 s).
REFRESH_AFTER = 15.0

OnConnected = Callable[[list[str]], Awaitable[None]]


class Presence:
    def __init__(self, indexer: IndexerClient, node_id: str) -> None:
        self.indexer = indexer
        self.node_id = node_id
        self.on_connected: OnConnected | None = None
        self._pending: dict[str, dict[str, Any]] = {}
        self._new: set[str] = set()
        self._reported: dict[str, float] = {}
        self._urgent = asyncio.Event()

    def seen(self, agent_id: str, returning: bool = False) -> None:
        """Called on every poll: queue an update if the agent is new here, comes back after
        a gap (it may have polled another node meanwhile) or is due a refresh."""
        now = time.monotonic()
        last = None if returning else self._reported.get(agent_id)
        if last is not None and now - last < REFRESH_AFTER:
            return
        self._reported[agent_id] = now
        self._pending[agent_id] = {
            "id": agent_id,
            "node": self.node_id,
            "status": "active",
            "last_seen": time.time(),
        }
        if last is None:
            self._new.add(agent_id)
            self._urgent.set()

    async def away(self, agent_ids: list[str]) -> None:
        """Agents that stopped polling: detach them from this node *before* their commands
        are released, so this node does not claim them straight back."""
        for a in agent_ids:
            self._reported.pop(a, None)
            self._pending.pop(a, None)
            self._new.discard(a)
        await self.indexer.post(
            "/agents/updates",
            {
                "updates": [
                    {"id": a, "status": "disconnected", "node": "", "if_node": self.node_id}
                    for a in agent_ids
                ]
            },
            idempotent=True,
        )

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._urgent.wait(), FLUSH_INTERVAL)
                await asyncio.sleep(NEW_CONNECTION_FLUSH)  # coalesce a burst of connections
            except TimeoutError:
                pass
            self._urgent.clear()
            try:
                await self.flush()
            except Exception as exc:
                log.warning("agent state flush failed: %s", exc)
                await asyncio.sleep(1.0)

    async def flush(self) -> None:
        if not self._pending:
            return
        updates, self._pending = list(self._pending.values()), {}
        new, self._new = sorted(self._new), set()
        try:
            await self.indexer.post("/agents/updates", {"updates": updates}, idempotent=True)
        except Exception:
            for u in updates:  # try again next round, unless a newer one was queued
                self._pending.setdefault(u["id"], u)
            self._new.update(new)
            raise
        if new:
            log.info("%d agent(s) connected to %s", len(new), self.node_id)
            if self.on_connected is not None:
                await self.on_connected(new)
