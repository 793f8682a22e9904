//! The decision log: one line (target `idem::decision`, INFO) per protected request,
//! with its outcome and timings. Never the body, never any header but the key.
//!
//! Fields are passed as tracing fields, so nothing is formatted when the level or target
//! is disabled.

use std::time::Duration;

use tokio::time::Instant;

use http::{Method, Uri};
use idem_core::metrics::Outcome;
use idem_core::scope::Scope;

/// The target of decision lines, for filters such as `RUST_LOG=idem::decision=off`.
pub const TARGET: &str = "idem::decision";

/// What is known about one request while it is being decided.
pub(crate) struct Decision {
    method: Method,
    uri: Uri,
    started: Instant,
    pub(crate) scope: Option<Scope>,
    pub(crate) key: Option<String>,
    pub(crate) store: Duration,
    pub(crate) upstream: Option<Duration>,
    /// For executed requests: what became of the record (stored, released, …).
    pub(crate) record: Option<&'static str>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Decision {
    pub(crate) fn start(method: &Method, uri: &Uri) -> Self {
        Self {
            method: method.clone(),
            uri: uri.clone(),
            started: Instant::now(),
            scope: None,
            key: None,
            store: Duration::ZERO,
            upstream: None,
            record: None,
        }
    }

    /// Emits the line.
    /// `status` is `None` when the inner service failed without a response.
    pub(crate) fn log(&self, outcome: Outcome, status: Option<u16>) {
        tracing::info!(
            target: TARGET,
            outcome = outcome.as_str(),
            scope = self.scope.as_ref().map(tracing::field::display),
            key = self.key.as_deref(),
            method = %self.method,
            path = self.uri.path(),
            status,
            record = self.record,
            store_ms = ms(self.store),
            upstream_ms = self.upstream.map(ms),
            total_ms = ms(self.started.elapsed()),
            "decision"
        );
    }
}
