//! `idem check URL` against idem, a plain hop, and endpoints with planted defects.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use idem_testkit::CountingUpstream;
use serde_json::Value;

use crate::broken;
use crate::common::{self, BIN};

/// A body the counting upstream and the broken endpoint refuse (422).
const INVALID: &str = "{\"amount\":-1,\"n\":\"{{n}}\"}";

/// What one `idem check` run printed and returned.
#[derive(Debug)]
struct Checked {
    code: i32,
    /// Check name → (rule, result, evidence).
    findings: BTreeMap<String, (String, String, String)>,
    requests: u64,
    stderr: String,
}

impl Checked {
    fn result(&self, check: &str) -> &str {
        &self.findings[check].1
    }

    fn evidence(&self, check: &str) -> &str {
        &self.findings[check].2
    }

    fn failed(&self) -> Vec<&str> {
        self.findings
            .iter()
            .filter(|(_, f)| f.1 == "FAIL")
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// Runs `idem check --json URL ARGS`.
async fn check(url: &str, args: &[&str]) -> Checked {
    let out = tokio::process::Command::new(BIN)
        .args(["check", "--json", url])
        .args(args)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code().unwrap();
    let mut findings = BTreeMap::new();
    let mut requests = 0;
    if !out.stdout.is_empty() {
        let doc: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        requests = doc["requests"].as_u64().unwrap();
        for c in doc["checks"].as_array().unwrap() {
            let s = |k: &str| c[k].as_str().unwrap().to_owned();
            findings.insert(s("check"), (s("rule"), s("result"), s("evidence")));
        }
    }
    Checked {
        code,
        findings,
        requests,
        stderr,
    }
}

/// Every flag that turns a check on, with two credentials.
const FULL: [&str; 8] = [
    "-H",
    "Authorization: Bearer first",
    "--second-credential",
    "Authorization: Bearer second",
    "--invalid-body",
    INVALID,
    "--missing-key",
    "run",
];

/// `idem serve` over `store` in front of a counting upstream: every check passes.
async fn passes_through_idem(store: &str, extra: &[&str]) {
    let upstream = CountingUpstream::spawn().await;
    let up = format!("http://{}", upstream.addr());
    let mut args = vec!["--upstream", &up, "--store", store, "--ttl", "10m"];
    args.extend_from_slice(extra);
    let idem = common::serve(&args).await;
    let url = format!("http://{}/charges", idem.addr);
    let junit = tempfile::NamedTempFile::new().unwrap();
    let junit_path = junit.path().to_str().unwrap().to_owned();
    let mut flags = FULL.to_vec();
    flags.extend(["--junit", &junit_path]);
    if extra.contains(&"wait") {
        flags.extend(["--in-flight", "wait"]);
    }
    let run = check(&url, &flags).await;
    assert_eq!(run.failed(), Vec::<&str>::new(), "{store}: {run:#?}");
    assert_eq!(run.code, 0, "{run:#?}");
    for (name, (_, result, _)) in &run.findings {
        assert_eq!(result, "PASS", "{store}: {name}: {run:#?}");
    }
    assert_eq!(run.findings.len(), 7);
    // The first of the concurrent duplicates ran; the others did not.
    assert!(
        run.evidence("replay").contains("Idempotent-Replayed: true"),
        "{run:#?}"
    );
    assert!(run.evidence("mismatch").contains("422"), "{run:#?}");
    // Upstream executions: one per operation, never one per request.
    assert!(upstream.executions() < run.requests, "{run:#?}");
    let xml = std::fs::read_to_string(junit.path()).unwrap();
    assert!(
        xml.contains("tests=\"7\" failures=\"0\" skipped=\"0\""),
        "{xml}"
    );
    assert!(xml.contains("name=\"R10 concurrent\""), "{xml}");
}

// R1 R3 R4 R7 R8 R9 R10
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r08_every_check_passes_on_the_memory_store() {
    passes_through_idem("memory", &[]).await;
}

// R1 R3 R4 R7 R8 R9 R10 (wait mode: duplicates get the replay, never 409)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r10_every_check_passes_on_the_file_store_in_wait_mode() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().join("idem").display());
    passes_through_idem(&store, &["--on-concurrent", "wait"]).await;
}

// R1 R3 R4 R7 R8 R9 R10
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r08_every_check_passes_on_redis() {
    let store = format!(
        "redis://127.0.0.1:6379/0?prefix=check-{}",
        idem::core::record::OwnerToken::random().to_hex()
    );
    passes_through_idem(&store, &[]).await;
}

// R1 R3 R4 R7 R8 R9 R10
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r08_every_check_passes_on_postgres() {
    let schema = idem_testkit::postgres::Schema::fresh("check");
    let store = format!("{}?schema={}", idem_testkit::postgres::url(), schema.name());
    passes_through_idem(&store, &[]).await;
}

// R8 R9 R10 R1: with no idempotency at all, the replay and concurrency checks fail
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r10_a_plain_hop_fails_replay_and_concurrency() {
    let upstream = CountingUpstream::spawn().await;
    let url = format!("http://{}/charges", upstream.addr());
    let run = check(&url, &FULL).await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert_eq!(run.result("replay"), "FAIL");
    // The charge number differs: the evidence names the header and the byte.
    let replay = run.evidence("replay");
    assert!(replay.contains("header X-Charge: `1` then `2`"), "{replay}");
    assert!(replay.contains("bodies differ from byte 55"), "{replay}");
    assert_eq!(run.result("concurrent"), "FAIL");
    assert!(
        run.evidence("concurrent").contains("distinct bodies"),
        "{run:#?}"
    );
    assert_eq!(run.result("mismatch"), "FAIL");
    assert_eq!(run.result("invalid-key"), "FAIL");
    assert_eq!(run.result("validation-replay"), "FAIL");
    // A hop that stores nothing leaks nothing, and runs requests without a key.
    assert_eq!(run.result("scope"), "PASS");
    assert_eq!(run.result("missing-key"), "PASS");
    // Every request it counted reached the upstream, and no more.
    assert_eq!(upstream.executions(), run.requests);
    assert!(
        run.stderr.contains("point it at a test environment"),
        "{}",
        run.stderr
    );
}

async fn broken(defects: broken::Defects) -> Checked {
    let addr: SocketAddr = broken::spawn(defects).await;
    check(&format!("http://{addr}/charges"), &FULL).await
}

// R8 (and R7/R8: the stored validation error replays with the fresh id too)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r08_a_replay_with_a_fresh_request_id_fails_the_replay_checks_alone() {
    let run = broken(broken::Defects {
        fresh_request_id_on_replay: true,
        ..Default::default()
    })
    .await;
    assert_eq!(
        run.failed(),
        vec!["replay", "validation-replay"],
        "{run:#?}"
    );
    assert!(
        run.evidence("replay")
            .contains("header X-Request-Id: `1` then"),
        "{run:#?}"
    );
    assert_eq!(run.code, 1);
}

