//! Observability through the `idem` binary: every request outcome is counted and timed
//! on the admin listener's `/metrics`, and logged as one JSON decision line that never
//! carries a body or a credential.

#[path = "../common/mod.rs"]
mod common;
mod prometheus;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use http::Method;
use idem_testkit::{Client, CountingUpstream};
use serde_json::Value;

/// Appears in every request body; must never reach the logs. The upstream echoes it in
/// its response body, so response bodies are covered too.
const BODY_SECRET: &str = "BODY-7f3a9c-never-logged";
/// The Authorization value of every request; must never reach the logs.
const AUTH_SECRET: &str = "Bearer CRED-51e0d2-never-logged";

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect("closing brace");
                (name.to_owned(), parse_labels(inner))
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        out.push(Sample {
            name,
            labels,
            value: value.parse().expect("sample value"),
        });
    }
    out
}

/// `k="v",k2="v2"`, where a quoted value may hold commas and `\"`, `\\`, `\n` escapes.
fn parse_labels(inner: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = inner;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect("escape").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = &after[end + 1..];
    }
    labels
}

/// The value of the sample `name` whose labels include `labels`; 0 when absent.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

async fn scrape(admin: SocketAddr) -> (String, Vec<Sample>) {
    let resp = Client::new(admin)
        .anonymous()
        .send(Method::GET, "/metrics", &[], b"")
        .await;
    assert_eq!(resp.status, 200);
    let text = String::from_utf8(resp.body.to_vec()).unwrap();
    let samples = parse_metrics(&text);
    (text, samples)
}

