-- 0002: recovery points of multi-step handlers (R20).
--
-- A separate table, not columns of `records`, on purpose: a record row is deleted by a
-- release (R7, R12) and by the sweeper once its lease ended (R11), and replaced by a
-- takeover; the progress of a multi-step operation must outlive all three, because its
-- phases' local writes are committed. A recovery point therefore lives until its own
-- expiry (the record TTL counted from the last advance) and is only ever read by an
-- owner whose request has the same fingerprint.
CREATE TABLE {schema}.recovery_points (
    scope       bytea       NOT NULL CHECK (octet_length(scope) = 16),
    key         text        COLLATE "C" NOT NULL,
    -- The fingerprint of the request that made the progress: a request with another
    -- payload under the same key never resumes it (R9).
    fingerprint bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
    -- The last phase that committed, and what it chose to carry to the next ones.
    step        text        NOT NULL,
    data        bytea,
    updated_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);

-- The sweeper walks this index, as records_ends_at (R14).
CREATE INDEX recovery_points_expires_at ON {schema}.recovery_points (expires_at);
