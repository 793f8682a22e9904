-- Complete (R7, R16): store the snapshot, mark the record completed, expiring $5 ms
-- from now, and wake waiters on every instance if there are any.
--
-- $1 scope, $2 key, $3 owner, $4 snapshot (Snapshot::encode()), $5 ttl in ms,
-- $6 notification channel. One row back = Done, none = Superseded.
--
-- Fencing under READ COMMITTED: as in renew.sql, the UPDATE re-checks owner and state
-- on the newest version of the row after any concurrent change, so a late completion
-- by an owner whose record was taken over, released or swept matches nothing (R11).
-- The fingerprint is not touched: a completion keeps the request's fingerprint, so a
-- retry replays and another payload is still a mismatch (R8, R9). The whole row
-- changes in one UPDATE: a record is wholly completed or still in flight (R16).
--
-- The notification is part of the same statement and transaction: PostgreSQL
-- delivers it when the transaction commits (inside a caller's transaction, R21, only
-- if it commits), and only when a row was completed that a waiter marked `watched`
-- (claim.sql): with nobody waiting, nothing is sent, and the commit takes no
-- database-wide notification lock (R10; see migrations/0003). The payload names the record
-- (hex of scope || key); an id too long for a payload (8000 bytes) sends '' and
-- listeners wake every waiter instead.
WITH now AS MATERIALIZED (
    SELECT clock_timestamp() AS t
),
done AS (
    UPDATE {schema}.records r
    SET state    = 2,
        snapshot = $4::bytea,
        ends_at  = (SELECT t FROM now) + $5::int8 * interval '1 millisecond'
    WHERE r.scope = $1::bytea AND r.key = $2::text AND r.owner = $3::bytea AND r.state = 1
    RETURNING r.watched, encode(r.scope || convert_to(r.key, 'UTF8'), 'hex') AS id
)
-- One row per completed record whether or not it notifies; CASE evaluates pg_notify
-- only for a watched one.
SELECT CASE WHEN d.watched
            THEN pg_notify($6::text, CASE WHEN octet_length(d.id) < 7900 THEN d.id ELSE '' END)
       END
FROM done d