// Dashboards and absent-series alerts need every series before the first request: a
// fresh `idem serve` lists each metric, each label value at 0, its build and the
// process metrics on its very first scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_scrape_lists_every_series() {
    let epoch = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let before = epoch();
    let front = serve_logged(&["--store", "memory", "--upstream", "http://127.0.0.1:9"]).await;
    let (text, m) = scrape(front.admin).await;

    for (name, _) in idem_proxy::admin::all_metrics() {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}: {text}");
        assert!(text.contains(&format!("# TYPE {name} ")), "{name}: {text}");
    }
    for outcome in idem::core::metrics::Outcome::ALL {
        let o = outcome.as_str();
        let series: Vec<&Sample> = m
            .iter()
            .filter(|s| s.name == "idem_requests_total")
            .filter(|s| s.labels.get("outcome").map(String::as_str) == Some(o))
            .collect();
        assert_eq!(
            series.len(),
            1,
            "idem_requests_total{{outcome={o}}}: {text}"
        );
        assert_eq!(series[0].value, 0.0);
    }
    for op in ["claim", "renew", "complete", "release", "lookup"] {
        for result in ["ok", "error"] {
            let labels = [("op", op), ("result", result)];
            let has = |suffix: &str| {
                m.iter().any(|s| {
                    s.name == format!("idem_store_duration_seconds{suffix}")
                        && labels
                            .iter()
                            .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                })
            };
            assert!(
                has("_bucket") && has("_count") && has("_sum"),
                "{op}/{result}: {text}"
            );
            assert_eq!(value(&m, "idem_store_duration_seconds_count", &labels), 0.0);
        }
    }
    assert!(
        text.contains("\nidem_upstream_duration_seconds_count 0\n"),
        "{text}"
    );
    for kind in ["unavailable", "timeout"] {
        let n = m
            .iter()
            .filter(|s| s.name == "idem_upstream_failures_total")
            .filter(|s| s.labels.get("kind").map(String::as_str) == Some(kind))
            .count();
        assert_eq!(n, 1, "{kind}: {text}");
    }
    for gauge in ["idem_in_flight", "idem_waiters"] {
        assert!(text.contains(&format!("\n{gauge} 0\n")), "{gauge}: {text}");
    }
    for counter in ["idem_completion_failures_total", "idem_superseded_total"] {
        assert!(
            text.contains(&format!("\n{counter} 0\n")),
            "{counter}: {text}"
        );
    }
    let build: Vec<&Sample> = m.iter().filter(|s| s.name == "idem_build_info").collect();
    assert_eq!(build.len(), 1, "{text}");
    assert_eq!(build[0].value, 1.0);
    assert_eq!(build[0].labels["version"], env!("CARGO_PKG_VERSION"));
    assert!(build[0].labels["features"].contains("redb"), "{text}");

    // The process metrics, with the types Prometheus client libraries give them.
    let pid = front.proc.child.id();
    for (name, kind) in [
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name}: {text}"
        );
        assert!(m.iter().any(|s| s.name == name), "{name}: {text}");
    }
    assert!(value(&m, "process_resident_memory_bytes", &[]) > 1024.0 * 1024.0);
    // The open descriptors are idem's own: /proc/<pid>/fd of the child, give or take the
    // ones opened or closed between the two looks.
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as f64;
    assert!(
        (value(&m, "process_open_fds", &[]) - fds).abs() <= 4.0,
        "{fds}: {text}"
    );
    // Boot time is in whole seconds: allow one either side.
    let (started, now) = (value(&m, "process_start_time_seconds", &[]), epoch());
    assert!(
        started >= before - 1.0 && started <= now + 1.0,
        "{before} {started} {now}"
    );
    front.proc.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_is_counted_timed_and_logged_without_secrets() {
    let upstream = CountingUpstream::spawn().await;
    let addr = common::free_addr();
    let admin = common::free_addr();
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("stderr.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let proc = common::start(
        Command::new(common::BIN)
            .args(["--log-format", "json", "serve", "--store", "memory"])
            .args(["--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--upstream", &format!("http://{}", upstream.addr())])
            .args(["--require-key", "--max-request-body", "8KiB"])
            .args(["--max-stored-body", "4KiB"])
            .env_remove("RUST_LOG")
            .env_remove("IDEM_LOG_LEVEL")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file)),
        addr,
        &[admin],
    )
    .await;

    let client = Client::new(addr);
    let body = format!("{{\"amount\":100,\"note\":\"{BODY_SECRET}\"}}");
    let post = |path: &'static str, key: Option<String>, body: String| {
        let client = client.clone();
        async move {
            let mut headers = vec![("authorization", AUTH_SECRET)];
            if let Some(k) = key.as_deref() {
                headers.push(("idempotency-key", k));
            }
            client
                .send(Method::POST, path, &headers, body.as_bytes())
                .await
        }
    };
    let key = |k: &str| Some(k.to_owned());

    // R5 executed, R8 replayed, R9 mismatch.
    assert_eq!(
        post("/charges", key("k-exec"), body.clone()).await.status,
        201
    );
    let replay = post("/charges", key("k-exec"), body.clone()).await;
    assert!(replay.replayed());
    let other = format!("{{\"amount\":999,\"note\":\"{BODY_SECRET}\"}}");
    assert_eq!(post("/charges", key("k-exec"), other).await.status, 422);
    // R1 invalid key, R3 missing key, R13 too large.
    let long_key = "x".repeat(300);
    assert_eq!(
        post("/charges", Some(long_key), body.clone()).await.status,
        400
    );
    assert_eq!(post("/charges", None, body.clone()).await.status, 400);
    let huge = format!("{BODY_SECRET}{}", "y".repeat(10 * 1024));
    assert_eq!(post("/charges", key("k-huge"), huge).await.status, 413);
    // R13: executed, its body not retained, then replayed as 410.
    assert_eq!(
        post("/big?bytes=5000", key("k-nr"), body.clone())
            .await
            .status,
        200
    );
    assert_eq!(
        post("/big?bytes=5000", key("k-nr"), body.clone())
            .await
            .status,
        410
    );
    // R7: executed, 500, released.
    assert_eq!(
        post("/status/500", key("k-rel"), body.clone()).await.status,
        500
    );

    // R10: a duplicate while the first is in flight gets 409; meanwhile this instance
    // owns exactly one record.
    let slow = tokio::spawn(post("/charges?delay_ms=1500", key("k-conf"), body.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while upstream.executions_with_key("k-conf") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, during) = scrape(admin).await;
    assert_eq!(value(&during, "idem_in_flight", &[]), 1.0);
    assert_eq!(
        post("/charges?delay_ms=1500", key("k-conf"), body.clone())
            .await
            .status,
        409
    );
    assert_eq!(slow.await.unwrap().status, 201);

    let (text, m) = scrape(admin).await;
    let outcome = |o: &str| value(&m, "idem_requests_total", &[("outcome", o)]);
    assert_eq!(outcome("executed"), 4.0, "{text}");
    assert_eq!(outcome("replayed"), 1.0);
    assert_eq!(outcome("mismatch"), 1.0);
    assert_eq!(outcome("invalid_key"), 1.0);
    assert_eq!(outcome("missing_key"), 1.0);
    assert_eq!(outcome("too_large"), 1.0);
    assert_eq!(outcome("not_retained"), 1.0);
    assert_eq!(outcome("conflict"), 1.0);
    assert_eq!(outcome("store_error") + outcome("fail_open"), 0.0);
    assert_eq!(value(&m, "idem_in_flight", &[]), 0.0);

    // Store latency per operation: 8 claims (4 executed, replay, mismatch, 410,
    // conflict), 3 completions, 1 release; none failed.
    let store = |op: &str, result: &str| {
        value(
            &m,
            "idem_store_duration_seconds_count",
            &[("op", op), ("result", result)],
        )
    };
    assert_eq!(store("claim", "ok"), 8.0, "{text}");
    assert_eq!(store("complete", "ok"), 3.0);
    assert_eq!(store("release", "ok"), 1.0);
    for op in ["claim", "complete", "release"] {
        assert_eq!(store(op, "error"), 0.0);
        let buckets = m
            .iter()
            .filter(|s| s.name == "idem_store_duration_seconds_bucket")
            .filter(|s| s.labels.get("op").map(String::as_str) == Some(op))
            .count();
        assert!(buckets > 1, "{op} is a histogram with buckets: {text}");
    }
    // The upstream answered the four executed requests.
    assert_eq!(
        value(&m, "idem_upstream_duration_seconds_count", &[]),
        4.0,
        "{text}"
    );
    for name in [
        "idem_requests_total",
        "idem_store_duration_seconds",
        "idem_upstream_duration_seconds",
        "idem_in_flight",
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} is described: {text}"
        );
    }

    proc.kill();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains(BODY_SECRET), "a body leaked into the logs");
    assert!(
        !log.contains("CRED-51e0d2"),
        "a credential leaked into the logs"
    );
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let decisions: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "idem::decision")
        .collect();
    assert_eq!(decisions.len(), 11, "one line per protected request: {log}");
    for d in &decisions {
        assert_eq!(d["level"], "INFO");
        let f = &d["fields"];
        assert_eq!(f["method"], "POST");
        assert!(f["path"].as_str().unwrap().starts_with('/'));
        assert!(f["status"].as_u64().is_some(), "{d}");
        assert!(f["store_ms"].as_f64().is_some(), "{d}");
        assert!(f["total_ms"].as_f64().is_some(), "{d}");
    }
    let by = |o: &str| -> Vec<&Value> {
        decisions
            .iter()
            .map(|d| &d["fields"])
            .filter(|f| f["outcome"] == o)
            .collect()
    };
    assert_eq!(by("executed").len(), 4);
    for f in by("executed") {
        assert!(f["upstream_ms"].as_f64().is_some(), "{f}");
        // R4: no scope secret, so a tag under the process's key, never the plain digest.
        let scope = f["scope"].as_str().unwrap();
        let tag = scope.strip_prefix('~').unwrap_or_else(|| panic!("{scope}"));
        assert!(tag.len() == 16 && tag.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(
            !idem_testkit::client::credential_scope()
                .to_hex()
                .contains(tag)
        );
    }
    let released: Vec<_> = by("executed")
        .into_iter()
        .filter(|f| f["key"] == "k-rel")
        .collect();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0]["status"], 500);
    assert_eq!(released[0]["record"], "released");
    let first = by("executed")
        .into_iter()
        .find(|f| f["key"] == "k-exec")
        .expect("k-exec executed");
    assert_eq!(first["status"], 201);
    assert_eq!(first["path"], "/charges");
    assert_eq!(first["record"], "stored");
    for (outcome, status) in [
        ("replayed", 201),
        ("mismatch", 422),
        ("invalid_key", 400),
        ("missing_key", 400),
        ("too_large", 413),
        ("not_retained", 410),
        ("conflict", 409),
    ] {
        let found = by(outcome);
        assert_eq!(found.len(), 1, "{outcome}: {log}");
        assert_eq!(found[0]["status"], status, "{outcome}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_silences_decisions_and_bad_levels_are_refused() {
    let upstream = CountingUpstream::spawn().await;
    let addr = common::free_addr();
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("stderr.log");
    let proc = common::start(
        Command::new(common::BIN)
            .args([
                "--log-format",
                "json",
                "--log-level",
                "info,idem::decision=off",
            ])
            .args(["serve", "--store", "memory", "--listen", &addr.to_string()])
            .args(["--upstream", &format!("http://{}", upstream.addr())])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap())),
        addr,
        &[],
    )
    .await;
    let resp = Client::new(addr).post("/charges", "k-quiet", "{}").await;
    assert_eq!(resp.status, 201);
    proc.kill();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("idem serving"), "other INFO lines stay: {log}");
    assert!(!log.contains("idem::decision"), "{log}");

    let out = Command::new(common::BIN)
        .args([
            "--log-level",
            "idem=loud",
            "serve",
            "--upstream",
            "http://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid --log-level"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// `idem serve` with JSON logs into a file and an admin listener.
struct Logged {
    proc: common::Proc,
    admin: SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn serve_logged(args: &[&str]) -> Logged {
    let addr = common::free_addr();
    let admin = common::free_addr();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let proc = common::start(
        Command::new(common::BIN)
            .args(["--log-format", "json", "serve"])
            .args(["--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("IDEM_LOG_LEVEL")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap())),
        addr,
        &[admin],
    )
    .await;
    Logged {
        proc,
        admin,
        log,
        _dir: dir,
    }
}

fn decisions(log: &str) -> Vec<Value> {
    log.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|l| l["target"] == "idem::decision")
        .map(|l| l["fields"].clone())
        .collect()
}

// R15: with the store down, fail-closed answers 503 (store_error) and fail-open forwards
// unprotected (fail_open); both are counted, the failed claims timed as errors, and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failures_are_counted_and_logged() {
    let upstream = CountingUpstream::spawn().await;
    let redis_addr = common::free_addr();
    let redis = common::OwnRedis::start(redis_addr).await;
    let store = format!("redis://{redis_addr}/?prefix=obs-{}", std::process::id());
    let up = format!("http://{}", upstream.addr());
    let closed = serve_logged(&["--store", &store, "--upstream", &up]).await;
    let open = serve_logged(&["--store", &store, "--upstream", &up, "--fail-open"]).await;
    drop(redis);

    let resp = Client::new(closed.proc.addr)
        .post("/charges", "k-closed", "{}")
        .await;
    assert_eq!(resp.status, 503);
    let resp = Client::new(open.proc.addr)
        .post("/charges", "k-open", "{}")
        .await;
    assert_eq!(resp.status, 201);
    assert_eq!(upstream.executions_with_key("k-closed"), 0);
    assert_eq!(upstream.executions_with_key("k-open"), 1);

    for (front, outcome, status) in [(closed, "store_error", 503), (open, "fail_open", 201)] {
        let (text, m) = scrape(front.admin).await;
        let count = |o: &str| value(&m, "idem_requests_total", &[("outcome", o)]);
        assert_eq!(count(outcome), 1.0, "{text}");
        assert_eq!(count("executed"), 0.0, "{text}");
        assert!(
            value(
                &m,
                "idem_store_duration_seconds_count",
                &[("op", "claim"), ("result", "error")]
            ) >= 1.0,
            "{text}"
        );
        front.proc.kill();
        let log = std::fs::read_to_string(&front.log).unwrap();
        let d = decisions(&log);
        assert_eq!(d.len(), 1, "{log}");
        assert_eq!(d[0]["outcome"], outcome);
        assert_eq!(d[0]["status"], status);
        assert_eq!(
            d[0]["upstream_ms"].is_f64(),
            outcome == "fail_open",
            "{log}"
        );
    }
}
