//! Rules only the proxy has: upstream failures (R12), store failures (R15), graceful
//! shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use idem::core::ProblemKind;
use idem::core::policy::{Policy, StoreFailure};
use idem::core::store::{MemoryStore, MemoryStoreConfig};
use idem_proxy::config::ProxyConfig;
use idem_testkit::{Client, CountingUpstream};

use idem::Store;
use idem::core::store::testkit::Fixture;

use crate::{start_proxy, start_with};

/// A loopback port with nothing listening on it.
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// R12: refused → 502, and the key is released, so a retry is a new attempt, not 409.
async fn upstream_refused<St: Store>(store: St) {
    let upstream = closed_port().await;
    let front = start_with(
        store,
        ProxyConfig::new(format!("http://{upstream}").parse().unwrap()),
    )
    .await;
    let client = Client::new(front.addr);
    let first = client.post("/charges", "down", "{}").await;
    assert_eq!(first.status, 502);
    assert_eq!(
        first.problem_type(),
        ProblemKind::UpstreamUnavailable.type_uri()
    );
    let retry = client.post("/charges", "down", "{}").await;
    assert_eq!(retry.status, 502, "released, so not 409: {retry:?}");
}

/// R12: too slow → 504, and the key is released.
async fn upstream_timeout<St: Store>(store: St) {
    let upstream = CountingUpstream::spawn().await;
    let mut config = ProxyConfig::new(format!("http://{}", upstream.addr()).parse().unwrap());
    config.upstream_timeout = Duration::from_millis(200);
    let front = start_with(store, config).await;
    let client = Client::new(front.addr);
    let slow = client.post("/charges?delay_ms=1000", "slow", "{}").await;
    assert_eq!(slow.status, 504);
    assert_eq!(slow.problem_type(), ProblemKind::UpstreamTimeout.type_uri());
    let retry = client.post("/charges?delay_ms=1000", "slow", "{}").await;
    assert_eq!(
        retry.status, 504,
        "released, so a retry runs again rather than 409"
    );
}

// R12
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r12_upstream_refused_is_502_and_released_memory() {
    let store = MemoryStore::new();
    upstream_refused(store.clone()).await;
    assert!(store.is_empty());
}

// R12
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r12_upstream_refused_is_502_and_released_redb() {
    let fx = idem_testkit::redb::fixture();
    upstream_refused(fx.store().clone()).await;
    assert_eq!(fx.store().len().await.unwrap(), 0);
}

// R12
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r12_upstream_timeout_is_504_and_released_memory() {
    let store = MemoryStore::new();
    upstream_timeout(store.clone()).await;
    assert!(store.is_empty());
}

// R12
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r12_upstream_timeout_is_504_and_released_redb() {
    let fx = idem_testkit::redb::fixture();
    upstream_timeout(fx.store().clone()).await;
    assert_eq!(fx.store().len().await.unwrap(), 0);
}

// R12: a sidecar may start before its upstream; once the upstream is up, requests work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r12_upstream_that_starts_later() {
    let addr = closed_port().await;
    let front = start_with(
        MemoryStore::new(),
        ProxyConfig::new(format!("http://{addr}").parse().unwrap()),
    )
    .await;
    let client = Client::new(front.addr);
    assert_eq!(client.post("/charges", "later", "{}").await.status, 502);
    let upstream = CountingUpstream::spawn_on(addr).await;
    let ok = client.post("/charges", "later", "{}").await;
    assert_eq!(ok.status, 201);
    assert_eq!(upstream.executions(), 1);
}

// R15: a store that refuses (here: full) fails closed with 503 and Retry-After, and the
// upstream is not called; requests that need no record are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_store_failure_fails_closed() {
    let upstream = CountingUpstream::spawn().await;
    let store = MemoryStore::with_config(MemoryStoreConfig {
        capacity: 1,
        ..MemoryStoreConfig::default()
    });
    let front = start_proxy(store, &upstream, Policy::default()).await;
    let client = Client::new(front.addr);
    assert_eq!(client.post("/charges", "one", "{}").await.status, 201);
    let refused = client.post("/charges", "two", "{}").await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.problem_type(),
        ProblemKind::StoreUnavailable.type_uri()
    );
    assert!(refused.header("retry-after").is_some());
    assert_eq!(upstream.executions(), 1);
    let unkeyed = client
        .send(http::Method::POST, "/charges", &[], b"{}")
        .await;
    assert_eq!(unkeyed.status, 201);
}

// R15: fail-open forwards unprotected instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_fail_open_forwards() {
    let upstream = CountingUpstream::spawn().await;
    let store = MemoryStore::with_config(MemoryStoreConfig {
        capacity: 1,
        ..MemoryStoreConfig::default()
    });
    let policy = Policy::builder()
        .store_failure(StoreFailure::FailOpen)
        .build()
        .unwrap();
    let front = start_proxy(store, &upstream, policy).await;
    let client = Client::new(front.addr);
    assert_eq!(client.post("/charges", "one", "{}").await.status, 201);
    let open = client.post("/charges", "two", "{}").await;
    assert_eq!(open.status, 201);
    assert!(!open.replayed());
    assert_eq!(upstream.executions(), 2);
}

// R6, R16: shutdown lets an open request finish and record its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_open_requests() {
    let upstream = CountingUpstream::spawn().await;
    let store = MemoryStore::new();
    let front = start_proxy(store.clone(), &upstream, Policy::default()).await;
    let client = Client::new(front.addr);
    let open =
        tokio::spawn(async move { client.post("/charges?delay_ms=500", "closing", "{}").await });
    while upstream.executions() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(front);
    let resp = open.await.unwrap();
    assert_eq!(resp.status, 201);
    // The record completed: another proxy on the same store replays it.
    let front = start_proxy(store, &upstream, Policy::default()).await;
    let retry = Client::new(front.addr)
        .post("/charges?delay_ms=500", "closing", "{}")
        .await;
    assert!(retry.replayed());
    assert_eq!(retry.body, resp.body);
    assert_eq!(upstream.executions(), 1);
}
