-- Migration 6: the enrollment request an agent was created by. An agent names its request
-- (an id it made and kept before its first attempt), so that a retried enrollment whose first
-- answer was lost finds the agent that request created instead of colliding with its name.
ALTER TABLE agents ADD COLUMN enrollment_request TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS agents_enrollment_request ON agents (enrollment_request);
