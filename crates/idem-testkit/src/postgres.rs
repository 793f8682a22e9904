//! A PostgreSQL schema per test, dropped afterwards, so tests run side by side on one
//! server and leave nothing behind.

use idem_core::record::OwnerToken;

/// The test server: `$IDEM_TEST_POSTGRES_URL`, by default
/// `postgres://postgres@127.0.0.1:5432/test`.
pub fn url() -> String {
    std::env::var("IDEM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh schema name, dropped with everything in it when the guard drops.
#[derive(Debug)]
pub struct Schema {
    name: String,
}

impl Schema {
    /// A schema named `<prefix>_<random hex>` (not created: the store creates it).
    pub fn fresh(prefix: &str) -> Self {
        Self {
            name: format!("{prefix}_{}", &OwnerToken::random().to_hex()[..16]),
        }
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        run_detached(format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name));
    }
}

/// The number of rows in `schema`.`table`.
pub async fn count(client: &tokio_postgres::Client, schema: &str, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".{table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// Every row of the store's tables in `schema` (records and recovery points), as
/// PostgreSQL prints them, one a line: for checks of what is stored in the clear.
pub async fn store_rows_as_text(client: &tokio_postgres::Client, schema: &str) -> String {
    let mut all = String::new();
    for table in ["records", "recovery_points"] {
        for row in client
            .query(&format!("SELECT t::text FROM \"{schema}\".{table} t"), &[])
            .await
            .unwrap()
        {
            all.push_str(row.get::<_, &str>(0));
            all.push('\n');
        }
    }
    all
}

/// A plain connection to the test server, for looking at tables behind a store's back;
/// fails loudly if the server is unreachable.
pub async fn client() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} must be reachable: {e}", url()));
    tokio::spawn(connection);
    client
}

/// Runs `sql` to completion on the test server from a `Drop` (a cleanup): that may run
/// outside any runtime, or inside one that is shutting down, so a thread with a small
/// runtime of its own does the work. A failure is reported on stderr, not raised.
pub fn run_detached(sql: String) {
    let statement = sql.clone();
    let done = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let (client, connection) =
                tokio_postgres::connect(&url(), tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client.batch_execute(&statement).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
    })
    .join();
    if !matches!(done, Ok(Ok(()))) {
        eprintln!("test cleanup failed: {sql}: {done:?}");
    }
}
