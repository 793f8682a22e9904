-- Claim (R6, R8, R9, R10, R11, R18): create the record, take over a dead one, or
-- report the live one, in ONE statement that writes only when something changes.
--
-- $1 scope bytea, $2 key text, $3 fingerprint bytea, $4 owner bytea, $5 lease in ms,
-- $6 waiting bool (the caller waits if the record is in flight, R10 `wait` mode).
-- Answers at most one row:
--   acquired = true   the caller now owns the record (inserted, or a record that was
--                     not live was replaced; taken_over says it was an in-flight one);
--   acquired = false  the live record as it stood: its state, fingerprint, the time
--                     left on it, and its snapshot when completed and the fingerprints
--                     match (no point shipping a body to a mismatch);
--   no row            a concurrent transaction changed the record after this
--                     statement's snapshot was taken: run the statement again.
--
-- The store runs it only when the two cheaper statements before it could not answer:
-- peek.sql (a plain read, which answers replays, mismatches and duplicates in flight)
-- found nothing live or a waiter that must mark the record, and insert.sql (a plain
-- insert, which claims a new key) found a row or another payload's progress in the way.
-- On its own it still decides every case, as below.
--
-- Time. All instants come from the database, one clock for every instance; client
-- clocks never enter. `clock_timestamp()` is read once, in the `now` CTE, so the
-- liveness test, the new deadline and the time left all use the same instant.
-- `now()` would be the same in an autocommit statement but is the start of the
-- enclosing transaction, and the other statements (complete.sql in particular) may run
-- inside a caller's long transaction (R21), so every statement reads the clock the
-- same way: when it runs.
--
-- Look first, write only when the record is absent or dead. A replay, a mismatch and
-- an "in flight" answer change nothing, so they must not write either: an
-- INSERT ... ON CONFLICT DO UPDATE locks the conflicting row even when its WHERE is
-- false, which costs a transaction id, a WAL record and a commit that waits for the
-- disk. So the `existing` CTE reads the live row with the statement's snapshot first,
-- and the INSERT runs only when that read found nothing: inserting no row takes no
-- lock and writes nothing.
--
-- Why two concurrent claims cannot both acquire, under READ COMMITTED:
-- * No live row in the snapshot: both try to insert. The unique index admits one
--   speculative insertion; the other waits for the first transaction to end and then,
--   the first having committed, takes the ON CONFLICT path (if it aborted, the second
--   inserts).
-- * A dead row (lease ended, R11, or completion expired, R14) in the snapshot: both
--   insert, conflict, and ON CONFLICT DO UPDATE locks the row and evaluates its WHERE
--   against the LATEST committed version of that row, even one this statement's
--   snapshot cannot see. Claims on one id therefore queue on the row lock, and each
--   sees what its predecessor wrote: after one takes the record over, the row holds a
--   fresh lease (ends_at > now) and the WHERE is false for the rest, whose RETURNING
--   yields nothing: they answer no row and ask again.
-- * A live row in the snapshot: nothing is inserted and the answer is built from that
--   version. It may be older than the newest committed one; every answer built from it
--   is still one the record held during this statement (a live in-flight record that
--   completed meanwhile answers InFlight, as it would have a moment earlier). A live
--   row never becomes claimable without its lease or TTL running out, which the
--   `now` instant already accounts for.
-- * The sweeper (sweep.sql) locks the rows it deletes; a claim waiting on such a row
--   finds it gone and retries its insertion, which the unique index again serialises.
-- Fencing follows: the owner column changes only here, under the row lock, so
-- complete/renew/release (which match on owner) see either the old owner or the new.
--
-- Waiters (R10). A completion notifies only a record marked `watched` (complete.sql).
-- A caller that will wait on an in-flight record with its own fingerprint marks it in
-- the `marked` CTE. That UPDATE re-checks its WHERE on the newest version of the row:
-- if the record completed or was released after the snapshot, it matches nothing and
-- the statement answers no row, so the caller asks again and sees the new state
-- instead of sleeping on a notification that was never going to come. If the mark
-- committed first, the completion's UPDATE (which waits for the mark's row lock and
-- then reads the newest version) sees `watched` and notifies. A record already marked
-- by another waiter is not written again. A takeover keeps the mark: the waiters of the
-- dead owner wait on the new one.
--
-- Progress binds the key (R9, R20). Once a phase of a multi-step handler committed a
-- recovery point (advance.sql), the key belongs to that request's payload until the
-- point expires, even while no record exists (released after a 5xx, swept after a
-- crash): its phases' local writes are committed, and a run for another payload would
-- orphan them and hand foreign services the same derived keys for another operation.
-- So the `progress` CTE reads a live point of another fingerprint; if there is one and
-- no live record, nothing is inserted and the answer is that point's fingerprint, which
-- the caller reports as a mismatch. A point committed after this statement's snapshot
-- can only come from an owner whose record this statement saw (a live one answers
-- first; a dead one may be taken over here): advance.sql refuses to overwrite a live
-- point of another fingerprint, so such a takeover's first phase rolls back instead.
WITH now AS MATERIALIZED (
    SELECT clock_timestamp() AS t
),
existing AS MATERIALIZED (
    SELECT r.state, r.fingerprint, r.ends_at, r.watched,
           CASE WHEN r.state = 2 AND r.fingerprint = $3::bytea THEN r.snapshot END AS snapshot
    FROM {schema}.records r
    WHERE r.scope = $1::bytea AND r.key = $2::text AND r.ends_at > (SELECT t FROM now)
),
progress AS MATERIALIZED (
    SELECT p.fingerprint
    FROM {schema}.recovery_points p
    WHERE p.scope = $1::bytea AND p.key = $2::text AND p.fingerprint <> $3::bytea
      AND p.expires_at > (SELECT t FROM now)
),
claimed AS (
    INSERT INTO {schema}.records AS r
        (scope, key, fingerprint, owner, state, created_at, ends_at, snapshot, taken_over)
    SELECT $1::bytea, $2::text, $3::bytea, $4::bytea, 1,
           (SELECT t FROM now),
           (SELECT t FROM now) + $5::int8 * interval '1 millisecond',
           NULL, false
    WHERE NOT EXISTS (SELECT 1 FROM existing) AND NOT EXISTS (SELECT 1 FROM progress)
    ON CONFLICT (scope, key) DO UPDATE
        SET fingerprint = excluded.fingerprint,
            owner       = excluded.owner,
            state       = 1,
            created_at  = excluded.created_at,
            ends_at     = excluded.ends_at,
            snapshot    = NULL,
            taken_over  = (r.state = 1),
            watched     = (r.state = 1 AND r.watched)
        -- Only a record that is not live: a lease that ended (R11) or an expired
        -- completion (R14). excluded.created_at is this statement's instant.
        WHERE r.ends_at <= excluded.created_at
    RETURNING r.taken_over
),
marked AS (
    UPDATE {schema}.records r
    SET watched = true
    WHERE $6::bool
      AND EXISTS (SELECT 1 FROM existing e
                  WHERE e.state = 1 AND e.fingerprint = $3::bytea AND NOT e.watched)
      AND r.scope = $1::bytea AND r.key = $2::text
      AND r.state = 1 AND r.fingerprint = $3::bytea AND r.ends_at > (SELECT t FROM now)
    RETURNING true AS ok
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
-- A waiter whose mark found the record changed gets no row: it asks again.
WHERE NOT ($6::bool AND e.state = 1 AND e.fingerprint = $3::bytea AND NOT e.watched
           AND NOT EXISTS (SELECT 1 FROM marked))
UNION ALL
-- No live record, but another payload's progress: answered as that payload's in-flight
-- record, i.e. a mismatch for this caller (R9).
SELECT false, false, 1::smallint, g.fingerprint, 1::int8, NULL::bytea
FROM progress g
WHERE NOT EXISTS (SELECT 1 FROM existing)
