-- Sweep expired recovery points (R14, R20), in batches of $1, as sweep.sql does for
-- records (same SKIP LOCKED reasoning: concurrent sweepers take disjoint batches, and a
-- point being advanced right now is skipped).
WITH now AS MATERIALIZED (
    SELECT clock_timestamp() AS t
)
DELETE FROM {schema}.recovery_points
WHERE ctid IN (
    SELECT p.ctid
    FROM {schema}.recovery_points p
    WHERE p.expires_at <= (SELECT t FROM now)
    LIMIT $1::int8
    FOR UPDATE OF p SKIP LOCKED
)
