//! The `IdempotencyContext` extractor.

use axum::Router;
use axum::routing::post;
use http::{Method, StatusCode};
use idem::core::store::MemoryStore;
use idem::{IdempotencyContext, IdempotencyLayer};
use idem_testkit::Client;

use super::serve;

async fn describe(ctx: IdempotencyContext) -> String {
    match ctx.handle() {
        Some(h) => format!(
            "protected key={} scope={} derived={}",
            ctx.key().unwrap().as_str(),
            ctx.scope().is_some(),
            h.derived_key("charge")
        ),
        None => format!("unprotected key={:?}", ctx.key().map(|k| k.as_str())),
    }
}

// R6: a protected request's handler sees its key, scope and handle.
#[tokio::test]
async fn r06_handler_sees_its_key_and_handle() {
    let app = Router::new()
        .route("/orders", post(describe).put(describe))
        .layer(IdempotencyLayer::new(MemoryStore::new()));
    let front = serve(app).await;
    let client = Client::new(front.addr);

    let r = client.post("/orders", "order-7", "{}").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        "protected key=order-7 scope=true derived=order-7:charge"
    );

    // R2, R3: uncovered method or no key: a context without handle.
    let r = client
        .send(Method::PUT, "/orders", &[("idempotency-key", "k")], b"")
        .await;
    assert_eq!(r.body, "unprotected key=None");
    let r = client.send(Method::POST, "/orders", &[], b"").await;
    assert_eq!(r.body, "unprotected key=None");
}

#[tokio::test]
async fn extractor_without_layer_is_500() {
    let front = serve(Router::new().route("/orders", post(describe))).await;
    let r = Client::new(front.addr).post("/orders", "k", "{}").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
}

// R20, R21: the context that names the layer's store carries that store (what a handler
// completes and keeps recovery points through); one naming another store is a wiring
// mistake, answered 500 and named.
#[tokio::test]
async fn the_context_naming_the_store_carries_it() {
    async fn typed(ctx: IdempotencyContext<MemoryStore>) -> String {
        let handle = ctx.handle().expect("protected");
        format!("{} {:?}", handle.key().as_str(), handle.store().len())
    }
    async fn other(_ctx: IdempotencyContext<idem::AnyStore>) -> &'static str {
        "unreachable"
    }
    let store = MemoryStore::new();
    let app = Router::new()
        .route("/typed", post(typed))
        .route("/other", post(other))
        .layer(IdempotencyLayer::new(store));
    let front = serve(app).await;
    let client = Client::new(front.addr);

    // The handler's store is the layer's: it holds this request's in-flight record.
    let r = client.post("/typed", "k1", "{}").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "k1 1");
    let r = client.post("/other", "k2", "{}").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        String::from_utf8_lossy(&r.body).contains("AnyStore"),
        "{r:?}"
    );
}
