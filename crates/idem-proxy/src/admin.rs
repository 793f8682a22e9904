//! The admin listener (`--admin-listen`): liveness, readiness and Prometheus metrics,
//! apart from the proxied traffic, and the on-call API over the store's records.
//!
//! - `GET /healthz`: 200 while the process serves.
//! - `GET /readyz`: 200 when the store answers a lookup within 2 s, else 503.
//! - `GET /metrics`: every metric in the Prometheus text format, each series present from
//!   the first scrape ([`install_recorder`]), with `idem_build_info` and the `process_*`
//!   metrics.
//! - `GET /admin/keys/{scope}/{key}`: one record as JSON ([`record_json`]).
//! - `GET /admin/keys?state=in_flight|completed|any&older_than=5m&scope=S&limit=N&after=C`:
//!   one page of live records, `{"keys": [...], "next": cursor or null, "corrupt": [...]}`
//!   (`corrupt`: the records in the page's range that do not decode, see [`corrupt_json`]).
//! - `DELETE /admin/keys/{scope}/{key}`: removes the record whatever its state (waiting
//!   duplicates wake and claim afresh), logs an audit line on target `idem::audit`, and
//!   answers `{"deleted": record}`.
//!
//! `{scope}` is the scope digest in hex, as logs show it, or `global` (the scope when
//! `--scope-header none`). The `/admin/` routes need `Authorization: Bearer <token>`
//! with the token given by `--admin-token` or `--admin-token-file` (compared in constant
//! time); a missing or wrong token is 401 with `WWW-Authenticate`, and without a
//! configured token they answer 404 (the API is off). An address that sent ten wrong
//! tokens gets 429 with `Retry-After` until it earns an attempt back (one a second),
//! whatever it sends meanwhile; correct tokens are never slowed (R25). Every error is a
//! problem document.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{ConnectInfo, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use idem::core::clock::{Clock, Millis, SystemClock};
use idem::core::problem::Problems;
use idem::core::record::{Record, RecordId, SnapshotBody, State as RecordState};
use idem::core::scope::Scope;
use idem::core::store::{CorruptRecord, ListFilter, StateFilter};
use idem::{
    Store,
    core::{IdempotencyKey, Problem, ProblemKind},
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};

mod process;

use crate::throttle::Throttle;

/// Metric names the proxy records beyond the engine's ([`idem::core::metrics`]).
pub mod names {
    /// Histogram: seconds from forwarding a request to the upstream's response head.
    pub const UPSTREAM_SECONDS: &str = "idem_upstream_duration_seconds";
    /// Counter: upstream failures by `kind` (unavailable, timeout, invalid: a
    /// response whose framing is refused).
    pub const UPSTREAM_FAILURES: &str = "idem_upstream_failures_total";
    /// The `kind` label values of [`UPSTREAM_FAILURES`].
    pub const UPSTREAM_FAILURE_KINDS: [&str; 3] = ["unavailable", "timeout", "invalid"];
    /// Gauge, always 1: the running build, by `version` and `features` (the compiled-in
    /// stores and exporters, comma-separated).
    pub const BUILD_INFO: &str = "idem_build_info";
}

