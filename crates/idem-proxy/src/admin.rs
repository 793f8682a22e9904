//! The admin listener (`--admin-listen`): liveness, readiness and Prometheus metrics,
//! apart from the proxied traffic.
//!
//! - `GET /healthz`: 200 while the process serves.
//! - `GET /readyz`: 200 when the store answers a lookup within 2 s, else 503.
//! - `GET /metrics`: every metric in the Prometheus text format.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use idem::record::RecordId;
use idem::scope::Scope;
use idem::{IdempotencyKey, Store};
use metrics_exporter_prometheus::PrometheusHandle;

/// Metric names the proxy records beyond the engine's ([`idem::metrics`]).
pub mod names {
    /// Histogram: seconds from forwarding a request to the upstream's response head.
    pub const UPSTREAM_SECONDS: &str = "idem_upstream_duration_seconds";
    /// Counter: upstream failures by `kind` (unavailable, timeout).
    pub const UPSTREAM_FAILURES: &str = "idem_upstream_failures_total";
}

/// Every metric with its help text: the engine's and the proxy's.
pub fn all_metrics() -> Vec<(&'static str, &'static str)> {
    let mut all = idem::metrics::ALL.to_vec();
    all.push((
        names::UPSTREAM_SECONDS,
        "Time from forwarding to the upstream's response head",
    ));
    all.push((names::UPSTREAM_FAILURES, "Upstream failures by kind"));
    all
}

/// Installs the Prometheus recorder and describes every metric; the handle renders them.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    // Latencies from 0.5 ms to 10 s, rendered as Prometheus histograms (not summaries).
    const BUCKETS: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(BUCKETS)?
        .install_recorder()?;
    for (name, help) in all_metrics() {
        if name.ends_with("_total") {
            metrics::describe_counter!(name, help);
        } else if name.ends_with("_seconds") {
            metrics::describe_histogram!(name, metrics::Unit::Seconds, help);
        } else {
            metrics::describe_gauge!(name, help);
        }
    }
    Ok(handle)
}

#[derive(Clone)]
struct Admin<St> {
    store: St,
    metrics: PrometheusHandle,
}

/// The admin routes over `store`.
pub fn router<St: Store>(store: St, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<St>))
        .route("/metrics", get(render::<St>))
        .with_state(Admin { store, metrics })
}

async fn readyz<St: Store>(State(admin): State<Admin<St>>) -> (StatusCode, &'static str) {
    let probe =
        IdempotencyKey::new("idem-readiness-probe").map(|k| RecordId::new(Scope::GLOBAL, k));
    let Ok(probe) = probe else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "bad probe key\n");
    };
    match tokio::time::timeout(Duration::from_secs(2), admin.store.lookup(&probe)).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: store failed");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store timed out\n"),
    }
}

async fn render<St: Store>(State(admin): State<Admin<St>>) -> String {
    admin.metrics.render()
}
