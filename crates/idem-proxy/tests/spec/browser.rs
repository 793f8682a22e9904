//! A browser client: headless Chromium runs a page whose `fetch()` calls an API through
//! `idem serve` on another origin, and reads idem's answers under CORS.
//!
//! Needs Chromium (`apt-get install -y chromium`; `scripts/test.sh` installs it when it
//! is missing, `IDEM_CHROMIUM` names another binary). Without it the test fails.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get, post};
use tokio::sync::mpsc;

use crate::common::serve;

/// Serves `app` on a free loopback port.
async fn spawn(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// An API that does CORS itself, as a browser-facing API does: it answers preflights and
/// lets the page's origin read its responses and their `X-Charge`.
fn api(executions: Arc<Mutex<u64>>) -> Router {
    fn cors(headers: &HeaderMap, mut resp: Response) -> Response {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let h = resp.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("X-Charge"),
            );
        }
        resp
    }
    async fn preflight(headers: HeaderMap) -> Response {
        let mut resp = cors(&headers, StatusCode::NO_CONTENT.into_response());
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, idempotency-key"),
        );
        resp
    }
    async fn charge(State(n): State<Arc<Mutex<u64>>>, headers: HeaderMap) -> Response {
        let n = {
            let mut n = n.lock().unwrap_or_else(PoisonError::into_inner);
            *n += 1;
            *n
        };
        let body = axum::Json(serde_json::json!({"charge": n}));
        let mut resp = (StatusCode::CREATED, body).into_response();
        resp.headers_mut().insert("x-charge", HeaderValue::from(n));
        cors(&headers, resp)
    }
    Router::new()
        .route("/charges", post(charge).options(preflight))
        .with_state(executions)
}

/// The page (idem's address in its query, `?idem=http://…`): two POSTs with one key (the second is a replay), then the key with another
/// body (422); what it could read goes to `/report`. The key is in Firefox's own form,
/// a quoted decimal number.
const PAGE: &str = r#"<!doctype html><title>idem</title><script>
const idem = new URLSearchParams(location.search).get("idem");
const post = (amount) => fetch(idem + "/charges", {
  method: "POST",
  headers: {"Authorization": "Bearer browser", "Content-Type": "application/json",
            "Idempotency-Key": '"1733390000123"'},
  body: JSON.stringify({amount}),
});
const seen = async (r) => ({
  status: r.status,
  replayed: r.headers.get("Idempotent-Replayed"),
  charge: r.headers.get("X-Charge"),
  type: r.headers.get("Content-Type"),
  body: await r.json(),
});
(async () => {
  const first = await seen(await post(1));
  const second = await seen(await post(1));
  const mismatch = await seen(await post(2));
  return {first, second, mismatch};
})().catch((e) => ({error: String(e)})).then((out) =>
  fetch("/report", {method: "POST", body: JSON.stringify(out)}));
</script>"#;

