"""A light asyncio agent simulator that speaks the real Comms API (for load benchmarks).

Each simulated agent enrolls (or reuses saved credentials), authenticates, long-polls, acks
what it receives and posts a success result, as `fleetcmd agent` does but without a state
folder. It runs as its own process so the load does not share the server's interpreter:

    python -m fleetcmd_lab.bench.simulator --server URL[,URL…] --enrollment-key K --agents N

Agents are spread over the servers given (agent i polls server i mod n). Each agent keeps one
keep-alive connection and speaks HTTP/1.1 over asyncio streams directly: a general-purpose
client costs more CPU per request than the server under test, and the load process must
stay the cheap side of the measurement. It prints one JSON line per event on stdout:
`ready`, `progress`, `command` (with `--trace`: every command as an agent takes it),
and `done` (counts, duplicates: command ids an agent was handed more than once).
"""

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
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleetcmd import gctune
from fleetcmd.agent.backoff import Backoff
from fleetcmd.model.config import config_hash


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


class HttpError(Exception):
    def __init__(self, status: int, body: Any, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


class Connection:
    """One keep-alive HTTP/1.1 connection, reopened when the server closes it."""

    def __init__(self, url: str) -> None:
        u = urlsplit(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.requests = 0  # attempts, failed ones included (retry amplification in storms)

    async def close(self) -> None:
        w, self.reader, self.writer = self.writer, None, None
        if w is not None:
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()

    async def request(
        self, method: str, path: str, body: Any = None, token: str = "", timeout: float = 60
    ) -> Any:
        """Send one request; return the decoded JSON `data` of a 2xx answer, else raise."""
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        head += f"Content-Length: {len(payload)}\r\n\r\n"
        for attempt in (0, 1):
            fresh = self.writer is None
            self.requests += 1
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                assert self.reader is not None
                self.writer.write(head.encode() + payload)
                status, data, keep, retry_after = await asyncio.wait_for(
                    self._answer(self.reader), timeout
                )
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                await self.close()
                if attempt or fresh:  # a stale keep-alive connection earns one retry
                    raise
                continue
            if not keep:
                await self.close()
            if status >= 400:
                raise HttpError(status, data, retry_after)
            return data.get("data") if isinstance(data, dict) else data
        raise AssertionError("unreachable")

    @staticmethod
    async def _answer(reader: asyncio.StreamReader) -> tuple[int, Any, bool, float | None]:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            body = b"".join(parts)
        else:
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        keep = headers.get("connection", "").lower() != "close"
        retry_after = None
        with contextlib.suppress(ValueError):
            retry_after = float(headers["retry-after"]) if "retry-after" in headers else None
        try:
            data = json.loads(body) if body else None
        except ValueError:  # a proxy's own error page (HAProxy's 502/503 are HTML)
            data = body.decode(errors="replace")
        return status, data, keep, retry_after


class SimAgent:
    def __init__(self, server: str, name: str, trace: bool = False) -> None:
        self.conn = Connection(server)
        self.name = name
        self.trace = trace
        self.id = ""
        self.secret = ""
        self.token = ""
        self.handed: Counter[int] = Counter()
        self.executed: set[int] = set()
        self.errors = 0

    @property
    def received(self) -> int:
        return sum(self.handed.values())

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.handed.values() if n > 1)

    async def enroll(self, key: str, groups: list[str]) -> None:
        data = await self.conn.request(
            "POST",
            "/agents/enroll",
            {"enrollment_key": key, "name": self.name, "groups": groups, "version": "sim-1"},
        )
        self.id, self.secret = data["id"], data["secret"]

    async def authenticate(self) -> None:
        data = await self.conn.request(
            "POST", "/agents/authenticate", {"id": self.id, "secret": self.secret}
        )
        self.token = data["token"]

    async def run(self, wait: float) -> None:
        # The real agent's backoff (full jitter, Retry-After honoured): after a server restart
        # the simulated fleet comes back the way a real one would.
        backoff = Backoff(base=0.5, cap=10.0)
        while True:
            try:
                data = await self.conn.request(
                    "GET", f"/agents/commands?wait={wait}", token=self.token, timeout=wait + 30
                )
                commands = data["commands"]
                if commands:
                    await self.execute(commands)
                backoff.reset()
            except HttpError as exc:
                await self.recover(exc, backoff)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, KeyError):
                self.errors += 1
                await asyncio.sleep(backoff.next_delay())

    async def recover(self, exc: HttpError, backoff: Backoff) -> None:
        """After an error answer: authenticate again on 401, else wait (Retry-After when the
        server said, plus jitter; else the backoff's next delay)."""
        self.errors += 1
        if exc.status == 401:
            with contextlib.suppress(Exception):
                await self.authenticate()
            return
        delay = backoff.next_delay()
        if exc.retry_after is not None:
            delay = exc.retry_after + backoff.jitter(1.0)
        await asyncio.sleep(delay)

    async def execute(self, commands: list[dict[str, Any]]) -> None:
        now = time.time()
        ids = [int(c["id"]) for c in commands]
        self.handed.update(ids)
        if self.trace:
            for c in commands:
                say("command", agent=self.id, id=c["id"], task_id=c.get("task_id"), at=now)
        # As the agent does: only what the ack's answer confirms runs (a command cancelled or
        # expired meanwhile must not); an ack without an answer is asked again.
        backoff = Backoff(base=0.2, cap=5.0)
        while True:
            try:
                answer = await self.conn.request(
                    "POST", "/agents/commands/ack", {"ids": ids}, token=self.token
                )
                break
            except HttpError as exc:
                if 400 <= exc.status < 500 and exc.status not in (401, 429):
                    self.errors += 1
                    return  # refused for good (e.g. removed): nothing runs
                await self.recover(exc, backoff)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                self.errors += 1
                await asyncio.sleep(backoff.next_delay())
        confirmed = {int(i) for i in answer.get("acked") or []}
        commands = [c for c in commands if int(c["id"]) in confirmed]
        ids = [int(c["id"]) for c in commands]
        if not commands:
            return
        results = []
        for c in commands:
            data: dict[str, Any] = {}
            args = c["action"]["args"]
            if "config" in args:
                data = {
                    "groups": args.get("groups", []),
                    "config_hash": config_hash(args["config"]),
                }
            results.append(
                {
                    "id": c["id"],
                    "status": "success",
                    "code": 0,
                    "message": "simulated",
                    "data": data,
                }
            )
        # Like the agent's outbox: a result is kept and sent again until the server took it
        # (or refused it for good with a 4xx other than 401/429), however long that takes.
        backoff = Backoff(base=0.2, cap=10.0)
        while True:
            try:
                await self.conn.request(
                    "POST", "/agents/results", {"results": results}, token=self.token
                )
                self.executed.update(ids)
                return
            except HttpError as exc:
                if 400 <= exc.status < 500 and exc.status not in (401, 429):
                    self.errors += 1
                    say("refused", agent=self.id, status=exc.status, body=exc.body)
                    return
                await self.recover(exc, backoff)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                self.errors += 1
                await asyncio.sleep(backoff.next_delay())


