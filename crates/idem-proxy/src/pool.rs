//! Keep-alive HTTP/1.1 connections to the upstream, each driven by the request using it;
//! over TLS to an `https://` upstream, one shared HTTP/2 connection when the upstream
//! picks `h2` over ALPN.
//!
//! A pooled client that runs every connection on a task of its own hands each request,
//! its response head and every body frame across channels between that task and the
//! request's, waking one for the other at each step. Here the request's own future polls
//! the connection while it waits for the head, and the response body polls it while it
//! is read, so a whole exchange runs on the downstream connection's task. A connection
//! goes back to the pool once its response body has ended; one left mid-response (its
//! body dropped early) is closed.
//!
//! An HTTP/2 connection carries many requests at once, so it runs on a task of its own
//! and every request holds a handle to it; when it closes (the upstream sent GOAWAY, or
//! it failed), the next request opens a new connection.
//!
//! Every response head is checked for a framing idem can relay (R25, RFC 9112 §6.3): a
//! response with both `Content-Length` and `Transfer-Encoding`, or a transfer coding
//! other than `chunked` alone, is an error and its connection is closed. hyper itself
//! refuses differing `Content-Length` values and bad chunk sizes, and fails a body cut
//! short; a body that stops arriving fails after the read timeout.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, Uri, Version, header};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use idem::{Body, BoxError};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

type Conn = Connection<TokioIo<Stream>, Body>;

/// A connection to the upstream: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// How to speak TLS to an `https://` upstream.
struct Secure {
    /// `None` when the forwarder was built without TLS settings: every connection fails.
    connector: Option<TlsConnector>,
    /// The name the certificate must carry, sent as SNI.
    name: Result<ServerName<'static>, String>,
}

/// Idle connections kept at most.
const MAX_IDLE: usize = 256;

/// Why an exchange with the upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// No connection could be opened.
    #[error("cannot connect to the upstream: {0}")]
    Connect(#[source] std::io::Error),
    /// The connection could not be opened in time.
    #[error("connecting to the upstream timed out")]
    ConnectTimeout,
    /// The connection failed before the request was written: the upstream never saw it.
    #[error("the upstream connection failed before the request was sent: {0}")]
    Unsent(#[source] hyper::Error),
    /// The exchange failed on an open connection after the request was (at least partly)
    /// written: the upstream may have run it (R22).
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The response head frames its body in a way idem cannot relay.
    #[error("invalid response framing: {0}")]
    Framing(&'static str),
    /// The TLS handshake with the upstream failed (its certificate did not verify, say).
    #[error("TLS with the upstream failed: {0}")]
    Tls(String),
}

/// A response body that stopped arriving for the read timeout.
#[derive(Debug, thiserror::Error)]
#[error("the upstream's response body stalled for {0:?}")]
pub(crate) struct BodyStalled(Duration);

/// Checks the framing of a response head; one `Content-Length` sent several times, or
/// as a list of equal values (which hyper accepts), becomes a single field.
fn check_framing(headers: &mut HeaderMap) -> Result<(), ExchangeError> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(ExchangeError::Framing(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if !crate::conn::only_chunked(headers.get_all(header::TRANSFER_ENCODING).iter()) {
            return Err(ExchangeError::Framing(
                "a Transfer-Encoding other than chunked",
            ));
        }
        return Ok(());
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let (Some(first), more) = (lengths.next(), lengths.next().is_some()) else {
        return Ok(());
    };
    if more || !first.as_bytes().iter().all(u8::is_ascii_digit) {
        // hyper has checked that the values agree.
        let len = first
            .as_bytes()
            .split(|b| *b == b',')
            .next()
            .map(<[u8]>::trim_ascii)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(ExchangeError::Framing("an invalid Content-Length"))?;
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(())
}

/// One open connection: the request half and the connection future that does the I/O.
struct Link {
    send: SendRequest<Body>,
    conn: Pin<Box<Conn>>,
    /// The connection future finished (closed or failed): nothing more will flow.
    ended: bool,
}

impl Link {
    /// Makes what progress the connection can.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.ended && self.conn.as_mut().poll(cx).is_ready() {
            self.ended = true;
        }
    }

    /// Whether a new request may be sent now.
    fn reusable(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop()));
        !self.ended && self.send.is_ready()
    }
}

