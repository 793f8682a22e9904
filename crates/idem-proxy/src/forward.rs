//! The service behind the layer: forwards a request to the upstream over pooled
//! keep-alive connections and answers 502/504 problems when it cannot (R12).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version, header};
use idem::core::engine::MayHaveRun;
use idem::core::headers::strip_hop_by_hop;
use idem::core::record::ReasonPhrase;
use idem::{
    Body,
    core::{Policy, Problem, ProblemKind},
};

use crate::pool::{ExchangeError, Pool};
use crate::view::{self, Refusal};
use tower_service::Service;

/// Where requests go: `http://host:port` or `https://host:port`, with an optional path
/// prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    authority: Authority,
    prefix: String,
    tls: bool,
}

/// An upstream URL idem cannot use.
#[derive(Debug, thiserror::Error)]
#[error("invalid upstream `{url}`: {reason}")]
pub struct UpstreamError {
    url: String,
    reason: &'static str,
}

impl FromStr for Upstream {
    type Err = UpstreamError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let err = |reason| UpstreamError {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| err("not a URL"))?;
        let tls = match uri.scheme() {
            Some(s) if *s == Scheme::HTTP => false,
            Some(s) if *s == Scheme::HTTPS => true,
            _ => return Err(err("expected http://host:port or https://host:port")),
        };
        let authority = uri.authority().cloned().ok_or_else(|| err("no host"))?;
        if uri.query().is_some() {
            return Err(err("an upstream URL cannot have a query"));
        }
        // The prefix in normal form too, so a joined path starts with it byte for byte.
        let prefix = view::normalise_path(uri.path())
            .map_err(|_| {
                err("the path prefix has an encoded `/`, a `\\` or a bad percent-encoding")
            })?
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            authority,
            prefix,
            tls,
        })
    }
}

impl Upstream {
    /// `host:port` to connect to (port 80, or 443 for https, when the URL names none).
    pub(crate) fn connect_to(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        format!(
            "{}:{}",
            self.authority.host(),
            self.authority.port_u16().unwrap_or(default)
        )
    }

    /// Whether the upstream is spoken to over TLS (an `https://` URL).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host the upstream's certificate must name.
    pub(crate) fn host(&self) -> &str {
        self.authority.host()
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority, self.prefix)
    }
}

