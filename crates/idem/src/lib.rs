//! Idempotency keys for HTTP APIs, as a tower layer.
//!
//! A client sends an `Idempotency-Key` with a POST; the first request runs, every retry
//! gets the stored response replayed byte for byte, a concurrent duplicate never runs
//! twice, a key reused with another payload is refused, and keys expire. The rules are
//! `SPEC.md`'s R1–R21; [`IdempotencyLayer`] applies them to any tower service, and
//! the `idem serve` proxy is this same layer in front of a forwarding service.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use idem::{Body, IdempotencyLayer};
//! use idem::store::MemoryStore;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let charge = service_fn(|_req: Request<Body>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("charged"))))
//! });
//! let svc = IdempotencyLayer::new(MemoryStore::new()).layer(charge);
//!
//! let request = || {
//!     Request::post("/charges")
//!         .header("idempotency-key", "order-42")
//!         // Whose key it is (R4): a keyed request without credentials is refused.
//!         .header("authorization", "Bearer sk_test_alice")
//!         .body(Full::new(Bytes::from("{\"amount\":100}")))
//!         .unwrap()
//! };
//! let first = svc.clone().oneshot(request()).await.unwrap();
//! assert!(first.headers().get("idempotent-replayed").is_none());
//!
//! let retry = svc.clone().oneshot(request()).await.unwrap();
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//! assert_eq!(retry.into_body().collect().await.unwrap().to_bytes(), "charged");
//! # }
//! ```
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
//! use idem::{IdempotencyContext, IdempotencyLayer};
//! use idem::store::MemoryStore;
//!
//! async fn create_order(ctx: IdempotencyContext) -> String {
//!     match ctx.handle() {
//!         // A protected request: derive keys for the calls it makes (R20).
//!         Some(handle) => format!("charging with key {}", handle.derived_key("charge")),
//!         None => "unprotected".to_owned(),
//!     }
//! }
//!
//! # fn main() -> Result<(), idem::policy::ConfigError> {
//! let layer = IdempotencyLayer::builder(MemoryStore::new())
//!     .ttl(Duration::from_secs(3600))
//!     .require_key(true)
//!     .build()?;
//! let app: Router = Router::new().route("/orders", post(create_order)).layer(layer);
//! # let _ = app; Ok(()) }
//! # }
//! ```
//!
//! With PostgreSQL, a handler can complete the record in its own transaction
//! ([`IdempotencyHandle::complete_in`], R21) and split multi-step work into atomic
//! phases with recovery points ([`IdempotencyHandle::advance_in`], R20): the store's
//! [`Transactional`](store::Transactional) capability, which `Sealed<PostgresStore>`
//! and [`AnyStore`] keep, reached through the context naming the layer's store,
//! `IdempotencyContext<St>`; see [`context`].
//!
//! # Feature flags
//! - `redb` (default): the embedded durable store, `file:PATH` in [`AnyStore`].
//! - `redis`: the Redis / Redis Cluster store.
//! - `postgres`: the PostgreSQL store, transactional completion (R21) and recovery
//!   points (R20) on [`IdempotencyHandle`], also through [`AnyStore`].
//! - `axum`: [`IdempotencyContext`] as an axum extractor.
//! - `full`: all of the above.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod any_store;
mod body;
pub mod context;
pub mod layer;

pub use any_store::{AnyStore, StoreUrlError};
pub use body::{Body, BoxError};
pub use context::{IdempotencyContext, IdempotencyHandle};
pub use idem_core::{
    Engine, IdempotencyKey, Policy, Problem, ProblemKind, Store, clock, cors, engine, fingerprint,
    headers, key, metrics, policy, problem, record, scope, store,
};
pub use layer::{Idempotency, IdempotencyLayer, IdempotencyLayerBuilder, LayerTarget};

#[cfg(feature = "postgres")]
pub use idem_postgres as postgres;
#[cfg(feature = "redb")]
pub use idem_redb as redb;
#[cfg(feature = "redis")]
pub use idem_redis as redis;
