-- Release (R7, R12): delete the owner's in-flight record so the operation may run
-- again, and wake waiters on every instance (one of them claims, R10) if a waiter
-- marked the record (claim.sql).
--
-- $1 scope, $2 key, $3 owner, $4 notification channel. One row back = Done, none =
-- Superseded.
--
-- Fencing under READ COMMITTED: DELETE, like UPDATE, re-checks its WHERE on the
-- newest version of a concurrently changed row, so a late release never deletes a
-- record taken over by a new owner (R11), nor a completed one (state = 2).
-- The notification is sent in the same statement, delivered at commit (see
-- complete.sql).
WITH gone AS (
    DELETE FROM {schema}.records r
    WHERE r.scope = $1::bytea AND r.key = $2::text AND r.owner = $3::bytea AND r.state = 1
    RETURNING r.watched, encode(r.scope || convert_to(r.key, 'UTF8'), 'hex') AS id
)
SELECT CASE WHEN g.watched
            THEN pg_notify($4::text, CASE WHEN octet_length(g.id) < 7900 THEN g.id ELSE '' END)
       END
FROM gone g
