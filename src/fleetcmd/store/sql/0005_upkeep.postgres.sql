-- Migration 5: autovacuum thresholds for the busiest tables. Every status change of a command
-- leaves a dead row version and dead entries in the indexes of pending commands, which claims
-- walk until a vacuum removes them; the defaults (20 % of the table dead, 10 % changed before
-- new statistics) let a stream of a million finished commands carry 200,000 of them. Where
-- autovacuum is off, the indexer's upkeep applies the same kind of thresholds itself.
ALTER TABLE commands SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.05
);
ALTER TABLE progress SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.05
);
