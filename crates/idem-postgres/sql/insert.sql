-- Insert (R6, R9, R18): a new key's claim, when peek.sql found nothing live.
--
-- $1 scope bytea, $2 key text, $3 fingerprint bytea, $4 owner bytea, $5 lease in ms.
-- One row back: the caller owns the new record. No row: a row is there already (a dead
-- one to take over, or one a concurrent claim inserted), or another payload's progress
-- binds the key; the store then runs claim.sql, which decides every one of those.
--
-- Why it is safe on its own: the primary key admits one row per (scope, key), so of
-- concurrent inserts one goes in; ON CONFLICT DO NOTHING makes every other one wait for
-- it to commit and then insert nothing, taking no lock and writing nothing. It never
-- replaces a row, so the fencing of claim.sql (owner changes only under the row lock)
-- is untouched.
--
-- Progress binds the key (R9, R20), as in claim.sql: no insert while a live recovery
-- point of another fingerprint exists. A point committed after this statement's
-- snapshot comes from an owner whose record was live after it; since the insert went
-- in, that record was gone by the time the primary key was checked, so such a point
-- can only have been written inside this one statement's run. advance.sql closes even
-- that: it never overwrites a live point of another fingerprint, so this owner's first
-- phase would find the point, write nothing and roll back.
--
-- One clock reading: both deadlines use the same `clock_timestamp()` instant.
WITH now AS MATERIALIZED (
    SELECT clock_timestamp() AS t
)
INSERT INTO {schema}.records
    (scope, key, fingerprint, owner, state, created_at, ends_at, snapshot, taken_over)
SELECT $1::bytea, $2::text, $3::bytea, $4::bytea, 1,
       n.t, n.t + $5::int8 * interval '1 millisecond', NULL, false
FROM now n
WHERE NOT EXISTS (
    SELECT 1
    FROM {schema}.recovery_points p
    WHERE p.scope = $1::bytea AND p.key = $2::text AND p.fingerprint <> $3::bytea
      AND p.expires_at > n.t
)
ON CONFLICT (scope, key) DO NOTHING
RETURNING true AS acquired