// R9
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r09_a_409_on_a_mismatch_fails_the_mismatch_check_alone() {
    let run = broken(broken::Defects {
        conflict_on_mismatch: true,
        ..Default::default()
    })
    .await;
    assert_eq!(run.failed(), vec!["mismatch"], "{run:#?}");
    assert_eq!(
        run.evidence("mismatch"),
        "the key reused with another body got 409, expected 422 (--mismatch-status)"
    );
}

// R1
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r01_an_accepted_long_key_fails_the_invalid_key_check_alone() {
    let run = broken(broken::Defects {
        long_keys: true,
        ..Default::default()
    })
    .await;
    assert_eq!(run.failed(), vec!["invalid-key"], "{run:#?}");
    let evidence = run.evidence("invalid-key");
    assert!(evidence.contains("256 chars 201"), "{evidence}");
    assert!(
        evidence.ends_with("not refused with 4xx: 256 chars"),
        "{evidence}"
    );
}

// R4
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r04_one_scope_for_every_caller_fails_the_scope_check_alone() {
    let run = broken(broken::Defects {
        shared_scope: true,
        ..Default::default()
    })
    .await;
    assert_eq!(run.failed(), vec!["scope"], "{run:#?}");
    assert!(
        run.evidence("scope").contains("Idempotent-Replayed: true"),
        "{run:#?}"
    );
}

// The budget caps what is sent; checks that no longer fit are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_is_never_exceeded() {
    let upstream = CountingUpstream::spawn().await;
    let url = format!("http://{}/charges", upstream.addr());
    let run = check(&url, &["--budget", "6"]).await;
    assert_eq!(upstream.executions(), run.requests);
    assert!(run.requests <= 6, "{run:#?}");
    assert_eq!(run.result("concurrent"), "SKIP");
    assert!(run.stderr.contains("up to 6 requests"), "{}", run.stderr);
}

// Bad flags and unreachable endpoints are one line and exit code 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_connection_errors_exit_2() {
    let nobody = common::free_addr();
    let run = check(&format!("http://{nobody}/charges"), &[]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);
    for (url, args, says) in [
        ("https://127.0.0.1:1/x", &[][..], "only http://"),
        (
            "http://127.0.0.1:1/x",
            &["--mismatch-status", "409"][..],
            "expected 422 or 400",
        ),
        (
            "http://127.0.0.1:1/x",
            &["--concurrency", "1"][..],
            "at least 2",
        ),
        (
            "http://127.0.0.1:1/x",
            &["-H", "nocolon"][..],
            "NAME: VALUE",
        ),
        ("not a url", &[][..], "not a URL"),
    ] {
        let run = check(url, args).await;
        assert_eq!(run.code, 2, "{url} {args:?}: {run:#?}");
        assert!(run.stderr.contains(says), "{url} {args:?}: {}", run.stderr);
    }
}
