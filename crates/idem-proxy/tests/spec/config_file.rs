//! `idem serve --config`, `idem check-config` and `idem docs`, through the binary: per-route
//! rules over HTTP, precedence (flag > env > file > default), errors, and the docs text.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use http::Method;
use idem::core::ProblemKind;
use idem_testkit::{Client, CountingUpstream};

use crate::common::{BIN, serve};

/// Writes `text` to `idem.toml` in a fresh directory.
fn config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idem.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Runs the binary without any inherited `IDEM_*` variable plus `env`.
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("IDEM_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.args(args).envs(env.iter().copied()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until the upstream has started `n` executions of `path`.
async fn executions_reach(upstream: &CountingUpstream, path: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while upstream.executions_of(path) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never reached {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const BASE: &str = "https://api.example.com/idempotency";

fn two_routes(upstream: &CountingUpstream) -> String {
    format!(
        r#"
upstream = "http://{}"
store = "memory"
problem_base = "{BASE}"

# Payments: key required, canonical JSON, duplicates wait, short retention.
[[route]]
match = "POST /charges"
require_key = true
fingerprint = "json"
on_concurrent = "wait"
wait_timeout = "20s"
ttl = "1s"

[[route]]
match = "/status/*"
enabled = false
"#,
        upstream.addr()
    )
}

async fn post(c: &Client, path: &str, key: Option<&str>, body: &str) -> idem_testkit::Resp {
    let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
    c.send(Method::POST, path, &headers, body.as_bytes()).await
}

// R3, R17: the /charges rule requires a key; requests matching no rule keep the
// server-wide default (optional). Problems carry the configured type base.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r03_route_requires_a_key_where_the_default_does_not() {
    let upstream = CountingUpstream::spawn().await;
    let (_dir, path) = config(&two_routes(&upstream));
    let proc = serve(&["--config", path.to_str().unwrap()]).await;
    let c = Client::new(proc.addr);

    let missing = post(&c, "/charges", None, "{}").await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.problem_type(), format!("{BASE}#missing-key"));
    assert_eq!(upstream.executions_of("/charges"), 0);

    let unprotected = post(&c, "/orders", None, "{}").await;
    assert_eq!(unprotected.status, 200);
    assert_eq!(upstream.executions_of("/orders"), 1);
}

// R5: canonical JSON on the /charges rule, raw bytes elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r05_fingerprint_mode_per_route() {
    let upstream = CountingUpstream::spawn().await;
    let (_dir, path) = config(&two_routes(&upstream));
    let proc = serve(&["--config", path.to_str().unwrap()]).await;
    let c = Client::new(proc.addr);

    let first = post(&c, "/charges", Some("json-1"), r#"{"a":1,"b":2}"#).await;
    assert_eq!(first.status, 201);
    let reordered = post(&c, "/charges", Some("json-1"), r#"{ "b": 2, "a": 1 }"#).await;
    assert!(reordered.replayed());
    assert_eq!(reordered.body, first.body);
    assert_eq!(upstream.executions_of("/charges"), 1);

    let first = post(&c, "/orders", Some("raw-1"), r#"{"a":1,"b":2}"#).await;
    assert_eq!(first.status, 200);
    let reordered = post(&c, "/orders", Some("raw-1"), r#"{ "b": 2, "a": 1 }"#).await;
    assert_eq!(reordered.status, 422);
    assert_eq!(reordered.problem_type(), format!("{BASE}#payload-mismatch"));
    assert_eq!(upstream.executions_of("/orders"), 1);
}

// R10: a duplicate waits for the replay on the /charges rule, and gets 409 on a route
// with the server-wide conflict mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r10_concurrency_mode_per_route() {
    let upstream = CountingUpstream::spawn().await;
    let (_dir, path) = config(&two_routes(&upstream));
    let proc = serve(&["--config", path.to_str().unwrap()]).await;
    let c = Client::new(proc.addr);

    let slow = "/charges?delay_ms=1500";
    let first = tokio::spawn({
        let c = c.clone();
        async move { post(&c, slow, Some("wait-1"), "{}").await }
    });
    executions_reach(&upstream, "/charges", 1).await;
    let dup = post(&c, slow, Some("wait-1"), "{}").await;
    let first = first.await.unwrap();
    assert_eq!(first.status, 201);
    assert!(dup.replayed(), "{dup:?}");
    assert_eq!(dup.body, first.body);
    assert_eq!(upstream.executions_of("/charges"), 1);

    let slow = "/flaky?delay_ms=1500";
    let first = tokio::spawn({
        let c = c.clone();
        async move { post(&c, slow, Some("conflict-1"), "{}").await }
    });
    executions_reach(&upstream, "/flaky", 1).await;
    let dup = post(&c, slow, Some("conflict-1"), "{}").await;
    assert_eq!(dup.status, 409);
    assert_eq!(dup.problem_type(), format!("{BASE}#in-flight"));
    assert!(dup.header("retry-after").is_some());
    first.await.unwrap();
    assert_eq!(upstream.executions_of("/flaky"), 1);
}

// R14: the /charges rule keeps records for 1s, the server-wide default for 24h.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r14_ttl_per_route() {
    let upstream = CountingUpstream::spawn().await;
    let (_dir, path) = config(&two_routes(&upstream));
    let proc = serve(&["--config", path.to_str().unwrap()]).await;
    let c = Client::new(proc.addr);

    assert_eq!(post(&c, "/charges", Some("ttl-1"), "{}").await.status, 201);
    assert_eq!(post(&c, "/orders", Some("ttl-2"), "{}").await.status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = post(&c, "/charges", Some("ttl-1"), "{}").await;
    assert!(!again.replayed());
    assert_eq!(upstream.executions_of("/charges"), 2);
    let kept = post(&c, "/orders", Some("ttl-2"), "{}").await;
    assert!(kept.replayed());
    assert_eq!(upstream.executions_of("/orders"), 1);
}

// R2: `enabled = false` passes a route through untouched, key or no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r02_disabled_route_passes_through() {
    let upstream = CountingUpstream::spawn().await;
    let (_dir, path) = config(&two_routes(&upstream));
    let proc = serve(&["--config", path.to_str().unwrap()]).await;
    let c = Client::new(proc.addr);
    for _ in 0..2 {
        let r = post(&c, "/status/201", Some("pass-1"), "{}").await;
        assert_eq!(r.status, 201);
        assert!(!r.replayed());
    }
    assert_eq!(upstream.executions_of("/status/201"), 2);
}

// R12, R17: the forwarder's own problems carry the configured base too (flag form).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r17_upstream_problems_use_the_problem_base_flag() {
    let dead = crate::common::free_addr();
    let up = format!("http://{dead}");
    let proc = serve(&[
        "--upstream",
        &up,
        "--store",
        "memory",
        "--problem-base",
        "https://docs.example.com/errors",
    ])
    .await;
    let r = post(&Client::new(proc.addr), "/charges", Some("k"), "{}").await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.problem_type(),
        format!(
            "https://docs.example.com/errors#{}",
            ProblemKind::UpstreamUnavailable.slug()
        )
    );
}

