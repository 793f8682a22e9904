-- The live recovery point of a record for a request with this fingerprint (R20).
--
-- $1 scope, $2 key, $3 fingerprint. A point made by a request with another payload is
-- not returned: that request's progress is never resumed by this one (R9).
SELECT p.step, p.data
FROM {schema}.recovery_points p
WHERE p.scope = $1::bytea AND p.key = $2::text AND p.fingerprint = $3::bytea
  AND p.expires_at > clock_timestamp()
