//! What one client connection may hold (R25), enforced by one timer per connection.
//!
//! A connection is closed when:
//!
//! - its first request head is not complete within the read timeout counted from the
//!   accept, whatever it sent meanwhile: nothing, part of a head, part of the HTTP/2
//!   preface or of a HEADERS block (hyper's own header timer only starts once the
//!   protocol is known, and HTTP/2 has none);
//! - no request is in progress for the idle timeout (an idle keep-alive connection);
//! - an HTTP/1 head begun on an idle connection is not complete within the read timeout;
//! - its client stops reading: a write has been blocked for the idle timeout.
//!
//! The watchdog learns what happens from [`Watched`] (the socket: reads while idle,
//! blocked writes) and from [`InFlight`] (a request, from its complete head to the end
//! of its response body). Both only touch atomics on the way; the clock is read when
//! a request ends and on the rare transitions (first byte of an idle head, a write
//! blocking), never per read or write.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use idem::{
    Body, BoxError,
    core::{Policy, Problem, ProblemKind},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// "Not set", for the millisecond marks of [`Activity`].
const UNSET: u64 = u64::MAX;

/// The timeouts the watchdog applies.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Time for a request head, from the accept or from its first byte.
    pub(crate) read_timeout: Duration,
    /// Time a connection may sit with no request, or with a write blocked.
    pub(crate) idle_timeout: Duration,
}

/// What the watchdog of one connection knows about it. Times are milliseconds after
/// the accept.
#[derive(Debug)]
pub(crate) struct Activity {
    accepted: Instant,
    /// Requests whose response body has not ended (HTTP/2 runs several at once).
    active: AtomicUsize,
    /// When the last request ended; [`UNSET`] before the first one.
    idle_since: AtomicU64,
    /// When the first byte arrived on the idle connection (an HTTP/1 head begun).
    head_since: AtomicU64,
    /// Since when a write has been waiting for the client to read.
    stalled_since: AtomicU64,
    /// HTTP/2: frames on an idle connection (pings, window updates) are no head.
    h2: AtomicBool,
}

impl Activity {
    /// The state of a connection accepted now.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            accepted: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(UNSET),
            head_since: AtomicU64::new(UNSET),
            stalled_since: AtomicU64::new(UNSET),
            h2: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(UNSET - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.accepted + Duration::from_millis(ms)
    }

    /// A request whose head is complete starts; it ends when the returned guard (moved
    /// into the response body) is dropped.
    pub(crate) fn begin(self: &Arc<Self>, h2: bool) -> InFlight {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(UNSET, Ordering::Relaxed);
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        InFlight(Arc::clone(self))
    }