/// The cargo features this binary was built with, as `idem_build_info` shows them.
pub fn build_features() -> &'static str {
    const FEATURES: &[(bool, &str)] = &[
        (cfg!(feature = "redb"), "redb"),
        (cfg!(feature = "redis"), "redis"),
        (cfg!(feature = "postgres"), "postgres"),
        (cfg!(feature = "otel"), "otel"),
    ];
    static JOINED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    JOINED.get_or_init(|| {
        FEATURES
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// Every metric with its help text: the engine's and the proxy's.
pub fn all_metrics() -> Vec<(&'static str, &'static str)> {
    let mut all = idem::core::metrics::ALL.to_vec();
    all.push((
        names::UPSTREAM_SECONDS,
        "Time from forwarding to the upstream's response head",
    ));
    all.push((
        names::UPSTREAM_FAILURES,
        "Upstream failures by kind (unavailable, timeout)",
    ));
    all.push((
        names::BUILD_INFO,
        "The running build: 1, labelled by version and compiled-in features",
    ));
    all
}

/// Installs the Prometheus recorder, describes every metric and registers every series
/// (each label value included) at zero, so the first scrape already lists them all; the
/// handle renders them.
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
    idem::core::metrics::register();
    let _ = metrics::histogram!(names::UPSTREAM_SECONDS);
    for kind in names::UPSTREAM_FAILURE_KINDS {
        metrics::counter!(names::UPSTREAM_FAILURES, "kind" => kind).increment(0);
    }
    metrics::gauge!(
        names::BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "features" => build_features(),
    )
    .set(1.0);
    Ok(handle)
}

#[derive(Clone)]
struct Admin<St> {
    store: St,
    metrics: PrometheusHandle,
    problems: Problems,
}

/// The admin routes over `store`; the `/admin/` API is on when `token` is set. Its
/// problem documents are rendered with `problems`, those of the proxy's policy
/// ([`Policy::problems`](idem::core::Policy::problems)), so they carry the same `type` base
/// and `Retry-After` as the proxy's own (R17).
///
/// Serve it with `into_make_service_with_connect_info::<SocketAddr>()` so audit lines
/// name the caller's address.
pub fn router_with<St: Store>(
    store: St,
    metrics: PrometheusHandle,
    token: Option<AdminToken>,
    problems: Problems,
) -> Router {
    let not_found = problems.clone();
    let keys = Router::new()
        .route("/admin/keys", get(list::<St>))
        .route(
            "/admin/keys/{scope}/{key}",
            get(get_key::<St>).delete(delete_key::<St>),
        )
        .fallback(move || {
            let response = problem(
                &not_found,
                &Problem::new(ProblemKind::AdminNotFound, "no such admin endpoint"),
            );
            async move { response }
        })
        .route_layer(middleware::from_fn_with_state(
            Arc::new(Gate {
                token,
                failures: Throttle::default(),
                problems: problems.clone(),
            }),
            authorize,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<St>))
        .route("/metrics", get(render::<St>))
        .merge(keys)
        .with_state(Admin {
            store,
            metrics,
            problems,
        })
}

/// The bearer token that opens the `/admin/` API. Its `Debug` hides it.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8]>);

impl AdminToken {
    /// A token; it must be at least 16 characters and hold no whitespace.
    pub fn new(token: &str) -> anyhow::Result<Self> {
        let token = token.trim();
        anyhow::ensure!(
            token.len() >= 16,
            "the admin token must be at least 16 characters"
        );
        anyhow::ensure!(
            !token.contains(char::is_whitespace) && token.is_ascii(),
            "the admin token must be visible ASCII without spaces"
        );
        Ok(Self(token.as_bytes().into()))
    }

    /// The token from `--admin-token` or the first line of `--admin-token-file`, if
    /// either is set (not both).
    pub fn load(token: Option<&str>, file: Option<&Path>) -> anyhow::Result<Option<Self>> {
        match (token, file) {
            (Some(_), Some(_)) => {
                anyhow::bail!("give --admin-token or --admin-token-file, not both")
            }
            (Some(t), None) => Self::new(t).map(Some),
            (None, Some(f)) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read the admin token file {}", f.display()))?;
                Self::new(text.lines().next().unwrap_or(""))
                    .with_context(|| format!("admin token file {}", f.display()))
                    .map(Some)
            }
            (None, None) => Ok(None),
        }
    }

    /// True when `presented` is the token. The time taken depends only on the
    /// configured token's length, never on how much of it `presented` matches.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let mut diff = u8::from(presented.len() != self.0.len());
        for (i, expected) in self.0.iter().enumerate() {
            diff |= expected ^ presented.get(i).copied().unwrap_or(0);
        }
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(…)")
    }
}

/// Who called, for the audit log.
#[derive(Clone, Debug)]
struct Caller(String);

