//! The metric names the engine records, through the `metrics` facade. Installing a
//! recorder (Prometheus, say) is the application's business; without one these are
//! no-ops.
//!
//! Every label value is a `&'static str`, so recording formats nothing.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Counter: protected requests by `outcome` (see [`Outcome`]).
pub const REQUESTS: &str = "idem_requests_total";
/// Histogram: seconds one store operation took, by `op` (claim, renew, complete,
/// release, lookup) and `result` (ok, error).
pub const STORE_SECONDS: &str = "idem_store_duration_seconds";
/// Gauge: records this instance currently owns (requests executing under a lease).
pub const IN_FLIGHT: &str = "idem_in_flight";
/// Gauge: duplicates currently waiting for a record in flight (R10 `wait` mode).
pub const WAITERS: &str = "idem_waiters";
/// Counter: completions that failed after every attempt; the record stays in flight
/// until its lease ends (R7).
pub const COMPLETION_FAILURES: &str = "idem_completion_failures_total";
/// Counter: completions or renewals refused because another owner took over (R11).
pub const SUPERSEDED: &str = "idem_superseded_total";

/// Every metric with its help text, for describing them at start-up and in docs.
pub const ALL: &[(&str, &str)] = &[
    (
        REQUESTS,
        "Protected requests by outcome (executed, taken_over, replayed, not_retained, \
         outcome_unknown, conflict, mismatch, invalid_key, missing_key, unscoped, too_large, bad_body, store_error, \
         fail_open)",
    ),
    (
        STORE_SECONDS,
        "Store operation latency by op (claim, renew, complete, release, lookup) and \
         result (ok, error)",
    ),
    (
        IN_FLIGHT,
        "Requests this instance currently executes as the owner of their key",
    ),
    (WAITERS, "Duplicates waiting for an in-flight request"),
    (COMPLETION_FAILURES, "Completions that could not be stored"),
    (
        SUPERSEDED,
        "Completions refused because the record was taken over",
    ),
];

/// What became of a protected request: the `outcome` label of [`REQUESTS`] and of the
/// decision log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The key was new: the request ran (R5).
    Executed,
    /// The previous owner's lease had ended: the request ran as the new owner (R11).
    TakenOver,
    /// A stored response was replayed (R8).
    Replayed,
    /// The key was done, but its response was not kept: 410 (R13).
    NotRetained,
    /// The key is held after its upstream failed ambiguously: the retry got the
    /// `outcome-unknown` problem, nothing ran (R22).
    OutcomeUnknown,
    /// The key is in flight elsewhere: 409 (R10).
    Conflict,
    /// The key was used with a different request (R9).
    Mismatch,
    /// The key header is malformed (R1).
    InvalidKey,
    /// A key is required and missing (R3).
    MissingKey,
    /// A keyed request carried none of the scope headers: refused, or passed through
    /// unprotected (R4).
    Unscoped,
    /// The request body exceeds the limit (R13).
    TooLarge,
    /// The request body could not be read.
    BadBody,
    /// The store failed and the policy is fail-closed: 503 (R15).
    StoreError,
    /// The store failed and the policy is fail-open: forwarded unprotected (R15).
    FailOpen,
}

impl Outcome {
    /// Every outcome, in the order the help text lists them.
    pub const ALL: [Self; 14] = [
        Self::Executed,
        Self::TakenOver,
        Self::Replayed,
        Self::NotRetained,
        Self::OutcomeUnknown,
        Self::Conflict,
        Self::Mismatch,
        Self::InvalidKey,
        Self::MissingKey,
        Self::Unscoped,
        Self::TooLarge,
        Self::BadBody,
        Self::StoreError,
        Self::FailOpen,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Executed => "executed",
            Self::TakenOver => "taken_over",
            Self::Replayed => "replayed",
            Self::NotRetained => "not_retained",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::Conflict => "conflict",
            Self::Mismatch => "mismatch",
            Self::InvalidKey => "invalid_key",
            Self::MissingKey => "missing_key",
            Self::Unscoped => "unscoped",
            Self::TooLarge => "too_large",
            Self::BadBody => "bad_body",
            Self::StoreError => "store_error",
            Self::FailOpen => "fail_open",
        }
    }

    /// Counts one request with this outcome in [`REQUESTS`].
    pub fn record(self) {
        metrics::counter!(REQUESTS, "outcome" => self.as_str()).increment(1);
    }
}

/// A store operation, the `op` label of [`STORE_SECONDS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreOp {
    Claim,
    Renew,
    Complete,
    Release,
    Lookup,
}

impl StoreOp {
    const ALL: [Self; 5] = [
        Self::Claim,
        Self::Renew,
        Self::Complete,
        Self::Release,
        Self::Lookup,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Claim => "claim",
            Self::Renew => "renew",
            Self::Complete => "complete",
            Self::Release => "release",
            Self::Lookup => "lookup",
        }
    }
}

/// Registers every series the engine records, each label combination included, with
/// the recorder installed now: counters and gauges at 0, histograms without samples.
///
/// A scrape then shows every series from the start rather than from the first request
/// that touches it, so `rate()` sees the first increment and alerts written on absent
/// series do not fire after each deploy. Call it once, after installing the recorder.
pub fn register() {
    for outcome in Outcome::ALL {
        metrics::counter!(REQUESTS, "outcome" => outcome.as_str()).increment(0);
    }
    for op in StoreOp::ALL {
        for result in ["ok", "error"] {
            // Registering the handle is enough: the exporter lists a histogram from then on.
            let _ = metrics::histogram!(STORE_SECONDS, "op" => op.as_str(), "result" => result);
        }
    }
    metrics::gauge!(IN_FLIGHT).increment(0.0);
    metrics::gauge!(WAITERS).increment(0.0);
    metrics::counter!(COMPLETION_FAILURES).increment(0);
    metrics::counter!(SUPERSEDED).increment(0);
}

/// Runs one store operation, records its latency in [`STORE_SECONDS`] and returns it
/// with the time it took.
pub(crate) async fn timed<T, E>(
    op: StoreOp,
    fut: impl Future<Output = Result<T, E>>,
) -> (Result<T, E>, Duration) {
    let started = Instant::now();
    let result = fut.await;
    let took = started.elapsed();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::histogram!(STORE_SECONDS, "op" => op.as_str(), "result" => outcome)
        .record(took.as_secs_f64());
    (result, took)
}

pub(crate) fn in_flight(delta: f64) {
    metrics::gauge!(IN_FLIGHT).increment(delta);
}

pub(crate) fn waiters(delta: f64) {
    metrics::gauge!(WAITERS).increment(delta);
}

pub(crate) fn completion_failed() {
    metrics::counter!(COMPLETION_FAILURES).increment(1);
}

pub(crate) fn superseded() {
    metrics::counter!(SUPERSEDED).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_requests_help_names_every_outcome_once() {
        let help = ALL
            .iter()
            .find(|(name, _)| *name == REQUESTS)
            .map(|(_, help)| *help)
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        for outcome in Outcome::ALL {
            assert!(seen.insert(outcome.as_str()), "{outcome:?} listed twice");
            assert!(
                help.contains(outcome.as_str()),
                "{outcome:?} not in the help"
            );
        }
    }
}
