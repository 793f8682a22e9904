//! An endpoint that does its own idempotency, correctly but for the defects a test
//! plants, so each defect can be shown to be reported by its own check.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

/// What the endpoint gets wrong; all `false`: nothing.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Defects {
    /// A replay carries a new `x-request-id` (R8).
    pub(crate) fresh_request_id_on_replay: bool,
    /// A key reused with another body gets a plain 409 (R9 wants 422).
    pub(crate) conflict_on_mismatch: bool,
    /// Keys of any length are accepted (R1 caps them at 255).
    pub(crate) long_keys: bool,
    /// One scope for every caller (R4).
    pub(crate) shared_scope: bool,
}

enum Entry {
    InFlight {
        body: Bytes,
    },
    Done {
        body: Bytes,
        status: StatusCode,
        headers: HeaderMap,
        response: Bytes,
    },
}

#[derive(Default)]
struct Inner {
    executions: u64,
    request_ids: u64,
    records: HashMap<(String, String), Entry>,
}

#[derive(Clone)]
struct Shared {
    defects: Defects,
    inner: Arc<Mutex<Inner>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serves `POST /charges` on a free loopback port.
pub(crate) async fn spawn(defects: Defects) -> SocketAddr {
    let shared = Shared {
        defects,
        inner: Arc::default(),
    };
    let app = Router::new()
        .route("/charges", post(charges))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn problem(status: StatusCode, slug: &str) -> Response {
    let doc = serde_json::json!({
        "type": format!("https://broken.example/problems#{slug}"),
        "title": slug,
        "status": status.as_u16(),
    });
    let mut resp = (status, doc.to_string()).into_response();
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

/// The key header is there but is no key.
struct Invalid;

/// The key, if any.
fn key(headers: &HeaderMap, defects: Defects) -> Result<Option<String>, Invalid> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Invalid);
    }
    let raw = value.to_str().unwrap_or_default();
    let key = match raw.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').ok_or(Invalid)?,
        None => raw,
    };
    let too_long = key.len() > 255 && !defects.long_keys;
    if key.is_empty() || too_long || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Invalid);
    }
    Ok(Some(key.to_owned()))
}

async fn charges(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let key = match key(&headers, s.defects) {
        Ok(Some(k)) => k,
        Ok(None) => return execute(&s, &body).into_response(),
        Err(Invalid) => return problem(StatusCode::BAD_REQUEST, "invalid-key"),
    };
    let scope = if s.defects.shared_scope {
        String::new()
    } else {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let id = (scope, key);
    {
        let mut inner = s.lock();
        let fresh_id = s.defects.fresh_request_id_on_replay.then(|| {
            inner.request_ids += 1;
            inner.request_ids
        });
        match inner.records.get(&id) {
            Some(Entry::InFlight { body: b } | Entry::Done { body: b, .. }) if *b != body => {
                return if s.defects.conflict_on_mismatch {
                    (StatusCode::CONFLICT, "{\"error\":\"conflict\"}").into_response()
                } else {
                    problem(StatusCode::UNPROCESSABLE_ENTITY, "payload-mismatch")
                };
            }
            Some(Entry::InFlight { .. }) => {
                let mut resp = problem(StatusCode::CONFLICT, "in-flight");
                resp.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
                return resp;
            }
            Some(Entry::Done {
                status,
                headers,
                response,
                ..
            }) => {
                let mut resp = (*status, response.clone()).into_response();
                *resp.headers_mut() = headers.clone();
                resp.headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                if let Some(n) = fresh_id {
                    resp.headers_mut()
                        .insert("x-request-id", HeaderValue::from(n + 1_000_000));
                }
                return resp;
            }
            None => {}
        }
        inner
            .records
            .insert(id.clone(), Entry::InFlight { body: body.clone() });
    }
    let (status, headers, response) = execute(&s, &body);
    s.lock().records.insert(
        id,
        Entry::Done {
            body,
            status,
            headers: headers.clone(),
            response: response.clone(),
        },
    );
    let mut resp = (status, response).into_response();
    *resp.headers_mut() = headers;
    resp
}

/// Runs the operation: a numbered charge, or a validation error for a negative amount.
fn execute(s: &Shared, body: &Bytes) -> (StatusCode, HeaderMap, Bytes) {
    let n = {
        let mut inner = s.lock();
        inner.executions += 1;
        inner.executions
    };
    let invalid = String::from_utf8_lossy(body).contains("\"amount\":-");
    let (status, doc) = if invalid {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({ "error": "amount must not be negative", "attempt": n }),
        )
    } else {
        (
            StatusCode::CREATED,
            serde_json::json!({ "id": n, "body": String::from_utf8_lossy(body) }),
        )
    };
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("x-request-id", HeaderValue::from(n));
    (status, headers, Bytes::from(doc.to_string()))
}
