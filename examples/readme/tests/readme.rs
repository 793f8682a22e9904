//! The README's library section, run: its snippet is this crate's `src/main.rs`, word
//! for word, and the binary serves the contract over PostgreSQL and over Redis (R3, R8,
//! R9), then shuts down gracefully on SIGINT.
//!
//! Needs PostgreSQL at `$IDEM_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and Redis at `$IDEM_TEST_REDIS_URL`
//! (default `redis://127.0.0.1:6379`); fails if either is unreachable.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{Method, StatusCode};
use idem_testkit::Client;

const README: &str = include_str!("../../../README.md");
const MAIN: &str = include_str!("../src/main.rs");
/// The line before the snippet's code fence in the README.
const MARKER: &str = "<!-- examples/readme/src/main.rs -->";

fn snippet() -> Option<&'static str> {
    let after = README.split_once(MARKER)?.1;
    let code = after.trim_start().strip_prefix("```rust\n")?;
    Some(&code[..code.find("\n```")? + 1])
}

#[test]
fn readme_library_snippet_is_this_crate() {
    assert!(
        snippet() == Some(MAIN),
        "README.md's library snippet (after `{MARKER}`) differs from examples/readme/src/main.rs; \
         paste this into the README:\n{MARKER}\n```rust\n{MAIN}```"
    );
}

/// The running example; killed if the test fails before it shuts it down.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(store_env: (&str, String)) -> (Running, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_readme"))
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .env(store_env.0, store_env.1)
        .env("LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the example");
    let stdout = child.stdout.take().expect("stdout");
    let running = Running(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the example's first line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the example did not start: {line:?}"))
        .parse()
        .unwrap();
    (running, addr)
}

fn fresh_key(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

async fn post(client: &Client, path: &str, key: Option<&str>, body: &str) -> idem_testkit::Resp {
    // A JSON body says so: without the header axum's `Json` answers 415 (and that
    // answer would be stored and replayed, R7, R8).
    let mut headers = vec![
        ("content-type", "application/json"),
        ("authorization", "Bearer readme-test"),
    ];
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    client
        .send(Method::POST, path, &headers, body.as_bytes())
        .await
}

async fn serves_the_contract(store_env: (&str, String)) {
    let (mut running, addr) = start(store_env);
    let client = Client::new(addr);
    let key = fresh_key("charge");

    // R3: the charges route requires a key; the notes route runs without one.
    let keyless = post(&client, "/charges", None, r#"{"amount":100}"#).await;
    assert_eq!(keyless.status, StatusCode::BAD_REQUEST, "{keyless:?}");
    let note = post(&client, "/notes", None, r#"{"text":"hi"}"#).await;
    assert_eq!(note.status, StatusCode::CREATED, "{note:?}");

    // R8: the retry replays the first answer, with the derived key (R20) in it.
    let first = post(&client, "/charges", Some(&key), r#"{"amount":100}"#).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    assert_eq!(first.json()["bank_key"], format!("{key}:bank"));
    assert!(!first.replayed());
    let retry = post(&client, "/charges", Some(&key), r#"{"amount":100}"#).await;
    assert!(retry.replayed(), "{retry:?}");
    assert_eq!(retry.body, first.body);

    // R9: the same key with another body.
    let other = post(&client, "/charges", Some(&key), r#"{"amount":999}"#).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY, "{other:?}");

    // Graceful shutdown on SIGINT: the example exits on its own, successfully.
    let pid = running.0.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(sent.success());
    let status = running.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

// R3, R8, R9 over PostgreSQL, as the README's snippet connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_example_serves_over_postgres() {
    let url = std::env::var("IDEM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    serves_the_contract(("DATABASE_URL", url)).await;
}

// R3, R8, R9 over Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_example_serves_over_redis() {
    let url = std::env::var("IDEM_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    serves_the_contract(("REDIS_URL", url)).await;
}