/// What guards the `/admin/` routes: the token, the failed attempts by address, and
/// how refusals are rendered.
struct Gate {
    token: Option<AdminToken>,
    failures: Throttle,
    problems: Problems,
}

async fn authorize(State(gate): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    let Some(token) = gate.token.as_ref() else {
        return problem(
            &gate.problems,
            &Problem::new(
                ProblemKind::AdminDisabled,
                "the admin API is off: start idem serve with --admin-token or --admin-token-file",
            ),
        );
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().as_bytes().to_vec());
    let addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let peer = addr.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let ip = addr.map(|a| a.ip());
    // Before the token is looked at: while throttled, a guess tells nothing.
    if let Err(wait) = gate.failures.check(ip) {
        tracing::warn!(target: "idem::audit", peer, path = %req.uri().path(), "admin request refused: too many wrong tokens");
        let mut p = Problem::new(ProblemKind::AdminThrottled, "").with_retry_after(wait);
        p.detail = format!(
            "too many wrong tokens from this address; retry in {} s",
            p.retry_after.unwrap_or(1)
        );
        return problem(&gate.problems, &p);
    }
    if !presented.is_some_and(|p| token.matches(&p)) {
        gate.failures.failed(ip);
        tracing::warn!(target: "idem::audit", peer, path = %req.uri().path(), "admin request refused: missing or wrong token");
        let mut resp = problem(
            &gate.problems,
            &Problem::new(
                ProblemKind::AdminUnauthorized,
                "send Authorization: Bearer <the admin token>",
            ),
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"idem-admin\""),
        );
        return resp;
    }
    req.extensions_mut()
        .insert(Caller(format!("admin-token from {peer}")));
    next.run(req).await
}

/// A problem document of the admin API, rendered as every other answer of the proxy.
fn problem(problems: &Problems, p: &Problem) -> Response {
    problems.render(p).map(axum::body::Body::from)
}

/// The engine's store-failure problem (R15), `Retry-After` included, with the error
/// itself in `detail`: an operator asked.
fn store_failed(problems: &Problems, e: &idem::core::store::StoreError) -> Response {
    tracing::warn!(error = %e, "admin: store failed");
    let p = Problem {
        detail: format!("the store failed: {e}"),
        ..idem::core::engine::store_problem(e)
    };
    problem(problems, &p)
}

fn bad_request(problems: &Problems, detail: impl Into<String>) -> Response {
    problem(
        problems,
        &Problem::new(ProblemKind::AdminBadRequest, detail),
    )
}

/// Reads a scope as the admin API and `idem keys` take it: `global`, or the digest in
/// hex as logs show it.
pub fn parse_scope(s: &str) -> Result<Scope, String> {
    if s.eq_ignore_ascii_case("global") {
        return Ok(Scope::GLOBAL);
    }
    Scope::from_hex(s)
        .ok_or_else(|| format!("scope `{s}` is neither `global` nor a 32-digit hex digest"))
}

fn record_id(scope: &str, key: &str) -> Result<RecordId, String> {
    let scope = parse_scope(scope)?;
    let key =
        IdempotencyKey::new(key).map_err(|e| format!("`{key}` is not an idempotency key: {e}"))?;
    Ok(RecordId::new(scope, key))
}

fn rfc3339(ms: Millis) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A record state as the admin API names it: `in_flight` or `completed`.
pub(crate) fn state_name(state: &RecordState) -> &'static str {
    match state {
        RecordState::InFlight { .. } => filter_name(StateFilter::InFlight),
        RecordState::Completed { .. } => filter_name(StateFilter::Completed),
    }
}

/// A listing's state filter as the admin API's `state` parameter names it: `any`,
/// `in_flight` or `completed`.
pub(crate) fn filter_name(filter: StateFilter) -> &'static str {
    match filter {
        StateFilter::Any => "any",
        StateFilter::InFlight => "in_flight",
        StateFilter::Completed => "completed",
    }
}

