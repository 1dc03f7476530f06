"""The journal: which command ids this agent has received and what each one answered.

Delivery is at-least-once; the journal makes execution at-most-once per command id, across
restarts. A command is journaled as `offered` *before* it is acknowledged, becomes `received`
once the server's answer to the ack confirms the stream recorded it delivered, and only then
runs; its result is journaled before it is queued for sending. An `offered` id that was not
confirmed (it was cancelled or expired meanwhile, another node holds it, the ack failed) never
runs unless a later delivery is confirmed. A redelivered `received` or `done` id is never
executed again: its recorded result is re-sent. An id found `received` with no result (the
agent died while executing it) is not re-run either: it is answered with a failure saying so,
because the agent cannot know how far the first run went.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_MESSAGE = 4000
OFFERED = "offered"  # journaled, its ack not answered yet
REFUSED = "refused"  # the ack's answer did not confirm it: not run
RECEIVED = "received"
DONE = "done"


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the agent's database: WAL, synchronous=FULL so a result is on disk
    before the agent tells anyone about it."""
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    _set_wal(conn)
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _set_wal(conn: sqlite3.Connection, wait: float = 10.0) -> None:
    """Switch to WAL. SQLite does not always call its busy handler for a journal-mode change
    (another process opening the same new file at that moment gets "database is locked" at
    once), so the switch is retried here for as long as the connection's own busy timeout."""
    deadline = time.monotonic() + wait
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def read_counts(path: Path) -> tuple[int, int]:
    """(confirmed ids, queued results) read without writing: `agent-status` must never take
    a write lock on the database of an agent that is running or starting. Ids only offered
    or refused never ran and are not counted."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
    try:
        counts = []
        for table, where in (
            ("journal", f" WHERE state NOT IN ('{OFFERED}', '{REFUSED}')"),
            ("outbox", ""),
        ):
            try:
                sql = f"SELECT count(*) FROM {table}{where}"
                counts.append(int(conn.execute(sql).fetchone()[0]))
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                counts.append(0)  # the agent has not created it yet
        return counts[0], counts[1]
    finally:
        conn.close()


@dataclass(frozen=True)
class Result:
    """One command's answer, in the shape `POST /agents/results` takes."""

    id: Any
    status: str  # "success" | "failure"
    code: int
    message: str
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "data": self.data,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Result:
        return cls(
            doc["id"],
            doc["status"],
            int(doc.get("code", 0)),
            str(doc.get("message", "")),
            dict(doc.get("data") or {}),
        )

    @classmethod
    def success(cls, cid: Any, data: dict[str, Any] | None = None, message: str = "ok") -> Result:
        return cls(cid, "success", 0, message, data or {})

    @classmethod
    def failure(
        cls, cid: Any, message: str, code: int = 1, data: dict[str, Any] | None = None
    ) -> Result:
        if len(message) > MAX_MESSAGE:  # the server takes messages up to 8,000 characters
            message = message[: MAX_MESSAGE - 1] + "…"
        return cls(cid, "failure", code, message, data or {})


@dataclass(frozen=True)
class Entry:
    id: str
    state: str
    action: str
    result: Result | None


def key(cid: Any) -> str:
    """Command ids are ints today; keyed as text so the journal does not care."""
    return str(cid)


class Journal:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS journal ("
            " id TEXT PRIMARY KEY, state TEXT NOT NULL, action TEXT NOT NULL,"
            " command TEXT NOT NULL, result TEXT, received_at REAL NOT NULL, done_at REAL)"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get(self, cid: Any) -> Entry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, state, action, result FROM journal WHERE id = ?", (key(cid),)
            ).fetchone()
        if row is None:
            return None
        result = Result.from_json(json.loads(row[3])) if row[3] else None
        return Entry(row[0], row[1], row[2], result)

    def receive(self, command: dict[str, Any]) -> bool:
        """Journal a command handed to this agent as `offered`; True when it may still run
        (new, or offered before but never confirmed), False when it was confirmed before."""
        action = str((command.get("action") or {}).get("name", ""))
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO journal (id, state, action, command, received_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (key(command["id"]), OFFERED, action, json.dumps(command), time.time()),
            )
            if cur.rowcount == 1:
                return True
            row = self._db.execute(
                "SELECT state FROM journal WHERE id = ?", (key(command["id"]),)
            ).fetchone()
            return row is not None and row[0] in (OFFERED, REFUSED)

    def confirm(self, ids: list[Any]) -> None:
        """The server confirmed these offered commands delivered: they run now, and from here
        a restart that finds one without a result answers it as interrupted."""
        with self._lock:
            self._db.executemany(
                "UPDATE journal SET state = ?, received_at = ? WHERE id = ? AND state IN (?, ?)",
                [(RECEIVED, time.time(), key(cid), OFFERED, REFUSED) for cid in ids],
            )

    def refuse(self, ids: list[Any]) -> None:
        """The server answered the ack without confirming these: they do not run (a later,
        confirmed delivery of the same id still may)."""
        with self._lock:
            self._db.executemany(
                "UPDATE journal SET state = ? WHERE id = ? AND state = ?",
                [(REFUSED, key(cid), OFFERED) for cid in ids],
            )

    def offered(self) -> list[dict[str, Any]]:
        """Commands whose ack was never answered (it failed, or the agent stopped first):
        asked again, since the server may have recorded them delivered."""
        with self._lock:
            rows = self._db.execute(
                "SELECT command FROM journal WHERE state = ? ORDER BY received_at", (OFFERED,)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def complete(self, result: Result) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE journal SET state = ?, result = ?, done_at = ? WHERE id = ?",
                (DONE, json.dumps(result.to_json()), time.time(), key(result.id)),
            )

    def interrupted(self) -> list[Entry]:
        """Commands received but never finished: the agent stopped while executing them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, state, action FROM journal WHERE state = ? ORDER BY received_at",
                (RECEIVED,),
            ).fetchall()
        return [Entry(r[0], r[1], r[2], None) for r in rows]

    def command(self, cid: Any) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT command FROM journal WHERE id = ?", (key(cid),)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM journal").fetchone()[0])

    def prune(self, keep_days: float = 30.0) -> int:
        """Forget finished ids older than the longest delivery window, so the file stays small."""
        cutoff = time.time() - keep_days * 86_400
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM journal WHERE (state = ? AND done_at < ?)"
                " OR (state IN (?, ?) AND received_at < ?)",
                (DONE, cutoff, OFFERED, REFUSED, cutoff),
            )
            return cur.rowcount
