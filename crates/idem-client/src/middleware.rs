//! The middleware: one key per logical request, reused by every retry of it.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Method, Request, Response, StatusCode};
use reqwest_middleware::{Next, Result};

use crate::backoff::{Backoff, parse_retry_after};

/// The header idem reads by default (SPEC R1).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Why an attempt is followed by another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryReason {
    /// The server answered a retryable status: 409 (idem: the first request with this
    /// key is still running, R10), 5xx (among them idem's 502/504 for an unreachable
    /// API, R12, and 503 for an unreachable store, R15), or one configured with
    /// [`IdempotencyMiddlewareBuilder::retry_statuses`].
    Status(StatusCode),
    /// No connection could be made (refused, unreachable, TLS handshake failed).
    Connect,
    /// The request or the wait for the response head timed out.
    Timeout,
    /// The connection broke after the request was (perhaps partly) sent: reset, closed
    /// before the response. The server may have done the work; the same key makes the
    /// retry safe.
    Connection,
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(status) => write!(f, "status {}", status.as_u16()),
            Self::Connect => f.write_str("connect error"),
            Self::Timeout => f.write_str("timeout"),
            Self::Connection => f.write_str("connection broken"),
        }
    }
}

/// One retry about to happen, as passed to [`IdempotencyMiddlewareBuilder::on_retry`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Retry {
    /// The attempt that is about to be made (2 for the first retry).
    pub attempt: u32,
    /// Why the previous attempt is not the answer.
    pub reason: RetryReason,
    /// How long the middleware waits before it.
    pub delay: Duration,
    /// The server's `Retry-After`, when it sent a readable one.
    pub retry_after: Option<Duration>,
    /// The idempotency key every attempt of this request carries.
    pub key: HeaderValue,
}

impl Retry {
    /// The key as text, for logs and metrics. A key the middleware made is a UUIDv7 and
    /// reads as is; a key the caller set with bytes that are not UTF-8 reads with
    /// U+FFFD in their place (the request still carries the bytes unchanged).
    pub fn key_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.key.as_bytes())
    }
}

type RetryHook = Arc<dyn Fn(&Retry) + Send + Sync>;

/// A [`reqwest_middleware::Middleware`] that makes writes to an idem-protected API safe
/// to retry.
///
/// For a request whose method is covered (POST and PATCH by default, as idem's own
/// default, SPEC R2) it:
///
/// - sets a fresh UUIDv7 `Idempotency-Key` unless the caller set one (then that one is
///   kept as is), once per logical request;
/// - sends the request, and on a connection error, a timeout, a 409 or a 5xx sends it
///   again with the same key after a [`Backoff`] delay, honouring `Retry-After`;
/// - returns anything else (success, 422 payload mismatch, other 4xx) at once, and the
///   last answer or error when the attempts run out.
///
/// A request whose body cannot be cloned (a stream) gets its key and is sent once.
/// Requests with other methods pass through untouched: no key, no retry.
///
/// Cloning is cheap (the configuration is shared).
#[derive(Clone)]
pub struct IdempotencyMiddleware {
    inner: Arc<Config>,
}

struct Config {
    header: HeaderName,
    methods: Vec<Method>,
    backoff: Backoff,
    retry_statuses: Vec<StatusCode>,
    on_retry: Option<RetryHook>,
}

impl fmt::Debug for IdempotencyMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.inner;
        f.debug_struct("IdempotencyMiddleware")
            .field("header", &c.header)
            .field("methods", &c.methods)
            .field("backoff", &c.backoff)
            .field("retry_statuses", &c.retry_statuses)
            .field("on_retry", &c.on_retry.is_some())
            .finish()
    }
}

impl Default for IdempotencyMiddleware {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl IdempotencyMiddleware {
    /// The middleware with every default: `Idempotency-Key`, POST and PATCH,
    /// [`Backoff::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder to change the defaults.
    pub fn builder() -> IdempotencyMiddlewareBuilder {
        IdempotencyMiddlewareBuilder::default()
    }

    /// The key header this middleware sets.
    pub fn header(&self) -> &HeaderName {
        &self.inner.header
    }

