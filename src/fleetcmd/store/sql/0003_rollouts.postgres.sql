-- Migration 3: rollouts (docs/rollouts.md). A rollout is a task's staged delivery, each
-- wave is a parent command (action `rollout-wave`) whose per-status counts live in `progress`.
CREATE TABLE rollouts (
    task_id BIGINT PRIMARY KEY,
    policy TEXT NOT NULL,
    state TEXT NOT NULL,
    planned INTEGER NOT NULL DEFAULT 0,
    current_wave INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    inverse TEXT,
    rollback_task_id BIGINT,
    baseline_errors INTEGER NOT NULL DEFAULT 0,
    baseline_delivered INTEGER NOT NULL DEFAULT 0,
    next_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX rollouts_state ON rollouts (state, task_id);
CREATE INDEX rollouts_rollback ON rollouts (rollback_task_id) WHERE rollback_task_id IS NOT NULL;

CREATE TABLE rollout_waves (
    task_id BIGINT NOT NULL,
    wave INTEGER NOT NULL,
    command_id BIGINT NOT NULL,
    size INTEGER NOT NULL,
    released INTEGER NOT NULL DEFAULT 0,
    offline INTEGER NOT NULL DEFAULT 0,
    started_at DOUBLE PRECISION,
    settled_at DOUBLE PRECISION,
    PRIMARY KEY (task_id, wave)
);
