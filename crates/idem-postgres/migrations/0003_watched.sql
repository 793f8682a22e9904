-- 0003: notify only when someone waits (R10).
--
-- A completion or release used to `pg_notify` every time. NOTIFY takes a database-wide
-- lock at commit, so every completing transaction of the cluster committed one after
-- another and group commit was lost, although in the default conflict mode nobody ever
-- waits. Now a duplicate that is going to wait marks the record (claim.sql, in the same
-- statement that answers "in flight"), and only a marked record's completion or
-- release notifies (complete.sql, release.sql).
ALTER TABLE {schema}.records ADD COLUMN watched boolean NOT NULL DEFAULT false;
