//! The metric names the engine records, through the `metrics` facade. Installing a
//! recorder (Prometheus, say) is the application's business; without one these are
//! no-ops.

/// Counter: protected requests by `outcome` (executed, taken_over, replayed, conflict,
/// mismatch, invalid_key, missing_key, store_error, fail_open).
pub const REQUESTS: &str = "idem_requests_total";
/// Gauge: duplicates currently waiting for a record in flight (R10 `wait` mode).
pub const WAITERS: &str = "idem_waiters";
/// Counter: completions that failed after every attempt; the record stays in flight
/// until its lease ends (R7).
pub const COMPLETION_FAILURES: &str = "idem_completion_failures_total";
/// Counter: completions or renewals refused because another owner took over (R11).
pub const SUPERSEDED: &str = "idem_superseded_total";

/// Every metric with its help text, for describing them at start-up and in docs.
pub const ALL: &[(&str, &str)] = &[
    (REQUESTS, "Protected requests by outcome"),
    (WAITERS, "Duplicates waiting for an in-flight request"),
    (COMPLETION_FAILURES, "Completions that could not be stored"),
    (
        SUPERSEDED,
        "Completions refused because the record was taken over",
    ),
];

pub(crate) fn outcome(outcome: &'static str) {
    metrics::counter!(REQUESTS, "outcome" => outcome).increment(1);
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
