//! The `idem` binary as a user runs it: flags, errors, crash and restart (R16).

use std::process::Command;

use idem_testkit::{Client, CountingUpstream};

use crate::common::{BIN, serve, serve_command_on, wait_listening};

// R16: a completed record survives a crash (SIGKILL) of the proxy on the embedded store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r16_replay_after_kill_and_restart() {
    let upstream = CountingUpstream::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().display());
    let up = format!("http://{}", upstream.addr());
    let args = ["--upstream", up.as_str(), "--store", store.as_str()];

    let first = serve(&args).await;
    let original = Client::new(first.addr)
        .post("/charges", "survive", "{\"amount\":7}")
        .await;
    assert_eq!(original.status, 201);
    first.kill();

    let second = serve(&args).await;
    let replay = Client::new(second.addr)
        .post("/charges", "survive", "{\"amount\":7}")
        .await;
    second.kill();
    assert!(replay.replayed());
    assert_eq!(replay.body, original.body);
    assert_eq!(upstream.executions(), 1);
}

// SIGTERM shuts down gracefully: exit code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().display());
    let proc = serve(&[
        "--upstream",
        "http://127.0.0.1:9",
        "--store",
        store.as_str(),
    ])
    .await;
    proc.terminate();
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// A bad flag, value or store URL is a short error and exit code 2, never a backtrace.
#[test]
fn bad_input_is_a_one_line_error() {
    for args in [
        &["serve", "--upstream", "nope"][..],
        &[
            "serve",
            "--upstream",
            "http://127.0.0.1:9",
            "--store",
            "bogus:x",
        ],
        &[
            "serve",
            "--upstream",
            "http://127.0.0.1:9",
            "--store",
            "memory",
            "--mismatch-status",
            "418",
        ],
        &[
            "serve",
            "--upstream",
            "http://127.0.0.1:9",
            "--store",
            "memory",
            "--lease",
            "1ms",
        ],
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(lines[0].starts_with("idem: "), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let (code, stderr) = run(&[
        "serve",
        "--upstream",
        "http://127.0.0.1:9",
        "--ttl",
        "forever",
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--ttl"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

// Two proxies cannot share one embedded store directory: the second says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_proxy_on_a_held_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().display());
    let first = serve(&[
        "--upstream",
        "http://127.0.0.1:9",
        "--store",
        store.as_str(),
    ])
    .await;
    let out = serve_command_on(&store).output().unwrap();
    let (code, stderr) = (out.status.code(), String::from_utf8_lossy(&out.stderr));
    first.kill();
    assert_eq!(code, Some(2));
    assert!(stderr.contains("another idem process"), "{stderr}");
}

// The README's first command: the demo shows the double charge and its prevention.
#[test]
fn demo_prevents_the_double_charge() {
    let out = Command::new(BIN).args(["demo", "--once"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("charged 16 times without idem, 2 with it"),
        "{stdout}"
    );
}

// The admin listener: health, readiness, and the request outcomes as Prometheus metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_reports_health_and_metrics() {
    let upstream = CountingUpstream::spawn().await;
    let admin = crate::common::free_addr();
    let up = format!("http://{}", upstream.addr());
    let admin_arg = admin.to_string();
    let proc = serve(&[
        "--upstream",
        &up,
        "--store",
        "memory",
        "--admin-listen",
        &admin_arg,
    ])
    .await;
    wait_listening(admin, "the admin listener").await;
    let client = Client::new(proc.addr);
    assert_eq!(client.post("/charges", "m1", "{}").await.status, 201);
    assert!(client.post("/charges", "m1", "{}").await.replayed());
    assert_eq!(client.post("/charges", "m1", "other").await.status, 422);

    let admin = Client::new(admin).anonymous();
    let get = |path: &'static str| {
        let admin = admin.clone();
        async move { admin.send(http::Method::GET, path, &[], b"").await }
    };
    assert_eq!(get("/healthz").await.status, 200);
    assert_eq!(get("/readyz").await.status, 200);
    let metrics = get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    for line in [
        "idem_requests_total{outcome=\"executed\"} 1",
        "idem_requests_total{outcome=\"replayed\"} 1",
        "idem_requests_total{outcome=\"mismatch\"} 1",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert!(text.contains("idem_upstream_duration_seconds"), "{text}");
    proc.kill();
}
