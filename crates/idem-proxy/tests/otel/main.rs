//! OpenTelemetry (feature `otel`): a running `idem serve` exports its request spans over
//! OTLP/HTTP to a collector, and flushes them on shutdown.

#![cfg(feature = "otel")]

#[path = "../common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use idem_testkit::{Client, CountingUpstream};

type Exports = Arc<Mutex<Vec<(String, Bytes)>>>;

/// A collector that keeps every POST to /v1/traces: its content type and body.
async fn collector() -> (std::net::SocketAddr, Exports) {
    let seen: Exports = Arc::default();
    let keep = seen.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let keep = keep.clone();
            async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                keep.lock().unwrap().push((ct, body));
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_the_collector_by_shutdown() {
    let upstream = CountingUpstream::spawn().await;
    let (collector, seen) = collector().await;
    let addr = common::free_addr();
    let proc = common::start(
        Command::new(common::BIN)
            .args(["serve", "--store", "memory", "--listen", &addr.to_string()])
            .args(["--upstream", &format!("http://{}", upstream.addr())])
            .args(["--otlp-endpoint", &format!("http://{collector}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        addr,
        &[],
    )
    .await;
    let client = Client::new(addr);
    assert_eq!(client.post("/charges", "k-otel-1", "{}").await.status, 201);
    assert!(client.post("/charges", "k-otel-1", "{}").await.replayed());

    // SIGTERM: a graceful stop, which flushes the spans still batched.
    proc.terminate();

    let exports = seen.lock().unwrap().clone();
    assert!(!exports.is_empty(), "no export reached the collector");
    let all: Vec<u8> = exports.iter().flat_map(|(_, b)| b.to_vec()).collect();
    for (ct, _) in &exports {
        assert_eq!(ct, "application/x-protobuf");
    }
    let has = |needle: &str| all.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has("idem.request"), "the span name is exported");
    assert!(has("k-otel-1"), "the key attribute is exported");
    assert!(has("idem.outcome") && has("executed") && has("replayed"));
}
