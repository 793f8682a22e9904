//! R25: an upstream whose response framing is invalid gets a 502 problem, its key is
//! released and nothing is stored; an upstream can neither desync the client's
//! connection nor hold a request forever, and a client that stops reading does not hold
//! the upstream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idem::core::ProblemKind;
use idem::core::store::MemoryStore;
use idem_proxy::config::ProxyConfig;
use idem_testkit::{Client, Front};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What the raw upstream does after writing its canned response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    /// Closes the connection.
    Close,
    /// Keeps it open and reads the next request.
    KeepOpen,
    /// Writes 64 KiB chunks until the connection breaks, then notifies.
    Endless,
}

/// An upstream that answers every request with the same bytes.
struct RawUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    broken: Arc<Notify>,
}

impl RawUpstream {
    async fn spawn(response: &'static [u8], then: Then) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let broken = Arc::new(Notify::new());
        let (count, notify) = (requests.clone(), broken.clone());
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (count, notify) = (count.clone(), notify.clone());
                tokio::spawn(serve(socket, response, then, count, notify));
            }
        });
        Self {
            addr,
            requests,
            broken,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut socket: TcpStream,
    response: &'static [u8],
    then: Then,
    count: Arc<AtomicUsize>,
    broken: Arc<Notify>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One request: its head, then the body its Content-Length announces.
        let body_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = crate::content_length(&head);
                if buf.len() >= end + 4 + len {
                    break end + 4 + len;
                }
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..body_end);
        count.fetch_add(1, Ordering::SeqCst);
        if socket.write_all(response).await.is_err() {
            return;
        }
        match then {
            Then::Close => return,
            Then::KeepOpen => {}
            Then::Endless => {
                let chunk = format!("10000\r\n{}\r\n", "z".repeat(0x10000));
                while socket.write_all(chunk.as_bytes()).await.is_ok() {}
                broken.notify_one();
                return;
            }
        }
    }
}

async fn raw_front(upstream: &RawUpstream, edit: impl FnOnce(&mut ProxyConfig)) -> Front {
    let mut config = ProxyConfig::new(format!("http://{}", upstream.addr).parse().unwrap());
    config.upstream_timeout = Duration::from_millis(500);
    edit(&mut config);
    let running = idem_proxy::spawn("127.0.0.1:0".parse().unwrap(), MemoryStore::new(), config)
        .await
        .unwrap();
    Front::new(running.addr(), running)
}

// R25 (RFC 9112 §6.3): each invalid framing is a 502 problem; the key is released, so
// the retry reaches the upstream again instead of replaying a broken snapshot. Both
// Content-Length and Transfer-Encoding would otherwise be relayed with the stale
// length; a coding other than `chunked` alone relayed as if it were the body; a body
// that stalls short of its length would hold the request and its key forever.
#[tokio::test]
async fn r25_invalid_upstream_framing_is_502_and_never_stored() {
    let cases: &[(&str, &'static [u8], Then)] = &[
        (
            "Content-Length with Transfer-Encoding",
            b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            Then::KeepOpen,
        ),
        (
            "a coding other than chunked",
            b"HTTP/1.1 201 Created\r\ntransfer-encoding: gzip\r\n\r\nnot gzip at all",
            Then::Close,
        ),
        (
            "a coding before chunked",
            b"HTTP/1.1 201 Created\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            Then::KeepOpen,
        ),
        (
            "chunked twice",
            b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked, chunked\r\n\r\n8\r\n3\r\nabc\r\n\r\n0\r\n\r\n",
            Then::KeepOpen,
        ),
        (
            "two different Content-Length values",
            b"HTTP/1.1 201 Created\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
            Then::KeepOpen,
        ),
        (
            "a bad chunk size",
            b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            Then::KeepOpen,
        ),
        (
            "a body shorter than its length, then a close",
            b"HTTP/1.1 201 Created\r\ncontent-length: 10\r\n\r\nabc",
            Then::Close,
        ),
        (
            "a body shorter than its length, then silence",
            b"HTTP/1.1 201 Created\r\ncontent-length: 10\r\n\r\nabc",
            Then::KeepOpen,
        ),
    ];
    for (what, response, then) in cases {
        let upstream = RawUpstream::spawn(response, *then).await;
        let front = raw_front(&upstream, |_| {}).await;
        let client = Client::new(front.addr);
        for attempt in 1..=2 {
            let resp = client.post("/charges", "framed", "{}").await;
            assert_eq!(resp.status, 502, "{what}, attempt {attempt}: {resp:?}");
            assert_eq!(
                resp.problem_type(),
                ProblemKind::UpstreamUnavailable.type_uri(),
                "{what}"
            );
            assert!(!resp.replayed(), "{what}");
            assert_eq!(upstream.requests(), attempt, "{what}: not sent again");
        }
    }
}

// R25: after a refused response the client's connection stays in sync: the answer to
// the next pipelined request starts where the 502 ends.
#[tokio::test]
async fn r25_refused_framing_keeps_the_client_connection_in_sync() {
    let upstream = RawUpstream::spawn(
        b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        Then::KeepOpen,
    )
    .await;
    let front = raw_front(&upstream, |_| {}).await;
    let mut s = TcpStream::connect(front.addr).await.unwrap();
    s.write_all(
        b"POST /charges HTTP/1.1\r\nhost: x\r\nauthorization: Bearer raw\r\nidempotency-key: piped\r\ncontent-length: 2\r\n\r\n{}\
          GET /next HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut all))
        .await
        .expect("both answers within 30 s")
        .unwrap();
    let text = String::from_utf8_lossy(&all).into_owned();
    let (first, rest) = split_response(&text);
    assert!(first.starts_with("HTTP/1.1 502"), "{text}");
    let (second, rest) = split_response(rest);
    assert!(second.starts_with("HTTP/1.1 502"), "{text}");
    assert!(rest.is_empty(), "{text}");
}

/// One response with a Content-Length off the front of `text`, and what follows it.
fn split_response(text: &str) -> (&str, &str) {
    let end = text.find("\r\n\r\n").expect("a response head") + 4;
    let len: usize = text[..end]
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .expect("a content-length")
        .parse()
        .unwrap();
    text.split_at(end + len)
}

// R25: a client that stops reading a streamed response is cut off after the idle
// timeout, and with it the upstream exchange, instead of holding both forever.
#[tokio::test]
async fn r25_a_client_that_stops_reading_is_cut_off() {
    let upstream = RawUpstream::spawn(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        Then::Endless,
    )
    .await;
    let front = raw_front(&upstream, |c| {
        c.connections.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut s = TcpStream::connect(front.addr).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Never read: the upstream's writes break only once the proxy gives up.
    tokio::time::timeout(Duration::from_secs(30), upstream.broken.notified())
        .await
        .expect("the upstream exchange still open after 30 s");
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk)).await {
            Err(_) => panic!("the client connection still open after 30 s"),
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => {}
        }
    }
}
