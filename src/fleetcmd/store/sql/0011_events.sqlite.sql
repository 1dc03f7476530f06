-- Migration 9: events out (issue 18). `events` is the outbox: one row per reported change,
-- written in the transaction of the change (a command's final status, a task's status, an
-- audit record, an alert, an agent's status). Events are read in (tx, id) order: on SQLite one
-- writer at a time commits ids in order, so tx stays 0; PostgreSQL (see its script) records
-- the writing transaction's id. Bodies of immutable things (a final command, an audit
-- record, an alert) are read at delivery, by `subject`, not copied here.
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tx INTEGER NOT NULL DEFAULT 0,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    type TEXT NOT NULL,
    subject TEXT NOT NULL,
    task_id INTEGER,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_position ON events (tx, id);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
-- A subscriber: where events go (a webhook URL or a syslog address), what it wants (filters),
-- and how far it got (its cursor, a position in `events`), held by one indexer at a time.
CREATE TABLE IF NOT EXISTS subscribers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT,
    filters TEXT NOT NULL DEFAULT '{}',
    options TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL DEFAULT 'active',
    cursor_tx INTEGER NOT NULL DEFAULT 0,
    cursor_id INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    failing_since REAL,
    last_error TEXT,
    last_delivery_at REAL,
    owner TEXT,
    owner_until REAL,
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
