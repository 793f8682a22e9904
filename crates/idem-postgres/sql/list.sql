-- List (on-call inspection): one page of live records in id order, for `idem keys list`
-- and the admin API; never on the request path.
--
-- $1 state (1 in flight, 2 completed, NULL any), $2 created before (ms since the UNIX
-- epoch, or NULL), $3 scope (or NULL), $4 and $5 the cursor's scope and key (or NULL),
-- $6 how many rows at most. Times come back as milliseconds since the UNIX epoch.
--
-- A plain read under the statement's snapshot: it takes no lock, so it never holds up a
-- claim; a record changed concurrently shows as it was when the statement began. The
-- order (scope, then key byte for byte, COLLATE "C") is the primary key's, which is
-- RecordId's order, so the cursor is a row comparison the index answers.
SELECT r.scope, r.key, r.state, r.fingerprint, r.owner, r.snapshot,
       floor(extract(epoch FROM r.created_at) * 1000)::int8 AS created_ms,
       floor(extract(epoch FROM r.ends_at) * 1000)::int8 AS ends_ms
FROM {schema}.records r
WHERE r.ends_at > clock_timestamp()
  AND ($1::int2 IS NULL OR r.state = $1::int2)
  AND ($2::int8 IS NULL OR r.created_at < to_timestamp($2::int8 / 1000.0))
  AND ($3::bytea IS NULL OR r.scope = $3::bytea)
  AND ($4::bytea IS NULL OR (r.scope, r.key) > ($4::bytea, $5::text))
ORDER BY r.scope, r.key
LIMIT $6::int8
