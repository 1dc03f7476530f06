"""Following log files for the log collector: where each file was read up to, kept in
`agent.db` with the events read from it, so that a restart neither reads a line twice nor
skips one.

A file is known by its identity (device, inode), not its name, so rotation is visible:
- **rename rotation** (`auth.log` → `auth.log.1`, a new `auth.log`): the old file is read to
  its end (it stays open, "draining", until nothing more was written to it for `DRAIN_GRACE`
  seconds; a last line without a newline is taken then), the new one from its start;
- **truncation** (`copytruncate`, `> file`): a file shorter than the position is read again
  from 0, under a new `epoch` (a random token of each file's content, in every event id, so
  the ids of new content, or of a file that reuses a freed inode, never repeat old ones);
- **while the agent was down**: a stored identity found at its path resumes at its position
  (if the file still starts with the bytes it started with, its fingerprint); one no longer
  at its path is looked for among the files of its folder (a rotated sibling) and drained; a
  file now at a known path, or matching a pattern configured before, is read from its start.
  Only a file matching a pattern configured for the first time starts at its end (`from:
  end`, the default) or its start (`from: start`).

Memory is bounded: at most `CHUNK` bytes are read at a time, a line longer than `MAX_LINE`
bytes is split, and the caller gives each read a budget of lines.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import secrets
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetcmd.agent.journal import connect

log = logging.getLogger("fleetcmd.agent.logcollector")

CHUNK = 64 * 1024
MAX_LINE = 16 * 1024
FP_LEN = 64
DRAIN_GRACE = 5.0

Identity = tuple[int, int]


@dataclass
class Position:
    path: str
    offset: int
    fp: str  # "<n>:<sha256 of the first n bytes>", n <= FP_LEN
    epoch: str = ""
    draining: bool = False

    def __post_init__(self) -> None:
        if not self.epoch:
            self.epoch = secrets.token_hex(4)

    def event_id(self, ident: Identity, start: int) -> str:
        return f"{ident[1]:x}-{self.epoch}-{start}"


def fingerprint(fd: int, size: int) -> str:
    n = min(size, FP_LEN)
    return f"{n}:{hashlib.sha256(os.pread(fd, n, 0)).hexdigest()[:32]}"


def same_start(fd: int, fp: str) -> bool:
    n = int(fp.split(":", 1)[0])
    return fingerprint(fd, n) == fp if os.fstat(fd).st_size >= n else False


class LogStore:
    """The collector's tables in agent.db: patterns configured, positions, queued events."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = connect(path)
        self._db.executescript(
            "CREATE TABLE IF NOT EXISTS log_sources (pattern TEXT PRIMARY KEY);"
            "CREATE TABLE IF NOT EXISTS log_positions (dev INTEGER NOT NULL, ino INTEGER NOT NULL,"
            " path TEXT NOT NULL, offset INTEGER NOT NULL, fp TEXT NOT NULL,"
            " epoch TEXT NOT NULL, draining INTEGER NOT NULL DEFAULT 0,"
            " PRIMARY KEY (dev, ino));"
            "CREATE TABLE IF NOT EXISTS log_events (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " event TEXT NOT NULL);"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def sources(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT pattern FROM log_sources")}

    def set_sources(self, patterns: list[str]) -> None:
        """The patterns configured now; positions of files none of them matches are dropped."""
        keep = set(patterns)
        stale = [(i,) for i in self.positions() if not any(_matches(p, i) for p in keep)]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM log_sources")
            self._db.executemany(
                "INSERT INTO log_sources (pattern) VALUES (?)", [(p,) for p in sorted(keep)]
            )
            self._db.executemany("DELETE FROM log_positions WHERE path = ?", stale)
            self._db.execute("COMMIT")

    def positions(self) -> dict[str, Position]:
        """By path (the last one each identity was seen at)."""
        return {p.path: p for p in self.identities().values()}

    def identities(self) -> dict[Identity, Position]:
        with self._lock:
            rows = self._db.execute(
                "SELECT dev, ino, path, offset, fp, epoch, draining FROM log_positions"
            ).fetchall()
        return {(r[0], r[1]): Position(r[2], r[3], r[4], r[5], bool(r[6])) for r in rows}

    def save(
        self, ident: Identity, pos: Position, events: list[dict[str, Any]] | None = None
    ) -> None:
        """The events read and the position after them, in one transaction."""
        stmts: list[tuple[str, tuple[Any, ...]]] = [
            ("INSERT INTO log_events (event) VALUES (?)", (json.dumps(e, separators=(",", ":")),))
            for e in events or []
        ]
        stmts.append(
            (
                "INSERT OR REPLACE INTO log_positions"
                " (dev, ino, path, offset, fp, epoch, draining) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*ident, pos.path, pos.offset, pos.fp, pos.epoch, int(pos.draining)),
            )
        )
        self._tx(stmts)

    def forget(self, ident: Identity) -> None:
        self._tx([("DELETE FROM log_positions WHERE dev = ? AND ino = ?", ident)])

    def queued(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM log_events").fetchone()[0])

    def peek(self, n: int, max_bytes: int) -> list[tuple[int, dict[str, Any]]]:
        """The oldest queued events, at most `n` and about `max_bytes` (at least one)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event FROM log_events ORDER BY seq LIMIT ?", (n,)
            ).fetchall()
        out: list[tuple[int, dict[str, Any]]] = []
        size = 0
        for seq, text in rows:
            size += len(text) + 1
            if out and size > max_bytes:
                break
            out.append((seq, json.loads(text)))
        return out

    def remove(self, seqs: list[int]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM log_events WHERE seq = ?", [(s,) for s in seqs])
            self._db.execute("COMMIT")

    def clear(self) -> None:
        self._tx(
            [
                ("DELETE FROM log_sources", ()),
                ("DELETE FROM log_positions", ()),
                ("DELETE FROM log_events", ()),
            ]
        )


def _matches(pattern: str, path: str) -> bool:
    return path == pattern or (glob.has_magic(pattern) and Path(path).match(pattern))


def expand(pattern: str) -> list[str]:
    """Regular files the pattern names now (a glob, or one path)."""
    paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    out = []
    for p in paths:
        try:
            if stat.S_ISREG(os.stat(p).st_mode):
                out.append(p)
        except OSError:
            continue
    return out


@dataclass
class Followed:
    """One open file: its identity, the position and the source it came from."""

    ident: Identity
    fd: int
    pos: Position
    fmt: str
    idle_since: float | None = None  # draining: when it last gave nothing


@dataclass
class Line:
    text: str
    start: int  # offset of its first byte
    end: int  # offset after its newline


class Follower:
    """The files of the configured patterns; `scan` finds them, `read` takes their lines."""

    def __init__(self, store: LogStore, sources: list[tuple[str, str]], from_end: bool) -> None:
        self.store = store
        self.sources = sources  # (pattern, format)
        known = store.sources()
        self.first_time = {p for p, _ in sources if p not in known}
        self.from_end = from_end
        self.files: dict[Identity, Followed] = {}
        self._resumed = False

    def close(self) -> None:
        for f in self.files.values():
            os.close(f.fd)
        self.files.clear()

    def scan(self, now: float) -> None:
        """Open what the patterns name now; notice rotations and files gone."""
        stored = self.store.identities()
        by_path = {f.pos.path: f for f in self.files.values() if not f.pos.draining}
        seen: set[Identity] = set()
        for pattern, fmt in self.sources:
            for path in expand(pattern):
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                ident = (st.st_dev, st.st_ino)
                seen.add(ident)
                current = by_path.get(path)
                if current is not None and current.ident == ident:
                    continue
                if current is not None:
                    log.info("%s was rotated: reading the old file to its end", path)
                    self._drain(current, now)
                if ident in self.files:
                    f = self.files[ident]
                    f.pos.path, f.pos.draining, f.idle_since = path, False, None
                    continue
                self._open(path, fmt, ident, stored, pattern, known_path=current is not None)
        for f in self.files.values():
            if f.ident not in seen and not f.pos.draining:
                self._drain(f, now)
        if not self._resumed:
            self._resumed = True
            self._find_rotated(stored, seen)
        self.first_time.clear()

    def _open(
        self,
        path: str,
        fmt: str,
        ident: Identity,
        stored: dict[Identity, Position],
        pattern: str,
        known_path: bool,
    ) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("cannot open %s: %s", path, exc)
            return
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != ident:  # replaced between stat and open: next scan
            os.close(fd)
            return
        pos = stored.get(ident)
        if pos is not None and same_start(fd, pos.fp) and st.st_size >= pos.offset:
            pos = Position(path, pos.offset, pos.fp, pos.epoch)
        else:
            if pos is not None:
                log.info("%s was truncated or replaced while the agent was down: from 0", path)
            known = known_path or path in {p.path for p in stored.values()}
            start = (
                st.st_size if (self.from_end and pattern in self.first_time and not known) else 0
            )
            pos = Position(path, start, fingerprint(fd, st.st_size))
        self.files[ident] = Followed(ident, fd, pos, fmt)
        self.store.save(ident, pos)
        log.info("following %s (%s) from offset %d", path, fmt, pos.offset)

    def _drain(self, f: Followed, now: float) -> None:
        f.pos.draining, f.idle_since = True, now
        self.store.save(f.ident, f.pos)

    def _find_rotated(self, stored: dict[Identity, Position], seen: set[Identity]) -> None:
        """At start: files followed before that are no longer at their path (rotated while the
        agent was down) are looked for in their folder and read to their end."""
        fmts = dict(self.sources)
        for ident, pos in stored.items():
            if ident in seen or ident in self.files:
                continue
            found = _find_inode(Path(pos.path).parent, ident)
            if found is None:
                log.warning(
                    "%s (inode %d) is gone: what was written to it after offset %d while the "
                    "agent was down cannot be read",
                    pos.path,
                    ident[1],
                    pos.offset,
                )
                self.store.forget(ident)
                continue
            fd = os.open(found, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            fmt = next((v for p, v in fmts.items() if _matches(p, pos.path)), "syslog")
            # The row keeps the path it was followed at (the pattern's), so that it is kept
            # by `set_sources` and looked for in the same folder after another restart.
            f = Followed(ident, fd, Position(pos.path, pos.offset, pos.fp, pos.epoch), fmt)
            self.files[ident] = f
            self._drain(f, 0.0)
            log.info("%s rotated to %s while the agent was down: reading its rest", pos.path, found)

    def read(self, f: Followed, budget: int, now: float) -> list[Line]:
        """Up to `budget` complete lines after the position (the position is not moved: the
        caller saves it with the events)."""
        size = os.fstat(f.fd).st_size
        if size < f.pos.offset:
            log.warning(
                "%s was truncated (%d < %d): reading it from 0", f.pos.path, size, f.pos.offset
            )
            f.pos = Position(f.pos.path, 0, fingerprint(f.fd, size), draining=f.pos.draining)
            self.store.save(f.ident, f.pos)
        lines: list[Line] = []
        offset = f.pos.offset
        while len(lines) < budget and offset < size:
            chunk = os.pread(f.fd, min(CHUNK, size - offset), offset)
            if not chunk:
                break
            start = 0
            while len(lines) < budget:
                nl = chunk.find(b"\n", start, start + MAX_LINE + 1)
                if nl < 0:
                    rest = len(chunk) - start
                    final = (
                        f.pos.draining
                        and f.idle_since is not None
                        and now - f.idle_since >= DRAIN_GRACE
                    )
                    if rest >= MAX_LINE or (final and offset + len(chunk) >= size and rest):
                        take = min(rest, MAX_LINE)
                        lines.append(
                            Line(
                                _text(chunk[start : start + take]),
                                offset + start,
                                offset + start + take,
                            )
                        )
                        start += take
                        continue
                    break
                lines.append(Line(_text(chunk[start:nl]), offset + start, offset + nl + 1))
                start = nl + 1
            if start == 0:
                break
            offset += start
        if f.pos.draining and lines:
            f.idle_since = now
        return lines

    def advance(self, f: Followed, offset: int) -> Position:
        """The position after the lines taken (the fingerprint grows with a young file)."""
        f.pos.offset = offset
        if int(f.pos.fp.split(":", 1)[0]) < FP_LEN:
            f.pos.fp = fingerprint(f.fd, os.fstat(f.fd).st_size)
        return f.pos

    def finish(self, f: Followed, now: float) -> bool:
        """Close a draining file that is read to its end and was idle long enough."""
        if not f.pos.draining or f.idle_since is None or now - f.idle_since < DRAIN_GRACE:
            return False
        if os.fstat(f.fd).st_size > f.pos.offset:
            return False
        os.close(f.fd)
        del self.files[f.ident]
        self.store.forget(f.ident)
        log.info("finished reading the rotated %s", f.pos.path)
        return True


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\r").decode("utf-8", errors="replace")


def _find_inode(folder: Path, ident: Identity) -> Path | None:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return None
    for e in entries:
        try:
            if (
                e.inode() == ident[1]
                and e.is_file(follow_symlinks=False)
                and e.stat(follow_symlinks=False).st_dev == ident[0]
            ):
                return Path(e.path)
        except OSError:
            continue
    return None
