//! Hostile clients against `idem serve`, in-process, over real sockets: oversize keys
//! and header blocks, huge bodies, slow clients, a flood of keys, and tenants probing
//! each other's records. The proxy must refuse cleanly, stay healthy, and never leave a
//! key claimed or a record readable by the wrong tenant. `view` holds the requests that
//! try to show the rules another request than the upstream runs (R24); `connections`
//! and `framing` what a client or an upstream can make idem hold (R25);
//! `damaged_store` a store file damaged or replaced under the `idem` binary; `scope`
//! callers without credentials and what logs and stores learn of a credential (R4).

mod admin;
#[path = "../common/mod.rs"]
mod common;
mod connections;
mod damaged_store;
mod framing;
mod scope;
mod view;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use idem::core::ProblemKind;
use idem::core::clock::ManualClock;
use idem::core::policy::{OnConcurrent, Policy};
use idem::core::scope::ScopeSource;
use idem::core::store::{MemoryStore, MemoryStoreConfig, Store};
use idem_proxy::config::ProxyConfig;
use idem_testkit::{Client, CountingUpstream, Front, Resp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A proxy over `store` in front of `upstream`, `edit` applied to its config.
async fn front<St: Store>(
    store: St,
    upstream: &CountingUpstream,
    edit: impl FnOnce(&mut ProxyConfig),
) -> Front {
    let mut config = ProxyConfig::new(format!("http://{}", upstream.addr()).parse().unwrap());
    edit(&mut config);
    let running = idem_proxy::spawn("127.0.0.1:0".parse().unwrap(), store, config)
        .await
        .unwrap();
    Front::new(running.addr(), running)
}

/// The `Content-Length` a response or request head announces (0 without one); panics
/// on one that is not a number.
fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let l = l.to_ascii_lowercase();
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0)
}

/// A proxy over a memory store that gives a client 300 ms to send its request.
async fn impatient_front(upstream: &CountingUpstream) -> Front {
    front(MemoryStore::new(), upstream, |c| {
        c.request_read_timeout = Duration::from_millis(300);
    })
    .await
}

fn kind(resp: &Resp, kind: ProblemKind) {
    assert_eq!(resp.problem_type(), kind.type_uri(), "{resp:?}");
}

