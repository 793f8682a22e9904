//! The PostgreSQL [`Store`](idem_core::Store) for idem: idempotency records in one
//! table, shared by any number of proxy instances or service replicas, so concurrent
//! duplicates spread over them still run once (R18).
//!
//! In a service, through the `idem` crate (feature `postgres`), as `idem::postgres`:
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use idem::IdempotencyLayer;
//! use idem::postgres::{PostgresStore, PostgresStoreConfig};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Creates the schema `idem` and its tables on first use (see `migrate`).
//!     let store = PostgresStore::connect(
//!         "postgres://idem@db.internal:5432/app",
//!         PostgresStoreConfig::default(),
//!     )
//!     .await?;
//!     let app = Router::new()
//!         .route("/orders", post(|| async { "created" }))
//!         .layer(IdempotencyLayer::new(store));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! # How it works
//!
//! - **Table.** `<schema>.records`, primary key `(scope, key)`: the unique constraint
//!   is the last line of defence. Versioned migrations are embedded
//!   ([`PostgresStore::migrate`]) and tracked in `<schema>.idem_migrations`.
//! - **Transitions.** Each operation of the [`Store`](idem_core::Store) contract is one
//!   SQL statement, correct under READ COMMITTED; the reasoning is written as comments
//!   beside each statement in the crate's `sql/` directory. A claim is one
//!   `INSERT … ON CONFLICT DO UPDATE … WHERE <record not live>` that also reports the
//!   live record; completion, renewal and release are fenced by the owner token
//!   (R11). All time comes from the database's clock, never from the instances'.
//! - **Waiting.** Completion and release send a `NOTIFY` in the same statement; one
//!   dedicated `LISTEN` connection per store wakes the waiters (R10 `wait` mode),
//!   which hold no pooled connection.
//! - **Expiry.** A background task on every instance deletes expired records in
//!   batches with `FOR UPDATE SKIP LOCKED` (R14).
//! - **Transactions.** [`PostgresStore`] is [`Transactional`] over any tokio-postgres
//!   client: it completes a record inside the caller's transaction, together with its
//!   business writes (R21), and keeps the recovery points of multi-step work in the
//!   same transactions as each step (R20); `Sealed<PostgresStore>` keeps both, sealed.
//! - **TLS.** Set in the URL as for libpq (`sslmode=verify-full&sslrootcert=ca.pem`,
//!   client certificates with `sslcert`/`sslkey`), handled by rustls; see [`tls`].
//! - **Failures.** Connection and pool failures are
//!   [`StoreError::Unavailable`](idem_core::store::StoreError::Unavailable), operations
//!   past [`PostgresStoreConfig::statement_timeout`] are
//!   [`StoreError::Timeout`](idem_core::store::StoreError::Timeout) (R15).
//!
//! # Feature flags
//! None.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod error;
mod listener;
mod migrate;
mod sql;
mod store;
pub mod tls;
mod transactional;

pub use config::{ConfigError, PostgresStoreConfig};
/// The capability [`PostgresStore`] implements for every tokio-postgres client, and
/// what its recovery points are (R20, R21), from `idem_core::store`.
pub use idem_core::store::{RecoveryPoint, Transactional};
pub use store::PostgresStore;
pub use transactional::PgTransactional;

/// The deadpool-postgres crate, whose [`Pool`](deadpool_postgres::Pool)
/// [`PostgresStore::pool`] returns.
pub use deadpool_postgres;
/// The tokio-postgres crate, whose clients and transactions [`Transactional`] takes.
pub use tokio_postgres;
