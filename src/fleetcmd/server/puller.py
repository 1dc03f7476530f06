"""The command puller: agent- and server-bound commands out of the indexer's stream.

Agent commands go into mailboxes under a lease that this node renews while it holds them;
a node that cannot renew (a zombie after a partition) drops them, since another node now
owns them. Commands of agents that stopped polling are released back to the stream."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fleetcmd.server import handlers
from fleetcmd.server.indexer_client import IndexerClient
from fleetcmd.server.mailbox import Mailboxes
from fleetcmd.server.state import ServerState

log = logging.getLogger("fleetcmd.server.puller")

CHUNK = 10_000
PULL_LIMIT = 1000
# Agent batches being marked and mailboxed while the next pull is already out: a fan-out to
# thousands of agents arrives as several batches, and waiting for each batch's mark before
# asking for the next left the indexer idle half of the time. (Agents still get their own
# commands in id order: a mailbox hands them sorted.)
AGENT_BATCHES_IN_FLIGHT = 2


def lease_until(asked_at: float, lease: float) -> float:
    """Local end of a lease claimed or renewed by a request sent at `asked_at` (monotonic),
    with a margin: the store's lease ends no earlier than that."""
    return asked_at + lease - min(1.0, lease / 10)


async def renew_leases(
    indexer: IndexerClient, owner: str, mailboxes: Mailboxes, ids: list[int], lease: float
) -> tuple[list[int], set[str]]:
    """Renew the leases of mailboxed commands in one request and extend the entries still
    held. Returns the ids lost (final, released or another node's now) and the agents
    whose held-back entries may be handed again. Used by the renewal loop and, through a
    bulker, before a mailbox hands out an entry it has not had confirmed lately."""
    asked_at = time.monotonic()
    data = await indexer.post(
        "/leases/renew", {"owner": owner, "ids": ids, "lease": lease}, idempotent=True
    )
    woken = mailboxes.extend(data["held"], lease_until(asked_at, lease))
    return [int(i) for i in data["lost"]], woken


