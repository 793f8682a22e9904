-- 0001: the records table.
--
-- `{schema}` is replaced by the store's validated, quoted schema name. This file runs
-- inside the migration transaction, under the schema's advisory lock (see
-- src/migrate.rs), so two instances migrating at once apply it exactly once.

-- One row per (scope, key): the primary key is the last line of defence behind the
-- claim statement (sql/claim.sql). Keys are compared byte for byte (COLLATE "C"): a key
-- is visible ASCII and must not depend on the database's locale.
CREATE TABLE {schema}.records (
    scope       bytea       NOT NULL CHECK (octet_length(scope) = 16),
    key         text        COLLATE "C" NOT NULL,
    -- The fingerprint of the request that created the record, kept on completion (R9).
    fingerprint bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
    -- The owner token of the request that claimed the record last (R11 fencing).
    owner       bytea       NOT NULL CHECK (octet_length(owner) = 16),
    -- 1 = in flight, 2 = completed.
    state       smallint    NOT NULL CHECK (state IN (1, 2)),
    created_at  timestamptz NOT NULL,
    -- When the record stops counting: the lease deadline while in flight, the expiry
    -- once completed. A row with ends_at <= now is as good as absent: the next claim
    -- replaces it and the sweeper deletes it (R11, R14).
    ends_at     timestamptz NOT NULL,
    -- Snapshot::encode() of the stored response; present exactly when completed.
    snapshot    bytea       CHECK ((state = 2) = (snapshot IS NOT NULL)),
    -- True when this owner took the record over from an owner whose lease had ended.
    taken_over  boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (scope, key)
);

-- The sweeper walks this index: `ends_at <= now() LIMIT n`.
CREATE INDEX records_ends_at ON {schema}.records (ends_at);
