-- Migration 4: pending commands by target. An agent claim (the agents of a node, or a list
-- of agents) reads only the pending commands of those agents, however many other commands
-- wait for offline agents or lie finished in the stream.
CREATE INDEX IF NOT EXISTS commands_pending_target ON commands (target_id, id)
    WHERE status = 'pending';
