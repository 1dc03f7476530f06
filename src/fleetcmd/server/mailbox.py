"""Per-agent mailboxes: commands this node holds (under lease) for agents polling it.

A command enters when the puller claims it and leaves when the agent acks it, when the lease
is lost (another node owns it now) or when the agent stays away and it is released. A
long-poll waits on the mailbox's event, so a command reaches its agent the moment it lands
(wake-ups, not polling)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

# A command handed to a poll but not acked is offered again after this long (the agent may
# have died between the answer and its ack; its journal makes a repeat harmless).
REDELIVER_AFTER = 15.0
# Ids an agent was given, remembered to accept repeated acks and to check result ownership.
HISTORY = 4096
# An entry the stream confirmed as still this node's less than this long ago is handed at
# once; an older one (the agent was away, or it is offered again) is confirmed first, so
# that a command cancelled or expired meanwhile is never handed out (checkin.take).
CONFIRM_AFTER = 2.0


@dataclass
class Entry:
    command: dict[str, Any]
    handed_at: float | None = None
    # Until when (monotonic) this node surely holds the lease: counted from the moment the
    # claim or renewal was *asked*, so a node stopped (SIGSTOP, a long pause) past it hands
    # nothing until a renewal confirms the lease is still its own.
    lease_until: float = float("inf")
    # When (monotonic) the stream last said this node holds it undelivered (mark, renewal).
    confirmed_at: float = field(default_factory=time.monotonic)


@dataclass
class Mailbox:
    agent_id: str
    entries: dict[int, Entry] = field(default_factory=dict)
    # id -> action name of commands handed to this agent (acked or not), bounded.
    history: OrderedDict[int, str] = field(default_factory=OrderedDict)
    event: asyncio.Event = field(default_factory=asyncio.Event)
    last_poll: float = 0.0
    poll_wait: float = 30.0
    polls: int = 0  # long-polls in flight
    # Bumped by each new long-poll: an older one still waiting was left by its client (cut
    # by a proxy, a dead connection), so it yields, and what lands goes to the newest.
    generation: int = 0

    def ready(self, now: float) -> list[Entry]:
        """Entries to hand now: never handed, or handed long ago and still not acked; in id
        order (the order they were filed), whichever batch brought each."""
        out = []
        for _, e in sorted(self.entries.items()):
            if e.lease_until <= now:
                continue  # maybe another node's by now: wait for the renewal's verdict
            if e.handed_at is None or now - e.handed_at >= REDELIVER_AFTER:
                e.handed_at = now
                out.append(e)
        return out

    def next_redelivery(self, now: float) -> float | None:
        times = [
            e.handed_at + REDELIVER_AFTER - now
            for e in self.entries.values()
            if e.handed_at is not None and e.lease_until > now
        ]
        return max(0.0, min(times)) if times else None

    def remember(self, command: dict[str, Any]) -> None:
        self.history[int(command["id"])] = str(command.get("action", {}).get("name", ""))
        while len(self.history) > HISTORY:
            self.history.popitem(last=False)

    def wake(self) -> None:
        self.event.set()
        self.event = asyncio.Event()


class Mailboxes:
    def __init__(self) -> None:
        self._boxes: dict[str, Mailbox] = {}
        self._owner: dict[int, str] = {}  # command id -> agent id, for lease bookkeeping

    def box(self, agent_id: str) -> Mailbox:
        b = self._boxes.get(agent_id)
        if b is None:
            b = self._boxes[agent_id] = Mailbox(agent_id)
        return b

    def get(self, agent_id: str) -> Mailbox | None:
        return self._boxes.get(agent_id)

    def put(self, command: dict[str, Any], lease_until: float = float("inf")) -> None:
        agent_id = str(command["target"]["id"])
        b = self.box(agent_id)
        cid = int(command["id"])
        b.entries[cid] = Entry(command, lease_until=lease_until)
        b.remember(command)
        self._owner[cid] = agent_id

    def extend(self, ids: list[int], lease_until: float) -> set[str]:
        """Leases renewed: these entries may be handed until `lease_until`; returns the
        agents whose mailboxes had entries held back (to wake their polls)."""
        now = time.monotonic()
        woken: set[str] = set()
        for cid in ids:
            agent_id = self._owner.get(cid)
            b = self._boxes.get(agent_id) if agent_id is not None else None
            e = b.entries.get(cid) if b is not None else None
            if e is not None:
                if e.lease_until <= now:
                    woken.add(e.command["target"]["id"])
                e.lease_until = max(e.lease_until, lease_until)
                e.confirmed_at = now
        return woken

    def drop(self, ids: list[int]) -> dict[str, list[int]]:
        """Remove commands (acked, lost or released); return them per agent."""
        out: dict[str, list[int]] = {}
        for cid in ids:
            agent_id = self._owner.pop(cid, None)
            if agent_id is None:
                continue
            b = self._boxes.get(agent_id)
            if b is not None and b.entries.pop(cid, None) is not None:
                out.setdefault(agent_id, []).append(cid)
        return out

    def held_ids(self) -> list[int]:
        """Every command this node holds for agents and not yet acked (to renew leases)."""
        return list(self._owner)

    def depth(self) -> int:
        return len(self._owner)

    def boxes(self) -> list[Mailbox]:
        return list(self._boxes.values())

    def connected(self, now: float | None = None) -> list[Mailbox]:
        """Agents polling now or within their poll window."""
        t = time.monotonic() if now is None else now
        return [
            b for b in self._boxes.values() if b.polls > 0 or t - b.last_poll <= 2 * b.poll_wait
        ]

    def forget(self, agent_id: str) -> None:
        """Drop an agent's (empty) mailbox once it went away, to keep memory bounded."""
        b = self._boxes.get(agent_id)
        if b is not None and not b.entries and b.polls == 0:
            del self._boxes[agent_id]
