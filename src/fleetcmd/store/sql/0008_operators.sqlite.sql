-- Migration 8: operators' control (issue 16). Agents get free key=value labels and a version
-- key that sorts as versions do (selectors compare versions on it); a target set is the frozen
-- list of agents (ids, a JSON array written by one aggregate) a preview, a re-run or an approval reaches; a task may be a re-run of another,
-- reach a frozen set, and wait for approvals (its policy's verdict and the request to write
-- once approved, in `approval`; each person's decision in task_approvals).
ALTER TABLE agents ADD COLUMN version_key TEXT;
CREATE INDEX IF NOT EXISTS agents_version_key ON agents (version_key);
-- A preview counts the matched agents by status, node and version in one pass over this.
CREATE INDEX IF NOT EXISTS agents_summary ON agents (status, node, version);
CREATE TABLE IF NOT EXISTS agent_labels (
    agent_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (agent_id, key)
);
CREATE INDEX IF NOT EXISTS agent_labels_key ON agent_labels (key, value);
CREATE TABLE IF NOT EXISTS target_sets (
    id INTEGER PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    username TEXT NOT NULL,
    task_type TEXT NOT NULL,
    params TEXT NOT NULL,
    agents TEXT NOT NULL DEFAULT '[]',
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    task_id INTEGER
);
CREATE INDEX IF NOT EXISTS target_sets_expiry ON target_sets (expires_at) WHERE task_id IS NULL;
ALTER TABLE tasks ADD COLUMN rerun_of INTEGER;
ALTER TABLE tasks ADD COLUMN target_set INTEGER;
ALTER TABLE tasks ADD COLUMN approval TEXT;
CREATE INDEX IF NOT EXISTS tasks_rerun_of ON tasks (rerun_of) WHERE rerun_of IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_approvals (
    task_id INTEGER NOT NULL,
    username TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    decided_at REAL NOT NULL,
    PRIMARY KEY (task_id, username)
);
