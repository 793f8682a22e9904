-- Renew (R11): extend the owner's lease to now + $4 ms.
--
-- $1 scope, $2 key, $3 owner, $4 lease in ms. One row back = Done, none = Superseded.
--
-- Fencing under READ COMMITTED: UPDATE locks the row it matches and, if a concurrent
-- transaction changed the row first, re-evaluates the WHERE on the newest version.
-- After a takeover that version carries the new owner, so the old owner's renew
-- matches nothing. A lease that ran out is still renewed while nobody took the record
-- over (the row still names this owner), as the contract allows.
WITH now AS MATERIALIZED (
    SELECT clock_timestamp() AS t
)
UPDATE {schema}.records r
SET ends_at = (SELECT t FROM now) + $4::int8 * interval '1 millisecond'
WHERE r.scope = $1::bytea AND r.key = $2::text AND r.owner = $3::bytea AND r.state = 1
RETURNING 1
