//! A service with idempotency keys on its own routes, over PostgreSQL or Redis.

use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use idem::postgres::{PostgresStore, PostgresStoreConfig};
use idem::redis::{RedisStore, RedisStoreConfig};
use idem::{IdempotencyContext, IdempotencyLayer, Store};
use serde_json::{Value, json};

/// `POST /charges`: a key is required.
async fn create_charge(
    ctx: IdempotencyContext,
    Json(charge): Json<Value>,
) -> (StatusCode, Json<Value>) {
    // A call to another service carries a key derived from the request's (R20).
    let bank_key = ctx.handle().map(|h| h.derived_key("bank"));
    let answer = json!({ "amount": charge["amount"], "bank_key": bank_key });
    (StatusCode::CREATED, Json(answer))
}

/// `POST /notes`: protected when the client sends a key.
async fn create_note(Json(note): Json<Value>) -> (StatusCode, Json<Value>) {
    (StatusCode::CREATED, Json(note))
}

async fn serve<St: Store>(store: St, listen: &str) -> Result<(), Box<dyn std::error::Error>> {
    // One layer per group of routes, over the same store, each with its own settings.
    let charges = IdempotencyLayer::builder(store.clone())
        .ttl(Duration::from_secs(24 * 3600))
        .require_key(true)
        .build()?;
    let notes = IdempotencyLayer::new(store);
    // `route_layer` takes the layer by value: keep its task tracker for the shutdown.
    let tasks = [charges.tasks().clone(), notes.tasks().clone()];
    let app = Router::new()
        .route("/charges", post(create_charge))
        .route_layer(charges)
        .merge(
            Router::new()
                .route("/notes", post(create_note))
                .route_layer(notes),
        );

    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // A request whose client went away still runs to the end, in a task of its own
    // (R6): wait for those, so that each records its result.
    for tasks in tasks {
        tasks.close();
        tasks.wait().await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    if let Ok(url) = std::env::var("REDIS_URL") {
        let store = RedisStore::connect(&url, RedisStoreConfig::default()).await?;
        return serve(store, &listen).await;
    }
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let store = PostgresStore::connect(&url, PostgresStoreConfig::default()).await?;
    serve(store, &listen).await
}