/// The instant `older_than` before `now`: records created before it are that old.
pub(crate) fn created_before(now: Millis, older_than: Duration) -> Millis {
    now.saturating_sub(Millis::try_from(older_than.as_millis()).unwrap_or(Millis::MAX))
}

/// The records of a list page that do not decode, as the admin API answers them: one
/// {`scope` (hex), `key`, `error`} each (`scope` and `key` null when the stored id is
/// itself damaged). They are never replayed; deleting one lets its key run again.
pub fn corrupt_json(corrupt: &[CorruptRecord]) -> Value {
    corrupt
        .iter()
        .map(|c| {
            json!({
                "scope": c.id.as_ref().map(|id| id.scope().to_hex()),
                "key": c.id.as_ref().map(|id| id.key().as_str()),
                "error": c.why.to_string(),
            })
        })
        .collect()
}

/// A record as the admin API answers it:
///
/// `scope` (hex), `key`, `state` (`in_flight` or `completed`), `fingerprint` (hex),
/// `created` (RFC 3339), `age_ms`; in flight: `owner` {`token` (hex), `lease_until`,
/// `lease_left_ms`}; completed: `expires`, `response` {`status`, `body_bytes`} or
/// {`status`, `not_retained`: `too_large` | `streamed`}.
pub fn record_json(id: &RecordId, record: &Record, now: Millis) -> Value {
    let mut out = json!({
        "scope": id.scope().to_hex(),
        "key": id.key().as_str(),
        "fingerprint": record.fingerprint.to_hex(),
        "created": rfc3339(record.created_at),
        "age_ms": now.saturating_sub(record.created_at),
    });
    let fields = match &record.state {
        RecordState::InFlight { owner, lease_until } => json!({
            "state": state_name(&record.state),
            "owner": {
                "token": owner.to_hex(),
                "lease_until": rfc3339(*lease_until),
                "lease_left_ms": lease_until.saturating_sub(now),
            },
        }),
        RecordState::Completed {
            snapshot,
            expires_at,
        } => {
            let response = match &snapshot.body {
                SnapshotBody::Full(body) => {
                    json!({ "status": snapshot.status.as_u16(), "body_bytes": body.len() })
                }
                SnapshotBody::NotRetained(why) => json!({
                    "status": snapshot.status.as_u16(),
                    "not_retained": why.as_str(),
                }),
            };
            json!({
                "state": state_name(&record.state),
                "expires": rfc3339(*expires_at),
                "response": response,
            })
        }
    };
    if let (Value::Object(out), Value::Object(fields)) = (&mut out, fields) {
        out.extend(fields);
    }
    out
}

fn now() -> Millis {
    SystemClock.now_ms()
}

async fn get_key<St: Store>(
    State(admin): State<Admin<St>>,
    UrlPath((scope, key)): UrlPath<(String, String)>,
) -> Response {
    let id = match record_id(&scope, &key) {
        Ok(id) => id,
        Err(e) => return bad_request(&admin.problems, e),
    };
    match admin.store.lookup(&id).await {
        Ok(Some(record)) => axum::Json(record_json(&id, &record, now())).into_response(),
        Ok(None) => not_found(&admin.problems, &id),
        Err(e) => store_failed(&admin.problems, &e),
    }
}

fn not_found(problems: &Problems, id: &RecordId) -> Response {
    problem(
        problems,
        &Problem::new(
            ProblemKind::AdminKeyNotFound,
            format!(
                "no live record for key `{}` in scope {}",
                id.key(),
                id.scope()
            ),
        ),
    )
}

async fn delete_key<St: Store>(
    State(admin): State<Admin<St>>,
    caller: Option<axum::Extension<Caller>>,
    UrlPath((scope, key)): UrlPath<(String, String)>,
) -> Response {
    let id = match record_id(&scope, &key) {
        Ok(id) => id,
        Err(e) => return bad_request(&admin.problems, e),
    };
    let who = caller.map_or_else(|| "unknown".to_owned(), |c| c.0.0);
    match admin.store.delete(&id).await {
        Ok(Some(record)) => {
            let previous = state_name(&record.state);
            tracing::info!(
                target: "idem::audit",
                scope = %id.scope(),
                key = %id.key(),
                previous_state = previous,
                who = %who,
                "idempotency record deleted"
            );
            axum::Json(json!({ "deleted": record_json(&id, &record, now()) })).into_response()
        }
        Ok(None) => not_found(&admin.problems, &id),
        Err(e) => store_failed(&admin.problems, &e),
    }
}

