//! Runs the checkout service and its bank on loopback, with PostgreSQL from
//! `$PAYMENTS_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`, schema
//! `payments`). `cargo run -p payments`, then POST /checkout with an Idempotency-Key.

use std::net::SocketAddr;

use idem::postgres::{PostgresStore, PostgresStoreConfig};
use payments::{Bank, Payments};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("payments: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run() -> Result<(), String> {
    let url = std::env::var("PAYMENTS_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let listen: SocketAddr = std::env::var("PAYMENTS_LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:3000".to_owned())
        .parse()
        .map_err(|e| format!("PAYMENTS_LISTEN: {e}"))?;
    let config = PostgresStoreConfig {
        schema: "payments".to_owned(),
        ..PostgresStoreConfig::default()
    };
    let store = PostgresStore::connect(&url, config)
        .await
        .map_err(|e| format!("cannot reach PostgreSQL at {url}: {e}"))?;

    let bank_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let bank_addr = bank_listener.local_addr().map_err(|e| e.to_string())?;
    let bank = Bank::default().router().map_err(|e| e.to_string())?;
    tokio::spawn(async move { axum::serve(bank_listener, bank).await });

    let payments = Payments::new(store.pool().clone(), "payments", bank_addr);
    payments.migrate().await.map_err(|e| format!("{e:?}"))?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    println!("checkout on http://{listen} (bank on http://{bank_addr})");
    println!(
        "  curl -i -X POST http://{listen}/checkout -H 'Idempotency-Key: order-1' -H 'Authorization: Bearer customer-1'"
    );
    let app = payments.router(store).map_err(|e| e.to_string())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())
}
