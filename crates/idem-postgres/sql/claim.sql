-- Claim (R6, R8, R9, R10, R11, R18): create the record, take over a dead one, or
-- report the live one, in ONE statement.
--
-- $1 scope bytea, $2 key text, $3 fingerprint bytea, $4 owner bytea, $5 lease in ms.
-- Answers at most one row:
--   acquired = true   the caller now owns the record (inserted, or a record that was
--                     not live was replaced; taken_over says it was an in-flight one);
--   acquired = false  the live record as it stood: its state, fingerprint, the time
--                     left on it, and its snapshot when completed and the fingerprints
--                     match (no point shipping a body to a mismatch);
--   no row            a concurrent transaction created the live record after this
--                     statement's snapshot was taken: run the statement again.
--
-- Time. All instants come from the database, one clock for every instance; client
-- clocks never enter. `clock_timestamp()` is read once, in the `now` CTE, so the
-- liveness test, the new deadline and the time left all use the same instant.
-- `now()` would be the same in an autocommit statement but is the start of the
-- enclosing transaction, and the other statements (complete.sql in particular) may run
-- inside a caller's long transaction (R21), so every statement reads the clock the
-- same way: when it runs.
--
-- Why two concurrent claims cannot both acquire, under READ COMMITTED:
-- * No row yet: both try to insert. The unique index admits one speculative insertion;
--   the other waits for the first transaction to end and then, the first having
--   committed, takes the ON CONFLICT path (if it aborted, the second inserts).
-- * A row exists: ON CONFLICT DO UPDATE locks the conflicting row and evaluates its
--   WHERE against the LATEST committed version of that row, even one this statement's
--   snapshot cannot see. Claims on one id therefore queue on the row lock, and each
--   sees what its predecessor wrote: after one takes the record over, the row holds a
--   fresh lease (ends_at > now) and the WHERE is false for the rest. When the WHERE is
--   false the row is left untouched (R9: a mismatch changes nothing) and RETURNING
--   yields nothing.
-- * The sweeper (sweep.sql) locks the rows it deletes; a claim waiting on such a row
--   finds it gone and retries its insertion, which the unique index again serialises.
-- Fencing follows: the owner column changes only here, under the row lock, so
-- complete/renew/release (which match on owner) see either the old owner or the new.
--
-- Reading the live row. When the DO UPDATE does nothing, the `existing` CTE reads the
-- row with the statement's snapshot. That version may be older than the one the
-- ON CONFLICT saw; every answer built from it is still one the record held during this
-- statement (a live in-flight record that completed meanwhile answers InFlight, as it
-- would have a moment earlier). Only a row committed after the snapshot is invisible;
-- then no row comes back and the caller runs the statement again with a new snapshot.
-- `existing` filters on liveness with the same instant, so a dead version is never
-- reported as live.
WITH now AS MATERIALIZED (
    SELECT clock_timestamp() AS t
),
claimed AS (
    INSERT INTO {schema}.records AS r
        (scope, key, fingerprint, owner, state, created_at, ends_at, snapshot, taken_over)
    VALUES (
        $1::bytea, $2::text, $3::bytea, $4::bytea, 1,
        (SELECT t FROM now),
        (SELECT t FROM now) + $5::int8 * interval '1 millisecond',
        NULL, false
    )
    ON CONFLICT (scope, key) DO UPDATE
        SET fingerprint = excluded.fingerprint,
            owner       = excluded.owner,
            state       = 1,
            created_at  = excluded.created_at,
            ends_at     = excluded.ends_at,
            snapshot    = NULL,
            taken_over  = (r.state = 1)
        -- Only a record that is not live: a lease that ended (R11) or an expired
        -- completion (R14). excluded.created_at is this statement's instant.
        WHERE r.ends_at <= excluded.created_at
    RETURNING r.taken_over
),
existing AS (
    SELECT r.state, r.fingerprint, r.ends_at,
           CASE WHEN r.state = 2 AND r.fingerprint = $3::bytea THEN r.snapshot END AS snapshot
    FROM {schema}.records r
    WHERE r.scope = $1::bytea AND r.key = $2::text AND r.ends_at > (SELECT t FROM now)
)
SELECT true AS acquired, c.taken_over,
       NULL::smallint AS state, NULL::bytea AS fingerprint, NULL::int8 AS left_ms,
       NULL::bytea AS snapshot
FROM claimed c
UNION ALL
SELECT false, false,
       e.state, e.fingerprint,
       -- Rounded up, so a live record never reports zero time left.
       ceil(extract(epoch FROM e.ends_at - (SELECT t FROM now)) * 1000)::int8,
       e.snapshot
FROM existing e
WHERE NOT EXISTS (SELECT 1 FROM claimed)
