//! Which answers are retried, with which key, and what the caller finally sees.

use std::time::Duration;

use idem::core::store::{MemoryStore, MemoryStoreConfig};
use idem_client::{Backoff, IdempotencyMiddleware, RetryReason};
use reqwest::{Method, StatusCode};
use reqwest_middleware::ClientBuilder;

use crate::upstream::{Scripted, Step};
use crate::{charge, client, http, quick, start_proxy, start_proxy_with};

fn fail(code: u16) -> Step {
    Step::Fail(code, None)
}

// R7, R8, R12: 503 and 500 from the API and a reset API connection (idem: 502) release
// the key; the client retries with the same key until the operation ran once, and a
// later retry with that key gets the stored answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r07_failures_are_retried_with_one_key_until_one_execution() {
    let upstream = Scripted::spawn([fail(503), fail(500), Step::Reset]).await;
    let proxy = start_proxy(upstream.addr()).await;
    let (client, retries) = client(quick(5));
    let url = format!("http://{}/charges", proxy.addr());

    let resp = client
        .post(&url)
        .body("{\"amount\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(!resp.headers().contains_key("idempotent-replayed"));
    let body = resp.bytes().await.unwrap();

    assert_eq!(upstream.attempts(), 4);
    assert_eq!(upstream.executions(), 1);
    let keys = upstream.keys();
    let key = keys[0].clone().expect("the first attempt carried a key");
    assert!(
        keys.iter().all(|k| k.as_deref() == Some(key.as_str())),
        "{keys:?}"
    );
    assert_eq!(uuid::Uuid::parse_str(&key).unwrap().get_version_num(), 7);

    let reasons: Vec<_> = retries.all().iter().map(|r| r.reason).collect();
    assert_eq!(
        reasons,
        [
            RetryReason::Status(StatusCode::SERVICE_UNAVAILABLE),
            RetryReason::Status(StatusCode::INTERNAL_SERVER_ERROR),
            RetryReason::Status(StatusCode::BAD_GATEWAY),
        ]
    );
    let attempts: Vec<_> = retries.all().iter().map(|r| r.attempt).collect();
    assert_eq!(attempts, [2, 3, 4]);
    assert!(retries.all().iter().all(|r| r.key == key.as_str()));

    // R8: the caller's own key is kept; the retry is a replay, the API is not called.
    let replay = client
        .post(&url)
        .header("idempotency-key", &key)
        .body("{\"amount\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.bytes().await.unwrap(), body);
    assert_eq!(upstream.attempts(), 4);
    assert_eq!(retries.all().len(), 3);
}

// R9: a key reused with another payload is 422, final: not retried, API not called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r09_payload_mismatch_is_not_retried() {
    let upstream = Scripted::spawn([]).await;
    let proxy = start_proxy(upstream.addr()).await;
    let (client, retries) = client(quick(5));
    let url = format!("http://{}/charges", proxy.addr());

    let first = client
        .post(&url)
        .header("idempotency-key", "order-42")
        .body("a")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let other = client
        .post(&url)
        .header("idempotency-key", "order-42")
        .body("b")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(upstream.keys(), [Some("order-42".to_owned())]);
    assert!(retries.all().is_empty());
}

// R7, R8: another 4xx from the API is an answer (stored by idem), not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r07_other_client_errors_are_not_retried() {
    let upstream = Scripted::spawn([fail(400)]).await;
    let proxy = start_proxy(upstream.addr()).await;
    let (client, retries) = client(quick(5));
    let resp = charge(&client, &proxy).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(upstream.attempts(), 1);
    assert!(retries.all().is_empty());
}