/// `idem serve --problem-base BASE` with its admin API on, in front of `store`; answers
/// the proxy and its admin listener.
async fn serve_with_admin(store: &str) -> (crate::common::Proc, std::net::SocketAddr) {
    let admin = crate::common::free_addr();
    let admin_arg = admin.to_string();
    let proc = serve(&[
        "--upstream",
        "http://127.0.0.1:9",
        "--store",
        store,
        "--problem-base",
        BASE,
        "--request-read-timeout",
        "300ms",
        "--admin-listen",
        &admin_arg,
        "--admin-token",
        ADMIN_TOKEN,
    ])
    .await;
    crate::common::wait_listening(admin, "the admin listener").await;
    (proc, admin)
}

const ADMIN_TOKEN: &str = "admin-token-0123456789";

async fn admin_get(admin: std::net::SocketAddr, path: &str, token: bool) -> idem_testkit::Resp {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let headers: Vec<(&str, &str)> = if token {
        vec![("authorization", auth.as_str())]
    } else {
        Vec::new()
    };
    Client::new(admin)
        .anonymous()
        .send(Method::GET, path, &headers, b"")
        .await
}

fn under_base(kind: ProblemKind) -> String {
    format!("{BASE}#{}", kind.slug())
}

// R17: the proxy's own answers (the read timeout's 408 and every answer of the admin
// API) carry the configured problem base, like the engine's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r17_the_proxys_own_problems_use_the_problem_base() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (proc, admin) = serve_with_admin("memory").await;

    // A body that never arrives: 408 once the read timeout passes.
    let mut conn = tokio::net::TcpStream::connect(proc.addr).await.unwrap();
    conn.write_all(
        b"POST /charges HTTP/1.1\r\nhost: x\r\nauthorization: Bearer a\r\nidempotency-key: slow\r\ncontent-length: 10\r\n\r\n{",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut answer))
        .await
        .expect("an answer, then the connection closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    let doc: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(doc["type"], under_base(ProblemKind::RequestTimeout));

    let refused = admin_get(admin, "/admin/keys/global/k", false).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.problem_type(),
        under_base(ProblemKind::AdminUnauthorized)
    );
    let missing = admin_get(admin, "/admin/keys/global/k", true).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.problem_type(),
        under_base(ProblemKind::AdminKeyNotFound)
    );
    let bad = admin_get(admin, "/admin/keys/nowhere/k", true).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.problem_type(), under_base(ProblemKind::AdminBadRequest));
    let doc: serde_json::Value = serde_json::from_slice(&bad.body).unwrap();
    assert_eq!(doc["title"], ProblemKind::AdminBadRequest.title());
}

