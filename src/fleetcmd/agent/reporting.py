"""What a long command reports while it runs (issue 17.3): the handler's progress (percent,
message) and output, picked up by the heartbeat the runner sends for it. Output is cut into
numbered chunks (model/wire.py `OUTPUT_CHUNK`), at most `OUTPUT_MAX` bytes a command; a
chunk is kept until an answer says the stream took it, so a lost heartbeat loses nothing."""

from __future__ import annotations

import threading
from typing import Any

from fleetcmd.model.progress import OUTPUT_CHUNK, OUTPUT_CHUNKS_PER_BEAT, OUTPUT_MAX

TRUNCATED = "\n[output truncated: over the limit of a command's output]\n"


class Reporter:
    """One command's progress and output, written by its handler's thread and read by the
    thread that heartbeats it."""

    def __init__(self, command_id: Any) -> None:
        self.command_id = command_id
        self._lock = threading.Lock()
        self.percent: float | None = None
        self.message: str | None = None
        self._buffer = ""
        self._pending: list[tuple[int, str]] = []
        self._next = 0
        self._bytes = 0
        self.truncated = False

    def progress(self, percent: float | None = None, message: str | None = None) -> None:
        with self._lock:
            if percent is not None:
                self.percent = max(0.0, min(100.0, float(percent)))
            if message is not None:
                self.message = message[:500]

    def write(self, text: str) -> None:
        """Append to the command's output (dropped past the limit, once said so)."""
        with self._lock:
            if self.truncated or not text:
                return
            room = OUTPUT_MAX - self._bytes - len(TRUNCATED.encode())
            raw = text.encode()
            if len(raw) > room:
                text = raw[: max(0, room)].decode(errors="ignore") + TRUNCATED
                self.truncated = True
            self._buffer += text
            self._bytes += len(text.encode())

    def beat(self, interval: float) -> dict[str, Any]:
        """The body of the next heartbeat: the latest progress and the oldest chunks unsent."""
        with self._lock:
            while self._buffer:
                piece, self._buffer = self._buffer[:OUTPUT_CHUNK], self._buffer[OUTPUT_CHUNK:]
                self._pending.append((self._next, piece))
                self._next += 1
            body: dict[str, Any] = {"id": self.command_id, "interval": interval}
            if self.percent is not None:
                body["percent"] = self.percent
            if self.message is not None:
                body["message"] = self.message
            if self._pending:
                body["output"] = [
                    {"seq": s, "data": d} for s, d in self._pending[:OUTPUT_CHUNKS_PER_BEAT]
                ]
            return body

    def taken(self, next_seq: int) -> None:
        """The stream holds the chunks below `next_seq`: they are not sent again."""
        with self._lock:
            self._pending = [(s, d) for s, d in self._pending if s >= next_seq]

    def unsent(self) -> bool:
        with self._lock:
            return bool(self._buffer or self._pending)