    fn read_some(&self) {
        if self.active.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == UNSET
            && !self.h2.load(Ordering::Relaxed)
        {
            self.head_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn write_blocked(&self) {
        if self.stalled_since.load(Ordering::Relaxed) == UNSET {
            self.stalled_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn write_done(&self) {
        if self.stalled_since.load(Ordering::Relaxed) != UNSET {
            self.stalled_since.store(UNSET, Ordering::Relaxed);
        }
    }

    /// When the connection must be closed as things stand; `None` while a request is
    /// in progress and its writes flow.
    fn deadline(&self, limits: Limits) -> Option<Instant> {
        let stalled = self.stalled_since.load(Ordering::Relaxed);
        if stalled != UNSET {
            return Some(self.at(stalled) + limits.idle_timeout);
        }
        if self.active.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let idle = self.idle_since.load(Ordering::Relaxed);
        if idle == UNSET {
            // No request yet: the timer started at the accept.
            return Some(self.accepted + limits.read_timeout);
        }
        let head = self.head_since.load(Ordering::Relaxed);
        if head == UNSET {
            Some(self.at(idle) + limits.idle_timeout)
        } else {
            Some(self.at(head) + limits.read_timeout)
        }
    }
}

/// Resolves when the connection must be closed (see the [module docs](self)).
///
/// It sleeps until the deadline it computed, but never longer than the shorter of the
/// two timeouts: every deadline lies at least that long after the event that set it
/// (a request ending, a head beginning, a write blocking), so each is seen in time
/// however the connection changed while it slept. A busy connection costs one wake-up
/// per that period.
pub(crate) async fn watchdog(activity: Arc<Activity>, limits: Limits) {
    // Never zero, which would spin (the settings refuse zero timeouts).
    let tick = limits
        .idle_timeout
        .min(limits.read_timeout)
        .max(Duration::from_millis(1));
    loop {
        let now = Instant::now();
        let at = match activity.deadline(limits) {
            Some(deadline) if deadline <= now => return,
            Some(deadline) => deadline.min(now + tick),
            None => now + tick,
        };
        tokio::time::sleep_until(at).await;
    }
}

/// One request in progress on a connection.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl InFlight {
    /// The response body, which ends the request when it is dropped (sent, or given up).
    pub(crate) fn track(self, body: Body) -> Tracked {
        Tracked {
            body,
            _in_flight: self,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        // Marked idle before the count drops, so the watchdog never pairs a zero count
        // with the end of an earlier idle spell.
        a.idle_since.store(a.now_ms(), Ordering::Relaxed);
        a.head_since.store(UNSET, Ordering::Relaxed);
        a.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that holds its request's [`InFlight`] until it is dropped.
pub(crate) struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client socket, reporting to its connection's [`Activity`].
#[derive(Debug)]
pub(crate) struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl Watched {
    pub(crate) fn new(io: TcpStream, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }

    fn wrote(&self, result: &Poll<io::Result<usize>>) {
        match result {
            Poll::Pending => self.activity.write_blocked(),
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.write_done(),
            Poll::Ready(_) => {}
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read_some();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Why a request's `Transfer-Encoding` is refused, if it is: idem reads bodies framed
/// by `chunked` alone. hyper decodes the chunks when `chunked` comes last and leaves
/// any coding before it (`gzip, chunked`) undone, so idem would fingerprint, store
/// and forward bytes it cannot read; a doubled `chunked` is a smuggling attempt
/// (RFC 9112 §6.1: a sender never applies it twice).
pub(crate) fn refused_coding(headers: &HeaderMap) -> Option<String> {
    let mut fields = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    fields.peek()?;
    if only_chunked(fields) {
        return None;
    }
    let given: Vec<&str> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("(not text)"))
        .collect();
    Some(format!(
        "Transfer-Encoding `{}` is not supported: send the body with Content-Length, or with `chunked` alone",
        given.join(", ")
    ))
}

/// Whether these `Transfer-Encoding` fields list exactly one coding, `chunked`.
pub(crate) fn only_chunked<'a>(fields: impl Iterator<Item = &'a HeaderValue>) -> bool {
    let mut codings = fields
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    codings
        .next()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
        && codings.next().is_none()
}

/// The 400 answer to a request [`refused_coding`] refused. Its body was not read, so
/// the connection closes after it.
pub(crate) fn refusal(
    detail: String,
    policy: &Policy,
    origin: Option<&HeaderValue>,
) -> Response<Body> {
    let mut resp = policy
        .answer(origin, &Problem::new(ProblemKind::BadRequestBody, detail))
        .map(Body::full);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn te(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::TRANSFER_ENCODING, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_a_single_chunked_coding_is_read() {
        assert!(refused_coding(&HeaderMap::new()).is_none());
        assert!(refused_coding(&te(&["chunked"])).is_none());
        assert!(refused_coding(&te(&[" Chunked "])).is_none());
        for bad in [
            &["gzip, chunked"][..],
            &["gzip", "chunked"],
            &["chunked, chunked"],
            &["chunked", "chunked"],
            &["identity"],
            &["chunked;x=1"],
            &[""],
        ] {
            let detail = refused_coding(&te(bad)).unwrap_or_else(|| panic!("{bad:?}"));
            assert!(detail.contains("Transfer-Encoding"), "{detail}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connection() {
        let limits = Limits {
            read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        };
        let a = Activity::new();
        let t0 = a.accepted;
        // Nothing yet: the read timeout from the accept.
        assert_eq!(a.deadline(limits), Some(t0 + limits.read_timeout));
        a.read_some();
        assert_eq!(a.deadline(limits), Some(t0 + limits.read_timeout));
        let req = a.begin(false);
        assert_eq!(a.deadline(limits), None);
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(req);
        // Idle: the idle timeout from the end of the request.
        let idle = t0 + Duration::from_secs(3);
        assert_eq!(a.deadline(limits), Some(idle + limits.idle_timeout));
        // A head begins: the read timeout from its first byte.
        tokio::time::advance(Duration::from_secs(5)).await;
        a.read_some();
        assert_eq!(
            a.deadline(limits),
            Some(idle + Duration::from_secs(5) + limits.read_timeout)
        );
        // A blocked write counts even during a request.
        let req = a.begin(false);
        a.write_blocked();
        let stalled = idle + Duration::from_secs(5);
        assert_eq!(a.deadline(limits), Some(stalled + limits.idle_timeout));
        a.write_done();
        assert_eq!(a.deadline(limits), None);
        drop(req);
        // HTTP/2: frames while idle start no head timer.
        let h2 = Activity::new();
        drop(h2.begin(true));
        let idle = h2.deadline(limits);
        h2.read_some();
        assert_eq!(h2.deadline(limits), idle);
    }
}