// R15 and RFC 9110 Retry-After: the server's delay is the wait, in delta-seconds and as
// an HTTP-date (one in the past: retry at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_retry_after_is_honoured() {
    let past = "Sun, 06 Nov 1994 08:49:37 GMT".to_owned();
    let upstream = Scripted::spawn([
        Step::Fail(503, Some("1".to_owned())),
        Step::Fail(503, Some(past)),
    ])
    .await;
    let proxy = start_proxy(upstream.addr()).await;
    let (client, retries) = client(quick(5));
    let resp = charge(&client, &proxy).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(upstream.attempts(), 3);
    assert_eq!(upstream.executions(), 1);
    let waits: Vec<_> = retries
        .all()
        .iter()
        .map(|r| (r.retry_after, r.delay))
        .collect();
    assert_eq!(
        waits,
        [
            (Some(Duration::from_secs(1)), Duration::from_secs(1)),
            (Some(Duration::ZERO), Duration::ZERO),
        ]
    );
}

// R15: idem's own 503 (its store refuses: here, full) is retried after idem's
// Retry-After; the API is never called for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_store_unavailable_is_retried_after_its_retry_after() {
    let upstream = Scripted::spawn([]).await;
    let store = MemoryStore::with_config(MemoryStoreConfig {
        capacity: 1,
        ..MemoryStoreConfig::default()
    });
    let proxy = start_proxy_with("127.0.0.1:0".parse().unwrap(), store, upstream.addr()).await;
    let url = format!("http://{}/charges", proxy.addr());
    let (client, retries) = client(Backoff::new(
        Duration::from_millis(5),
        Duration::from_secs(10),
        2,
    ));
    assert_eq!(
        client.post(&url).body("{}").send().await.unwrap().status(),
        201
    );
    let refused = client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let retries = retries.all();
    assert_eq!(retries.len(), 1);
    assert_eq!(
        retries[0].reason,
        RetryReason::Status(StatusCode::SERVICE_UNAVAILABLE)
    );
    let after = retries[0]
        .retry_after
        .expect("idem sends Retry-After with 503");
    assert!(after >= Duration::from_secs(1));
    assert_eq!(retries[0].delay, after);
    assert_eq!(upstream.attempts(), 1);
}

// When the attempts run out the caller gets the last answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_run_out_with_the_last_answer() {
    let upstream = Scripted::spawn([fail(503), fail(503), fail(504), fail(503)]).await;
    let proxy = start_proxy(upstream.addr()).await;
    let (client, retries) = client(quick(3));
    let resp = charge(&client, &proxy).await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(upstream.attempts(), 3);
    assert_eq!(upstream.executions(), 0);
    assert_eq!(retries.all().len(), 2);
}

// R2: other methods pass through untouched, no key and no retry, unless configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r02_uncovered_methods_pass_through_unless_configured() {
    let upstream = Scripted::spawn([fail(503), fail(503)]).await;
    let proxy = start_proxy(upstream.addr()).await;
    let url = format!("http://{}/charges", proxy.addr());
    let (plain, retries) = client(quick(5));
    let resp = plain.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.keys(), [None]);
    assert!(retries.all().is_empty());

    let with_put = ClientBuilder::new(http().build().unwrap())
        .with(
            IdempotencyMiddleware::builder()
                .methods([Method::PUT])
                .backoff(quick(5))
                .build(),
        )
        .build();
    let resp = with_put.put(&url).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let keys = upstream.keys();
    assert_eq!(keys.len(), 3);
    assert!(keys[1].is_some());
    assert_eq!(keys[1], keys[2]);
    // POST is no longer covered by that client.
    let resp = with_put.post(&url).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(upstream.keys()[3], None);
}

// A streamed body cannot be sent twice: it gets a key and one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_body_is_sent_once() {
    let upstream = Scripted::spawn([fail(503)]).await;
    let proxy = start_proxy(upstream.addr()).await;
    let (client, retries) = client(quick(5));
    let chunks = futures_util::stream::iter([
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"amount\":")),
        Ok(bytes::Bytes::from_static(b"1}")),
    ]);
    let resp = client
        .post(format!("http://{}/charges", proxy.addr()))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.attempts(), 1);
    assert!(upstream.keys()[0].is_some());
    assert!(retries.all().is_empty());
}
