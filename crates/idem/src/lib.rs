//! Idempotency keys for HTTP APIs, as a tower layer.
//!
//! A client sends an `Idempotency-Key` with a POST; the first request runs, every retry
//! gets the stored response replayed byte for byte, a concurrent duplicate never runs
//! twice, a key reused with another payload is refused, and keys expire. The rules, R1 to
//! R25, are stated in [`contract`], and every rule id in these docs links to its rule;
//! [`IdempotencyLayer`] applies them to any tower service, and the `idem serve` proxy is
//! this same layer in front of a forwarding service.
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use axum::body::Body;
//! use axum::http::Request;
//! use axum::{Router, routing::post};
//! use idem::{IdempotencyContext, IdempotencyLayer, MemoryStore};
//! use tower::ServiceExt; // `oneshot`, to call the router in this example
//!
//! async fn charge(ctx: IdempotencyContext) -> String {
//!     match ctx.handle() {
//!         // A protected request: calls to other services carry a derived key (R20).
//!         Some(handle) => format!("charged; bank key {}", handle.derived_key("bank")),
//!         None => "charged without a key".to_owned(),
//!     }
//! }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() {
//!     let app = Router::new()
//!         .route("/charges", post(charge))
//!         .layer(IdempotencyLayer::new(MemoryStore::new()));
//!
//!     let request = || {
//!         Request::post("/charges")
//!             .header("idempotency-key", "order-42")
//!             // Whose key it is (R4): a keyed request without credentials is refused.
//!             .header("authorization", "Bearer sk_test_alice")
//!             .header("content-type", "application/json")
//!             .body(Body::from(r#"{"amount":100}"#))
//!             .unwrap()
//!     };
//!     let first = app.clone().oneshot(request()).await.unwrap();
//!     assert!(first.headers().get("idempotent-replayed").is_none());
//!
//!     let retry = app.clone().oneshot(request()).await.unwrap();
//!     assert_eq!(retry.headers()["idempotent-replayed"], "true");
//!     let body = axum::body::to_bytes(retry.into_body(), 1 << 20).await.unwrap();
//!     assert_eq!(body, "charged; bank key order-42:bank");
//! }
//! # main(); }
//! ```
//!
//! Without axum, the layer wraps any tower `Service<http::Request<idem::Body>>`; its
//! middleware is [`Idempotency`].
//!
//! # With axum
//!
//! [`IdempotencyLayer::new`] takes the defaults; [`IdempotencyLayer::builder`] has one
//! method per setting, checked once (errors instead of panics). Handlers read the
//! request's key and their [`IdempotencyHandle`] through the [`IdempotencyContext`]
//! extractor (feature `axum`):
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use std::time::Duration;
//! use axum::{Router, routing::post};
//! use idem::{IdempotencyContext, IdempotencyLayer, MemoryStore};
//!
//! async fn create_order(ctx: IdempotencyContext) -> String {
//!     match ctx.handle() {
//!         // A protected request: derive keys for the calls it makes (R20).
//!         Some(handle) => format!("charging with key {}", handle.derived_key("charge")),
//!         None => "unprotected".to_owned(),
//!     }
//! }
//!
//! # fn main() -> Result<(), idem::ConfigError> {
//! let layer = IdempotencyLayer::builder(MemoryStore::new())
//!     .ttl(Duration::from_secs(3600))
//!     .require_key(true)
//!     .build()?;
//! let app: Router = Router::new().route("/orders", post(create_order)).layer(layer);
//! # let _ = app; Ok(()) }
//! # main().unwrap(); }
//! ```
//!
//! With PostgreSQL, a handler can complete the record in its own transaction
//! ([`IdempotencyHandle::complete_in`], [R21](crate::contract#r21)) and split
//! multi-step work into atomic phases whose typed [`Progress`] survives a crash
//! ([`IdempotencyHandle::progress`], [`IdempotencyHandle::advance`],
//! [R20](crate::contract#r20)): the store's [`Transactional`](core::store::Transactional)
//! capability, which `Sealed<PostgresStore>` and [`AnyStore`] keep, reached through the
//! context naming the layer's store, `IdempotencyContext<St>`; see [`context`].
//!
//! # Feature flags
//! - `redb` (default): the embedded durable store, [`redb`], `file:PATH` in
//!   [`AnyStore`]. Depend with `default-features = false` when you do not use it, or
//!   it is compiled all the same.
//! - `redis`: the Redis / Redis Cluster store, `idem::redis`.
//! - `postgres`: the PostgreSQL store, `idem::postgres`, with transactional completion
//!   ([R21](crate::contract#r21)) and recovery points ([R20](crate::contract#r20)) on
//!   [`IdempotencyHandle`], also through [`AnyStore`].
//! - `axum`: [`IdempotencyContext`] as an axum extractor.
//! - `full`: all of the above.
//!
//! The memory store, [`MemoryStore`], is always there.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod any_store;
mod body;
pub mod context;
pub mod contract {
    #![doc = include_str!("../../../docs/contract.md")]
}
pub mod layer;

/// The engine and the store contract, from `idem-core`: for code that implements a
/// [`Store`] or drives the [`Engine`](crate::core::Engine) itself (as the `idem serve` proxy
/// does), and for the policy's value types ([`policy`](crate::core::policy)). A service
/// behind the layer needs none of it beyond what the crate root holds.
pub mod core {
    pub use idem_core::{
        Engine, IdempotencyKey, Policy, Problem, ProblemKind, Store, clock, cors, engine,
        fingerprint, headers, key, metrics, policy, problem, record, scope, store,
    };
}

pub use any_store::{AnyStore, StoreUrlError};
pub use body::{Body, BoxError};
pub use context::{IdempotencyContext, IdempotencyHandle, Progress, ProgressError};
pub use idem_core::Store;
pub use idem_core::policy::ConfigError;
pub use idem_core::store::{MemoryStore, Sealed, SealingKeys, StoreError};
pub use layer::{Idempotency, IdempotencyLayer, IdempotencyLayerBuilder};

#[cfg(feature = "postgres")]
pub use idem_postgres as postgres;
#[cfg(feature = "redb")]
pub use idem_redb as redb;
#[cfg(feature = "redis")]
pub use idem_redis as redis;
