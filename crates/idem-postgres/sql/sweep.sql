-- Sweep (R14): delete up to $1 records that are no longer live. Run in a loop while a
-- batch comes back full; every instance runs it on its own interval.
--
-- Safe on every instance at once: FOR UPDATE SKIP LOCKED makes concurrent sweepers
-- take disjoint batches instead of queueing on each other's rows, and skips a row a
-- claim is taking over or an owner is completing right now. The rows are locked before
-- they are deleted, so none can change in between: under READ COMMITTED the locking
-- read re-checks `ends_at` on the newest version of a row a concurrent claim renewed,
-- and a record that became live again is left alone. A claim that waits on a row
-- being deleted here retries its insertion once the delete commits (claim.sql).
--
-- The bound is a scalar subquery (an InitPlan), not a volatile call in the WHERE, so
-- the planner walks records_ends_at; the outer DELETE then finds each row by ctid.
WITH now AS MATERIALIZED (
    SELECT clock_timestamp() AS t
)
DELETE FROM {schema}.records
WHERE ctid IN (
    SELECT r.ctid
    FROM {schema}.records r
    WHERE r.ends_at <= (SELECT t FROM now)
    LIMIT $1::int8
    FOR UPDATE OF r SKIP LOCKED
)
