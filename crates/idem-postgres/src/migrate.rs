//! Embedded, versioned migrations (`migrations/NNNN_*.sql`).
//!
//! All pending migrations are applied in one transaction that first takes a
//! transaction-scoped advisory lock for the schema, so instances starting together
//! migrate one after the other: the second finds the work done and applies nothing.
//! Applied versions are kept in `<schema>.idem_migrations`.

use idem_core::store::StoreError;
use tokio_postgres::Client;

use crate::config::Schema;
use crate::error;
use crate::sql::in_schema;

/// Every migration, in order. Never edit one that shipped: add the next.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_records.sql")),
    (2, include_str!("../migrations/0002_recovery_points.sql")),
    (3, include_str!("../migrations/0003_watched.sql")),
    (4, include_str!("../migrations/0004_unchecked_records.sql")),
];

/// The newest schema version this build knows.
pub(crate) const LATEST: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Applies the pending migrations; answers how many were applied.
pub(crate) async fn run(client: &mut Client, schema: &Schema) -> Result<usize, StoreError> {
    let tx = client.transaction().await.map_err(error::pg)?;
    // DDL may wait for locks and, in later migrations, rewrite tables: the store's
    // statement_timeout is for the request path, not for this.
    tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
        .await
        .map_err(error::pg)?;
    // One migrator per schema at a time, across instances. The lock is released at
    // commit or rollback; later statements of this transaction run on fresh snapshots
    // (READ COMMITTED), so a waiter sees everything the previous migrator committed.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('idem.migrate:' || $1::text, 0))",
        &[&schema.name()],
    )
    .await
    .map_err(error::pg)?;
    // Create the schema only when missing: CREATE SCHEMA IF NOT EXISTS would still
    // demand the CREATE privilege on the database from a role that merely owns an
    // existing schema.
    let exists = tx
        .query_opt(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1::text",
            &[&schema.name()],
        )
        .await
        .map_err(error::pg)?
        .is_some();
    if !exists {
        tx.batch_execute(&in_schema("CREATE SCHEMA {schema}", schema))
            .await
            .map_err(error::pg)?;
    }
    // Likewise the bookkeeping table: with everything in place, a role with only
    // read and write privileges can start with `migrate: true`.
    let tracked = tx
        .query_one(
            "SELECT to_regclass($1::text) IS NOT NULL",
            &[&in_schema("{schema}.idem_migrations", schema)],
        )
        .await
        .map_err(error::pg)?
        .try_get::<_, bool>(0)
        .map_err(error::pg)?;
    if !tracked {
        tx.batch_execute(&in_schema(
            "CREATE TABLE {schema}.idem_migrations (
                 version    integer     PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
            schema,
        ))
        .await
        .map_err(error::pg)?;
    }
    let applied: Vec<i32> = tx
        .query(
            &in_schema("SELECT version FROM {schema}.idem_migrations", schema),
            &[],
        )
        .await
        .map_err(error::pg)?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(error::pg)?;
    if let Some(newer) = applied.iter().copied().filter(|v| *v > LATEST).max() {
        tracing::warn!(
            schema = schema.name(),
            database = newer,
            build = LATEST,
            "the idem schema is newer than this build"
        );
    }
    let mut count = 0;
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(&in_schema(sql, schema))
            .await
            .map_err(error::pg)?;
        tx.execute(
            &in_schema(
                "INSERT INTO {schema}.idem_migrations (version) VALUES ($1::integer)",
                schema,
            ),
            &[version],
        )
        .await
        .map_err(error::pg)?;
        tracing::info!(schema = schema.name(), version, "applied idem migration");
        count += 1;
    }
    tx.commit().await.map_err(error::pg)?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_ascend_without_gaps() {
        for (i, (version, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(usize::try_from(*version).unwrap(), i + 1);
        }
    }
}