/// A response head read off a raw socket: the status, or `None` when the server
/// closed the connection (or reset it) without answering.
async fn read_status(stream: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]);
            let status = head.split(' ').nth(1).expect("a status line");
            return Some(status.parse().expect("a numeric status"));
        }
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk)).await {
            Err(_) => panic!("no answer and no close within 30 s: the client was never cut off"),
            Ok(Ok(0) | Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The proxy still serves a well-behaved client after the abuse.
async fn still_healthy(client: &Client, key: &str) {
    let resp = client.post("/charges", key, "{}").await;
    assert_eq!(resp.status, 201, "{resp:?}");
    assert!(!resp.replayed());
}

// R1: a key over the limit is a 400 problem and the upstream is not called; at the
// limit it works.
#[tokio::test]
async fn r01_oversize_key_is_400() {
    let upstream = CountingUpstream::spawn().await;
    let front = front(MemoryStore::new(), &upstream, |_| {}).await;
    let client = Client::new(front.addr);
    let long = "k".repeat(256);
    let resp = client.post("/charges", &long, "{}").await;
    assert_eq!(resp.status, 400);
    kind(&resp, ProblemKind::InvalidKey);
    let quoted = format!("\"{long}\"");
    let resp = client.post("/charges", &quoted, "{}").await;
    assert_eq!(resp.status, 400);
    kind(&resp, ProblemKind::InvalidKey);
    assert_eq!(upstream.executions(), 0);
    still_healthy(&client, &"k".repeat(255)).await;
    assert_eq!(upstream.executions(), 1);
}

// A header block beyond the server's limit is refused (431 or a closed connection),
// nothing reaches the upstream, and the proxy keeps serving.
#[tokio::test]
async fn oversize_header_block_is_refused() {
    let upstream = CountingUpstream::spawn().await;
    let front = front(MemoryStore::new(), &upstream, |_| {}).await;
    let mut s = TcpStream::connect(front.addr).await.unwrap();
    let mut req = b"POST /charges HTTP/1.1\r\nhost: x\r\nauthorization: Bearer raw\r\nidempotency-key: big-head\r\n".to_vec();
    for i in 0..2048 {
        req.extend_from_slice(format!("x-filler-{i}: {}\r\n", "a".repeat(512)).as_bytes());
    }
    req.extend_from_slice(b"content-length: 2\r\n\r\n{}");
    // The server may close while this is still being written.
    let _ = s.write_all(&req).await;
    let status = read_status(&mut s).await;
    assert!(
        matches!(status, None | Some(431)),
        "expected 431 or a close, got {status:?}"
    );
    assert_eq!(upstream.executions(), 0);
    // The key was never claimed.
    still_healthy(&Client::new(front.addr), "big-head").await;
}

// R13: a declared Content-Length over the limit is 413 before the body is sent or
// anything stored: the same key then runs as new.
#[tokio::test]
async fn r13_huge_declared_body_is_413() {
    let upstream = CountingUpstream::spawn().await;
    let front = front(MemoryStore::new(), &upstream, |_| {}).await;
    let mut s = TcpStream::connect(front.addr).await.unwrap();
    s.write_all(
        b"POST /charges HTTP/1.1\r\nhost: x\r\nauthorization: Bearer raw\r\nidempotency-key: huge\r\ncontent-length: 10737418240\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(read_status(&mut s).await, Some(413));
    assert_eq!(upstream.executions(), 0);
    still_healthy(&Client::new(front.addr), "huge").await;
}

// R13: a chunked body without Content-Length that grows past the limit is 413 too;
// the key was never claimed.
#[tokio::test]
async fn r13_endless_chunked_body_is_413() {
    let upstream = CountingUpstream::spawn().await;
    let store = MemoryStore::new();
    let front = front(store, &upstream, |c| {
        c.policy = Policy::builder()
            .max_request_body(64 * 1024)
            .build()
            .unwrap();
    })
    .await;
    let s = TcpStream::connect(front.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(
            b"POST /charges HTTP/1.1\r\nhost: x\r\nauthorization: Bearer raw\r\nidempotency-key: chunky\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await?;
        let chunk = format!("1000\r\n{}\r\n", "z".repeat(0x1000));
        // 64 MiB at most: far past the limit, but finite if the proxy never answers.
        for _ in 0..16 * 1024 {
            wr.write_all(chunk.as_bytes()).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let status = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            break head.split(' ').nth(1).map(str::to_owned);
        }
        match tokio::time::timeout(Duration::from_secs(30), rd.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => break None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no answer within 30 s"),
        }
    };
    assert_eq!(status.as_deref(), Some("413"));
    writer.abort();
    assert_eq!(upstream.executions(), 0);
    still_healthy(&Client::new(front.addr), "chunky").await;
}

// Slowloris, head: a client that sends its header block a byte at a time is cut off
// by the read timeout, while others are served.
#[tokio::test]
async fn slow_head_is_cut_off() {
    let upstream = CountingUpstream::spawn().await;
    let front = impatient_front(&upstream).await;
    let s = TcpStream::connect(front.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = b"POST /charges HTTP/1.1\r\nhost: x\r\nauthorization: Bearer raw\r\nidempotency-key: dribble\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\ncontent-length: 2\r\n\r\n{}";
    // 50 ms a byte: the whole head would take several seconds, far beyond the timeout.
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        for b in head {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (sent, head.len())
    });
    // Others are served while the slow client dribbles.
    still_healthy(&Client::new(front.addr), "polite").await;
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf))
        .await
        .expect("the slow client was cut off");
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "expected a close, got {closed:?}"
    );
    let (sent, total) = writer.await.unwrap();
    assert!(
        sent < total,
        "the whole head was accepted ({sent} of {total} bytes)"
    );
    assert_eq!(upstream.executions_with_key("dribble"), 0);
    // The key was never claimed.
    still_healthy(&Client::new(front.addr), "dribble").await;
}

/// Sends a protected request whose 1000-byte body trickles in a byte every 50 ms, and
/// answers the response head and body the proxy sends.
async fn trickle_body(addr: std::net::SocketAddr, key: &str) -> (String, Vec<u8>) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(
        format!(
            "POST /charges HTTP/1.1\r\nhost: x\r\nauthorization: Bearer raw\r\nidempotency-key: {key}\r\ncontent-length: 1000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..1000 {
            if wr.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let answer = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .expect("content-length")
                .trim()
                .parse()
                .unwrap();
            while buf.len() < end + 4 + len {
                let n = rd.read(&mut chunk).await.unwrap();
                assert!(n > 0, "body cut short");
                buf.extend_from_slice(&chunk[..n]);
            }
            break (head, buf[end + 4..end + 4 + len].to_vec());
        }
        let n = tokio::time::timeout(Duration::from_secs(30), rd.read(&mut chunk))
            .await
            .expect("an answer within 30 s")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
    };
    writer.abort();
    answer
}

