//! The `IdempotencyContext` extractor.

use axum::Router;
use axum::routing::post;
use http::{Method, StatusCode};
use idem::store::MemoryStore;
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
