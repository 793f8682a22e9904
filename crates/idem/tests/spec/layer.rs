//! The layer builder and per-route layers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use http::{Method, StatusCode};
use idem::IdempotencyLayer;
use idem::core::fingerprint::FingerprintMode;
use idem::core::policy::OnConcurrent;
use idem::core::record::{Record, RecordId, Snapshot};
use idem::core::store::{
    Claim, ClaimRequest, Finish, Lease, ListFilter, ListPage, MemoryStore, Store, StoreError, Watch,
};
use idem_testkit::Client;

use super::serve;

#[test]
fn builder_sets_every_setting() {
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .ttl(Duration::from_secs(3600))
        .lease(Duration::from_secs(10))
        .require_key(true)
        .methods([Method::POST])
        .on_concurrent(OnConcurrent::Wait {
            timeout: Duration::from_secs(5),
        })
        .fingerprint(FingerprintMode::Json)
        .build()
        .unwrap();
    let p = layer.policy();
    assert_eq!(p.ttl(), Duration::from_secs(3600));
    assert_eq!(p.lease(), Duration::from_secs(10));
    assert!(p.require_key());
    assert_eq!(p.methods(), &[Method::POST]);
    assert_eq!(
        p.on_concurrent(),
        OnConcurrent::Wait {
            timeout: Duration::from_secs(5)
        }
    );
    assert_eq!(p.fingerprint(), FingerprintMode::Json);
}

#[test]
fn builder_refuses_invalid_values_without_panicking() {
    let b = || IdempotencyLayer::builder(MemoryStore::new());
    assert!(b().ttl(Duration::ZERO).build().is_err());
    assert!(b().lease(Duration::ZERO).build().is_err());
    assert!(b().methods([]).build().is_err());
    assert!(
        b().on_concurrent(OnConcurrent::Wait {
            timeout: Duration::ZERO
        })
        .build()
        .is_err()
    );
    assert!(b().mismatch_status(StatusCode::OK).build().is_err());
}

// Every setting of the policy is a method of the layer builder, and a policy made
// elsewhere is taken whole.
#[test]
fn builder_covers_the_whole_policy() {
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .max_key_len(16)
        .streaming_types(["application/x-ndjson".to_owned()])
        .problem_base("https://api.example.com/errors")
        .completion_attempts(5)
        .build()
        .unwrap();
    let p = layer.policy();
    assert_eq!(p.max_key_len(), 16);
    assert_eq!(p.streaming_types(), ["application/x-ndjson"]);
    assert_eq!(p.completion_attempts(), 5);
    assert_eq!(
        p.problem_base().map(|b| &**b),
        Some("https://api.example.com/errors")
    );
    // Untouched settings keep their defaults.
    assert_eq!(p.ttl(), Duration::from_secs(24 * 3600));

    let from = IdempotencyLayer::builder(MemoryStore::new())
        .policy(p.clone())
        .require_key(true)
        .build()
        .unwrap();
    assert_eq!(from.policy().max_key_len(), 16);
    assert!(from.policy().require_key());
    assert!(
        IdempotencyLayer::builder(MemoryStore::new())
            .completion_attempts(0)
            .build()
            .is_err()
    );
}

// R3: a route can require a key while another one, sharing the store, does not.
#[tokio::test]
async fn r03_per_route_layers_share_one_store() {
    let store = MemoryStore::new();
    let runs = Arc::new(AtomicU64::new(0));
    let counter = |runs: Arc<AtomicU64>| {
        move || {
            let runs = runs.clone();
            async move { format!("run {}", runs.fetch_add(1, Ordering::SeqCst) + 1) }
        }
    };
    let payments = Router::new()
        .route("/payments", post(counter(runs.clone())))
        .route_layer(
            IdempotencyLayer::builder(store.clone())
                .require_key(true)
                .build()
                .unwrap(),
        );
    let notes = Router::new()
        .route("/notes", post(counter(runs.clone())))
        .route_layer(IdempotencyLayer::new(store));
    let front = serve(payments.merge(notes)).await;
    let client = Client::new(front.addr);

    // /payments requires a key, /notes does not.
    let missing = client.send(Method::POST, "/payments", &[], b"{}").await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    let unkeyed = client.send(Method::POST, "/notes", &[], b"{}").await;
    assert_eq!(unkeyed.status, StatusCode::OK);

    // Both routes replay (R8).
    let first = client.post("/payments", "p-1", "{}").await;
    let again = client.post("/payments", "p-1", "{}").await;
    assert!(again.replayed());
    assert_eq!(first.body, again.body);
    let note = client.post("/notes", "n-1", "{}").await;
    assert!(client.post("/notes", "n-1", "{}").await.replayed());
    assert_eq!(note.status, StatusCode::OK);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

// R7, R12: a service that panics answers 500 only after its key is released, so the
// client's immediate retry runs the operation again instead of meeting a 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r07_panicking_handler_releases_before_answering() {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let app = Router::new()
        .route(
            "/charges",
            post(move || {
                let counter = counter.clone();
                async move {
                    if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                        panic!("injected failure in the handler");
                    }
                    (StatusCode::CREATED, "charged")
                }
            }),
        )
        .layer(IdempotencyLayer::new(SlowRelease(MemoryStore::new())));
    let front = serve(app).await;
    let client = Client::new(front.addr);
    let failed = client.post("/charges", "boom", "{}").await;
    assert_eq!(failed.status, 500);
    let retry = client.post("/charges", "boom", "{}").await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert!(!retry.replayed());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// The memory store with a slow release, so a release that is not awaited before the
