-- Advance a recovery point (R20) inside the caller's transaction, fenced by the owner
-- token (R11).
--
-- $1 scope, $2 key, $3 owner, $4 fingerprint, $5 step, $6 data, $7 ttl in ms.
-- One row back = Done, none = Superseded (roll the transaction back).
--
-- Fencing: the `owner` CTE locks the caller's in-flight record row FOR UPDATE. Under
-- READ COMMITTED a locking read that waited on a concurrent change re-checks its WHERE
-- on the newest row version, so a caller whose record was taken over (owner changed)
-- or completed finds nothing and writes nothing. The lock is held until the caller's
-- transaction ends, so no takeover can slip in between this check and the commit of
-- the phase's local writes: a takeover's claim (claim.sql) queues on the row lock and
-- then reads the progress this transaction committed.
--
-- Binding (R9, R20): a live point of another fingerprint is never overwritten. The
-- claim statement refuses another payload while such a point lives, but a claim that
-- took over a dead record may have read the point table before the dead owner's last
-- phase committed; its own first phase then finds that point here, writes nothing and
-- answers Superseded, so it rolls back and the first payload's progress stays whole.
WITH now AS MATERIALIZED (
    SELECT clock_timestamp() AS t
),
owner AS (
    SELECT 1
    FROM {schema}.records r
    WHERE r.scope = $1::bytea AND r.key = $2::text AND r.owner = $3::bytea AND r.state = 1
    FOR UPDATE OF r
)
INSERT INTO {schema}.recovery_points AS p
    (scope, key, fingerprint, step, data, updated_at, expires_at)
SELECT $1::bytea, $2::text, $4::bytea, $5::text, $6::bytea,
       (SELECT t FROM now),
       (SELECT t FROM now) + $7::int8 * interval '1 millisecond'
FROM owner
ON CONFLICT (scope, key) DO UPDATE
    SET fingerprint = excluded.fingerprint,
        step        = excluded.step,
        data        = excluded.data,
        updated_at  = excluded.updated_at,
        expires_at  = excluded.expires_at
    WHERE p.fingerprint = excluded.fingerprint OR p.expires_at <= excluded.updated_at
RETURNING 1
