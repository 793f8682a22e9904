//! Idempotency keys for HTTP APIs, as a tower layer.
//!
//! A client sends an `Idempotency-Key` with a POST; the first request runs, every retry
//! gets the stored response replayed byte for byte, a concurrent duplicate never runs
//! twice, a key reused with another payload is refused, and keys expire. The rules are
//! `SPEC.md`'s R1–R19; [`IdempotencyLayer`] applies them to any tower service, and
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
//! # Feature flags
//! - `redb` (default): the embedded durable store, `file:PATH` in [`AnyStore`].
//! - `redis`: the Redis / Redis Cluster store.
//! - `postgres`: the PostgreSQL store.
//! - `full`: all of the above.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod any_store;
mod body;
pub mod layer;

pub use any_store::{AnyStore, StoreUrlError};
pub use body::{Body, BoxError};
pub use idem_core::{
    Engine, IdempotencyKey, Policy, Problem, ProblemKind, Store, clock, engine, fingerprint,
    headers, key, metrics, policy, problem, record, scope, store,
};
pub use layer::{Idempotency, IdempotencyLayer};

#[cfg(feature = "postgres")]
pub use idem_postgres as postgres;
#[cfg(feature = "redb")]
pub use idem_redb as redb;
#[cfg(feature = "redis")]
pub use idem_redis as redis;