/// answer is still running when the client retries.
#[derive(Clone, Debug)]
struct SlowRelease(MemoryStore);

impl Store for SlowRelease {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        self.0.claim(req).await
    }
    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<Finish, StoreError> {
        self.0.renew(lease, lease_for).await
    }
    async fn complete(
        &self,
        lease: &Lease,
        snapshot: &Snapshot,
        ttl: Duration,
    ) -> Result<Finish, StoreError> {
        self.0.complete(lease, snapshot, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<Finish, StoreError> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.0.release(lease).await
    }
    async fn lookup(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        self.0.lookup(id).await
    }
    async fn list(&self, filter: &ListFilter) -> Result<ListPage, StoreError> {
        self.0.list(filter).await
    }
    async fn delete(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        self.0.delete(id).await
    }
    fn watch(&self, id: &RecordId) -> Watch {
        self.0.watch(id)
    }
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.0.purge_expired().await
    }
}

// R17 and CORS through the library: the layer builder takes the proxy's settings, so a
// Rust service answers in its own error shape, readable by the browser origins it allows.
#[tokio::test]
async fn r17_the_layer_answers_in_the_configured_shape_with_cors() {
    use idem::core::cors::CorsOrigins;
    use idem::core::problem::ProblemTemplates;

    let upstream = idem_testkit::CountingUpstream::spawn().await;
    let templates = ProblemTemplates::parse(
        r#"{"*": {"content_type": "application/json",
                  "body": {"error": {"code": "{code}", "message": "{detail}",
                                     "status": "{status}"}}}}"#,
    )
    .unwrap();
    let layer = IdempotencyLayer::builder(MemoryStore::new())
        .problem_templates(templates)
        .cors_origins("https://app.example.com".parse::<CorsOrigins>().unwrap())
        .build()
        .unwrap();
    let front = serve(upstream.router().layer(layer)).await;
    let client = Client::new(front.addr);
    let from = |origin: &'static str, body: &'static str| {
        let client = client.clone();
        async move {
            client
                .send(
                    Method::POST,
                    "/charges",
                    &[("idempotency-key", "lib-1"), ("origin", origin)],
                    body.as_bytes(),
                )
                .await
        }
    };

    let first = from("https://app.example.com", "{\"amount\":1}").await;
    assert_eq!(first.status, StatusCode::CREATED);
    // The API's own response is left as the API made it.
    assert_eq!(first.header("access-control-allow-origin"), None);

    let replay = from("https://app.example.com", "{\"amount\":1}").await;
    assert!(replay.replayed());
    assert_eq!(
        replay.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        replay.header("access-control-expose-headers"),
        Some("Idempotent-Replayed, Retry-After")
    );

    let mismatch = from("https://app.example.com", "{\"amount\":2}").await;
    assert_eq!(mismatch.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(mismatch.header("content-type"), Some("application/json"));
    assert_eq!(mismatch.header("vary"), Some("Origin"));
    let error = &mismatch.json()["error"];
    assert_eq!(error["code"], "payload-mismatch");
    assert_eq!(error["status"], 422);
    assert!(error["message"].is_string());

    // Another origin is not allowed to read it.
    let other = from("https://evil.example", "{\"amount\":2}").await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.header("access-control-allow-origin"), None);
    assert_eq!(other.header("vary"), Some("Origin"));
    assert_eq!(upstream.executions(), 1);
}
