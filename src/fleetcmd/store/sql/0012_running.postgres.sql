-- Migration 12: long-running commands (issue 17.3). A command the agent reports on while it
-- runs is `running`; each heartbeat moves `stale_at` on (two of the agent's intervals
-- ahead), and the sweeper ends a running command whose `stale_at` passed `timeout`
-- ("agent stopped reporting"), long before its execution timeout.
ALTER TABLE commands ADD COLUMN stale_at DOUBLE PRECISION;
CREATE INDEX IF NOT EXISTS commands_stale ON commands (stale_at) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS commands_running_timeout ON commands (timeout_at)
    WHERE status = 'running';
