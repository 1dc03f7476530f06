"""Events out (issue 18): the outbox written in the transaction of each change it reports, and
the subscribers that read it, each from its own durable cursor.

Written with the change, in bulk: a move of 100,000 commands to a final status adds its
100,000 events with one `INSERT … SELECT` per 20,000-id chunk (no Python per row); results add
theirs with one per batch; a task's status change, an audit record, a new alert or an agent's
status change add one row each. A final command, an audit record and an alert never change,
so their event rows hold only what names them (`subject`) and the body is read when the event
is delivered; what does change (a task's or an agent's status) is copied into `data`.

Order: events are read by position `(tx, id)`. SQLite has one writer at a time, so ids commit
in order (tx is always 0). On PostgreSQL an id taken early may commit late; each row records
its transaction id, and a read returns only rows of transactions older than every transaction
still running (`pg_snapshot_xmin`), so anything that commits later sorts after what was read
and a cursor never steps over an event."""

from __future__ import annotations

import fnmatch
import secrets
from typing import Any

from fleetcmd.errors import Conflict, NotFound
from fleetcmd.model.records import Command, dumps, iso, loads
from fleetcmd.store.core import COLS, StoreCore, TxCore

SUBSCRIBER_COLS = (
    "id, name, kind, url, filters, options, state, cursor_tx, cursor_id, delivered, failures, "
    "failing_since, last_error, last_delivery_at, owner, owner_until, created_by, created_at, "
    "updated_at"
)
Position = tuple[int, int]


def subscriber_from_row(r: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": int(r[0]),
        "name": r[1],
        "kind": r[2],
        "url": r[3],
        "filters": loads(r[4]) or {},
        "options": loads(r[5]) or {},
        "state": r[6],
        "cursor": {"tx": int(r[7]), "id": int(r[8])},
        "delivered": int(r[9]),
        "failures": int(r[10]),
        "failing_since": r[11],
        "last_error": r[12],
        "last_delivery_at": r[13],
        "owner": r[14],
        "owner_until": r[15],
        "created_by": r[16],
        "created_at": r[17],
        "updated_at": r[18],
    }


