"""Simulated agents for the chaos runs: the real Comms API, with a record of every execution.

Each one behaves like `fleetcmd agent` where it matters to the invariants: a command id is
journaled before it is acknowledged and executed once; a redelivered id is answered from the
journal, never executed again; results wait in an outbox until the server gave each an
outcome; every failed call backs off with full jitter (so thousands reconnecting after a
server restart spread out). Every execution is appended to a record file (one JSON line:
agent, command id, status) which the invariant checker reads. Run as its own process:

    python -m fleetcmd_lab.chaos.simagents --server URL --enrollment-key K --agents N \
        --prefix sim --record FILE --summary FILE

SIGTERM stops polling, drains the outboxes (bounded wait) and writes the summary."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import httpx

from fleetcmd.model.config import config_hash


class SimAgent:
    def __init__(
        self, client: httpx.AsyncClient, name: str, record: TextIO, rng: random.Random
    ) -> None:
        self.client = client
        self.name = name
        self.record = record
        self.rng = rng
        self.id = ""
        self.secret = ""
        self.token = ""
        self.journal: dict[int, dict[str, Any]] = {}
        # As the agent: handed but not confirmed by the ack's answer (not run), and those
        # whose ack got no answer at all (asked again before the next poll).
        self.offered: dict[int, dict[str, Any]] = {}
        self.unanswered: dict[int, dict[str, Any]] = {}
        self.outbox: dict[int, dict[str, Any]] = {}
        self.handed = 0
        self.redelivered = 0
        self.failures = 0
        self.connected = False

    async def delay(self) -> None:
        """Full-jitter exponential backoff after a failed call."""
        self.failures += 1
        ceiling = min(10.0, 0.5 * 2 ** min(self.failures - 1, 6))
        await asyncio.sleep(max(0.05, self.rng.uniform(0, ceiling)))

    async def enroll(self, key: str, groups: list[str]) -> None:
        while True:
            try:
                r = await self.client.post(
                    "/agents/enroll",
                    json={
                        "enrollment_key": key,
                        "name": self.name,
                        "groups": groups,
                        "version": "sim-1",
                    },
                )
                if r.status_code == 201:
                    data = r.json()["data"]
                    self.id, self.secret = data["id"], data["secret"]
                    self.failures = 0
                    return
            except httpx.HTTPError:
                pass
            await self.delay()

    async def authenticate(self) -> bool:
        r = await self.client.post(
            "/agents/authenticate", json={"id": self.id, "secret": self.secret}
        )
        if r.status_code != 200:
            return False
        self.token = r.json()["data"]["token"]
        return True

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def flush(self) -> bool:
        """Send the outbox; keep what got no outcome. True when it is empty."""
        if not self.outbox:
            return True
        r = await self.client.post(
            "/agents/results",
            headers=self.headers,
            json={"results": list(self.outbox.values())},
            timeout=30,
        )
        if r.status_code == 401:
            await self.authenticate()
            return False
        r.raise_for_status()
        for o in r.json()["data"]["results"]:
            self.outbox.pop(int(o["id"]), None)
        return not self.outbox

    def execute(self, c: dict[str, Any]) -> dict[str, Any]:
        args = c["action"].get("args") or {}
        data: dict[str, Any] = {}
        if isinstance(args.get("config"), dict):
            data = {"groups": args.get("groups", []), "config_hash": config_hash(args["config"])}
        if c["action"]["name"] == "delete":
            data = {"deleted": True}
        result = {
            "id": int(c["id"]),
            "status": "success",
            "code": 0,
            "message": "simulated",
            "data": data,
        }
        self.record.write(
            json.dumps(
                {
                    "agent": self.id,
                    "id": int(c["id"]),
                    "action": c["action"]["name"],
                    "status": "success",
                    "target": c["target"]["id"],
                    "t": time.time(),
                }
            )
            + "\n"
        )
        self.record.flush()
        return result

    async def run(self, wait: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.once(wait)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a simulator bug must show, not silence an agent
                self.connected = False
                print(f"{self.name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                await self.delay()

    async def once(self, wait: float) -> None:
        """One round: flush, long-poll, journal, ack, execute the fresh ones, flush."""
        try:
            if not self.token and not await self.authenticate():
                await self.delay()
                return
            await self.flush()
            if self.unanswered:
                retry, self.unanswered = list(self.unanswered.values()), {}
                await self.confirm_and_run(retry)
            r = await self.client.get(
                "/agents/commands",
                params={"wait": wait},
                headers=self.headers,
                timeout=wait + 15,
            )
            if r.status_code == 401:
                self.token = ""
                return
            r.raise_for_status()
            commands = r.json()["data"]["commands"]
            self.failures = 0
            self.connected = True
        except (httpx.HTTPError, KeyError, ValueError):
            self.connected = False
            await self.delay()
            return
        if not commands:
            return
        self.handed += len(commands)
        await self.confirm_and_run(commands)

    async def confirm_and_run(self, commands: list[dict[str, Any]]) -> None:
        """Journal as offered, ack, run only what the answer confirms (issue 14.1)."""
        fresh = []
        for c in commands:
            cid = int(c["id"])
            if cid not in self.journal:
                self.offered[cid] = c
                fresh.append(c)
                continue
            self.redelivered += 1
            if not self.journal[cid]:  # received, never finished: answered, not re-run
                self.journal[cid] = {
                    "id": cid,
                    "status": "failure",
                    "code": 3,
                    "message": "interrupted: not run again",
                    "data": {},
                }
            self.outbox[cid] = self.journal[cid]
        try:
            r = await self.client.post(
                "/agents/commands/ack",
                headers=self.headers,
                json={"ids": [int(c["id"]) for c in commands]},
            )
            r.raise_for_status()
            confirmed = {int(i) for i in r.json()["data"]["acked"]}
        except (httpx.HTTPError, KeyError, ValueError):
            self.unanswered.update((int(c["id"]), c) for c in fresh)
            return
        fresh = [c for c in fresh if int(c["id"]) in confirmed]
        for c in fresh:
            del self.offered[int(c["id"])]
            self.journal[int(c["id"])] = {}  # received: confirmed, about to run
        for c in fresh:
            result = self.execute(c)
            self.journal[int(c["id"])] = result
            self.outbox[int(c["id"])] = result
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            await self.flush()


async def main_async(args: argparse.Namespace) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rng = random.Random(args.seed)
    # One small client per agent, as each real agent has its own connection: a pool shared
    # by hundreds of long-polls can stall agents behind each other.
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=2)
    creds = Path(args.creds)
    saved: dict[str, dict[str, str]] = json.loads(creds.read_text()) if creds.exists() else {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    with open(args.record, "a") as record:
        async with contextlib.AsyncExitStack() as clients:
            agents = [
                SimAgent(
                    await clients.enter_async_context(
                        httpx.AsyncClient(base_url=args.server, limits=limits, timeout=30)
                    ),
                    f"{args.prefix}-{i:05d}",
                    record,
                    random.Random(rng.random()),
                )
                for i in range(args.agents)
            ]
            sem = asyncio.Semaphore(32)

            async def setup(a: SimAgent) -> None:
                async with sem:
                    if a.name in saved:
                        a.id, a.secret = saved[a.name]["id"], saved[a.name]["secret"]
                    else:
                        await a.enroll(
                            args.enrollment_key, [g for g in args.groups.split(",") if g]
                        )

            await asyncio.gather(*(setup(a) for a in agents))
            creds.write_text(json.dumps({a.name: {"id": a.id, "secret": a.secret} for a in agents}))
            tasks = [asyncio.create_task(a.run(args.wait, stop)) for a in agents]
            print(json.dumps({"event": "ready", "agents": len(agents)}), flush=True)
            status = Path(args.status)
            while not stop.is_set():
                status.write_text(
                    json.dumps(
                        {
                            "t": time.time(),
                            "connected": sum(a.connected for a in agents),
                            "handed": sum(a.handed for a in agents),
                            "outbox": sum(len(a.outbox) for a in agents),
                        }
                    )
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Drain: every result gets an outcome before the process ends (bounded).
            deadline = time.monotonic() + args.drain
            while time.monotonic() < deadline and any(a.outbox for a in agents):
                for a in agents:
                    with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                        await a.flush()
                await asyncio.sleep(0.5)
    Path(args.summary).write_text(
        json.dumps(
            {
                "agents": {
                    a.id: {
                        "name": a.name,
                        "outbox": sorted(a.outbox),
                        "handed": a.handed,
                        "redelivered": a.redelivered,
                        "executed": sorted(a.journal),
                    }
                    for a in agents
                }
            }
        )
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Simulated agents that record their executions")
    p.add_argument("--server", required=True)
    p.add_argument("--enrollment-key", required=True)
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--groups", default="")
    p.add_argument("--prefix", default="sim")
    p.add_argument("--creds", required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--wait", type=float, default=10)
    p.add_argument("--drain", type=float, default=60)
    p.add_argument("--seed", type=int, default=0)
    asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    main()