/// Why a request could not be rewritten for the upstream.
#[derive(Debug, thiserror::Error)]
enum RewriteError {
    #[error(transparent)]
    Target(#[from] Refusal),
    #[error(transparent)]
    Uri(#[from] http::uri::InvalidUri),
}

/// The peer's address, set on each request by the server for `X-Forwarded-For`.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// Set on each request by the server when it came over TLS: `X-Forwarded-Proto: https`.
#[derive(Clone, Copy, Debug)]
pub struct OverTls;

/// Forwards requests to one upstream.
#[derive(Clone)]
pub struct Forward {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    pool: Arc<Pool>,
    /// The `Host` header the upstream receives.
    host: HeaderValue,
    upstream: Upstream,
    timeout: Duration,
    /// Renders the forwarder's own answers (502, 504).
    policy: Arc<Policy>,
}

impl Forward {
    /// A forwarder to `upstream`, giving up on an answer after `timeout`. An
    /// `https://` upstream needs [`Forward::with_tls`]: without it, each request is
    /// answered 502.
    pub fn new(upstream: Upstream, timeout: Duration) -> Self {
        Self::build(upstream, timeout, None)
    }

    /// A forwarder to an `https://` upstream (or `http://`, where `tls` is unused),
    /// speaking TLS with `tls`: its authorities, client certificate and ALPN protocols.
    pub fn with_tls(upstream: Upstream, timeout: Duration, tls: Arc<rustls::ClientConfig>) -> Self {
        Self::build(upstream, timeout, Some(tls))
    }

    fn build(
        upstream: Upstream,
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        let mut pool = Pool::new(upstream.connect_to(), timeout, Duration::from_secs(60));
        if upstream.is_tls() {
            pool = pool.over_tls(tls, upstream.host());
        }
        let pool = Arc::new(pool);
        Self {
            inner: Arc::new(Inner {
                pool,
                host: HeaderValue::from_str(upstream.authority.as_str())
                    .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
                upstream,
                timeout,
                policy: Arc::new(Policy::default()),
            }),
        }
    }

    /// Renders its own problems (502, 504) as `policy` renders its answers (R17), with
    /// its CORS headers ([`Policy::answer`]): the policy whose engine sits in front of it.
    #[must_use]
    pub fn with_policy(mut self, policy: Arc<Policy>) -> Self {
        Arc::make_mut(&mut self.inner).policy = policy;
        self
    }

    fn rewrite(this: &Inner, req: Request<Body>) -> Result<Request<Body>, RewriteError> {
        let (mut parts, body) = req.into_parts();
        let pq = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        // R24: the path is normal already (the door), so nothing can climb out of the prefix.
        let pq = PathAndQuery::try_from(view::join(&this.upstream.prefix, pq)?)?;
        // Origin form on the wire, with the upstream's own Host.
        let uri = Uri::from(pq);
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(header::HOST, this.host.clone());
        if let Some(host) = original_host {
            parts.headers.insert("x-forwarded-host", host);
        }
        if let Some(Peer(addr)) = parts.extensions.get::<Peer>()
            && let Ok(v) = HeaderValue::from_str(&addr.ip().to_string())
        {
            parts.headers.append("x-forwarded-for", v);
        }
        let proto = if parts.extensions.get::<OverTls>().is_some() {
            "https"
        } else {
            "http"
        };
        parts
            .headers
            .insert("x-forwarded-proto", HeaderValue::from_static(proto));
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        Ok(Request::from_parts(parts, body))
    }
}

impl fmt::Debug for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forward")
            .field("upstream", &self.inner.upstream)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

impl Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.inner.clone();
        Box::pin(async move {
            let origin = req.headers().get(header::ORIGIN).cloned();
            let origin = origin.as_ref();
            let req = match Self::rewrite(&this, req) {
                Ok(r) => r,
                Err(RewriteError::Target(refusal)) => {
                    return Ok(this.problem(
                        origin,
                        refusal.kind(),
                        &format!("{refusal}; nothing was processed"),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build the upstream request");
                    return Ok(this.problem(
                        origin,
                        ProblemKind::Internal,
                        "the request could not be forwarded",
                    ));
                }
            };
            let started = std::time::Instant::now();
            let result = tokio::time::timeout(this.timeout, this.pool.send(req)).await;
            metrics::histogram!(crate::admin::names::UPSTREAM_SECONDS)
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(Ok(resp)) => {
                    let (mut parts, body) = resp.into_parts();
                    // `Trailer` announces the trailers this client is sent (RFC 9110
                    // §6.6.2); it is never stored (R19).
                    let trailer = parts
                        .headers
                        .get_all(header::TRAILER)
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>();
                    strip_hop_by_hop(&mut parts.headers);
                    for value in trailer {
                        parts.headers.append(header::TRAILER, value);
                    }
                    reason_in(&mut parts.extensions);
                    Ok(Response::from_parts(parts, body))
                }
                Ok(Err(e @ ExchangeError::Framing(_))) => {
                    // R25: relayed, it would desync the client's connection and be
                    // stored as a complete answer. The upstream answered: it ran (R22).
                    metrics::counter!(crate::admin::names::UPSTREAM_FAILURES, "kind" => "invalid")
                        .increment(1);
                    tracing::warn!(error = %e, upstream = %this.upstream, "upstream response refused");
                    Ok(may_have_run(this.problem(
                        origin,
                        ProblemKind::UpstreamUnavailable,
                        "the upstream's response was malformed (its body framing is invalid); nothing was stored and the request may be retried with the same key",
                    )))
                }
                Ok(Err(e)) => {
                    metrics::counter!(crate::admin::names::UPSTREAM_FAILURES, "kind" => "unavailable").increment(1);
                    tracing::warn!(error = %e, upstream = %this.upstream, "upstream request failed");
                    let answer = this.problem(
                        origin,
                        ProblemKind::UpstreamUnavailable,
                        "the upstream could not be reached or broke the connection; the request may be retried with the same key",
                    );
                    // Refused or never written: the upstream never saw it (R12). Broken
                    // after the request went out: it may have run (R22).
                    Ok(match e {
                        ExchangeError::Connect(_)
                        | ExchangeError::ConnectTimeout
                        | ExchangeError::Tls(_)
                        | ExchangeError::Unsent(_) => answer,
                        _ => may_have_run(answer),
                    })
                }
                Err(_) => {
                    metrics::counter!(crate::admin::names::UPSTREAM_FAILURES, "kind" => "timeout")
                        .increment(1);
                    tracing::warn!(upstream = %this.upstream, timeout = ?this.timeout, "upstream timed out");
                    // Possibly while connecting, but as likely after the request went
                    // out: counted as possibly run, the side at-most-once needs (R22).
                    Ok(may_have_run(this.problem(
                        origin,
                        ProblemKind::UpstreamTimeout,
                        "the upstream did not answer in time; the request may be retried with the same key",
                    )))
                }
            }
        })
    }
}

/// The upstream's own reason phrase (`201 CREATED`), which hyper's client keeps in an
/// extension of its own, as the engine stores it (R8).
fn reason_in(extensions: &mut http::Extensions) {
    let reason = extensions
        .get::<hyper::ext::ReasonPhrase>()
        .and_then(|r| ReasonPhrase::new(r.as_bytes()));
    if let Some(reason) = reason {
        extensions.insert(reason);
    }
}

/// A stored reason phrase on a replay, as hyper's server writes it (R8); the first
/// answer still carries hyper's own.
pub(crate) fn reason_out<B>(mut resp: Response<B>) -> Response<B> {
    let reason = resp
        .extensions()
        .get::<ReasonPhrase>()
        .and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes().to_vec()).ok());
    if let Some(reason) = reason {
        resp.extensions_mut().insert(reason);
    }
    resp
}