    /// The backoff between attempts.
    pub fn backoff(&self) -> &Backoff {
        &self.inner.backoff
    }

    fn covers(&self, method: &Method) -> bool {
        self.inner.methods.contains(method)
    }

    /// Whether an attempt's outcome calls for another attempt, and the server's
    /// `Retry-After` if it said when.
    fn verdict(&self, outcome: &Result<Response>) -> Option<(RetryReason, Option<Duration>)> {
        match outcome {
            Ok(resp) => {
                let status = resp.status();
                if !self.inner.retry_statuses.contains(&status) {
                    return None;
                }
                let after = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                Some((RetryReason::Status(status), after))
            }
            Err(reqwest_middleware::Error::Reqwest(err)) => transient(err).map(|r| (r, None)),
            // Another middleware's own failure: not ours to judge.
            Err(reqwest_middleware::Error::Middleware(_)) => None,
        }
    }
}

/// Whether a transport error is worth another attempt.
fn transient(err: &reqwest::Error) -> Option<RetryReason> {
    if err.is_connect() {
        Some(RetryReason::Connect)
    } else if err.is_timeout() {
        Some(RetryReason::Timeout)
    } else if err.is_request() {
        // Sending failed after the connection was made (reset, closed early, HTTP/2
        // stream error). Builder, redirect and body errors are other kinds: a retry
        // would fail the same way.
        Some(RetryReason::Connection)
    } else {
        None
    }
}

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for IdempotencyMiddleware {
    async fn handle(
        &self,
        mut req: Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        if !self.covers(req.method()) {
            return next.run(req, extensions).await;
        }
        let key = match req.headers().get(&self.inner.header) {
            Some(theirs) => theirs.clone(),
            None => {
                let key = new_key();
                req.headers_mut()
                    .insert(self.inner.header.clone(), key.clone());
                key
            }
        };
        let backoff = self.inner.backoff;
        let mut attempt = 1;
        loop {
            // The last attempt, or a body that cannot be replayed: send the original.
            let copy = if attempt < backoff.max_attempts() {
                req.try_clone()
            } else {
                None
            };
            let Some(copy) = copy else {
                return next.run(req, extensions).await;
            };
            let outcome = next.clone().run(copy, extensions).await;
            let Some((reason, retry_after)) = self.verdict(&outcome) else {
                return outcome;
            };
            let delay = backoff.delay(attempt, retry_after);
            attempt += 1;
            tracing::debug!(
                attempt,
                %reason,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                method = %req.method(),
                // Host and path only: a query string may carry credentials.
                host = req.url().host_str().unwrap_or(""),
                path = req.url().path(),
                "retrying with the same idempotency key"
            );
            if let Some(hook) = &self.inner.on_retry {
                hook(&Retry {
                    attempt,
                    reason,
                    delay,
                    retry_after,
                    key: key.clone(),
                });
            }
            // Let the connection go before sleeping.
            drop(outcome);
            tokio::time::sleep(delay).await;
        }
    }
}

/// A fresh key: a UUIDv7, time-ordered so server-side indexes on keys stay compact.
fn new_key() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
    // A hyphenated UUID is 36 ASCII characters, always a valid header value.
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

/// Builds an [`IdempotencyMiddleware`].
///
/// ```
/// use std::time::Duration;
/// use idem_client::{Backoff, IdempotencyMiddleware};
/// use reqwest::{Method, StatusCode};
///
/// let middleware = IdempotencyMiddleware::builder()
///     .header("x-request-key".parse().unwrap())
///     .methods([Method::POST, Method::PUT, Method::PATCH])
///     .backoff(Backoff::new(Duration::from_millis(50), Duration::from_secs(2), 8))
///     .retry_statuses([StatusCode::CONFLICT, StatusCode::TOO_MANY_REQUESTS, StatusCode::SERVICE_UNAVAILABLE])
///     .on_retry(|retry| eprintln!("attempt {} after {}", retry.attempt, retry.reason))
///     .build();
/// assert_eq!(middleware.header(), "x-request-key");
/// ```
#[must_use]
pub struct IdempotencyMiddlewareBuilder {
    header: HeaderName,
    methods: Vec<Method>,
    backoff: Backoff,
    retry_statuses: Vec<StatusCode>,
    on_retry: Option<RetryHook>,
}

impl Default for IdempotencyMiddlewareBuilder {
    fn default() -> Self {
        Self {
            header: IDEMPOTENCY_KEY,
            methods: vec![Method::POST, Method::PATCH],
            backoff: Backoff::default(),
            retry_statuses: default_retry_statuses(),
            on_retry: None,
        }
    }
}

impl fmt::Debug for IdempotencyMiddlewareBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyMiddlewareBuilder")
            .field("header", &self.header)
            .field("methods", &self.methods)
            .field("backoff", &self.backoff)
            .field("retry_statuses", &self.retry_statuses)
            .field("on_retry", &self.on_retry.is_some())
            .finish()
    }
}

