//! R25: what a client connection can make the proxy hold is bounded: a connection that
//! never completes a head, an idle keep-alive connection, one that stops reading, the
//! number of connections, the header block; and a body it could not read is refused.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use idem::core::ProblemKind;
use idem::core::store::MemoryStore;
use idem_testkit::{Client, CountingUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::common::{self, Proc};
use super::{front, read_status, still_healthy};

/// The HTTP/2 connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads and discards until the proxy closes (or resets) the connection.
async fn closed(stream: &mut TcpStream, what: &str) {
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk)).await {
            Err(_) => panic!("{what}: still open after 30 s"),
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

/// An HTTP/2 frame: type, flags, stream, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Reads one whole HTTP/1.1 response with a Content-Length: its status.
async fn read_response(stream: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = crate::content_length(&head);
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "body cut short");
                buf.extend_from_slice(&chunk[..n]);
            }
            return head.split(' ').nth(1).unwrap().parse().unwrap();
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
            .await
            .expect("an answer within 30 s")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

// R25: the read timeout runs from the accept, whatever the connection sends meanwhile:
// nothing, one byte, the HTTP/2 preface but its last byte, an HTTP/2 HEADERS block
// never finished, half an HTTP/1 head. Each is closed; others are served meanwhile.
#[tokio::test]
async fn r25_connections_without_a_complete_head_are_closed() {
    let upstream = CountingUpstream::spawn().await;
    let front = front(MemoryStore::new(), &upstream, |c| {
        c.request_read_timeout = Duration::from_millis(300);
        c.connections.idle_timeout = Duration::from_secs(600);
    })
    .await;
    let mut unfinished_headers = PREFACE.to_vec();
    unfinished_headers.extend(frame(0x4, 0, 0, &[]));
    // HEADERS on stream 1 (:method GET, :path /, :scheme http) without END_HEADERS.
    unfinished_headers.extend(frame(0x1, 0x1, 1, &[0x82, 0x84, 0x86]));
    let sends: Vec<(&str, Vec<u8>)> = vec![
        ("nothing", Vec::new()),
        ("a lone P", b"P".to_vec()),
        (
            "the preface but its last byte",
            PREFACE[..PREFACE.len() - 1].to_vec(),
        ),
        ("an unfinished HEADERS block", unfinished_headers),
        (
            "half an HTTP/1 head",
            b"POST /charges HTTP/1.1\r\nhost: x\r\n".to_vec(),
        ),
    ];
    let mut waits = Vec::new();
    for (what, bytes) in sends {
        let mut s = TcpStream::connect(front.addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        waits.push(tokio::spawn(async move { closed(&mut s, what).await }));
    }
    still_healthy(&Client::new(front.addr), "while-waiting").await;
    for wait in waits {
        wait.await.unwrap();
    }
    assert_eq!(upstream.executions(), 1);
}

// R25: a keep-alive connection with no request in progress is closed after the idle
// timeout, HTTP/1.1 and HTTP/2 alike, while a request longer than it is not cut.
#[tokio::test]
async fn r25_idle_keep_alive_connections_are_closed() {
    let upstream = CountingUpstream::spawn().await;
    let front = front(MemoryStore::new(), &upstream, |c| {
        c.request_read_timeout = Duration::from_secs(600);
        c.connections.idle_timeout = Duration::from_millis(300);
    })
    .await;
    // A request in progress for longer than the idle timeout completes.
    let slow = Client::new(front.addr)
        .post("/charges?delay_ms=900", "slow-one", "{}")
        .await;
    assert_eq!(slow.status, 201, "{slow:?}");

    let mut s = TcpStream::connect(front.addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await, 200);
    closed(&mut s, "an idle HTTP/1.1 connection").await;

    let stream = TcpStream::connect(front.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let req = Request::get(format!("http://{}/b", front.addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    // The client keeps its handle, so only the server can end the connection.
    tokio::time::timeout(Duration::from_secs(30), driver)
        .await
        .expect("an idle HTTP/2 connection still open after 30 s")
        .unwrap()
        .ok();
    drop(send);
}

// R25: beyond --max-connections, a connection waits in the backlog until one closes:
// the third client's request is answered only after one of the two held connections
// was closed.
#[tokio::test]
async fn r25_connections_beyond_the_limit_wait_for_a_free_slot() {
    let upstream = CountingUpstream::spawn().await;
    let front = front(MemoryStore::new(), &upstream, |c| {
        c.request_read_timeout = Duration::from_secs(600);
        c.connections.max_connections = 2;
    })
    .await;
    let first = TcpStream::connect(front.addr).await.unwrap();
    let _second = TcpStream::connect(front.addr).await.unwrap();
    let released = Arc::new(AtomicBool::new(false));
    let third = {
        let released = released.clone();
        let addr = front.addr;
        tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(
                b"POST /charges HTTP/1.1\r\nhost: x\r\nauthorization: Bearer raw\r\nidempotency-key: third\r\ncontent-length: 2\r\n\r\n{}",
            )
            .await
            .unwrap();
            let status = read_status(&mut s).await;
            (status, released.load(Ordering::SeqCst))
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    released.store(true, Ordering::SeqCst);
    drop(first);
    let (status, after_release) = third.await.unwrap();
    assert_eq!(status, Some(201));
    assert!(after_release, "answered while both slots were held");
}

/// `idem serve ARGS` with at most `nofile` open file descriptors.
async fn serve_with_nofile(nofile: u32, args: &[&str]) -> Proc {
    let addr = common::free_addr();
    common::start(
        Command::new("sh")
            .args(["-c", &format!("ulimit -n {nofile} && exec \"$0\" \"$@\"")])
            .arg(common::BIN)
            .args(["serve", "--listen", &addr.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        addr,
        &[],
    )
    .await
}

// R25: out of file descriptors (a 64-descriptor limit, 150 connections that send
// nothing), the accept loop backs off and keeps going: every silent connection is
// accepted in turn and closed by the read timeout, and then requests are served.
#[tokio::test]
async fn r25_running_out_of_descriptors_recovers() {
    let upstream = CountingUpstream::spawn().await;
    let proc = serve_with_nofile(
        64,
        &[
            "--upstream",
            &format!("http://{}", upstream.addr()),
            "--store",
            "memory",
            "--request-read-timeout",
            "300ms",
        ],
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..150 {
        silent.push(TcpStream::connect(proc.addr).await.unwrap());
    }
    for (i, s) in silent.iter_mut().enumerate() {
        closed(s, &format!("silent connection {i}")).await;
    }
    still_healthy(&Client::new(proc.addr), "after-the-flood").await;
}

// R25: a header block over --max-header-bytes is 431 and never forwarded; under it,
// the request is served. HTTP/1.1 at the 64 KiB default, HTTP/2 at 8 KiB.
#[tokio::test]
async fn r25_header_block_over_the_limit_is_431() {
    let upstream = CountingUpstream::spawn().await;
    let wide = front(MemoryStore::new(), &upstream, |_| {}).await;
    let head = |pad: usize, key: &str| {
        format!(
            "POST /charges HTTP/1.1\r\nhost: x\r\nauthorization: Bearer raw\r\nidempotency-key: {key}\r\nx-pad: {}\r\ncontent-length: 2\r\n\r\n{{}}",
            "a".repeat(pad)
        )
    };
    let mut s = TcpStream::connect(wide.addr).await.unwrap();
    // The proxy may answer and close while this is still being written.
    let _ = s.write_all(head(100 * 1024, "big").as_bytes()).await;
    let status = read_status(&mut s).await;
    assert!(
        matches!(status, None | Some(431)),
        "expected 431 or a close, got {status:?}"
    );
    let mut s = TcpStream::connect(wide.addr).await.unwrap();
    s.write_all(head(32 * 1024, "fits").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_status(&mut s).await, Some(201));
    assert_eq!(upstream.executions_with_key("big"), 0);
    assert_eq!(upstream.executions_with_key("fits"), 1);

    let small = front(MemoryStore::new(), &upstream, |c| {
        c.connections.max_header_bytes = 8 * 1024;
    })
    .await;
    let stream = TcpStream::connect(small.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://{}/charges", small.addr))
        .header("idempotency-key", "big-h2")
        .header("x-pad", "a".repeat(12 * 1024))
        .body(Empty::<Bytes>::new())
        .unwrap();
    // One HEADERS frame over the limit: the stream gets a 431 of its own.
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 431);
    assert_eq!(upstream.executions_with_key("big-h2"), 0);
    still_healthy(&Client::new(small.addr), "big-h2").await;
}

// R25: a body framed by a transfer coding idem cannot read (`gzip, chunked`: hyper
// undoes the chunks only) is refused with a 400 problem, never fingerprinted or
// forwarded; the key stays free.
#[tokio::test]
async fn r25_transfer_codings_other_than_chunked_are_refused() {
    let upstream = CountingUpstream::spawn().await;
    let front = front(MemoryStore::new(), &upstream, |_| {}).await;
    for (i, coding) in ["gzip, chunked", "chunked, chunked"].iter().enumerate() {
        let key = format!("coded-{i}");
        let mut s = TcpStream::connect(front.addr).await.unwrap();
        s.write_all(
            format!(
                "POST /charges HTTP/1.1\r\nhost: x\r\nauthorization: Bearer raw\r\nidempotency-key: {key}\r\ntransfer-encoding: {coding}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 400"), "{coding}: {text}");
        assert!(
            text.contains(&ProblemKind::BadRequestBody.type_uri()),
            "{coding}: {text}"
        );
        assert_eq!(upstream.executions_with_key(&key), 0, "{coding}");
        still_healthy(&Client::new(front.addr), &key).await;
    }
}