/// Marks `resp` as the answer to a request the upstream may have run (R22).
fn may_have_run(mut resp: Response<Body>) -> Response<Body> {
    resp.extensions_mut().insert(MayHaveRun);
    resp
}

impl Inner {
    fn problem(
        &self,
        origin: Option<&HeaderValue>,
        kind: ProblemKind,
        detail: &str,
    ) -> Response<Body> {
        self.policy
            .answer(origin, &Problem::new(kind, detail))
            .map(Body::full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let u: Upstream = "http://127.0.0.1:3000".parse().unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:3000");
        let u: Upstream = "http://api.internal:80/v1/".parse().unwrap();
        assert_eq!(u.prefix, "/v1");
        let u: Upstream = "https://api.internal:8443/prefix".parse().unwrap();
        assert!(u.is_tls());
        assert_eq!(u.connect_to(), "api.internal:8443");
        assert_eq!(u.to_string(), "https://api.internal:8443/prefix");
        let u: Upstream = "https://api.internal".parse().unwrap();
        assert_eq!(u.connect_to(), "api.internal:443");
        assert!("ftp://x".parse::<Upstream>().is_err());
        assert!("nope".parse::<Upstream>().is_err());
        assert!("http://x/?a=1".parse::<Upstream>().is_err());
        // R24: the prefix is normalised like a request path, and an ambiguous one refused.
        let u: Upstream = "http://x/v1/./a/../%62//".parse().unwrap();
        assert_eq!(u.prefix, "/v1/b");
        let u: Upstream = "http://x/../..".parse().unwrap();
        assert_eq!(u.prefix, "");
        assert!("http://x/v1%2Fa".parse::<Upstream>().is_err());
    }
}
