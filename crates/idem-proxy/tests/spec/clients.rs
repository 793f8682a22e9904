//! What real API clients meet through the `idem` binary: errors in the API's own shape
//! (R17) and a short, honest `Retry-After` on a duplicate in progress (R10).

use std::process::Command;
use std::time::Duration;

use idem_testkit::{Client, CountingUpstream, Resp};

use crate::common::{BIN, serve, serve_command};

/// A Stripe-like error envelope for every kind, and its own for a mismatch.
const STRIPE_SHAPE: &str = r#"{
    "*": {
        "content_type": "application/json; charset=utf-8",
        "body": {"error": {"type": "idempotency_error", "code": "{code}",
                           "message": "{detail}", "status": "{status}",
                           "retry_after": "{retry_after}", "doc_url": "{type}"}}
    },
    "payload-mismatch": {
        "content_type": "application/json",
        "body": {"error": {"type": "invalid_request_error", "code": "{code}",
                           "message": "{detail}", "idempotency_key": "{key}"}}
    }
}"#;

/// Sends a 2-second `POST /charges` with `key` in the background, waits until the
/// upstream has started it (its executions reach `executions`), then sends it again:
/// answers the duplicate's 409 and, once done, the first request's answer.
async fn duplicate_in_flight(
    client: &Client,
    upstream: &CountingUpstream,
    key: &'static str,
    executions: u64,
) -> (Resp, Resp) {
    const SLOW: &str = "/charges?delay_ms=2000";
    let c = client.clone();
    let first = tokio::spawn(async move { c.post(SLOW, key, "{\"amount\":5}").await });
    while upstream.executions() < executions {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let duplicate = client.post(SLOW, key, "{\"amount\":5}").await;
    assert_eq!(duplicate.status, 409, "{duplicate:?}");
    assert_eq!(upstream.executions(), executions);
    (duplicate, first.await.unwrap())
}

/// `Retry-After` as a number of seconds.
fn retry_after(resp: &Resp) -> u64 {
    resp.header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric Retry-After: {:?}", resp.headers))
}

// R17: with a template file, a 409 and a 422 reach an HTTP client in the API's own error
// shape and content type, their status and Retry-After unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r17_problem_templates_shape_answers_of_the_binary() {
    let upstream = CountingUpstream::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("errors.json");
    std::fs::write(&file, STRIPE_SHAPE).unwrap();
    let up = format!("http://{}", upstream.addr());
    let admin = crate::common::free_addr().to_string();
    let proc = serve(&[
        "--upstream",
        &up,
        "--store",
        "memory",
        "--problem-template-file",
        file.to_str().unwrap(),
        "--admin-listen",
        &admin,
        "--admin-token",
        "admin-token-0123456789",
    ])
    .await;
    let client = Client::new(proc.addr);

    let (conflict, first) = duplicate_in_flight(&client, &upstream, "shape-1", 1).await;
    assert_eq!(
        conflict.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let doc = conflict.json();
    let error = &doc["error"];
    assert_eq!(error["type"], "idempotency_error");
    assert_eq!(error["code"], "in-flight");
    assert_eq!(error["status"], 409);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("still being processed")
    );
    assert_eq!(error["retry_after"], retry_after(&conflict));
    assert!(error["doc_url"].as_str().unwrap().ends_with("#in-flight"));
    assert_eq!(first.status, 201);

    let mismatch = client.post("/charges", "shape-1", "{\"amount\":6}").await;
    assert_eq!(mismatch.status, 422);
    assert_eq!(mismatch.header("content-type"), Some("application/json"));
    assert_eq!(
        mismatch.json(),
        serde_json::json!({"error": {
            "type": "invalid_request_error",
            "code": "payload-mismatch",
            "message": mismatch.json()["error"]["message"],
            "idempotency_key": "shape-1",
        }})
    );
    assert!(mismatch.json()["error"]["message"].is_string());
    assert_eq!(upstream.executions(), 1);

    // The admin API answers in the same shape.
    let admin: std::net::SocketAddr = admin.parse().unwrap();
    for tries in 0.. {
        if tokio::net::TcpStream::connect(admin).await.is_ok() {
            break;
        }
        assert!(tries < 1500, "no admin listener on {admin}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let admin = Client::new(admin)
        .anonymous()
        .send(http::Method::GET, "/admin/keys", &[], b"")
        .await;
    assert_eq!(admin.status, 401);
    assert_eq!(admin.json()["error"]["code"], "admin-unauthorized");
    assert_eq!(admin.json()["error"]["status"], 401);
}

// R17: a template that names an unknown value, or is not JSON, is refused at startup
// with one line and exit code 2.
#[test]
fn r17_a_bad_problem_template_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, says) in [
        (
            "unknown.json",
            r#"{"*": {"body": {"error": "{message}"}}}"#,
            "`{message}` names no value",
        ),
        ("broken.json", r#"{"*": {"body": "#, "not valid JSON"),
        (
            "kind.json",
            r#"{"in-progress": {"body": 1}}"#,
            "`in-progress` is not a problem slug",
        ),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let out = serve_command()
            .args(["--problem-template-file", file.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{name}: {stderr}");
        assert!(
            stderr.contains("--problem-template-file"),
            "{name}: {stderr}"
        );
        assert!(stderr.contains(says), "{name}: {stderr}");
    }
    let out = serve_command()
        .args(["--problem-template-file", "/nonexistent/errors.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    // `idem docs` shows the shape configured.
    let file = dir.path().join("stripe.json");
    std::fs::write(&file, STRIPE_SHAPE).unwrap();
    let out = Command::new(BIN)
        .args(["docs", "--problem-template-file", file.to_str().unwrap()])
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(md.contains("\"type\": \"invalid_request_error\""), "{md}");
    assert!(
        md.contains("`Content-Type: application/json; charset=utf-8`"),
        "{md}"
    );
}

// R10: the 409 while a 2-second request runs says 1 to 3 seconds, not the 60 s lease;
// once requests of the route have finished, about as long as they took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r10_retry_after_is_a_short_honest_hint() {
    let upstream = CountingUpstream::spawn().await;
    let up = format!("http://{}", upstream.addr());
    let proc = serve(&["--upstream", &up, "--store", "memory"]).await;
    let client = Client::new(proc.addr);

    // Nothing finished yet: the shortest hint.
    let (early, first) = duplicate_in_flight(&client, &upstream, "hint-1", 1).await;
    assert_eq!(early.json()["code"], "in-flight");
    let early = retry_after(&early);
    assert!((1..=3).contains(&early), "Retry-After {early}");
    assert_eq!(first.status, 201);

    // A 2-second request finished: the hint is at least its 2 seconds.
    let (learned, second) = duplicate_in_flight(&client, &upstream, "hint-2", 2).await;
    let learned = retry_after(&learned);
    assert!((2..=3).contains(&learned), "Retry-After {learned}");
    assert_eq!(second.status, 201);
    assert_eq!(upstream.executions(), 2);
}