// R15, R17: when the store is down, the admin API answers as the proxy does: the same
// problem type under the same base, and the same Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_the_admin_api_answers_a_store_failure_as_the_proxy_does() {
    // Nothing listens on port 1: every store operation fails at once.
    let (proc, admin) =
        serve_with_admin("postgres://postgres@127.0.0.1:1/test?migrate=false").await;
    let proxied = post(&Client::new(proc.addr), "/charges", Some("k"), "{}").await;
    let admin = admin_get(admin, "/admin/keys/global/k", true).await;
    for r in [&proxied, &admin] {
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.problem_type(), under_base(ProblemKind::StoreUnavailable));
    }
    assert_eq!(admin.header("retry-after"), proxied.header("retry-after"));
    assert!(admin.header("retry-after").is_some());
}

fn ttl_line(explain: &str) -> String {
    explain
        .lines()
        .find(|l| l.starts_with("ttl "))
        .unwrap_or_else(|| panic!("no ttl line in {explain}"))
        .to_owned()
}

// R14: precedence is flag > environment > file > built-in default, and --explain says
// where each value came from.
#[test]
fn precedence_flag_env_file_default() {
    let (_dir, path) = config("upstream = \"http://127.0.0.1:9\"\nttl = \"1h\"\n");
    let p = path.to_str().unwrap();
    let explain = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["check-config", "--explain", "POST /x"];
        args.extend_from_slice(extra);
        let (code, out, err) = run(&args, env);
        assert_eq!(code, 0, "{err}");
        ttl_line(&out)
    };
    let flag = explain(&["--config", p, "--ttl", "3h"], &[("IDEM_TTL", "2h")]);
    assert!(flag.contains("3h") && flag.ends_with("flag"), "{flag}");
    let env = explain(&["--config", p], &[("IDEM_TTL", "2h")]);
    assert!(env.contains("2h") && env.ends_with("env"), "{env}");
    let file = explain(&["--config", p], &[]);
    assert!(
        file.contains("1h") && file.ends_with(&format!("file {p}:2")),
        "{file}"
    );
    // The file itself may come from IDEM_CONFIG.
    let file = explain(&[], &[("IDEM_CONFIG", p)]);
    assert!(file.contains("1h"), "{file}");
    let default = explain(&["--upstream", "http://127.0.0.1:9"], &[]);
    assert!(
        default.contains("1day") && default.ends_with("default"),
        "{default}"
    );
}