struct Idle {
    link: Link,
    since: Instant,
}

/// Where one request goes: an HTTP/1.1 connection of its own, or the shared HTTP/2 one;
/// `pooled` when it was open already (it may have closed meanwhile).
enum Via {
    H1 {
        link: Link,
        pooled: bool,
    },
    H2 {
        send: http2::SendRequest<Body>,
        pooled: bool,
    },
}

/// The pool of one upstream address.
pub(crate) struct Pool {
    authority: String,
    connect_timeout: Duration,
    /// Longest wait for the next part of a response body.
    read_timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
    /// Set for an `https://` upstream.
    tls: Option<Secure>,
    /// The HTTP/2 connection, when the upstream picked `h2`, and when a request last
    /// went out on it: one unused for the idle timeout is let go, as idle HTTP/1.1
    /// connections are, so a connection a middlebox dropped silently is not reused.
    h2: Mutex<Option<(http2::SendRequest<Body>, Instant)>>,
}

impl Pool {
    /// A pool for `authority`: connecting may take `timeout`, and so may the wait for
    /// each part of a response body; idle connections are kept `idle_timeout`.
    pub(crate) fn new(authority: String, timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            authority,
            connect_timeout: timeout,
            read_timeout: timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            tls: None,
            h2: Mutex::new(None),
        }
    }

    /// The same pool speaking TLS with `config` (`None`: every connection fails) to a
    /// server named `host`.
    pub(crate) fn over_tls(
        mut self,
        config: Option<Arc<rustls::ClientConfig>>,
        host: &str,
    ) -> Self {
        self.tls = Some(Secure {
            connector: config.map(TlsConnector::from),
            name: crate::tls::server_name(host).map_err(|e| e.to_string()),
        });
        self
    }

    /// An open connection: the HTTP/2 one, or an idle HTTP/1.1 one.
    fn reuse(&self) -> Option<Via> {
        if self.tls.is_some() {
            let mut h2 = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
            match h2.as_mut() {
                Some((send, used)) if !send.is_closed() && used.elapsed() < self.idle_timeout => {
                    *used = Instant::now();
                    return Some(Via::H2 {
                        send: send.clone(),
                        pooled: true,
                    });
                }
                // Dropping the last handle closes the connection once its requests end.
                Some(_) => *h2 = None,
                None => {}
            }
        }
        self.checkout().map(|link| Via::H1 { link, pooled: true })
    }

    fn checkout(&self) -> Option<Link> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(mut entry) = idle.pop() {
            if entry.since.elapsed() < self.idle_timeout && entry.link.reusable() {
                return Some(entry.link);
            }
        }
        None
    }

    fn checkin(&self, mut link: Link) {
        if !link.reusable() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                link,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<Via, ExchangeError> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.authority.as_str()),
        )
        .await
        .map_err(|_| ExchangeError::ConnectTimeout)?
        .map_err(ExchangeError::Connect)?;
        let _ = stream.set_nodelay(true);
        let stream = match &self.tls {
            None => Stream::Plain(stream),
            Some(tls) => {
                let stream = self.handshake(tls, stream).await?;
                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    return self.connect_h2(stream).await;
                }
                Stream::Tls(Box::new(stream))
            }
        };
        let (send, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ExchangeError::Unsent)?;
        Ok(Via::H1 {
            link: Link {
                send,
                conn: Box::pin(conn),
                ended: false,
            },
            pooled: false,
        })
    }

    /// The TLS handshake on a new connection, within the connect timeout.
    async fn handshake(
        &self,
        tls: &Secure,
        stream: TcpStream,
    ) -> Result<TlsStream<TcpStream>, ExchangeError> {
        let connector = tls.connector.as_ref().ok_or_else(|| {
            ExchangeError::Tls("the forwarder was built without TLS settings".to_owned())
        })?;
        let name = tls.name.clone().map_err(ExchangeError::Tls)?;
        tokio::time::timeout(self.connect_timeout, connector.connect(name, stream))
            .await
            .map_err(|_| ExchangeError::ConnectTimeout)?
            .map_err(|e| ExchangeError::Tls(e.to_string()))
    }

    /// An HTTP/2 connection on its own task, shared from now on.
    async fn connect_h2(&self, stream: TlsStream<TcpStream>) -> Result<Via, ExchangeError> {
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(Stream::Tls(Box::new(stream))))
            .await
            .map_err(ExchangeError::Unsent)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        *self.h2.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((send.clone(), Instant::now()));
        Ok(Via::H2 {
            send,
            pooled: false,
        })
    }

    /// Sends `req` on an idle connection or a new one and waits for the response head;
    /// the response body drives the connection from then on.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, ExchangeError> {
        let mut via = match self.reuse() {
            Some(via) => via,
            None => self.connect().await?,
        };
        loop {
            // A pooled connection the upstream closed just now gives the request back
            // unsent: it goes out once more, on a fresh connection.
            let (sent, link, pooled) = match via {
                Via::H1 { mut link, pooled } => {
                    if req.uri().scheme().is_some() {
                        origin_form(&mut req);
                    }
                    let sending = link.send.try_send_request(req);
                    let mut sending = std::pin::pin!(sending);
                    let sent = poll_fn(|cx| {
                        link.drive(cx);
                        sending.as_mut().poll(cx)
                    })
                    .await;
                    (sent, Some(link), pooled)
                }
                Via::H2 { mut send, pooled } => {
                    absolute_form(&mut req, &self.authority);
                    (send.try_send_request(req).await, None, pooled)
                }
            };
            match sent {
                Ok(resp) => {
                    let (mut head, body) = resp.into_parts();
                    // On error the link is dropped, so the connection is closed.
                    check_framing(&mut head.headers)?;
                    let body = Driven {
                        body,
                        link,
                        pool: Arc::clone(self),
                        stall: None,
                        waiting: false,
                    };
                    return Ok(Response::from_parts(head, Body::new(body)));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if pooled => {
                        req = unsent;
                        via = self.connect().await?;
                    }
                    // Given back unsent: nothing reached the upstream.
                    Some(_) => return Err(ExchangeError::Unsent(e.into_error())),
                    None => return Err(e.into_error().into()),
                },
            }
        }
    }
}