/// The answer to a trickled body is a 408 `request-timeout` problem.
fn assert_408(head: &str, body: &[u8]) {
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{head}"
    );
    let doc: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(doc["type"], ProblemKind::RequestTimeout.type_uri());
    assert_eq!(doc["status"], 408);
}

// Slowloris, body: a client that sends its body a byte at a time gets a 408 problem;
// the key was never claimed, so the retry runs as new (no 409, no replay).
#[tokio::test]
async fn slow_body_is_408_and_key_stays_free() {
    let upstream = CountingUpstream::spawn().await;
    let front = impatient_front(&upstream).await;
    let (head, body) = trickle_body(front.addr, "slow-body").await;
    assert_408(&head, &body);
    assert_eq!(upstream.executions(), 0);
    still_healthy(&Client::new(front.addr), "slow-body").await;
    assert_eq!(upstream.executions(), 1);
}

// The same through the `idem` binary: `--request-read-timeout` on an embedded store.
#[tokio::test]
async fn request_read_timeout_flag() {
    let upstream = CountingUpstream::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().display());
    let proc = common::serve(&[
        "--upstream",
        &format!("http://{}", upstream.addr()),
        "--store",
        &store,
        "--request-read-timeout",
        "300ms",
    ])
    .await;
    let (head, body) = trickle_body(proc.addr, "slow-bin").await;
    assert_408(&head, &body);
    still_healthy(&Client::new(proc.addr), "slow-bin").await;
    assert_eq!(upstream.executions(), 1);
}

