"""A fault proxy on loopback: an asyncio TCP proxy that passes, delays, drops or blackholes
connections, controlled in-process from another thread.

Modes, as a network would show them:
- `pass`: bytes flow both ways;
- `delay`: each chunk waits `delay` seconds before it is forwarded (latency);
- `drop`: every open connection is reset and new ones are closed at once (a cut cable with
  the far end's RST: clients see errors immediately);
- `blackhole`: connections are accepted but nothing moves either way (packets vanish; TCP
  keeps retransmitting, so when the mode returns to `pass` the held bytes flow again, unless
  the client gave up first, exactly as after a real partition).

With several upstreams the proxy is a small load balancer with active health checks: every
new connection goes to the first healthy upstream; when the active one changes (it died, or
it came back), connections to the others are closed so that clients follow (fail-over and
fail-back, like HAProxy's `on-marked-down shutdown-sessions`). Memory is bounded: a pipe reads
the next chunk only after the previous one was written out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger("fleetcmd_lab.chaos.proxy")

Mode = Literal["pass", "delay", "drop", "blackhole"]
CHUNK = 64 * 1024


@dataclass(eq=False)
class _Conn:
    upstream: int
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for w in self.writers:
            with contextlib.suppress(Exception):
                w.transport.abort()
        for t in self.tasks:
            t.cancel()


class FaultProxy:
    def __init__(
        self,
        name: str,
        upstreams: list[tuple[str, int]],
        health_path: str | None = None,
        health_interval: float = 0.5,
    ) -> None:
        self.name = name
        self.upstreams = upstreams
        self.health_path = health_path
        self.health_interval = health_interval
        self.mode: Mode = "pass"
        self.delay = 0.0
        self.port = 0
        self.active = 0
        self.healthy = [True] * len(upstreams)
        self.connections = 0  # accepted, total
        self.switches = 0
        self._conns: set[_Conn] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._health: asyncio.Task[None] | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._accept, host, port, backlog=4096)
        self.port = int(self._server.sockets[0].getsockname()[1])
        if self.health_path and len(self.upstreams) > 1:
            self._health = asyncio.create_task(self._check_loop())
        return self.port

    async def stop(self) -> None:
        if self._health is not None:
            self._health.cancel()
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            c.close()

    def set_mode(self, mode: Mode, delay: float = 0.0) -> None:
        """Change the mode (call on the proxy's loop; `ProxyHost.set` does that for you)."""
        self.mode, self.delay = mode, delay
        if mode == "blackhole":
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode == "drop":
            self._close(lambda c: True)
        log.info("proxy %s: %s%s", self.name, mode, f" {delay}s" if mode == "delay" else "")

    def _close(self, which: Any) -> int:
        doomed = [c for c in self._conns if which(c)]
        for c in doomed:
            c.close()
            self._conns.discard(c)
        return len(doomed)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "drop":
            writer.transport.abort()
            return
        conn = _Conn(self.active, [writer])
        self._conns.add(conn)
        try:
            await self._flowing.wait()  # a blackhole: the SYN was answered, nothing else is
            host, port = self.upstreams[conn.upstream]
            try:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            except OSError:
                writer.transport.abort()
                return
            conn.writers.append(up_writer)
            conn.tasks = [
                asyncio.create_task(self._pipe(reader, up_writer)),
                asyncio.create_task(self._pipe(up_reader, writer)),
            ]
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass
        finally:
            conn.close()
            self._conns.discard(conn)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                if self.mode == "delay" and self.delay > 0:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.write_eof()

    # -- health checks (several upstreams) -------------------------------------------------------
    async def _check_loop(self) -> None:
        while True:
            results = await asyncio.gather(*(self._probe(h, p) for h, p in self.upstreams))
            self.healthy = list(results)
            best = next((i for i, ok in enumerate(results) if ok), self.active)
            if best != self.active:
                self.switches += 1
                old, self.active = self.active, best
                n = self._close(lambda c, keep=best: c.upstream != keep)
                log.info(
                    "proxy %s: upstream %d -> %d (%d connection(s) moved)", self.name, old, best, n
                )
            await asyncio.sleep(self.health_interval)

    async def _probe(self, host: str, port: int) -> bool:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        except (OSError, TimeoutError):
            return False
        try:
            w.write(f"GET {self.health_path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            line = await asyncio.wait_for(r.readline(), 1.0)
            return b" 200 " in line
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return False
        finally:
            w.transport.abort()


class ProxyHost:
    """An event loop in a daemon thread that runs the proxies; methods are thread-safe."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.proxies: dict[str, FaultProxy] = {}
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="fault-proxies", daemon=True
        )
        self._thread.start()

    def _run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add(
        self, name: str, upstreams: list[tuple[str, int]], health_path: str | None = None
    ) -> FaultProxy:
        proxy = FaultProxy(name, upstreams, health_path)
        self._run(proxy.start())
        self.proxies[name] = proxy
        return proxy

    def set(self, name: str, mode: Mode, delay: float = 0.0) -> None:
        proxy = self.proxies[name]

        async def apply() -> None:
            proxy.set_mode(mode, delay)

        self._run(apply())

    def close(self) -> None:
        async def stop_all() -> None:
            for p in self.proxies.values():
                await p.stop()

        with contextlib.suppress(Exception):
            self._run(stop_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
