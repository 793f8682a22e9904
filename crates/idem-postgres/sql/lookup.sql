-- Lookup: the live record, if any. A plain read under the statement's snapshot;
-- records that are no longer live count as absent, as in claim.sql.
--
-- $1 scope, $2 key. Times come back as milliseconds since the UNIX epoch.
SELECT r.state, r.fingerprint, r.owner, r.snapshot,
       floor(extract(epoch FROM r.created_at) * 1000)::int8 AS created_ms,
       floor(extract(epoch FROM r.ends_at) * 1000)::int8 AS ends_ms
FROM {schema}.records r
WHERE r.scope = $1::bytea AND r.key = $2::text AND r.ends_at > clock_timestamp()
