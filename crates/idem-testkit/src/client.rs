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

/// A request builder bound to one address.
#[derive(Clone, Debug)]
pub struct Client {
    addr: SocketAddr,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client for `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
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
