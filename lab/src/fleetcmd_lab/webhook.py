"""A webhook receiver for the lab (issue 18): the events benchmark's and the chaos runner's
subscriber. One asyncio HTTP/1.1 server on loopback in a thread of the caller's process,
keep-alive, that answers as told (200, another status, after a delay) and records every event
id it accepted, in arrival order, repeats included.

Light on purpose: it parses the body once (the ids), checks the HMAC signature (one SHA-256
over the body) and does nothing else, so that in the benchmark the dispatcher, not the
receiver, is what is measured. The tests' receiver (tests/support/receivers.py) is a plain
threading server with more checks; the lab cannot import the tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from fleetcmd.model.subscriptions import SIGNATURE_HEADER, verify


class Sink:
    """`answer(status, delay)` sets how it answers, at any time: `status` 200 accepts and
    records, anything else refuses and records nothing; `delay` is seconds before answering.
    `record` (a file) gets one JSON line per accepted batch (`t`, `ids`): a run's evidence.
    `secret` (set once the subscriber is registered) checks each signature; before it is
    known, none is checked."""

    def __init__(self, secret: str = "", record: Path | None = None) -> None:
        self.secret = secret
        self.status = 200
        self.delay = 0.0
        self.record = record
        self.lock = threading.Lock()
        self.ids: list[int] = []  # accepted, arrival order, repeats included
        self.batches = 0
        self.refused = 0
        self.bad_signatures = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._serve, name="webhook-sink", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        self.url: str = f"http://127.0.0.1:{port}/hook"

    def answer(self, status: int | None = None, delay: float | None = None) -> None:
        with self.lock:
            if status is not None:
                self.status = status
            if delay is not None:
                self.delay = delay

    def seen(self) -> set[int]:
        with self.lock:
            return set(self.ids)

    def figures(self) -> dict[str, Any]:
        with self.lock:
            return {
                "received": len(self.ids),
                "unique": len(set(self.ids)),
                "batches": self.batches,
                "refused": self.refused,
                "bad_signatures": self.bad_signatures,
            }

    # -- the server -----------------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status = await self._answer(headers, body)
                reason = "OK" if status == 200 else "Refused"
                writer.write(
                    f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                    "Content-Length: 2\r\n\r\n{}".encode()
                )
                await writer.drain()
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            asyncio.LimitOverrunError,
            asyncio.CancelledError,
        ):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            status, delay = self.status, self.delay
        if delay:
            await asyncio.sleep(delay)
        if status != 200:
            with self.lock:
                self.refused += 1
            return status
        arrived = time.time()
        ids = [int(e["id"]) for e in json.loads(body)["events"]]
        signed = not self.secret or verify(
            self.secret, headers.get(SIGNATURE_HEADER.lower(), ""), body, now=arrived
        )
        with self.lock:
            self.ids.extend(ids)
            self.batches += 1
            self.bad_signatures += not signed
            self.first_at = self.first_at or arrived
            self.last_at = arrived
            if self.record is not None:
                with self.record.open("a") as f:
                    f.write(json.dumps({"t": round(arrived, 3), "ids": ids}) + "\n")
        return 200

    def close(self) -> None:
        """Stop listening, end every open connection (a delayed answer included), stop the
        loop and close it: nothing is left pending for the garbage collector."""

        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(RuntimeError, TimeoutError):
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
