-- Schema of the embedded store, version 1. Timestamps are epoch seconds (REAL).
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    params TEXT NOT NULL,
    source TEXT NOT NULL,
    username TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    status TEXT NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    completed_at REAL
);
CREATE INDEX tasks_status ON tasks (status, id);
CREATE INDEX tasks_type ON tasks (type, id);

CREATE TABLE commands (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL,
    parent_id INTEGER,
    source TEXT NOT NULL,
    username TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    action_name TEXT NOT NULL,
    action_args TEXT NOT NULL,
    action_version INTEGER NOT NULL DEFAULT 1,
    timeout REAL NOT NULL,
    expires_at REAL NOT NULL,
    status TEXT NOT NULL,
    result_code INTEGER,
    result_message TEXT,
    result_data TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    sent_at REAL,
    delivered_at REAL,
    completed_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_at REAL,
    timeout_at REAL,
    expanded INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX commands_claim ON commands (target_type, status, id);
CREATE INDEX commands_task ON commands (task_id, id);
CREATE INDEX commands_parent ON commands (parent_id, id) WHERE parent_id IS NOT NULL;
CREATE INDEX commands_target ON commands (target_id, id);
CREATE INDEX commands_lease ON commands (lease_expires_at) WHERE status IN ('processing', 'sent');
CREATE INDEX commands_deadline ON commands (expires_at) WHERE status IN ('pending', 'processing', 'sent');
CREATE INDEX commands_timeout ON commands (timeout_at) WHERE status = 'delivered';

CREATE TABLE progress (
    scope TEXT NOT NULL,
    scope_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (scope, scope_id, status)
) WITHOUT ROWID;

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    groups TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL DEFAULT 'never_connected',
    version TEXT,
    node TEXT,
    last_seen REAL,
    config_hash TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    info TEXT NOT NULL DEFAULT '{}',
    secret_hash TEXT
);
CREATE INDEX agents_node ON agents (node, id);
CREATE INDEX agents_status ON agents (status, id);

CREATE TABLE agent_groups (
    group_name TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    PRIMARY KEY (group_name, agent_id)
) WITHOUT ROWID;
CREATE INDEX agent_groups_agent ON agent_groups (agent_id);

CREATE TABLE groups (
    name TEXT PRIMARY KEY,
    config_hash TEXT,
    version INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE group_history (
    group_name TEXT NOT NULL,
    version INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    task_id INTEGER,
    changed_at REAL NOT NULL,
    PRIMARY KEY (group_name, version)
);

CREATE TABLE configs (
    hash TEXT PRIMARY KEY,
    content TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);

CREATE TABLE documents (
    index_name TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    body TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    updated_at REAL NOT NULL,
    PRIMARY KEY (index_name, doc_id)
);

CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    url TEXT,
    info TEXT NOT NULL DEFAULT '{}',
    heartbeat_at REAL NOT NULL,
    started_at REAL NOT NULL
);

CREATE TABLE blobs (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    content BLOB NOT NULL,
    created_at REAL NOT NULL
);