async def main_async(args: argparse.Namespace) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    servers = args.server.split(",")
    creds_path = Path(args.creds) if args.creds else None
    saved: dict[str, dict[str, str]] = {}
    if creds_path and creds_path.exists():
        saved = json.loads(creds_path.read_text())
    agents = [
        SimAgent(servers[i % len(servers)], f"{args.prefix}-{i:06d}", trace=args.trace)
        for i in range(args.agents)
    ]
    sem = asyncio.Semaphore(args.concurrency)

    async def setup(a: SimAgent) -> None:
        async with sem:
            for attempt in range(20):  # a rate-limited server answers 429: try again later
                try:
                    if a.name in saved:
                        a.id, a.secret = saved[a.name]["id"], saved[a.name]["secret"]
                    elif not a.id:
                        groups = args.groups.split(",") if args.groups else []
                        await a.enroll(args.enrollment_key, groups)
                    await a.authenticate()
                    return
                except HttpError as exc:
                    if exc.status != 429 or attempt == 19:
                        raise
                    await asyncio.sleep(0.5 * random.uniform(1, 3))

    started = time.time()
    await asyncio.gather(*(setup(a) for a in agents))
    if creds_path and len(saved) < len(agents):
        creds_path.write_text(
            json.dumps({a.name: {"id": a.id, "secret": a.secret} for a in agents})
        )
    gctune.settle()  # the load process holds as many objects as the server: same GC settings
    # Start the long-polls spread over a short window, as a real fleet would be.
    tasks = []
    for i, a in enumerate(agents):
        tasks.append(asyncio.create_task(a.run(args.wait)))
        if i % 500 == 499:
            await asyncio.sleep(0.05)
    await asyncio.sleep(min(5.0, 0.5 + args.agents / 4000))
    say("ready", agents=len(agents), setup_seconds=round(time.time() - started, 2))
    deadline = time.monotonic() + args.duration
    stopping = asyncio.Event()  # SIGTERM: stop polling, still say `done`
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    last = (-1, -1)
    last_said = 0.0
    while time.monotonic() < deadline and not stopping.is_set():
        now = (sum(a.received for a in agents), sum(len(a.executed) for a in agents))
        if now != last or time.monotonic() - last_said >= 1.0:
            say(
                "progress",
                received=now[0],
                executed=now[1],
                requests=sum(a.conn.requests for a in agents),
                errors=sum(a.errors for a in agents),
            )
            last, last_said = now, time.monotonic()
        if args.expect and now[1] >= args.expect:
            break
        await asyncio.sleep(0.2)
    for t in tasks:
        t.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.gather(*tasks, return_exceptions=True)
    say(
        "done",
        received=sum(a.received for a in agents),
        executed=sum(len(a.executed) for a in agents),
        duplicates=sum(a.duplicates for a in agents),
        errors=sum(a.errors for a in agents),
        requests=sum(a.conn.requests for a in agents),
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Simulated agents over the real Comms API")
    p.add_argument("--server", required=True, help="Comms API URL(s), comma-separated")
    p.add_argument("--enrollment-key", required=True)
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--groups", default="")
    p.add_argument("--prefix", default="sim")
    p.add_argument("--creds", default="", help="JSON {name: {id, secret}} reused or written")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--wait", type=float, default=30)
    p.add_argument("--duration", type=float, default=600)
    p.add_argument("--expect", type=int, default=0, help="stop once this many results posted")
    p.add_argument("--trace", action="store_true", help="print every command as it is taken")
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.run(main_async(args))
    except ImportError:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