// A config file mistake is one line naming the file and line, exit 2.
#[test]
fn file_errors_are_one_line_with_file_and_line() {
    for (text, line, needle) in [
        (
            "upstream = \"http://127.0.0.1:9\"\ntll = \"1h\"\n",
            2,
            "tll",
        ),
        (
            "upstream = \"http://127.0.0.1:9\"\nttl = \"forever\"\n",
            2,
            "ttl",
        ),
        (
            "ttl = \"1h\"\n\n[[route]]\nmatch = \"/a\"\nrequire = true\n",
            5,
            "require",
        ),
        ("[[route]]\nmatch = \"/a\"\nttl = \"soon\"\n", 3, "ttl"),
        ("[[route]]\nmatch = \"/a/**/b\"\n", 2, "**"),
        ("on_concurrent = \"sometimes\"\n", 1, "on_concurrent"),
    ] {
        let (_dir, path) = config(text);
        let p = path.to_str().unwrap();
        for cmd in ["serve", "check-config"] {
            let (code, _, err) = run(
                &[cmd, "--config", p, "--upstream", "http://127.0.0.1:9"],
                &[],
            );
            assert_eq!(code, 2, "{text}: {err}");
            let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "{text}: {err}");
            assert!(
                lines[0].starts_with(&format!("idem: {p}:{line}: ")),
                "{text}: {err}"
            );
            assert!(lines[0].contains(needle), "{text}: {err}");
        }
    }
    let (code, _, err) = run(&["check-config", "--config", "/nonexistent/idem.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/idem.toml"), "{err}");
    let (code, _, err) = run(&["check-config", "--store", "memory"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("upstream"), "{err}");
}

// check-config --explain names the matching rule and where each setting came from.
#[test]
fn check_config_explains_a_request() {
    let (_dir, path) = config(
        "upstream = \"http://127.0.0.1:9\"\nstore = \"memory\"\n\n\
         [[route]]\nmatch = \"POST /v1/payments/*\"\nttl = \"1h\"\nrequire_key = true\n\n\
         [[route]]\nmatch = \"/v1/health\"\nenabled = false\n",
    );
    let p = path.to_str().unwrap();
    let (code, out, err) = run(&["check-config", "--config", p], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration ok"), "{out}");

    let (code, out, err) = run(
        &[
            "check-config",
            "--config",
            p,
            "--lease",
            "90s",
            "--explain",
            "POST /v1/payments/123",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("rule: route 1 `POST /v1/payments/*` ({p}:5)")),
        "{out}"
    );
    assert!(out.contains("protected: yes"), "{out}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing: {out}"))
            .to_owned()
    };
    assert!(line("ttl").ends_with(&format!("route {p}:6")), "{out}");
    assert!(line("require_key").contains("true"), "{out}");
    assert!(line("methods").contains("POST"), "{out}");
    assert!(line("lease").ends_with("flag"), "{out}");
    assert!(line("store").ends_with(&format!("file {p}:2")), "{out}");
    assert!(line("fingerprint").ends_with("default"), "{out}");

    let (_, out, _) = run(
        &["check-config", "--config", p, "--explain", "GET /v1/health"],
        &[],
    );
    assert!(
        out.contains("rule: route 2") && out.contains("passes through untouched"),
        "{out}"
    );
    let (_, out, _) = run(
        &["check-config", "--config", p, "--explain", "POST /v2/x"],
        &[],
    );
    assert!(out.contains("rule: none matches"), "{out}");
    let (code, _, err) = run(
        &["check-config", "--config", p, "--explain", "nonsense"],
        &[],
    );
    assert_eq!(code, 2, "{err}");
}

