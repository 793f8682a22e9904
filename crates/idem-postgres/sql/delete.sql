-- Delete (on-call's `idem keys delete`): remove a record whatever its state or owner,
-- answer what it held, and wake waiters on every instance as a release does (R10).
--
-- $1 scope, $2 key, $3 notification channel. One row back = a record was deleted (with
-- `live` false if it had already ended), none = there was none.
--
-- Under READ COMMITTED the DELETE waits for a concurrent writer of the row and then
-- deletes its newest version, so the answer is the record actually removed. An owner
-- still running is superseded afterwards: complete.sql and release.sql match no row.
-- The notification is sent in the same statement, delivered at commit (see
-- complete.sql).
WITH gone AS (
    DELETE FROM {schema}.records r
    WHERE r.scope = $1::bytea AND r.key = $2::text
    RETURNING r.state, r.fingerprint, r.owner, r.snapshot,
              floor(extract(epoch FROM r.created_at) * 1000)::int8 AS created_ms,
              floor(extract(epoch FROM r.ends_at) * 1000)::int8 AS ends_ms,
              r.ends_at > clock_timestamp() AS live,
              encode(r.scope || convert_to(r.key, 'UTF8'), 'hex') AS id
)
SELECT g.state, g.fingerprint, g.owner, g.snapshot, g.created_ms, g.ends_ms, g.live,
       pg_notify($3::text, CASE WHEN octet_length(g.id) < 7900 THEN g.id ELSE '' END)::text
FROM gone g
