//! The HTTP side of `idem check`: one fresh connection per request to exactly the URL
//! given, redirects never followed, and a request budget that cannot be overdrawn.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Barrier;

/// The largest response body read; a larger one is an error, not a result.
const MAX_BODY: usize = 8 << 20;

/// Why a request could not be made: `idem check` stops with exit code 2.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The URL is not one `idem check` can use.
    #[error("{0}")]
    Url(String),
    /// Connecting, sending or reading failed.
    #[error("{method} {url}: {what}")]
    Io {
        /// The request's method.
        method: Method,
        /// The URL.
        url: String,
        /// What went wrong.
        what: String,
    },
    /// The budget is spent (a bug in the planning of checks if ever seen).
    #[error("the request budget is spent")]
    Budget,
}

/// What one response was: everything a comparison needs.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The reason phrase when it is not the status's canonical one.
    pub reason: Option<Bytes>,
    /// The headers, as received.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// The header's value as text, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The problem document's `type`, when the body is `application/problem+json`.
    pub fn problem_type(&self) -> Option<String> {
        if !self.is_problem() {
            return None;
        }
        let doc: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        doc.get("type")?.as_str().map(str::to_owned)
    }

    /// True when the content type is `application/problem+json`.
    pub fn is_problem(&self) -> bool {
        self.header(CONTENT_TYPE.as_str())
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|ct| {
                ct.trim()
                    .eq_ignore_ascii_case(idem::core::problem::CONTENT_TYPE)
            })
    }

    /// `201`, or `201 "Made"` when the reason phrase is not the canonical one.
    pub fn status_text(&self) -> String {
        match &self.reason {
            Some(r) => format!("{} {:?}", self.status.as_u16(), String::from_utf8_lossy(r)),
            None => self.status.as_u16().to_string(),
        }
    }
}

/// One request to send: headers beyond the base ones, and the body.
#[derive(Clone, Debug, Default)]
pub struct Call {
    /// Header lines in order; a name may repeat (two lines).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Base header names left out (a credential replaced by another).
    pub without: Vec<HeaderName>,
    /// The body.
    pub body: Bytes,
}

