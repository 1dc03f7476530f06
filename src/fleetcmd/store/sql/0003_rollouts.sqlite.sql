-- Migration 3: rollouts (docs/rollouts.md). A rollout is a task's staged delivery, each
-- wave is a parent command (action `rollout-wave`) whose per-status counts live in `progress`.
CREATE TABLE rollouts (
    task_id INTEGER PRIMARY KEY,
    policy TEXT NOT NULL,
    state TEXT NOT NULL,
    planned INTEGER NOT NULL DEFAULT 0,
    current_wave INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    inverse TEXT,
    rollback_task_id INTEGER,
    baseline_errors INTEGER NOT NULL DEFAULT 0,
    baseline_delivered INTEGER NOT NULL DEFAULT 0,
    next_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX rollouts_state ON rollouts (state, task_id);
CREATE INDEX rollouts_rollback ON rollouts (rollback_task_id) WHERE rollback_task_id IS NOT NULL;

CREATE TABLE rollout_waves (
    task_id INTEGER NOT NULL,
    wave INTEGER NOT NULL,
    command_id INTEGER NOT NULL,
    size INTEGER NOT NULL,
    released INTEGER NOT NULL DEFAULT 0,
    offline INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    settled_at REAL,
    PRIMARY KEY (task_id, wave)
);