// R17: `idem docs` has one section per problem type, anchored by the type's slug, and
// lists each route's key rules.
#[test]
fn r17_docs_anchor_every_problem_type() {
    let (_dir, path) = config(
        "problem_base = \"https://api.example.com/idempotency\"\nttl = \"12h\"\n\n\
         [[route]]\nmatch = \"POST /v1/payments/*\"\nrequire_key = true\nttl = \"7d\"\n",
    );
    let (code, out, err) = run(&["docs", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    let client_kinds = ProblemKind::ALL
        .iter()
        .filter(|k| k.audience() == idem::core::problem::Audience::Client);
    for kind in client_kinds {
        let slug = kind.slug();
        assert!(
            out.contains(&format!("<a id=\"{slug}\"></a>")),
            "{slug}: {out}"
        );
        assert!(out.contains(&format!("\n### {slug}\n")), "{slug}");
    }
    assert!(
        out.contains("| `/v1/payments/*` | POST | required | 7days |"),
        "{out}"
    );
    assert!(
        out.contains("| every other endpoint | POST, PATCH | optional | 12h |"),
        "{out}"
    );
    assert!(out.contains("Idempotent-Replayed: true"));
    assert!(out.contains("Retry-After"));
    assert!(
        out.contains("`https://api.example.com/idempotency#`"),
        "{out}"
    );
    for status in ["400", "409", "410", "413", "422", "502", "503", "504"] {
        assert!(out.contains(&format!("| {status} |")), "{status}");
    }
}

// The example file in the repository stays valid and means what its comments say.
#[test]
fn example_file_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../idem.example.toml");
    let (code, out, err) = run(&["check-config", "--config", example], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("3 route rule(s)"), "{out}");
    let (code, out, err) = run(
        &[
            "check-config",
            "--config",
            example,
            "--explain",
            "PUT /v1/uploads/a/b",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rule: route 3"), "{out}");
}

// R9: over HTTP too, a flag beats the file (the file says 400, the flag 422).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r09_flag_beats_file_over_http() {
    let upstream = CountingUpstream::spawn().await;
    let (_dir, path) = config(&format!(
        "upstream = \"http://{}\"\nstore = \"memory\"\nmismatch_status = 400\n",
        upstream.addr()
    ));
    let p = path.to_str().unwrap();
    for (extra, status) in [(&[][..], 400), (&["--mismatch-status", "422"][..], 422)] {
        let mut args = vec!["--config", p];
        args.extend_from_slice(extra);
        let proc = serve(&args).await;
        let c = Client::new(proc.addr);
        assert_eq!(post(&c, "/orders", Some("m"), "a").await.status, 200);
        let mismatch = post(&c, "/orders", Some("m"), "b").await;
        assert_eq!(mismatch.status, status, "{extra:?}");
        assert_eq!(
            mismatch.problem_type(),
            ProblemKind::PayloadMismatch.type_uri()
        );
    }
}

/// Where a walk sets its settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Flag,
    Env,
    File,
    Route,
}

/// Every setting of the table reaches the field it names from its flag, its environment
/// variable, its file key and, where a route may set it, its route key:
/// `check-config --explain` reads each value back from the field it landed in.
#[test]
fn every_setting_reaches_its_field_from_flag_env_file_and_route() {
    use idem_proxy::settings::{Kind, SETTINGS, Setting, Values};

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("keys");
    std::fs::write(
        &key_file,
        "k2:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n",
    )
    .unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "fedcba9876543210-token\n").unwrap();
    let scope_secret = dir.path().join("scope-secret");
    std::fs::write(&scope_secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let templates = dir.path().join("errors.json");
    std::fs::write(&templates, r#"{"*": {"body": {"error": "{detail}"}}}"#).unwrap();
    let example = |s: &dyn Setting| -> String {
        match s.info().name {
            "encryption_key_file" => key_file.display().to_string(),
            "problem_template_file" => templates.display().to_string(),
            "admin_token_file" => token_file.display().to_string(),
            "scope_secret_file" => scope_secret.display().to_string(),
            _ => s.info().example.to_owned(),
        }
    };
    // A secret and the file holding it exclude each other: the files go in a second
    // pass, with what they need (an upstream, the admin listener).
    let files = ["encryption_key_file", "admin_token_file"];
    let first: Vec<&dyn Setting> = SETTINGS
        .iter()
        .copied()
        .filter(|s| !files.contains(&s.info().name))
        .collect();
    let second: Vec<&dyn Setting> = SETTINGS
        .iter()
        .copied()
        .filter(|s| {
            let name = s.info().name;
            files.contains(&name) || name == "upstream" || name == "admin_listen"
        })
        .collect();
    let routed: Vec<&dyn Setting> = SETTINGS
        .iter()
        .copied()
        .filter(|s| s.info().route)
        .collect();

    let walk = |settings: &[&dyn Setting], source: Source| {
        let mut args = vec!["check-config".to_owned()];
        let mut env = Vec::new();
        let mut toml = String::new();
        let mut lines = std::collections::BTreeMap::new();
        if source == Source::Route {
            args.push("--upstream=http://127.0.0.1:9".to_owned());
            toml.push_str("[[route]]\nmatch = \"/walk\"\n");
        }
        for s in settings {
            let i = s.info();
            let value = example(*s);
            match source {
                Source::Flag if i.kind == Kind::Switch => args.push(i.flag()),
                Source::Flag => args.push(format!("{}={value}", i.flag())),
                Source::Env => env.push((i.env.to_owned(), value)),
                Source::File | Source::Route => {
                    let toml_value = match i.kind {
                        Kind::Switch => value,
                        Kind::List => format!("{:?}", value.split(',').collect::<Vec<_>>()),
                        Kind::Value => format!("{value:?}"),
                    };
                    toml.push_str(&format!("{} = {toml_value}\n", i.name));
                    lines.insert(i.name, toml.lines().count());
                }
            }
        }
        let path = dir.path().join(format!("walk-{source:?}.toml"));
        std::fs::write(&path, &toml).unwrap();
        let p = path.display().to_string();
        if matches!(source, Source::File | Source::Route) {
            args.push(format!("--config={p}"));
        }
        args.extend(["--explain".to_owned(), "PUT /walk".to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (code, out, err) = run(&args, &env);
        assert_eq!(code, 0, "{source:?}: {err}");
        for s in settings {
            let name = s.info().name;
            let mut values = Values::default();
            s.apply(&mut values, &example(*s)).unwrap();
            let want = s.show(&values).unwrap();
            assert_ne!(Some(&want), s.show(&Values::default()).as_ref(), "{name}");
            let origin = match source {
                Source::Flag => "flag".to_owned(),
                Source::Env => "env".to_owned(),
                Source::File => format!("file {p}:{}", lines[name]),
                Source::Route => format!("route {p}:{}", lines[name]),
            };
            let line = out
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("{source:?}: no {name} line in\n{out}"));
            let got = line[name.len()..]
                .trim_end()
                .strip_suffix(&origin)
                .unwrap_or_else(|| panic!("{source:?}: {name} not from {origin}: {line}"))
                .trim();
            assert_eq!(got, want, "{source:?}: {name}: {line}");
        }
    };
    for source in [Source::Flag, Source::Env, Source::File] {
        walk(&first, source);
        walk(&second, source);
    }
    walk(&routed, Source::Route);
}