/// An HTTP/2 request names its scheme and authority in the URI (`:scheme`,
/// `:authority`) rather than in a `Host` field.
fn absolute_form(req: &mut Request<Body>, fallback: &str) {
    *req.version_mut() = Version::HTTP_2;
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| Authority::try_from(fallback).ok());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTPS);
    parts.authority = authority;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
}

/// The reverse of [`absolute_form`], for a request sent again over HTTP/1.1.
fn origin_form(req: &mut Request<Body>) {
    *req.version_mut() = Version::HTTP_11;
    let uri = std::mem::take(req.uri_mut());
    if let Some(authority) = uri.authority()
        && !req.headers().contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
}

/// A response body that drives its connection while it is read, and hands the
/// connection back to the pool at its end.
struct Driven {
    body: Incoming,
    link: Option<Link>,
    pool: Arc<Pool>,
    /// Armed while the body keeps the reader waiting: most bodies arrive with the head,
    /// and then no timer is set at all.
    stall: Option<Pin<Box<Sleep>>>,
    /// The last poll found no frame.
    waiting: bool,
}

impl HttpBody for Driven {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut frame = Pin::new(&mut this.body).poll_frame(cx);
        if frame.is_pending()
            && let Some(link) = this.link.as_mut()
        {
            // Asking for a frame told the connection to read one: let it, then look again.
            link.drive(cx);
            frame = Pin::new(&mut this.body).poll_frame(cx);
        }
        if frame.is_pending() {
            // The timeout counts from when the reader started waiting, not from the
            // last frame: a slow reader downstream is no stalled upstream.
            let limit = this.pool.read_timeout;
            let started = !this.waiting;
            this.waiting = true;
            let stall = match this.stall.as_mut() {
                Some(stall) => {
                    if started {
                        stall.as_mut().reset(Instant::now() + limit);
                    }
                    stall
                }
                None => this.stall.insert(Box::pin(tokio::time::sleep(limit))),
            };
            if stall.as_mut().poll(cx).is_ready() {
                // Dropping the link closes the connection, whatever it still sends.
                this.link = None;
                return Poll::Ready(Some(Err(BodyStalled(limit).into())));
            }
            return Poll::Pending;
        }
        this.waiting = false;
        if let Poll::Ready(None) = frame
            && let Some(mut link) = this.link.take()
        {
            // Let the connection note the end of the message before it is reused.
            link.drive(cx);
            this.pool.checkin(link);
        }
        frame.map(|f| f.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        // A body known to be empty may never be polled: its connection is still good.
        if self.body.is_end_stream()
            && let Some(link) = self.link.take()
        {
            self.pool.checkin(link);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A bare HTTP/1.1 server that answers `ok` to every request head it reads and
    /// counts the connections it accepted; with `close_after`, it closes each connection
    /// that long after its first answer (as an upstream's keep-alive timeout does).
    async fn upstream(close_after: Option<Duration>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Ok(n) = socket.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if socket.write_all(reply).await.is_err() {
                                return;
                            }
                            if let Some(after) = close_after {
                                tokio::time::sleep(after).await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    async fn get(pool: &Arc<Pool>) -> String {
        let req = Request::get("/")
            .header("host", "x")
            .body(Body::empty())
            .unwrap();
        let resp = pool.send(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    fn pool_for(addr: String) -> Arc<Pool> {
        Arc::new(Pool::new(
            addr,
            Duration::from_secs(2),
            Duration::from_secs(60),
        ))
    }

    #[test]
    fn http2_requests_carry_the_authority_in_the_uri() {
        let mut req = Request::post("/v1/charges?a=1")
            .header("host", "api.internal:8443")
            .body(Body::empty())
            .unwrap();
        absolute_form(&mut req, "fallback:443");
        assert_eq!(req.uri(), "https://api.internal:8443/v1/charges?a=1");
        assert!(req.headers().get(header::HOST).is_none());
        assert_eq!(req.version(), Version::HTTP_2);
        // Sent again over HTTP/1.1: origin form and a Host field once more.
        origin_form(&mut req);
        assert_eq!(req.uri(), "/v1/charges?a=1");
        assert_eq!(req.headers()[header::HOST], "api.internal:8443");
        assert_eq!(req.version(), Version::HTTP_11);
        // No Host field: the address connected to.
        let mut req = Request::get("/").body(Body::empty()).unwrap();
        absolute_form(&mut req, "api.internal:443");
        assert_eq!(req.uri(), "https://api.internal:443/");
    }

    #[test]
    fn framing_is_checked_and_lengths_made_one() {
        let head = |fields: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in fields {
                h.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            h
        };
        for ok in [
            &[("content-length", "3")][..],
            &[("transfer-encoding", "chunked")],
            &[("transfer-encoding", "Chunked")],
            &[],
        ] {
            let mut h = head(ok);
            check_framing(&mut h).unwrap();
            assert_eq!(h, head(ok));
        }
        for bad in [
            &[("content-length", "3"), ("transfer-encoding", "chunked")][..],
            &[("transfer-encoding", "gzip")],
            &[("transfer-encoding", "gzip, chunked")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
        ] {
            let err = check_framing(&mut head(bad)).unwrap_err();
            assert!(matches!(err, ExchangeError::Framing(_)), "{bad:?}");
        }
        // hyper lets equal values through; the client gets one.
        for repeated in [
            &[("content-length", "3"), ("content-length", "3")][..],
            &[("content-length", "3, 3")],
        ] {
            let mut h = head(repeated);
            check_framing(&mut h).unwrap();
            assert_eq!(h, head(&[("content-length", "3")]));
        }
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_ended() {
        let (addr, accepted) = upstream(None).await;
        let pool = pool_for(addr);
        for _ in 0..5 {
            assert_eq!(get(&pool).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
        let (addr, accepted) = upstream(Some(Duration::from_millis(20))).await;
        let pool = pool_for(addr);
        for _ in 0..3 {
            assert_eq!(get(&pool).await, "ok");
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn concurrent_requests_get_connections_of_their_own() {
        let (addr, accepted) = upstream(None).await;
        let pool = pool_for(addr);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { get(&pool).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), "ok");
        }
        let opened = accepted.load(Ordering::SeqCst);
        assert!((1..=8).contains(&opened), "{opened}");
        // Afterwards they are all idle in the pool, and reused.
        for _ in 0..8 {
            get(&pool).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), opened);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let pool = pool_for(addr);
        let req = Request::get("/").body(Body::empty()).unwrap();
        let err = pool.send(req).await.unwrap_err();
        assert!(matches!(err, ExchangeError::Connect(_)), "{err}");
    }
}