class EventsStore(StoreCore):
    """Subscribers: registered, listed, paused, resumed, replayed; the dispatcher's reads,
    leases and cursor moves (`indexer/subscriptions.py`)."""

    def create_subscriber(self, doc: dict[str, Any], created_by: str) -> dict[str, Any]:
        """A new subscriber, starting at the end of the events (or `from_event`/`from_time`);
        its signing secret (webhooks) is made here and shown once, in this answer."""
        secret = secrets.token_urlsafe(32) if doc["kind"] == "webhook" else None
        with self.transaction() as tx:
            if tx.one("SELECT id FROM subscribers WHERE name = :n", {"n": doc["name"]}):
                raise Conflict(f"a subscriber named {doc['name']!r} exists")
            start = _start(tx, doc.get("from_event"), doc.get("from_time"))
            row = tx.one(
                "INSERT INTO subscribers (name, kind, url, secret, filters, options, state, "
                "cursor_tx, cursor_id, created_by, created_at, updated_at) VALUES (:name, :kind, "
                ":url, :secret, :filters, :options, 'active', :ctx, :cid, :by, :now, :now) "
                "RETURNING id",
                {
                    "name": doc["name"],
                    "kind": doc["kind"],
                    "url": doc["url"],
                    "secret": secret,
                    "filters": dumps(doc.get("filters") or {}),
                    "options": dumps(doc.get("options") or {}),
                    "ctx": start[0],
                    "cid": start[1],
                    "by": created_by,
                    "now": tx.now,
                },
            )
            assert row is not None
            tx.notify("subscribers")
        out = self.subscriber(int(row[0]))
        out["secret"] = secret
        return out

    def subscriber(self, sub_id: int, with_secret: bool = False) -> dict[str, Any]:
        with self.reading() as tx:
            row = tx.one(
                f"SELECT {SUBSCRIBER_COLS}, secret FROM subscribers WHERE id = :id", {"id": sub_id}
            )
        if row is None:
            raise NotFound(f"subscriber {sub_id} not found")
        out = subscriber_from_row(row)
        if with_secret:
            out["secret"] = row[-1]
        return out

    def list_subscribers(self) -> list[dict[str, Any]]:
        with self.reading() as tx:
            rows = tx.all(f"SELECT {SUBSCRIBER_COLS} FROM subscribers ORDER BY id")
        return [subscriber_from_row(r) for r in rows]

    def delete_subscriber(self, sub_id: int) -> None:
        with self.transaction() as tx:
            cur = tx.ex("DELETE FROM subscribers WHERE id = :id", {"id": sub_id})
            if not cur.rowcount:
                raise NotFound(f"subscriber {sub_id} not found")
            tx.notify("subscribers")

    def set_subscriber_state(
        self,
        sub_id: int,
        state: str,
        *,
        from_event: int | None = None,
        from_time: float | None = None,
    ) -> dict[str, Any]:
        """Pause, resume (failures forgotten), or replay: the cursor moves back (or on) to just
        before `from_event` / the first event at or after `from_time`."""
        with self.transaction() as tx:
            if tx.one("SELECT id FROM subscribers WHERE id = :id", {"id": sub_id}) is None:
                raise NotFound(f"subscriber {sub_id} not found")
            # The lease goes too: a lane still running elsewhere loses its cursor writes
            # (fenced by owner) and the next lane starts from the cursor set here.
            sets = "state = :state, updated_at = :now, owner = NULL, owner_until = NULL"
            params: dict[str, Any] = {"id": sub_id, "state": state, "now": tx.now}
            if state == "active":
                sets += ", failures = 0, failing_since = NULL, last_error = NULL"
            if from_event is not None or from_time is not None:
                start = _start(tx, from_event, from_time)
                sets += ", cursor_tx = :ctx, cursor_id = :cid"
                params.update(ctx=start[0], cid=start[1])
            tx.ex(f"UPDATE subscribers SET {sets} WHERE id = :id", params)
            tx.notify("subscribers")
        return self.subscriber(sub_id)

    # -- the dispatcher -------------------------------------------------------------------------
    def lease_subscriber(self, sub_id: int, owner: str, lease: float) -> bool:
        """Hold the subscriber for `lease` seconds (one dispatcher per subscriber across every
        indexer of the store: that is what keeps its events in order)."""
        with self.transaction() as tx:
            cur = tx.ex(
                "UPDATE subscribers SET owner = :owner, owner_until = :until "
                "WHERE id = :id AND state = 'active' "
                "AND (owner IS NULL OR owner = :owner OR owner_until < :now)",
                {"id": sub_id, "owner": owner, "until": tx.now + lease, "now": tx.now},
            )
            return bool(cur.rowcount)

    def release_subscribers(self, owner: str) -> None:
        """An indexer stopping hands its subscribers over at once (not after their lease)."""
        with self.transaction() as tx:
            tx.ex(
                "UPDATE subscribers SET owner = NULL, owner_until = NULL WHERE owner = :owner",
                {"owner": owner},
            )

    def read_events(
        self, after: Position, limit: int, filters: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], Position | None]:
        """The next events after `after` that `filters` keep (bodies joined), and the position
        of the last event looked at (None: nothing new), so that filtered-out events are
        stepped over too."""
        with self.reading() as tx:
            rows = tx.all(
                "SELECT id, tx, at, kind, type, subject, task_id, data FROM events "
                "WHERE (tx > :ctx OR (tx = :ctx AND id > :cid)) "
                f"AND tx < {self.horizon_sql()} ORDER BY tx, id LIMIT :limit",
                {"ctx": after[0], "cid": after[1], "limit": limit},
            )
            if not rows:
                return [], None
            last = (int(rows[-1][1]), int(rows[-1][0]))
            kept = [r for r in rows if _wanted(r, filters)]
            bodies = _bodies(tx, kept)
        events = []
        for r in kept:
            event: dict[str, Any] = {
                "id": int(r[0]),
                "at": iso(r[2]),
                "kind": r[3],
                "type": r[4],
                "subject": r[5],
                "task_id": r[6],
            }
            data = loads(r[7]) if r[7] is not None else None
            body = bodies.get((r[3], r[5]))
            event["data"] = body if body is not None else (data or {"gone": True})
            events.append(event)
        return events, last

    def horizon_sql(self) -> str:
        """Events of transactions at or past this have not all committed yet: not read."""
        return "1"

    def advance(self, sub_id: int, owner: str, position: Position, delivered: int) -> bool:
        """Move the cursor after a delivery, only while `owner` holds the subscriber (a
        dispatcher that lost its lease must not move another's cursor back)."""
        with self.transaction() as tx:
            cur = tx.ex(
                "UPDATE subscribers SET cursor_tx = :ctx, cursor_id = :cid, "
                "delivered = delivered + :n, failures = 0, failing_since = NULL, "
                "last_error = NULL, last_delivery_at = CASE WHEN :n > 0 THEN :now "
                "ELSE last_delivery_at END WHERE id = :id AND owner = :owner "
                "AND state = 'active'",
                {
                    "id": sub_id,
                    "owner": owner,
                    "ctx": position[0],
                    "cid": position[1],
                    "n": delivered,
                    "now": tx.now,
                },
            )
            return bool(cur.rowcount)

    def delivery_failed(self, sub_id: int, owner: str, error: str, pause_after: int) -> int:
        """Count a failed delivery; the `pause_after`-th in a row pauses the subscriber (its
        cursor stays where it is: resuming delivers from there). Returns the failures in a row.
        `updated_at` is left alone: it marks registration changes, which restart a lane."""
        with self.transaction() as tx:
            row = tx.one(
                "UPDATE subscribers SET failures = failures + 1, last_error = :err, "
                "failing_since = coalesce(failing_since, :now), "
                "state = CASE WHEN failures + 1 >= :limit THEN 'paused' ELSE state END "
                "WHERE id = :id AND owner = :owner RETURNING failures",
                {
                    "id": sub_id,
                    "owner": owner,
                    "err": error[:1000],
                    "now": tx.now,
                    "limit": pause_after,
                },
            )
            return int(row[0]) if row else 0

    def lag(self, position: Position) -> int:
        """Events written after `position` (what a subscriber has still to look at)."""
        with self.reading() as tx:
            row = tx.one(
                "SELECT count(*) FROM events WHERE tx > :ctx OR (tx = :ctx AND id > :cid)",
                {"ctx": position[0], "cid": position[1]},
            )
        return int(row[0]) if row else 0

    def prune_events(self, before: float, batch: int = 5000) -> int:
        """Events older than `before` that every subscriber has passed leave the store, in
        short transactions (the live path waits for none of them). A paused subscriber keeps
        its backlog until it is resumed or removed."""
        removed = 0
        while True:
            with self.transaction() as tx:
                floor = tx.one("SELECT min(cursor_tx), min(cursor_id) FROM subscribers")
                where = "at < :before"
                params: dict[str, Any] = {"before": before, "batch": batch}
                if floor is not None and floor[0] is not None:
                    # every cursor is at or past (min tx, min id) in both parts
                    where += " AND tx <= :ftx AND id <= :fid"
                    params.update(ftx=int(floor[0]), fid=int(floor[1]))
                cur = tx.ex(
                    "DELETE FROM events WHERE id IN "
                    f"(SELECT id FROM events WHERE {where} ORDER BY id LIMIT :batch)",
                    params,
                )
                n = int(cur.rowcount)
            removed += n
            if n < batch:
                return removed


