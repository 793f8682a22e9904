//! A small HTTP client for tests, on hyper-util's pooled client.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A whole response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// True when the response carries `Idempotent-Replayed: true` (R8).
    pub fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }

    /// The slug that ends the problem document's `type` (`in-flight`), checking the
    /// document as [`problem_type`](Self::problem_type) does.
    pub fn problem_slug(&self) -> String {
        let t = self.problem_type();
        t.rsplit_once('#')
            .map_or(t.clone(), |(_, slug)| slug.to_owned())
    }

    /// The problem document's `type`, checking the media type (R17).
    pub fn problem_type(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "not a problem document: {self:?}"
        );
        let doc = self.json();
        assert_eq!(doc["status"], self.status.as_u16(), "{doc}");
        assert!(
            doc["title"].is_string() && doc["detail"].is_string(),
            "{doc}"
        );
        doc["type"].as_str().expect("type").to_owned()
    }
}

/// The credential a [`Client`] sends unless a request names its own `Authorization`:
/// keyed requests need one to be scoped (R4).
pub const CREDENTIAL: &str = "Bearer spec-client";

/// The scope the default policy gives a [`Client`]'s requests: that of its
/// [`CREDENTIAL`].
pub fn credential_scope() -> idem_core::scope::Scope {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_static(CREDENTIAL),
    );
    idem_core::scope::ScopeSource::default()
        .scope(&headers)
        .expect("a credential scopes its requests")
}

/// A request builder bound to one address.
#[derive(Clone, Debug)]
pub struct Client {
    addr: SocketAddr,
    http: HyperClient<HttpConnector, Full<Bytes>>,
    credential: Option<&'static str>,
}

impl Client {
    /// A client for `addr` that sends `Authorization: `[`CREDENTIAL`] with every
    /// request that carries no `Authorization` of its own.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
            credential: Some(CREDENTIAL),
        }
    }

    /// The same client without the default credential: its requests carry only the
    /// headers they name (an anonymous caller, R4).
    #[must_use]
    pub fn anonymous(&self) -> Self {
        Self {
            credential: None,
            ..self.clone()
        }
    }

    /// Sends a request; `headers` are `(name, value)` pairs, repeated names allowed.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let resp = self.start(method, path, headers, body).await;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("read body").to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Sends a request and returns as soon as the response head arrives.
    pub async fn start(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> http::Response<hyper::body::Incoming> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(credential) = self.credential
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            req = req.header("authorization", credential);
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(body)))
            .expect("request");
        tokio::time::timeout(Duration::from_secs(30), self.http.request(req))
            .await
            .expect("response within 30s")
            .expect("request sent")
    }

    /// `POST path` with a key and a body.
    pub async fn post(&self, path: &str, key: &str, body: &str) -> Resp {
        self.send(
            Method::POST,
            path,
            &[("idempotency-key", key)],
            body.as_bytes(),
        )
        .await
    }
}

/// Of the answers to requests with one key, the one that ran (201, not a replay);
/// panics unless exactly one did (R6).
pub fn the_one_executed(resps: &[Resp]) -> &Resp {
    let executed: Vec<&Resp> = resps
        .iter()
        .filter(|r| r.status == 201 && !r.replayed())
        .collect();
    assert_eq!(executed.len(), 1, "not exactly one executed: {resps:?}");
    executed[0]
}
