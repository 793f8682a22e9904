-- Peek (R8, R9, R10): the live record as it stands, read before any claim writes.
--
-- $1 scope bytea, $2 key text, $3 fingerprint bytea.
-- Answers the live record (at most one row): its state, fingerprint, whether a waiter
-- marked it, the time left on it, and its snapshot when completed and the fingerprints
-- match (no point shipping a body to a mismatch). No row: nothing live under the key.
--
-- A replay, a mismatch and an "in flight" answer change nothing, so they are answered
-- from this plain read: no transaction id, no WAL, no commit waiting for the disk, and
-- none of the claim statement's executor start-up (claim.sql). Only when nothing live
-- is found, or a waiter still has to mark the record (R10 `wait` mode), does the store
-- go on to write (insert.sql, then claim.sql).
--
-- Why an answer from this read is sound: it is built from a committed live version of
-- the row, so it is one the record held during this statement, the argument claim.sql
-- makes for its `existing` CTE. A live record never becomes claimable before its lease
-- or TTL runs out, which the clock reading below accounts for.
SELECT r.state, r.fingerprint, r.watched,
       -- Rounded up, so a live record never reports zero time left.
       ceil(extract(epoch FROM r.ends_at - clock_timestamp()) * 1000)::int8 AS left_ms,
       CASE WHEN r.state = 2 AND r.fingerprint = $3::bytea THEN r.snapshot END AS snapshot
FROM {schema}.records r
WHERE r.scope = $1::bytea AND r.key = $2::text AND r.ends_at > clock_timestamp()