/// 409 and every 5xx.
fn default_retry_statuses() -> Vec<StatusCode> {
    std::iter::once(StatusCode::CONFLICT)
        .chain((500..600).filter_map(|code| StatusCode::from_u16(code).ok()))
        .collect()
}

impl IdempotencyMiddlewareBuilder {
    /// The key header (default `Idempotency-Key`); match idem's `--header`.
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// The methods that get a key and retries (default POST and PATCH); match idem's
    /// `--methods`. Others pass through untouched.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// The waits between attempts and how many attempts (default
    /// [`Backoff::default`]: 100 ms doubling up to 2 s, 5 attempts).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The response statuses that are retried with the same key (default 409 and every
    /// 5xx). Do not add 422: idem answers it for a key reused with another payload
    /// (R9), and a retry gets the same answer.
    pub fn retry_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.retry_statuses = statuses.into_iter().collect();
        self
    }

    /// Calls `hook` before each retry, for logging or metrics (the middleware also
    /// emits a `tracing` debug event).
    pub fn on_retry(mut self, hook: impl Fn(&Retry) + Send + Sync + 'static) -> Self {
        self.on_retry = Some(Arc::new(hook));
        self
    }

    /// The middleware.
    pub fn build(self) -> IdempotencyMiddleware {
        IdempotencyMiddleware {
            inner: Arc::new(Config {
                header: self.header,
                methods: self.methods,
                backoff: self.backoff,
                retry_statuses: self.retry_statuses,
                on_retry: self.on_retry,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_uuid_v7() {
        let a = new_key();
        let b = new_key();
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(a.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
    }

    #[test]
    fn retry_key_reads_as_text() {
        let retry = |key: HeaderValue| Retry {
            attempt: 2,
            reason: RetryReason::Timeout,
            delay: Duration::ZERO,
            retry_after: None,
            key,
        };
        let made = new_key();
        assert_eq!(retry(made.clone()).key_str(), made.to_str().unwrap());
        let raw = HeaderValue::from_bytes(b"order-\xff").unwrap();
        assert_eq!(retry(raw).key_str(), "order-\u{fffd}");
    }

    #[test]
    fn default_statuses_are_409_and_5xx() {
        let s = default_retry_statuses();
        assert!(s.contains(&StatusCode::CONFLICT));
        assert!(s.contains(&StatusCode::INTERNAL_SERVER_ERROR));
        assert!(s.contains(&StatusCode::SERVICE_UNAVAILABLE));
        assert!(s.contains(&StatusCode::from_u16(599).unwrap()));
        assert!(!s.contains(&StatusCode::UNPROCESSABLE_ENTITY));
        assert!(!s.contains(&StatusCode::BAD_REQUEST));
        assert!(!s.contains(&StatusCode::TOO_MANY_REQUESTS));
        assert!(!s.contains(&StatusCode::OK));
        assert_eq!(s.len(), 101);
    }

    #[test]
    fn default_covers_post_and_patch() {
        let m = IdempotencyMiddleware::new();
        assert!(m.covers(&Method::POST));
        assert!(m.covers(&Method::PATCH));
        assert!(!m.covers(&Method::GET));
        assert!(!m.covers(&Method::PUT));
        assert!(!m.covers(&Method::DELETE));
        assert_eq!(m.header(), "idempotency-key");
    }
}