async fn list<St: Store>(
    State(admin): State<Admin<St>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let filter = match list_filter(&q, now()) {
        Ok(f) => f,
        Err(e) => return bad_request(&admin.problems, e),
    };
    match admin.store.list(&filter).await {
        Ok(page) => {
            let now = now();
            let keys: Vec<Value> = page
                .records
                .iter()
                .map(|(id, r)| record_json(id, r, now))
                .collect();
            axum::Json(json!({
                "keys": keys,
                "next": page.next.map(|n| n.to_hex()),
                "corrupt": corrupt_json(&page.corrupt),
            }))
            .into_response()
        }
        Err(e) => store_failed(&admin.problems, &e),
    }
}

/// The largest page the API answers.
pub const MAX_LIMIT: usize = 1000;

fn list_filter(q: &HashMap<String, String>, now: Millis) -> Result<ListFilter, String> {
    let mut filter = ListFilter::default();
    for (name, value) in q {
        match name.as_str() {
            "state" => {
                filter.state = [
                    StateFilter::Any,
                    StateFilter::InFlight,
                    StateFilter::Completed,
                ]
                .into_iter()
                .find(|f| filter_name(*f) == value)
                .ok_or_else(|| format!("state `{value}`: use in_flight, completed or any"))?;
            }
            "older_than" => {
                let d = humantime::parse_duration(value)
                    .map_err(|e| format!("older_than `{value}` is not a duration like 5m ({e})"))?;
                filter.created_before = Some(created_before(now, d));
            }
            "scope" => filter.scope = Some(parse_scope(value)?),
            "limit" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| format!("limit `{value}` is not a number"))?;
                if n == 0 || n > MAX_LIMIT {
                    return Err(format!("limit must be 1 to {MAX_LIMIT}"));
                }
                filter.limit = n;
            }
            "after" => {
                filter.after = Some(
                    RecordId::from_hex(value)
                        .ok_or_else(|| format!("after `{value}` is not a cursor this API gave"))?,
                );
            }
            other => return Err(format!("unknown parameter `{other}`")),
        }
    }
    Ok(filter)
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

async fn render<St: Store>(State(admin): State<Admin<St>>) -> impl IntoResponse {
    let mut text = admin.metrics.render();
    process::render(&mut text);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_exactly() {
        let t = AdminToken::new("0123456789abcdef").unwrap();
        assert!(t.matches(b"0123456789abcdef"));
        assert!(!t.matches(b"0123456789abcdeF"));
        assert!(!t.matches(b"0123456789abcde"));
        assert!(!t.matches(b"0123456789abcdef0"));
        assert!(!t.matches(b""));
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("has a space in it!").is_err());
        assert!(!format!("{t:?}").contains("0123"));
    }

    #[test]
    fn list_parameters() {
        let q = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            list_filter(&map, 1_000_000)
        };
        let f = q(&[("state", "in_flight"), ("older_than", "5m"), ("limit", "7")]).unwrap();
        assert_eq!(f.state, StateFilter::InFlight);
        assert_eq!(f.created_before, Some(1_000_000 - 300_000));
        assert_eq!(f.limit, 7);
        let f = q(&[("scope", "global")]).unwrap();
        assert_eq!(f.scope, Some(Scope::GLOBAL));
        for bad in [
            ("state", "stuck"),
            ("older_than", "soon"),
            ("limit", "0"),
            ("limit", "1001"),
            ("scope", "abc"),
            ("after", "zz"),
            ("colour", "red"),
        ] {
            assert!(q(&[bad]).is_err(), "{bad:?}");
        }
    }
}
