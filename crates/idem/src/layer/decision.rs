//! The decision log: one line (target `idem::decision`, INFO) per protected request,
//! with its outcome and timings. Never the body, never any header but the key.
//!
//! Fields are passed as tracing fields, so nothing is formatted when the level or target
//! is disabled; nothing is copied from the request either.

use std::time::Duration;

use tokio::time::Instant;

use http::{Method, Uri};
use idem_core::metrics::Outcome;
use idem_core::record::RecordId;
use idem_core::scope::{LoggedScope, ScopeSource};

/// The target of decision lines, for filters such as `RUST_LOG=idem::decision=off`.
pub const TARGET: &str = "idem::decision";

/// The target of the `idem.request` span each protected request gets, carrying the same
/// fields as its decision line; for exporters such as OpenTelemetry. Nothing is recorded
/// unless a subscriber enables it.
pub const SPAN_TARGET: &str = "idem::request";

/// What is known about one request while it is being decided.
///
/// When neither the line nor the span is enabled, nothing is copied from the request.
pub(crate) struct Decision {
    span: tracing::Span,
    /// The request's method and URI, kept only when the line is enabled.
    request: Option<(Method, Uri)>,
    started: Instant,
    /// As logs may show it: keyed, never the credential's plain digest (R4).
    pub(crate) scope: Option<LoggedScope>,
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
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            "idem.request",
            http.request.method = %method,
            url.path = uri.path(),
            idem.outcome = tracing::field::Empty,
            idem.key = tracing::field::Empty,
            idem.scope = tracing::field::Empty,
            idem.record = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            idem.store_ms = tracing::field::Empty,
            idem.upstream_ms = tracing::field::Empty,
        );
        let request = tracing::enabled!(target: TARGET, tracing::Level::INFO)
            .then(|| (method.clone(), uri.clone()));
        Self {
            span,
            request,
            started: Instant::now(),
            scope: None,
            key: None,
            store: Duration::ZERO,
            upstream: None,
            record: None,
        }
    }

    /// Notes the record the request maps to, its scope as `source` lets logs show it.
    pub(crate) fn identify(&mut self, id: &RecordId, source: &ScopeSource) {
        self.scope = Some(source.log(id.scope()));
        if self.request.is_some() || !self.span.is_disabled() {
            self.key = Some(id.key().to_string());
        }
    }

    /// Emits the line.
    /// `status` is `None` when the inner service failed without a response.
    pub(crate) fn log(&self, outcome: Outcome, status: Option<u16>) {
        if !self.span.is_disabled() {
            let span = &self.span;
            span.record("idem.outcome", outcome.as_str());
            if let Some(scope) = &self.scope {
                span.record("idem.scope", tracing::field::display(scope));
            }
            span.record("idem.key", self.key.as_deref());
            span.record("idem.record", self.record);
            span.record("http.response.status_code", status);
            span.record("idem.store_ms", ms(self.store));
            span.record("idem.upstream_ms", self.upstream.map(ms));
        }
        let Some((method, uri)) = &self.request else {
            return;
        };
        tracing::info!(
            target: TARGET,
            outcome = outcome.as_str(),
            scope = self.scope.as_ref().map(tracing::field::display),
            key = self.key.as_deref(),
            method = %method,
            path = uri.path(),
            status,
            record = self.record,
            store_ms = ms(self.store),
            upstream_ms = self.upstream.map(ms),
            total_ms = ms(self.started.elapsed()),
            "decision"
        );
    }
}
