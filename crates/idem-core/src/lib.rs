//! The idempotency engine behind idem: retries of a request with the same
//! `Idempotency-Key` get the first response replayed, concurrent duplicates never run
//! twice, a key reused with another payload is refused, and keys expire.
//!
//! This crate holds the rules of `SPEC.md` (R1–R19) independent of any HTTP server and
//! any store: [`key`], [`scope`], [`fingerprint`], [`record`] and its codec, the
//! [`Store`] contract with its shared test kit, the volatile
//! [`MemoryStore`](store::MemoryStore), and the [`Engine`] that drives a
//! request through them. The `idem` crate wraps it in a tower layer; `idem-proxy` puts
//! that layer in front of any HTTP API.
//!
//! ```
//! use bytes::Bytes;
//! use http::Request;
//! use idem_core::engine::{Begin, Engine, Inspect};
//! use idem_core::policy::Policy;
//! use idem_core::store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let engine = Engine::new(MemoryStore::new(), Policy::default());
//! let (parts, ()) = Request::post("/charges")
//!     .header("idempotency-key", "order-42")
//!     .header("authorization", "Bearer sk_test_alice")
//!     .body(())
//!     .unwrap()
//!     .into_parts();
//! let body = b"{\"amount\":100}";
//!
//! // The first request executes …
//! let Inspect::Protect(pending) = engine.inspect(&parts) else { unreachable!() };
//! let Begin::Execute(ticket) = engine.begin(pending, &parts, body).await else { unreachable!() };
//! let (head, ()) = http::Response::builder().status(201).body(()).unwrap().into_parts();
//! engine.complete(ticket, &head, Ok(Bytes::from_static(b"charged"))).await;
//!
//! // … and a retry gets the stored response.
//! let Inspect::Protect(pending) = engine.inspect(&parts) else { unreachable!() };
//! let Begin::Respond(answer) = engine.begin(pending, &parts, body).await else { unreachable!() };
//! assert_eq!(answer.decided.outcome, idem_core::metrics::Outcome::Replayed);
//! let replay = answer.response;
//! assert_eq!(replay.status(), 201);
//! assert_eq!(replay.headers()["idempotent-replayed"], "true");
//! assert_eq!(replay.body().as_ref(), b"charged");
//! # }
//! ```
//!
//! # Feature flags
//! - `testkit`: the store contract suite (`store_tests!`) and `ManualClock`.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod clock;
pub mod cors;
pub mod engine;
pub mod fingerprint;
pub mod headers;
pub mod key;
pub mod metrics;
pub mod policy;
pub mod problem;
pub mod record;
mod renewal;
mod retry_hint;
pub mod scope;
pub mod store;

pub use engine::Engine;
pub use key::IdempotencyKey;
pub use policy::Policy;
pub use problem::{Problem, ProblemKind};
pub use store::Store;

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
