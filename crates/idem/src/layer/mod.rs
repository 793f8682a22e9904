//! The tower middleware: [`IdempotencyLayer`] → [`Idempotency`] → [`ResponseFuture`].
//!
//! The same path serves the `idem serve` proxy (in front of a forwarding service) and a
//! Rust service (in front of its router), so one test suite proves both.

mod decision;
mod future;
#[allow(clippy::module_inception)]
mod layer;
mod service;

pub use decision::{SPAN_TARGET as REQUEST_SPAN_TARGET, TARGET as DECISION_LOG_TARGET};
pub use future::ResponseFuture;
pub use layer::{IdempotencyLayer, IdempotencyLayerBuilder, LayerTarget};
pub use service::Idempotency;
