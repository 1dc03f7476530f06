"""The log collector: owns the `logcollector` section and follows log files into events.

`logcollector`: `{"enabled": bool (true), "files": [{"path": "/var/log/auth.log", "format":
"syslog"|"json"} | "/var/log/app/*.log", …], "from": "end"|"start", "interval": s (1),
"max_eps": n (1000), "batch": n (500), "outbox": n (10000)}`. Hot-applied like every section;
disabled (or no files, or the section gone) it stops and removes what it kept: positions and
events not sent yet (R5).

One thread of its own (started only while files are configured), because events must not
wait for the main loop's 30 s long-poll: every `interval` it looks for the files
(`logfiles.Follower`: globs, rotation, truncation), takes at most `max_eps * interval` new
lines (the rate bound), decodes them (`logdecoders`) and commits the events *with* the file's
new position in one SQLite transaction (`agent.db`), so a crash neither loses a line nor
reads it twice. It then posts queued events, oldest first, in batches of `batch` (at most
512 KiB a post) to `POST /agents/events` over a Comms connection of its own (the main one is
busy with the long-poll). Events leave the outbox only once the server took them; an outage
keeps them, with jittered backoff, up to `outbox` events: then reading pauses (the files are
the buffer; nothing is dropped) until the server is back. Every event carries an `id` stable
across re-sends, by which the engine counts each event once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fleetcmd.agent.backoff import Backoff
from fleetcmd.agent.comms import AgentRemoved, CommsError
from fleetcmd.agent.modules import ConfigError, SectionModule, flag
from fleetcmd.agent.modules.logdecoders import FORMATS, decode
from fleetcmd.agent.modules.logfiles import Followed, Follower, Line, LogStore
from fleetcmd.agent.state import StateDir

log = logging.getLogger("fleetcmd.agent.logcollector")

MAX_FILES = 64
MAX_POST_BYTES = 512 * 1024
BATCHES_PER_TURN = 20
LIMITS = {  # key: (default, minimum, maximum)
    "interval": (1.0, 0.2, 60.0),
    "max_eps": (1000, 1, 100_000),
    "batch": (500, 1, 5000),
    "outbox": (10_000, 100, 1_000_000),
}


class EventChannel(Protocol):
    def events(self, events: list[dict[str, Any]]) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Settings:
    files: tuple[tuple[str, str], ...] = ()
    from_end: bool = True
    interval: float = 1.0
    max_eps: int = 1000
    batch: int = 500
    outbox: int = 10_000

    @property
    def active(self) -> bool:
        return bool(self.files)


def parse(section: dict[str, Any]) -> Settings:
    name = "logcollector"
    if not flag(section, name, "enabled", True):
        return Settings()
    unknown = set(section) - {"enabled", "files", "from", *LIMITS}
    if unknown:
        raise ConfigError(f"'{name}' has unknown keys: {', '.join(sorted(unknown))}")
    raw = section.get("files", [])
    if not isinstance(raw, list) or len(raw) > MAX_FILES:
        raise ConfigError(f"'{name}.files' must be a list of at most {MAX_FILES} files")
    files: list[tuple[str, str]] = []
    for i, item in enumerate(raw):
        entry = {"path": item} if isinstance(item, str) else item
        if not isinstance(entry, dict) or set(entry) - {"path", "format"}:
            raise ConfigError(f"'{name}.files[{i}]' must be a path or {{path, format}}")
        path, fmt = entry.get("path"), entry.get("format", "syslog")
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise ConfigError(f"'{name}.files[{i}].path' must be an absolute path or glob")
        if fmt not in FORMATS:
            raise ConfigError(f"'{name}.files[{i}].format' must be one of {', '.join(FORMATS)}")
        if (path, fmt) not in files:
            files.append((path, fmt))
    start = section.get("from", "end")
    if start not in ("end", "start"):
        raise ConfigError(f"'{name}.from' must be 'end' or 'start', got {start!r}")
    values: dict[str, Any] = {}
    for key, (default, low, high) in LIMITS.items():
        v = section.get(key, default)
        whole = isinstance(default, int)
        if isinstance(v, bool) or not isinstance(v, int if whole else int | float):
            raise ConfigError(f"'{name}.{key}' must be a number, got {v!r}")
        if not low <= v <= high:
            raise ConfigError(f"'{name}.{key}' must be in [{low}, {high}], got {v!r}")
        values[key] = v if whole else float(v)
    return Settings(tuple(files), start == "end", **values)


class LogCollector(SectionModule):
    section = "logcollector"

    def __init__(
        self,
        state: StateDir,
        channel: Callable[[], EventChannel | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.channel = channel
        self.clock = clock
        self.settings = Settings()
        self.read = self.sent = self.refused = 0
        self.following = 0
        self._store: LogStore | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- configuration ----------------------------------------------------------------------------
    def check(self, section: dict[str, Any]) -> None:
        parse(section)

    def configure(self, section: dict[str, Any]) -> list[str]:
        settings = parse(section)
        if settings == self.settings and (self._thread is not None or not settings.active):
            return []
        self._halt()
        store = self._store or LogStore(self.state.db_path)
        self._store = store
        if not settings.active:
            dropped = store.queued()
            store.clear()
            store.close()
            self._store = None
            was = self.settings.active
            self.settings = settings
            return (
                [f"log collector disabled: positions and {dropped} unsent event(s) removed"]
                if was or dropped
                else []
            )
        follower = Follower(store, list(settings.files), settings.from_end)
        store.set_sources([p for p, _ in settings.files])
        # The first look now, not in the thread: "from the end" is the end at this instant.
        follower.scan(time.monotonic())
        self.following = len(follower.files)
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(settings, follower, self._stop),
            name="logcollector",
            daemon=True,
        )
        self._thread.start()
        return [f"log collector following {', '.join(p for p, _ in settings.files)}"]

    def close(self) -> None:
        self._halt()
        if self._store is not None:
            self._store.close()
            self._store = None

    def _halt(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(60)
            self._thread = None

    def describe(self) -> dict[str, Any]:
        return {
            "enabled": self.settings.active,
            "files": [{"path": p, "format": f} for p, f in self.settings.files],
            "following": self.following,
            "queued": self._store.queued() if self._store is not None else 0,
            "read": self.read,
            "sent": self.sent,
            "refused": self.refused,
        }

    # -- the collector's thread ------------------------------------------------------------------
    def _run(self, settings: Settings, follower: Follower, stop: threading.Event) -> None:
        assert self._store is not None
        store = self._store
        backoff = Backoff(cap=60.0)
        channel: EventChannel | None = None
        next_send = 0.0
        queued = store.queued()
        paused = False
        turn = 0
        try:
            while True:
                now = time.monotonic()
                try:
                    follower.scan(now)
                    self.following = len(follower.files)
                    room = settings.outbox - queued
                    if room <= 0 and not paused:
                        log.warning(
                            "event outbox full (%d): reading paused until the server takes them",
                            queued,
                        )
                    paused = room <= 0
                    budget = min(max(1, int(settings.max_eps * settings.interval)), room)
                    files = list(follower.files.values())
                    turn += 1
                    for i in range(len(files)):  # a different file first each turn: fairness
                        f = files[(turn + i) % len(files)]
                        if budget > 0:
                            n = self._take(follower, store, f, budget, now)
                            queued, budget = queued + n, budget - n
                        follower.finish(f, now)
                except Exception:
                    log.exception("log collector: reading failed")
                if queued and now >= next_send:
                    if channel is None:
                        channel = self.channel()
                    if channel is not None:
                        try:
                            queued -= self._send(store, channel, settings.batch)
                            backoff.reset()
                        except AgentRemoved:
                            log.warning("log collector: the agent was removed; not sending")
                            next_send = float("inf")
                        except CommsError as exc:
                            delay = backoff.next_delay()
                            next_send = now + delay
                            log.warning(
                                "log collector: %d event(s) kept, sending failed (%s); "
                                "retrying in %.1fs",
                                queued,
                                exc,
                                delay,
                            )
                        except Exception:
                            log.exception("log collector: sending failed")
                            next_send = now + backoff.next_delay()
                if stop.wait(settings.interval):
                    return
        finally:
            follower.close()
            if channel is not None:
                channel.close()

    def _take(
        self, follower: Follower, store: LogStore, f: Followed, budget: int, now: float
    ) -> int:
        lines = follower.read(f, budget, now)
        if not lines:
            return 0
        wall = self.clock()
        events = [self._event(f, line, wall) for line in lines]
        store.save(f.ident, follower.advance(f, lines[-1].end), events)
        self.read += len(events)
        return len(events)

    def _event(self, f: Followed, line: Line, now: float) -> dict[str, Any]:
        fields = decode(f.fmt, line.text, now)
        event: dict[str, Any] = {
            **fields,
            "module": "logcollector",
            "id": f.pos.event_id(f.ident, line.start),
            "location": f.pos.path,
        }
        event.setdefault("timestamp", now)
        if f.fmt == "syslog":
            event["full_log"] = line.text
        return event

    def _send(self, store: LogStore, channel: EventChannel, batch: int) -> int:
        """Post queued events oldest first; returns how many left the outbox."""
        done = 0
        for _ in range(BATCHES_PER_TURN):
            rows = store.peek(batch, MAX_POST_BYTES)
            if not rows:
                break
            try:
                channel.events([e for _, e in rows])
            except CommsError as exc:
                if exc.status not in (400, 413, 422):
                    raise
                done += self._send_alone(store, channel, rows)
                continue
            store.remove([s for s, _ in rows])
            self.sent += len(rows)
            done += len(rows)
        return done

    def _send_alone(
        self, store: LogStore, channel: EventChannel, rows: list[tuple[int, dict[str, Any]]]
    ) -> int:
        """A batch the server refuses: each event alone, so one bad event blocks no other."""
        for seq, event in rows:
            try:
                channel.events([event])
                self.sent += 1
            except CommsError as exc:
                if exc.status not in (400, 413, 422):
                    raise
                self.refused += 1
                log.error(
                    "server refuses event %s from %s (%s): dropped",
                    event.get("id"),
                    event.get("location"),
                    exc,
                )
            store.remove([seq])
        return len(rows)