/// The page's server, on its own origin, and the reports it receives.
async fn page_server() -> (SocketAddr, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel(1);
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/report",
            any(
                |State(tx): State<mpsc::Sender<String>>, body: String| async move {
                    let _ = tx.send(body).await;
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(tx);
    (spawn(app).await, rx)
}

/// The Chromium binary: `IDEM_CHROMIUM`, else `chromium`.
fn chromium() -> String {
    std::env::var("IDEM_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned())
}

// R8, R9, R17 in a browser: with the page's origin allowed, `fetch()` reads a replay's
// `Idempotent-Replayed` (and the API's own exposed header) and a 422's problem document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_reads_replays_and_problems_under_cors() {
    let executions = Arc::new(Mutex::new(0));
    let api = spawn(api(executions.clone())).await;
    let (page, mut reports) = page_server().await;
    let origin = format!("http://{page}");
    let up = format!("http://{api}");
    let idem = serve(&[
        "--upstream",
        &up,
        "--store",
        "memory",
        "--cors-origins",
        &origin,
    ])
    .await;

    let profile = tempfile::tempdir().unwrap();
    let mut browser = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("{origin}/?idem=http://{}", idem.addr))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start Chromium (`{}`): {e}; install it with `apt-get install -y \
                 chromium` or name it in IDEM_CHROMIUM",
                chromium()
            )
        });
    let report = tokio::time::timeout(Duration::from_secs(60), reports.recv()).await;
    let _ = browser.kill();
    let out = browser.wait_with_output().unwrap();
    let Ok(Some(report)) = report else {
        panic!(
            "the page reported nothing; Chromium said:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let r: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(r.get("error").is_none(), "the page failed: {r}");

    assert_eq!(r["first"]["status"], 201, "{r}");
    assert_eq!(r["first"]["replayed"], serde_json::Value::Null, "{r}");
    // The replay: idem's marker and the API's own exposed header are both readable.
    assert_eq!(r["second"]["status"], 201, "{r}");
    assert_eq!(r["second"]["replayed"], "true", "{r}");
    assert_eq!(r["second"]["charge"], "1", "{r}");
    assert_eq!(r["second"]["body"], r["first"]["body"], "{r}");
    // idem's own answer: the problem document is readable.
    assert_eq!(r["mismatch"]["status"], 422, "{r}");
    assert_eq!(r["mismatch"]["type"], "application/problem+json", "{r}");
    assert_eq!(r["mismatch"]["body"]["code"], "payload-mismatch", "{r}");
    assert_eq!(
        r["mismatch"]["body"]["idempotency_key"], "1733390000123",
        "{r}"
    );
    assert_eq!(*executions.lock().unwrap(), 1);
}

/// Sends `head` (and `body`, the body's first bytes, after which the connection
/// stalls) on a raw connection to `addr`; answers the response head.
async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf))
            .await
            .expect("no answer in time")
            .unwrap();
        assert!(n > 0, "closed without an answer: {got:?}");
        got.extend_from_slice(&buf[..n]);
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
    };
    String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase()
}

// R17: every answer of idem's own, not only the engine's, is readable by an allowed
// browser origin: refusals at the door, a refused transfer coding, a body that does not
// arrive in time, an upstream that cannot be reached. Another origin is told nothing
// beyond `Vary: Origin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r17_every_answer_of_idem_s_own_carries_cors() {
    let origin = "https://app.example";
    let idem = serve(&[
        "--upstream",
        "http://127.0.0.1:9",
        "--store",
        "memory",
        "--cors-origins",
        origin,
        "--request-read-timeout",
        "500ms",
    ])
    .await;
    let post = |path: &str, extra: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nAuthorization: Bearer a\r\n\
             Idempotency-Key: k1\r\nContent-Type: application/json\r\n{extra}\r\n"
        )
    };
    let cases = [
        (
            "ambiguous path",
            post("/v1/a%2Fb", "Content-Length: 2\r\n"),
            &b"{}"[..],
            "400",
        ),
        (
            "refused coding",
            post("/v1/pay", "Transfer-Encoding: gzip, chunked\r\n"),
            &b""[..],
            "400",
        ),
        (
            "read timeout",
            post("/v1/pay", "Content-Length: 10\r\n"),
            &b"{}"[..],
            "408",
        ),
        (
            "upstream down",
            post("/v1/pay", "Content-Length: 2\r\n"),
            &b"{}"[..],
            "502",
        ),
    ];
    for (what, head, body, status) in cases {
        let got = raw(idem.addr, &head, body).await;
        assert!(
            got.starts_with(&format!("http/1.1 {status}")),
            "{what}: {got}"
        );
        assert!(
            got.contains(&format!("access-control-allow-origin: {origin}")),
            "{what}: {got}"
        );
        assert!(got.contains("vary: origin"), "{what}: {got}");
        assert!(
            got.contains("content-type: application/problem+json"),
            "{what}: {got}"
        );
    }
    let other = raw(
        idem.addr,
        "POST /v1/a%2Fb HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\nContent-Length: 0\r\n\r\n",
        b"",
    )
    .await;
    assert!(other.starts_with("http/1.1 400"), "{other}");
    assert!(!other.contains("access-control-allow-origin"), "{other}");
    assert!(other.contains("vary: origin"), "{other}");
}
