-- Migration 10: schedules and freezes (issue 17). A schedule files a task at a time or on a
-- recurrence (an RFC 5545 RRULE in a named time zone); each occurrence it handled is one row of
-- schedule_occurrences, keyed by (schedule, occurrence time) and written in the transaction
-- that files its task, so that no two indexers, and no restart, file one occurrence twice.
-- A freeze is a blackout period over the agents a selector matches: it refuses the tasks that
-- would reach them, or (mode 'hold') holds their commands until it ends.
CREATE TABLE IF NOT EXISTS schedules (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    username TEXT NOT NULL,
    source TEXT NOT NULL,
    task TEXT NOT NULL,
    scope TEXT,
    rrule TEXT,
    start_local TEXT NOT NULL,
    tz TEXT NOT NULL,
    missed TEXT NOT NULL,
    status TEXT NOT NULL,
    next_at REAL,
    last_at REAL,
    filed INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS schedules_due ON schedules (next_at) WHERE status = 'active';
CREATE TABLE IF NOT EXISTS schedule_occurrences (
    schedule_id INTEGER NOT NULL,
    occurrence_at REAL NOT NULL,
    outcome TEXT NOT NULL,
    task_id INTEGER,
    message TEXT NOT NULL DEFAULT '',
    handled_at REAL NOT NULL,
    PRIMARY KEY (schedule_id, occurrence_at)
);
ALTER TABLE tasks ADD COLUMN schedule_id INTEGER;
ALTER TABLE tasks ADD COLUMN occurrence_at REAL;
CREATE INDEX IF NOT EXISTS tasks_schedule ON tasks (schedule_id) WHERE schedule_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS freezes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    selector TEXT NOT NULL,
    starts_at REAL NOT NULL,
    ends_at REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    mode TEXT NOT NULL DEFAULT 'refuse',
    username TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS freezes_ends ON freezes (ends_at);
-- Maintenance windows: recurring spans (an RRULE in a zone, and a duration) over the agents a
-- selector matches. A task that requires them has its agent commands `held` until the
-- agent's window opens; `window_closes_at` is when the window a command was released in
-- closes, and `windows_missed` how many windows closed before it was delivered.
CREATE TABLE IF NOT EXISTS maintenance_windows (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    selector TEXT NOT NULL,
    rrule TEXT NOT NULL,
    start_local TEXT NOT NULL,
    tz TEXT NOT NULL,
    duration REAL NOT NULL,
    username TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS task_windows (
    task_id INTEGER PRIMARY KEY,
    policy TEXT NOT NULL
);
ALTER TABLE commands ADD COLUMN window_closes_at REAL;
ALTER TABLE commands ADD COLUMN windows_missed INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS commands_held ON commands (task_id, target_id) WHERE status = 'held';
CREATE INDEX IF NOT EXISTS commands_held_deadline ON commands (expires_at) WHERE status = 'held';
CREATE INDEX IF NOT EXISTS commands_window_close ON commands (window_closes_at)
    WHERE status = 'pending' AND window_closes_at IS NOT NULL;
