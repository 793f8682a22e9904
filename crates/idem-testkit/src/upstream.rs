//! A real HTTP upstream that counts every execution, on `127.0.0.1:0`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use futures_util::stream;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// The upstream's shared counters.
#[derive(Default, Debug)]
struct Counters {
    total: u64,
    by_path: HashMap<String, u64>,
    by_key: HashMap<String, u64>,
}

#[derive(Clone, Debug, Default)]
struct Shared {
    counters: Arc<Mutex<Counters>>,
    stream_gate: Arc<Notify>,
}

/// A counting upstream. Routes:
///
/// - `POST /charges[?delay_ms=N]`: a charge; 201 with `{"charge": n, "body": …}`
///   where `n` numbers executions, so a second execution is visible in the body. A
///   JSON body whose `amount` is negative fails validation: 422 with
///   `{"error": …, "charge": n}` (still an execution).
/// - `ANY /status/{code}`: answers `code`.
/// - `ANY /flaky[?delay_ms=N]`: 500 on a key's first execution, 201 after.
/// - `ANY /big?bytes=N`: 200 with `N` bytes.
/// - `ANY /sse`: `text/event-stream`, one event, then a second once
///   [`CountingUpstream::open_stream`] is called.
/// - anything else: 200 with the execution number.
///
/// Every response carries `x-seen-key` (the key header as received) and `x-secret`.
#[derive(Debug, Clone)]
pub struct CountingUpstream {
    addr: SocketAddr,
    shared: Shared,
}

impl CountingUpstream {
    /// Serves the routes on a free loopback port until the test process ends.
    pub async fn spawn() -> Self {
        Self::spawn_on("127.0.0.1:0".parse().expect("loopback address")).await
    }

    /// Serves the routes on `addr`.
    pub async fn spawn_on(addr: SocketAddr) -> Self {
        let shared = Shared::default();
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let app = router(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared }
    }

    /// Another upstream's routes, counted in this one's counters: for fronts that host
    /// the handlers in-process (the library) instead of forwarding to `addr`.
    pub fn router(&self) -> Router {
        router(self.shared.clone())
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Executions so far, all routes.
    pub fn executions(&self) -> u64 {
        self.lock().total
    }

    /// Executions of one path.
    pub fn executions_of(&self, path: &str) -> u64 {
        self.lock().by_path.get(path).copied().unwrap_or(0)
    }

    /// Executions carrying this raw key header value.
    pub fn executions_with_key(&self, key: &str) -> u64 {
        self.lock().by_key.get(key).copied().unwrap_or(0)
    }

    /// Lets `/sse` send its second event.
    pub fn open_stream(&self) {
        self.shared.stream_gate.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.shared
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/charges", post(charge))
        .route("/login", post(login))
        .route("/status/{code}", any(status))
        .route("/flaky", any(flaky))
        .route("/big", any(big))
        .route("/sse", any(sse))
        .fallback(any(other))
        .with_state(shared)
}

/// Counts one execution; answers its number for this path.
fn count(shared: &Shared, uri: &Uri, headers: &HeaderMap) -> u64 {
    let mut c = shared
        .counters
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    c.total += 1;
    if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        *c.by_key.entry(key.to_owned()).or_default() += 1;
    }
    let n = c.by_path.entry(uri.path().to_owned()).or_default();
    *n += 1;
    *n
}

fn decorate(mut resp: Response, headers: &HeaderMap) -> Response {
    let h = resp.headers_mut();
    if let Some(key) = headers.get("idempotency-key") {
        h.insert("x-seen-key", key.clone());
    }
    h.insert("x-secret", HeaderValue::from_static("do-not-store"));
    resp
}

async fn delay(q: &HashMap<String, String>) {
    if let Some(ms) = q.get("delay_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

async fn charge(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = count(&s, &uri, &headers);
    delay(&q).await;
    let negative = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|doc| doc.get("amount").and_then(serde_json::Value::as_f64))
        .is_some_and(|amount| amount < 0.0);
    if negative {
        let doc = serde_json::json!({ "error": "amount must not be negative", "charge": n });
        let resp = (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(doc)).into_response();
        return decorate(resp, &headers);
    }
    let doc = serde_json::json!({
        "charge": n,
        "body": String::from_utf8_lossy(&body),
    });
    let mut resp = (StatusCode::CREATED, axum::Json(doc)).into_response();
    resp.headers_mut().insert("x-charge", HeaderValue::from(n));
    decorate(resp, &headers)
}

/// A sign-in: answers a fresh session cookie, `session=s<n>`.
async fn login(State(s): State<Shared>, uri: Uri, headers: HeaderMap) -> Response {
    let n = count(&s, &uri, &headers);
    let mut resp = (
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "login": n })),
    )
        .into_response();
    let cookie = HeaderValue::from_str(&format!("session=s{n}; HttpOnly"))
        .unwrap_or_else(|_| HeaderValue::from_static("session=invalid"));
    resp.headers_mut().insert("set-cookie", cookie);
    decorate(resp, &headers)
}

async fn status(
    State(s): State<Shared>,
    Path(code): Path<u16>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let n = count(&s, &uri, &headers);
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    let doc = serde_json::json!({ "status": code.as_u16(), "execution": n });
    decorate((code, axum::Json(doc)).into_response(), &headers)
}

async fn flaky(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let n = count(&s, &uri, &headers);
    delay(&q).await;
    let code = if n == 1 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::CREATED
    };
    let doc = serde_json::json!({ "execution": n });
    decorate((code, axum::Json(doc)).into_response(), &headers)
}

async fn big(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    count(&s, &uri, &headers);
    let n: usize = q
        .get("bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20);
    let body: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
    decorate((StatusCode::OK, body).into_response(), &headers)
}

async fn sse(State(s): State<Shared>, uri: Uri, headers: HeaderMap) -> Response {
    count(&s, &uri, &headers);
    let gate = s.stream_gate;
    let events = stream::unfold(0u8, move |i| {
        let gate = gate.clone();
        async move {
            match i {
                0 => Some((Ok::<_, Infallible>(Bytes::from_static(b"data: one\n\n")), 1)),
                1 => {
                    gate.notified().await;
                    Some((Ok(Bytes::from_static(b"data: two\n\n")), 2))
                }
                _ => None,
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(events));
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    decorate(resp, &headers)
}

async fn other(State(s): State<Shared>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let n = count(&s, &uri, &headers);
    let doc = serde_json::json!({ "method": method.as_str(), "execution": n });
    decorate((StatusCode::OK, axum::Json(doc)).into_response(), &headers)
}