// A read timeout of zero would refuse every request: a one-line error, exit code 2.
#[test]
fn zero_read_timeout_is_refused() {
    let out = common::serve_command()
        .args(["--request-read-timeout", "0s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("idem: ") && stderr.contains("request-read-timeout"),
        "{stderr}"
    );
}

// R13, R14: one client sending ever new keys cannot grow the memory store past its
// capacity: beyond it, 503 problems with Retry-After, the upstream not called; once
// records expire, new keys are accepted again.
#[tokio::test]
async fn key_flood_is_bounded_by_memory_capacity() {
    let upstream = CountingUpstream::spawn().await;
    let clock = ManualClock::new();
    let store = MemoryStore::with_config(MemoryStoreConfig {
        capacity: 8,
        clock: Arc::new(clock.clone()),
        ..MemoryStoreConfig::default()
    });
    let ttl = Duration::from_secs(60);
    let front = front(store, &upstream, |c| {
        c.policy = Policy::builder().ttl(ttl).build().unwrap();
    })
    .await;
    let client = Client::new(front.addr);
    let mut full = 0;
    for i in 0..40 {
        let resp = client.post("/charges", &format!("flood-{i}"), "{}").await;
        match resp.status.as_u16() {
            201 => assert!(i < 8, "key {i} accepted past the capacity"),
            503 => {
                kind(&resp, ProblemKind::StoreUnavailable);
                assert!(resp.header("retry-after").is_some(), "{resp:?}");
                full += 1;
            }
            other => panic!("unexpected {other}: {resp:?}"),
        }
    }
    assert_eq!(full, 32);
    assert_eq!(upstream.executions(), 8);
    // The stored keys still replay.
    assert!(client.post("/charges", "flood-0", "{}").await.replayed());
    clock.advance(ttl + Duration::from_secs(1));
    still_healthy(&client, "after-expiry").await;
    assert_eq!(upstream.executions(), 9);
}

/// Sends `body` with `key` as tenant `who` (the header named `by`).
async fn as_tenant(
    client: &Client,
    by: &str,
    who: &str,
    path: &str,
    key: &str,
    body: &str,
) -> Resp {
    // Scoped by a tenant header, every tenant shows the same credential.
    let mut headers = vec![("idempotency-key", key), (by, who)];
    if by != "authorization" {
        headers.push(("authorization", "Bearer shared"));
    }
    client
        .send(Method::POST, path, &headers, body.as_bytes())
        .await
}

/// R4: whatever key tenant B sends, it never reads, replays, waits on or collides
/// with tenant A's record, in flight or completed, in `wait` mode, with requests
/// scoped by the header `by`.
async fn tenants_never_meet(by: &'static str) {
    let upstream = CountingUpstream::spawn().await;
    let policy = Policy::builder()
        .scope(ScopeSource::headers([by.parse().unwrap()]))
        .on_concurrent(OnConcurrent::Wait {
            timeout: Duration::from_secs(20),
        })
        .build()
        .unwrap();
    let front = front(MemoryStore::new(), &upstream, |c| c.policy = policy).await;
    let client = Client::new(front.addr);

    // A's request is in flight for a while.
    let slow = {
        let client = client.clone();
        tokio::spawn(async move {
            as_tenant(
                &client,
                by,
                "alice",
                "/charges?delay_ms=1500",
                "k-1",
                "pay-a",
            )
            .await
        })
    };
    while upstream.executions() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // B with the same key and the very same request, bare then quoted: its own record,
    // executed while A's is in flight: no 409, no waiting for A, no replay of A; the
    // quoted retry replays B's own. Another payload is a mismatch with B's record only.
    let b = as_tenant(&client, by, "bob", "/charges?delay_ms=1500", "k-1", "pay-a").await;
    assert_eq!(b.status, 201, "{b:?}");
    assert!(!b.replayed(), "{b:?}");
    let b_quoted = as_tenant(
        &client,
        by,
        "bob",
        "/charges?delay_ms=1500",
        "\"k-1\"",
        "pay-a",
    )
    .await;
    assert!(b_quoted.replayed(), "{b_quoted:?}");
    assert_eq!(b_quoted.body, b.body);
    let b_other = as_tenant(&client, by, "bob", "/charges?delay_ms=1500", "k-1", "pay-b").await;
    assert_eq!(b_other.status, 422, "B's own record, not A's: {b_other:?}");
    kind(&b_other, ProblemKind::PayloadMismatch);
    let a = slow.await.unwrap();
    assert_eq!(a.status, 201);
    assert_eq!(upstream.executions(), 2, "A once and B once");

    // Completed: B's retries replay B's response, A's replay A's.
    let b_again = as_tenant(&client, by, "bob", "/charges?delay_ms=1500", "k-1", "pay-a").await;
    let a_again = as_tenant(
        &client,
        by,
        "alice",
        "/charges?delay_ms=1500",
        "k-1",
        "pay-a",
    )
    .await;
    assert!(a_again.replayed() && b_again.replayed());
    assert_eq!(a_again.body, a.body);
    assert_eq!(b_again.body, b.body);
    assert_ne!(b.body, a.body);

    // A key only A used, with another payload: for B it is new (no 422), and A's
    // record is untouched.
    let a2 = as_tenant(&client, by, "alice", "/charges", "only-a", "x").await;
    let b2 = as_tenant(&client, by, "bob", "/charges", "only-a", "y").await;
    assert_eq!(b2.status, 201);
    assert!(!b2.replayed());
    assert_ne!(b2.body, a2.body);
    let a2_again = as_tenant(&client, by, "alice", "/charges", "only-a", "x").await;
    assert!(a2_again.replayed());
    assert_eq!(a2_again.body, a2.body);
    assert_eq!(upstream.executions(), 4);
}

// R4: scoped by Authorization (the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r04_tenants_never_meet_by_authorization() {
    tenants_never_meet("authorization").await;
}

// R4: scoped by a configured tenant header; the Authorization header then does not
// matter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r04_tenants_never_meet_by_tenant_header() {
    tenants_never_meet("x-tenant").await;
}