/// The endpoint under check and the request budget. Cheap to clone; clones share the
/// budget.
#[derive(Clone)]
pub struct Endpoint {
    method: Method,
    scheme: Scheme,
    authority: Authority,
    path: PathAndQuery,
    base: HeaderMap,
    timeout: Duration,
    budget: u32,
    left: Arc<AtomicU32>,
    sent: Arc<AtomicU32>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The base headers carry credentials: never printed.
        f.debug_struct("Endpoint")
            .field("method", &self.method)
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint at `url` (http only) with `base` headers on every request and at
    /// most `budget` requests.
    pub fn new(
        url: &str,
        method: Method,
        base: HeaderMap,
        timeout: Duration,
        budget: u32,
    ) -> Result<Self, TransportError> {
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|e| TransportError::Url(format!("`{url}` is not a URL: {e}")))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| {
            TransportError::Url(format!(
                "`{url}`: give the scheme and host, e.g. http://127.0.0.1:8080/v1/charges"
            ))
        })?;
        if scheme != Scheme::HTTP {
            return Err(TransportError::Url(format!(
                "`{url}`: only http:// endpoints can be checked; check a plain-HTTP listener \
                 of the same deployment"
            )));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| TransportError::Url(format!("`{url}` has no host")))?;
        if authority.as_str().contains('@') {
            return Err(TransportError::Url(format!(
                "`{url}`: credentials in the URL are not sent; use --header"
            )));
        }
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Ok(Self {
            method,
            scheme,
            authority,
            path,
            base,
            timeout,
            budget,
            left: Arc::new(AtomicU32::new(budget)),
            sent: Arc::new(AtomicU32::new(0)),
        })
    }

    /// The URL, as requests name it.
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.path)
    }

    /// The method of every request.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Requests still allowed.
    pub fn left(&self) -> u32 {
        self.left.load(Ordering::SeqCst)
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u32 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Takes `n` requests from the budget, or none when fewer are left.
    pub fn reserve(&self, n: u32) -> bool {
        self.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(n)
            })
            .is_ok()
    }

    /// Sends one request (already reserved) on a fresh connection.
    pub async fn send(&self, call: &Call) -> Result<Answer, TransportError> {
        let mut conn = self.connect().await?;
        self.exchange(&mut conn, call).await
    }

    /// Sends `calls` (already reserved) at once: every connection is open and ready
    /// before the first request is written, so the requests overlap as far as the
    /// network allows. Answers come back in the calls' order.
    pub async fn send_together(&self, calls: Vec<Call>) -> Result<Vec<Answer>, TransportError> {
        let mut conns = Vec::with_capacity(calls.len());
        for _ in &calls {
            conns.push(self.connect().await?);
        }
        let barrier = Arc::new(Barrier::new(calls.len()));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (mut conn, call)) in conns.into_iter().zip(calls).enumerate() {
            let barrier = barrier.clone();
            let this = self.clone();
            tasks.spawn(async move {
                barrier.wait().await;
                (i, this.exchange(&mut conn, &call).await)
            });
        }
        let mut answers: Vec<Option<Answer>> = vec![None; tasks.len()];
        while let Some(done) = tasks.join_next().await {
            let (i, answer) = done.map_err(|e| self.io(format!("request task failed: {e}")))?;
            answers[i] = Some(answer?);
        }
        answers
            .into_iter()
            .map(|a| a.ok_or_else(|| self.io("a request went unanswered")))
            .collect()
    }

    fn io(&self, what: impl Into<String>) -> TransportError {
        TransportError::Io {
            method: self.method.clone(),
            url: self.url(),
            what: what.into(),
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, TransportError> {
        let host = self.authority.host();
        // `[::1]` in a URL is `::1` to the resolver.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = self.authority.port_u16().unwrap_or(80);
        let connect = async {
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(|e| self.io(format!("cannot connect: {e}")))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| self.io(format!("cannot start HTTP/1.1: {e}")))?;
            tokio::spawn(async move {
                // Ends with the connection; its errors surface on the request.
                let _ = conn.await;
            });
            Ok(sender)
        };
        tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| self.io(format!("no connection within {:?}", self.timeout)))?
    }

    async fn exchange(
        &self,
        sender: &mut SendRequest<Full<Bytes>>,
        call: &Call,
    ) -> Result<Answer, TransportError> {
        // The one place that sends: the budget is charged here, whatever the caller
        // reserved, so it can never be exceeded.
        let budget = self.budget;
        self.sent
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |sent| {
                (sent < budget).then_some(sent + 1)
            })
            .map_err(|_| TransportError::Budget)?;
        let mut req = Request::builder()
            .method(self.method.clone())
            .uri(self.path.clone())
            .body(Full::new(call.body.clone()))
            .map_err(|e| self.io(format!("cannot build the request: {e}")))?;
        let h = req.headers_mut();
        h.insert(
            HOST,
            HeaderValue::from_str(self.authority.as_str())
                .map_err(|_| self.io("the host is not a header value"))?,
        );
        for (name, value) in &self.base {
            if !call.without.contains(name) {
                h.append(name, value.clone());
            }
        }
        for (name, value) in &call.headers {
            h.append(name, value.clone());
        }
        let exchange = async {
            sender
                .ready()
                .await
                .map_err(|e| self.io(format!("connection closed: {e}")))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| self.io(format!("no response: {e}")))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| self.io(format!("cannot read the response body: {e}")))?
                .to_bytes();
            let reason = parts
                .extensions
                .get::<hyper::ext::ReasonPhrase>()
                .map(|r| Bytes::copy_from_slice(r.as_bytes()));
            Ok(Answer {
                status: parts.status,
                reason,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| self.io(format!("no response within {:?}", self.timeout)))?
    }
}
