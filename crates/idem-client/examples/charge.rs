//! Charges through an idem-protected API, with keys and retries from the middleware.
//!
//! Start idem in front of an API, for instance the demo's payments API (a 300 ms API;
//! idem serves until Ctrl-C):
//!
//! ```sh
//! cargo run -p idem-proxy -- demo --listen 127.0.0.1:8080
//! cargo run -p idem-client --example charge -- [URL [TIMEOUT_MS]]
//! ```
//!
//! URL defaults to `http://127.0.0.1:8080/charges`, the per-attempt timeout to 10 s; the
//! API credential is `$API_KEY` (default `sk_test_example`), sent as a bearer token: idem
//! keeps each caller's keys apart by it and refuses keyed requests without one. It
//! makes one charge with a key the middleware picks, then sends one charge twice with a
//! key of its own: the second answer is the first one replayed. With a timeout shorter
//! than the API (`-- http://127.0.0.1:8080/charges 100` against the demo) the first
//! attempt times out and is retried with the same key: idem answers 409 while the first
//! attempt still runs, then replays its answer, and the API charged once.

use std::process::ExitCode;
use std::time::Duration;

use idem_client::IdempotencyMiddleware;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080/charges".to_owned());
    let timeout = match args.next().map(|ms| ms.parse()) {
        None => Duration::from_secs(10),
        Some(Ok(ms)) => Duration::from_millis(ms),
        Some(Err(_)) => {
            eprintln!("charge: TIMEOUT_MS must be a number of milliseconds");
            return ExitCode::from(2);
        }
    };
    match run(&url, timeout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("charge: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str, timeout: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let middleware = IdempotencyMiddleware::builder()
        .on_retry(|r| {
            eprintln!(
                "  attempt {} in {:?} after {} (key {})",
                r.attempt,
                r.delay,
                r.reason,
                r.key_str()
            );
        })
        .build();
    // A per-attempt timeout: an attempt that takes longer is retried with the same key.
    let http = reqwest::Client::builder().timeout(timeout).build()?;
    let client = ClientBuilder::new(http).with(middleware).build();

    println!("POST {url}, key chosen by the middleware:");
    charge(&client, url, None).await?;

    let key = format!("example-{}", uuid::Uuid::now_v7());
    println!("POST {url} twice with Idempotency-Key: {key}");
    charge(&client, url, Some(&key)).await?;
    charge(&client, url, Some(&key)).await?;
    Ok(())
}

async fn charge(
    client: &ClientWithMiddleware,
    url: &str,
    key: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    let credential = std::env::var("API_KEY").unwrap_or_else(|_| "sk_test_example".to_owned());
    let mut req = client
        .post(url)
        .bearer_auth(credential)
        .header("content-type", "application/json")
        .body(r#"{"amount":4200}"#);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let replayed = resp.headers().contains_key("idempotent-replayed");
    let body = resp.text().await?;
    println!("  {status} replayed={replayed} {body}");
    Ok(())
}
