"""The outbox: results waiting to reach the server, durable and bounded.

Results are sent oldest first, in batches, and removed only once the server has answered an
outcome for them (`recorded`, `duplicate` or `ignored: …`), so a result survives a server
outage and an agent restart.

Bound and drop policy: at most `limit` results (default 10,000). When a new result would exceed
it, the *oldest* queued results are dropped and a warning is logged with their ids. The journal
still holds every dropped result, so a redelivery of that command re-sends it; otherwise the
server ends the command as `timeout`, which tells the operator the answer never arrived.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from fleetcmd.agent.journal import Result, connect, key

log = logging.getLogger("fleetcmd.agent.outbox")

DEFAULT_LIMIT = 10_000


class Outbox:
    def __init__(self, path: Path, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("outbox limit must be at least 1")
        self.limit = limit
        self.dropped = 0
        self._lock = threading.Lock()
        self._db = connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox ("
            " seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
            " result TEXT NOT NULL)"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, result: Result) -> None:
        """Queue a result; a result already queued for the same id is replaced, not doubled."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM outbox WHERE id = ?", (key(result.id),))
                self._db.execute(
                    "INSERT INTO outbox (id, result) VALUES (?, ?)",
                    (key(result.id), json.dumps(result.to_json())),
                )
                size = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
                dropped: list[str] = []
                if size > self.limit:
                    rows = self._db.execute(
                        "SELECT seq, id FROM outbox ORDER BY seq LIMIT ?", (size - self.limit,)
                    ).fetchall()
                    self._db.execute("DELETE FROM outbox WHERE seq <= ?", (rows[-1][0],))
                    dropped = [r[1] for r in rows]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if dropped:
            self.dropped += len(dropped)
            log.warning(
                "outbox full (%d results): dropped the %d oldest, ids %s",
                self.limit,
                len(dropped),
                ", ".join(dropped[:20]),
            )

    def peek(self, n: int = 500) -> list[Result]:
        """The `n` oldest queued results, in the order they were produced."""
        with self._lock:
            rows = self._db.execute(
                "SELECT result FROM outbox ORDER BY seq LIMIT ?", (n,)
            ).fetchall()
        return [Result.from_json(json.loads(r[0])) for r in rows]

    def remove(self, ids: list[object]) -> None:
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(key(i),) for i in ids])
            self._db.execute("COMMIT")

    def size(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
