//! Concurrent duplicates, timeouts and broken connections between the client and idem.

use std::time::Duration;

use idem_client::{Backoff, IdempotencyMiddleware, RetryReason};
use reqwest::StatusCode;
use reqwest_middleware::ClientBuilder;
use tokio::net::{TcpListener, TcpStream};

use crate::upstream::{Scripted, Step};
use crate::{Retries, charge, client, free_addr, quick, start_proxy, start_proxy_on};

/// Polls `done` until it holds, failing the test after 30 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls with short waits (50 ms cap, idem's long Retry-After included), many attempts.
fn polling() -> Backoff {
    Backoff::new(Duration::from_millis(5), Duration::from_millis(50), 200)
}

// R10: a duplicate sent while the first is running gets 409 and is retried with the
// same key until it gets the first one's answer as a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r10_concurrent_duplicate_is_retried_until_replayed() {
    let upstream = Scripted::spawn([Step::Slow(Duration::from_millis(1500))]).await;
    let proxy = start_proxy(upstream.addr()).await;
    let url = format!("http://{}/charges", proxy.addr());
    let (first_client, _) = client(quick(1));
    let first = tokio::spawn({
        let url = url.clone();
        async move {
            let resp = first_client
                .post(url)
                .header("idempotency-key", "charge-7")
                .body("{}")
                .send()
                .await
                .unwrap();
            (resp.status(), resp.bytes().await.unwrap())
        }
    });
    until("the first request reached the API", || {
        upstream.attempts() == 1
    })
    .await;

    let (client, retries) = client(polling());
    let dup = client
        .post(&url)
        .header("idempotency-key", "charge-7")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (first_status, first_body) = first.await.unwrap();
    assert_eq!(first_status, StatusCode::CREATED);
    assert_eq!(dup.status(), StatusCode::CREATED);
    assert_eq!(dup.headers()["idempotent-replayed"], "true");
    assert_eq!(dup.bytes().await.unwrap(), first_body);
    assert_eq!(upstream.executions(), 1);
    assert_eq!(
        upstream.attempts(),
        1,
        "409s and the replay never reach the API"
    );
    let retries = retries.all();
    assert!(!retries.is_empty());
    assert!(
        retries
            .iter()
            .all(|r| r.reason == RetryReason::Status(StatusCode::CONFLICT)),
        "{retries:?}"
    );
    // idem's Retry-After (the lease left, up to 60 s) is read, and capped.
    assert!(retries[0].retry_after.is_some());
    assert!(retries.iter().all(|r| r.delay <= Duration::from_millis(50)));
}

// R6, R10: the client gives up waiting (timeout); the retry with the same key meets the
// first attempt still running (409), then its replay: one execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_retried_and_replayed() {
    let upstream = Scripted::spawn([Step::Slow(Duration::from_millis(1500))]).await;
    let proxy = start_proxy(upstream.addr()).await;
    let retries = Retries::default();
    let seen = retries.clone();
    let http = crate::http()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let client = ClientBuilder::new(http)
        .with(
            IdempotencyMiddleware::builder()
                .backoff(polling())
                .on_retry(move |r| seen.push(r))
                .build(),
        )
        .build();
    let resp = charge(&client, &proxy).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["idempotent-replayed"], "true");
    assert_eq!(upstream.executions(), 1);
    assert_eq!(retries.all()[0].reason, RetryReason::Timeout);
}

// Connection refused: idem is not listening yet; the client keeps trying, and once idem
// is up the operation runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_retried_until_idem_listens() {
    let upstream = Scripted::spawn([]).await;
    let addr = free_addr();
    let (client, retries) = client(polling());
    let call = tokio::spawn(async move {
        client
            .post(format!("http://{addr}/charges"))
            .body("{}")
            .send()
            .await
    });
    until("a refused attempt", || !retries.all().is_empty()).await;
    assert_eq!(retries.all()[0].reason, RetryReason::Connect);
    let _proxy = start_proxy_on(addr, upstream.addr()).await;
    let resp = call.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(upstream.executions(), 1);
    assert_eq!(upstream.attempts(), 1);
    let key = upstream.keys()[0].clone().unwrap();
    assert!(retries.all().iter().all(|r| r.key == key.as_str()));
}

// The connection to idem breaks after the request went out (a load balancer dropping it):
// retried with the same key, one execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_connection_is_retried() {
    let upstream = Scripted::spawn([]).await;
    let proxy = start_proxy(upstream.addr()).await;
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let target = proxy.addr();
    tokio::spawn(async move {
        // The first connection: read the request, then close without an answer.
        let (mut first, _) = relay.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = tokio::io::AsyncReadExt::read(&mut first, &mut buf).await;
        drop(first);
        // Every later one: relayed to idem.
        loop {
            let Ok((mut inbound, _)) = relay.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut outbound = TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    let (client, retries) = client(quick(5));
    let resp = client
        .post(format!("http://{relay_addr}/charges"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let reasons: Vec<_> = retries.all().iter().map(|r| r.reason).collect();
    assert_eq!(reasons, [RetryReason::Connection]);
    assert_eq!(upstream.executions(), 1);
    assert_eq!(upstream.attempts(), 1);
}