def _start(tx: TxCore, from_event: int | None, from_time: float | None) -> Position:
    """The position just before `from_event`, or before the first event at or after
    `from_time`; with neither, the end (only what happens from now on)."""
    if from_event is not None:
        row = tx.one(
            "SELECT tx, id FROM events WHERE id >= :id ORDER BY id LIMIT 1", {"id": from_event}
        )
    elif from_time is not None:
        row = tx.one(
            "SELECT tx, id FROM events WHERE at >= :t ORDER BY tx, id LIMIT 1", {"t": from_time}
        )
    else:
        row = tx.one("SELECT tx, id FROM events ORDER BY tx DESC, id DESC LIMIT 1")
        return (int(row[0]), int(row[1])) if row else (0, 0)
    if row is None:
        return _start(tx, None, None)
    return (int(row[0]), int(row[1]) - 1)


def _wanted(r: tuple[Any, ...], filters: dict[str, Any]) -> bool:
    kinds = filters.get("kinds")
    if kinds and r[3] not in kinds:
        return False
    statuses = filters.get("statuses")
    if statuses and r[3] in ("command", "task", "agent") and r[4] not in statuses:
        return False
    actions = filters.get("actions")  # audit records by action: exact or fnmatch patterns
    return not (
        actions and r[3] == "audit" and not any(fnmatch.fnmatchcase(r[4], p) for p in actions)
    )


def _bodies(tx: TxCore, rows: list[tuple[Any, ...]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The bodies of immutable subjects, read in one query per kind."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    commands = [int(r[5]) for r in rows if r[3] == "command"]
    if commands:
        for row in tx.all(
            f"SELECT {COLS} FROM commands WHERE {tx.in_list('id', 'ids')}",
            {"ids": tx.list_param(commands)},
        ):
            doc = Command.from_row(row).to_json()
            doc["action"].pop("args", None)  # arguments may be large; the command names them
            doc.pop("lease", None)
            out[("command", str(row[0]))] = doc
    audits = [int(r[5]) for r in rows if r[3] == "audit"]
    if audits:
        for row in tx.all(
            "SELECT id, at, actor, action, outcome, address, target, node, details FROM audit "
            f"WHERE {tx.in_list('id', 'ids')}",
            {"ids": tx.list_param(audits)},
        ):
            out[("audit", str(row[0]))] = {
                "id": int(row[0]),
                "at": iso(row[1]),
                "actor": row[2],
                "action": row[3],
                "outcome": row[4],
                "address": row[5],
                "target": row[6],
                "node": row[7],
                "details": loads(row[8]),
            }
    alerts = [r[5] for r in rows if r[3] == "alert"]
    if alerts:
        for doc_id, body in tx.all(
            "SELECT doc_id, body FROM documents WHERE index_name = 'alerts' AND "
            f"{tx.in_list('doc_id', 'ids')}",
            {"ids": tx.list_param(alerts)},
        ):
            value = loads(body)
            out[("alert", doc_id)] = value if isinstance(value, dict) else {"body": value}
    return out
