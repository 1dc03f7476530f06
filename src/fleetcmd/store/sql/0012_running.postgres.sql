-- Migration 12: long-running commands (issue 17.3). A command the agent reports on while it
-- runs is `running`; each heartbeat moves `stale_at` on (two of the agent's intervals
-- ahead), and the sweeper ends a running command whose `stale_at` passed `timeout`
-- ("agent stopped reporting"), long before its execution timeout.
ALTER TABLE commands ADD COLUMN stale_at DOUBLE PRECISION;
CREATE INDEX IF NOT EXISTS commands_stale ON commands (stale_at) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS commands_running_timeout ON commands (timeout_at)
    WHERE status = 'running';
-- What the agent last reported of a running command (percent, message), and its output: numbered
-- chunks, kept in order (a chunk is taken only as the next of its command), bounded per chunk
-- and per command (model/wire.py OUTPUT_CHUNK, OUTPUT_MAX); read with GET /commands/{id}/output.
ALTER TABLE commands ADD COLUMN progress_percent DOUBLE PRECISION;
ALTER TABLE commands ADD COLUMN progress_message TEXT;
ALTER TABLE commands ADD COLUMN progress_at DOUBLE PRECISION;
ALTER TABLE commands ADD COLUMN output_chunks BIGINT NOT NULL DEFAULT 0;
ALTER TABLE commands ADD COLUMN output_bytes BIGINT NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS command_output (
    command_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (command_id, seq)
);