class Puller:
    def __init__(self, st: ServerState) -> None:
        self.st = st
        self.node = st.options.node_id
        self.owner = st.owner  # NODE#INCARNATION: leases are this process's, not the node's

    # -- agent-bound ---------------------------------------------------------------------------
    async def agent_loop(self) -> None:
        await self._pull_loop("agent", self.deliver, overlap=AGENT_BATCHES_IN_FLIGHT)

    def lease_until(self, asked_at: float) -> float:
        return lease_until(asked_at, self.st.options.lease)

    async def claim_for(self, agent_ids: list[str]) -> None:
        """Right after agents connect: claim what waits for them without waiting for the
        long-poll's next round."""
        for i in range(0, len(agent_ids), CHUNK):
            asked_at = time.monotonic()
            data = await self.st.indexer.post(
                "/pull",
                {
                    "owner": self.owner,
                    "target_type": "agent",
                    "target_ids": agent_ids[i : i + CHUNK],
                    "limit": 10_000,
                    "wait": 0,
                    "lease": self.st.options.lease,
                },
            )
            self.st.metrics.pulls.labels("agent").inc()
            if data["commands"]:
                await self.deliver(data["commands"], asked_at)

    async def deliver(self, commands: list[dict[str, Any]], asked_at: float | None = None) -> None:
        """Mark `sent` in one batch, mailbox what the indexer accepts (under the lease asked
        for at `asked_at`), wake the polls. Nothing is handed before the mark: a node that
        lost the lease meanwhile (it was paused) delivers nothing."""
        st = self.st
        st.metrics.pulled.labels("agent").inc(len(commands))
        ids = [int(c["id"]) for c in commands]
        answer = await st.indexer.post(
            "/commands/mark", {"owner": self.owner, "ids": ids, "status": "sent"}, idempotent=True
        )
        refused = set(answer["refused"])
        if refused:
            log.warning(
                "indexer refused %d command(s) as sent (lease lost): %s",
                len(refused),
                sorted(refused)[:20],
            )
            st.metrics.lost.inc(len(refused))
        until = self.lease_until(time.monotonic() if asked_at is None else asked_at)
        woken: set[str] = set()
        for c in commands:
            if int(c["id"]) in refused:
                continue
            st.mailboxes.put(c, until)
            agent_id = str(c["target"]["id"])
            log.debug(
                "command %s (task %s, %s) -> mailbox of agent %s",
                c["id"],
                c.get("task_id"),
                c["action"]["name"],
                agent_id,
            )
            woken.add(agent_id)
        for agent_id in woken:
            box = st.mailboxes.get(agent_id)
            if box is not None:
                box.wake()
        st.metrics.mailbox_depth.set(st.mailboxes.depth())

    async def renew_loop(self) -> None:
        """Keep the leases of commands waiting in mailboxes; drop the ones lost."""
        while True:
            await asyncio.sleep(self.st.options.lease / 3)
            try:
                await self.renew()
            except Exception as exc:
                log.warning("lease renewal failed: %s", exc)

    async def renew(self) -> None:
        st = self.st
        ids = st.mailboxes.held_ids()
        for i in range(0, len(ids), CHUNK):
            lost, woken = await renew_leases(
                st.indexer, self.owner, st.mailboxes, ids[i : i + CHUNK], st.options.lease
            )
            for agent_id in woken:
                box = st.mailboxes.get(agent_id)
                if box is not None:
                    box.wake()
            if lost:
                log.warning(
                    "lost the lease of %d command(s); dropping them from mailboxes", len(lost)
                )
                st.mailboxes.drop(lost)
                st.metrics.lost.inc(len(lost))
        st.metrics.mailbox_depth.set(st.mailboxes.depth())

    async def away_loop(self, interval: float = 1.0) -> None:
        """Release the commands of agents silent for more than twice their poll wait, so
        they wait in the stream (and go to whichever node the agent returns to)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.release_away()
            except Exception as exc:
                log.warning("releasing commands of away agents failed: %s", exc)

    async def release_away(self) -> None:
        st = self.st
        now = time.monotonic()
        boxes = st.mailboxes.boxes()
        st.metrics.connected.set(len(st.mailboxes.connected(now)))
        away = [b for b in boxes if b.polls == 0 and now - b.last_poll > 2 * b.poll_wait]
        if not away:
            return
        ids = [cid for b in away for cid in b.entries]
        await st.presence.away([b.agent_id for b in away])
        if ids:
            for i in range(0, len(ids), CHUNK):
                await st.indexer.post(
                    "/leases/release",
                    {"owner": self.owner, "ids": ids[i : i + CHUNK]},
                    idempotent=True,
                )
            st.mailboxes.drop(ids)
            st.metrics.released.inc(len(ids))
            log.info("released %d command(s) of %d away agent(s)", len(ids), len(away))
        for b in away:
            st.mailboxes.forget(b.agent_id)
        st.metrics.mailbox_depth.set(st.mailboxes.depth())

    # -- server-bound --------------------------------------------------------------------------
    async def server_loop(self) -> None:
        await self._pull_loop("server", self.run_server_commands)

    async def run_server_commands(
        self, commands: list[dict[str, Any]], asked_at: float = 0.0
    ) -> None:
        st = self.st
        st.metrics.pulled.labels("server").inc(len(commands))
        ids = [int(c["id"]) for c in commands]
        answer = await st.indexer.post(
            "/commands/mark", {"owner": self.owner, "ids": ids, "status": "sent"}, idempotent=True
        )
        refused = set(answer["refused"])
        results = []
        for c in commands:
            if int(c["id"]) in refused:
                continue
            outcome = await handlers.handle(st, c)
            st.metrics.handled.labels(c["action"]["name"], outcome.status).inc()
            log.info(
                "command %s (task %s) %s on %s: %s %s",
                c["id"],
                c.get("task_id"),
                c["action"]["name"],
                self.node,
                outcome.status,
                outcome.message,
            )
            results.append(
                {
                    "id": int(c["id"]),
                    "status": outcome.status,
                    "code": outcome.code,
                    "message": outcome.message,
                    "data": outcome.data,
                }
            )
        if results:
            await st.indexer.post("/results", {"results": results}, idempotent=True)

    # -- shared --------------------------------------------------------------------------------
    async def _pull_loop(self, target_type: str, consume: Any, overlap: int = 1) -> None:
        """Pull, consume, pull again. With `overlap` > 1, up to that many batches are consumed
        in the background while the next pull is out (server-bound commands: one at a time,
        in order)."""
        st = self.st
        wait = st.options.pull_wait
        failures = 0
        slots = asyncio.Semaphore(overlap)
        running: set[asyncio.Task[None]] = set()

        async def consume_one(commands: list[dict[str, Any]], asked_at: float) -> None:
            try:
                await consume(commands, asked_at)
            except Exception as exc:
                log.warning(
                    "%s batch of %d command(s) not delivered (%s); their leases "
                    "lapse and they are claimed again",
                    target_type,
                    len(commands),
                    exc,
                )
            finally:
                slots.release()

        try:
            while True:
                await slots.acquire()
                try:
                    asked_at = time.monotonic()
                    data = await st.indexer.post(
                        "/pull",
                        {
                            "owner": self.owner,
                            "target_type": target_type,
                            "node": self.node,
                            "limit": PULL_LIMIT,
                            "wait": wait,
                            "lease": st.options.lease,
                        },
                        timeout=wait + 15,
                    )
                    st.metrics.pulls.labels(target_type).inc()
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    slots.release()
                    failures += 1
                    delay = min(10.0, 0.5 * 2 ** min(failures, 5))
                    log.warning("%s pull failed (%s); retrying in %.1fs", target_type, exc, delay)
                    await asyncio.sleep(delay)
                    continue
                if not data["commands"]:
                    slots.release()
                elif overlap == 1:
                    await consume_one(data["commands"], asked_at)
                else:
                    task = asyncio.create_task(consume_one(data["commands"], asked_at))
                    running.add(task)
                    task.add_done_callback(running.discard)
        finally:
            for task in list(running):
                task.cancel()
