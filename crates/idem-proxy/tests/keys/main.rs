//! On call: the admin API (`/admin/keys…` behind a bearer token) of a running `idem
//! serve`, and the `idem keys` command against it and straight against each store.
//!
//! Needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (user postgres,
//! database test); unreachable services fail the tests.

#[path = "../common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use idem::core::IdempotencyKey;
use idem::core::record::{OwnerToken, RecordId};
use idem::core::scope::{Scope, ScopeSource};
use idem::core::store::testkit::{claim_req, snapshot};
use idem::core::store::{Claim, Finish, Store};
use idem::postgres::{PostgresStore, PostgresStoreConfig};
use idem::redis::{RedisStore, RedisStoreConfig};
use idem_testkit::{Client, CountingUpstream, Resp};
use serde_json::Value;

use common::{BIN, Proc, free_addr};

const TOKEN: &str = "on-call-secret-0123456789";
const REDIS: &str = "redis://127.0.0.1:6379";
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// `idem serve` with an admin listener; stderr (logs) goes to `log`.
struct Served {
    proc: Proc,
    admin: SocketAddr,
    log: tempfile::NamedTempFile,
}

async fn serve(upstream: &CountingUpstream, extra: &[&str]) -> Served {
    let addr = free_addr();
    let admin = free_addr();
    let log = tempfile::NamedTempFile::new().unwrap();
    let proc = common::start(
        Command::new(BIN)
            .arg("serve")
            .args(["--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--upstream", &format!("http://{}", upstream.addr())])
            .args(["--store", "memory"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap()),
        addr,
        &[admin],
    )
    .await;
    Served { proc, admin, log }
}

async fn admin_get(admin: SocketAddr, path: &str, token: Option<&str>) -> Resp {
    admin_send(admin, Method::GET, path, token).await
}

async fn admin_send(admin: SocketAddr, method: Method, path: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    Client::new(admin)
        .anonymous()
        .send(method, path, &headers, b"")
        .await
}

/// `POST path` with an empty JSON body, `key` and `authorization`, through the proxy.
async fn charge(proxy: &Client, path: &str, key: &str, authorization: &str) -> Resp {
    proxy
        .send(
            Method::POST,
            path,
            &[("idempotency-key", key), ("authorization", authorization)],
            b"{}",
        )
        .await
}

fn scope_of(authorization: &str) -> Scope {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(authorization).unwrap(),
    );
    ScopeSource::default()
        .scope(&h)
        .expect("a credential scopes")
}

/// Runs `idem keys ARGS` with stdin not a terminal.
fn keys(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("keys")
        .args(args)
        .stdin(Stdio::null())
        .env_remove("IDEM_ADMIN_URL")
        .env_remove("IDEM_ADMIN_TOKEN")
        .output()
        .unwrap()
}

/// Runs `idem keys COMMAND --admin ADMIN --token TOKEN ARGS`.
fn on_call(command: &str, admin: &str, args: &[&str]) -> Output {
    let mut all = vec![command, "--admin", admin, "--token", TOKEN];
    all.extend_from_slice(args);
    keys(&all)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_out(o: &Output) -> Value {
    assert!(o.status.success(), "{o:?}");
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

#[tokio::test]
async fn admin_api_needs_the_token() {
    let upstream = CountingUpstream::spawn().await;
    let on = serve(&upstream, &["--admin-token", TOKEN]).await;
    for token in [None, Some("wrong-token-0123456789"), Some("")] {
        let r = admin_get(on.admin, "/admin/keys", token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert!(r.problem_type().ends_with("#admin-unauthorized"));
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    }
    let r = admin_send(on.admin, Method::DELETE, "/admin/keys/global/k", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Health and metrics stay open.
    assert_eq!(admin_get(on.admin, "/healthz", None).await.status, 200);
    assert_eq!(admin_get(on.admin, "/metrics", None).await.status, 200);
    assert_eq!(
        admin_get(on.admin, "/admin/keys", Some(TOKEN)).await.status,
        200
    );

    // Without a configured token the API is off, for everyone.
    let off = serve(&upstream, &[]).await;
    let r = admin_get(off.admin, "/admin/keys", Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.problem_type().ends_with("#admin-disabled"));
    assert_eq!(admin_get(off.admin, "/healthz", None).await.status, 200);
    drop((on.proc, off.proc));
}

#[tokio::test]
async fn bad_token_settings_are_one_line_errors() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "short\n").unwrap();
    for args in [
        vec!["--admin-token", "short"],
        vec!["--admin-token-file", file.path().to_str().unwrap()],
        vec!["--admin-token-file", "/nonexistent/token"],
    ] {
        let out = common::serve_command()
            .args(["--admin-listen", &free_addr().to_string()])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    }
}

#[tokio::test]
async fn admin_api_and_cli_find_a_stuck_request_and_delete_it() {
    let upstream = CountingUpstream::spawn().await;
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), format!("{TOKEN}\n")).unwrap();
    let on = serve(
        &upstream,
        &[
            "--admin-token-file",
            token_file.path().to_str().unwrap(),
            "--upstream-timeout",
            "60s",
        ],
    )
    .await;
    let proxy = Client::new(on.proc.addr);
    let alice = "Bearer alice";
    let scope = scope_of(alice).to_hex();

    // A completed charge.
    let done = charge(&proxy, "/charges", "done-1", alice).await;
    assert_eq!(done.status, 201);

    // A charge stuck at a slow upstream.
    let stuck = tokio::spawn({
        let proxy = proxy.clone();
        async move { charge(&proxy, "/charges?delay_ms=20000", "stuck/1?%", alice).await }
    });

    // It shows up in the in-flight list once older than 300 ms; the completed one never does.
    let admin = format!("http://{}", on.admin);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let out = on_call(
            "list",
            &admin,
            &["--in-flight", "--older-than", "300ms", "--json"],
        );
        let page = json_out(&out);
        let found = page["keys"].as_array().unwrap().clone();
        assert!(found.iter().all(|k| k["key"] != "done-1"), "{page}");
        if let Some(k) = found.into_iter().find(|k| k["key"] == "stuck/1?%") {
            break k;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never listed: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listed["state"], "in_flight");
    assert_eq!(listed["scope"], scope.as_str());
    assert!(listed["age_ms"].as_u64().unwrap() >= 300);
    assert_eq!(listed["owner"]["token"].as_str().unwrap().len(), 32);
    assert_eq!(listed["fingerprint"].as_str().unwrap().len(), 64);

    // The same record over HTTP, the key percent-encoded into one segment.
    let path = format!("/admin/keys/{scope}/stuck%2F1%3F%25");
    let got = admin_get(on.admin, &path, Some(TOKEN)).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.json()["state"], "in_flight");
    assert_eq!(got.json()["owner"]["token"], listed["owner"]["token"]);

    // The completed one: status and body size; the table names it.
    let got = admin_get(
        on.admin,
        &format!("/admin/keys/{scope}/done-1"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(got.json()["state"], "completed");
    assert_eq!(got.json()["response"]["status"], 201);
    assert!(got.json()["response"]["body_bytes"].as_u64().unwrap() > 0);
    let table = on_call("get", &admin, &["--authorization", alice, "done-1"]);
    assert!(table.status.success(), "{table:?}");
    assert!(stdout(&table).contains("completed"), "{}", stdout(&table));
    assert!(stdout(&table).contains("201"), "{}", stdout(&table));

    // Only the stuck one when listing in-flight records in alice's scope, as a table.
    let table = on_call("list", &admin, &["--in-flight", "--authorization", alice]);
    assert!(stdout(&table).contains("stuck/1?%"), "{}", stdout(&table));
    assert!(!stdout(&table).contains("done-1"));

    // Wrong token, one line, exit 2.
    let wrong = keys(&["list", "--admin", &admin, "--token", "nope-nope-nope-nope"]);
    assert_eq!(wrong.status.code(), Some(2));
    assert!(stderr(&wrong).contains("401"), "{}", stderr(&wrong));

    // Deleting needs --yes when stdin is not a terminal.
    let refused = on_call("delete", &admin, &["--scope", &scope, "stuck/1?%"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("--yes"));
    assert_eq!(admin_get(on.admin, &path, Some(TOKEN)).await.status, 200);

    let deleted = on_call(
        "delete",
        &admin,
        &["--scope", &scope, "stuck/1?%", "--yes", "--json"],
    );
    assert_eq!(json_out(&deleted)["deleted"]["state"], "in_flight");
    let gone = admin_get(on.admin, &path, Some(TOKEN)).await;
    assert_eq!(gone.status, 404);
    assert!(gone.problem_type().ends_with("#admin-key-not-found"));
    let missing = on_call("get", &admin, &["--scope", &scope, "stuck/1?%"]);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert!(stderr(&missing).contains("no live record"));

    // The key is free: a retry runs again instead of meeting 409.
    let retry = charge(&proxy, "/charges", "stuck/1?%", alice).await;
    assert_eq!(retry.status, 201, "{retry:?}");

    // Delete over HTTP too, then the audit lines.
    let del = admin_send(
        on.admin,
        Method::DELETE,
        &format!("/admin/keys/{scope}/done-1"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(del.status, 200);
    assert_eq!(del.json()["deleted"]["state"], "completed");
    let again = admin_send(
        on.admin,
        Method::DELETE,
        &format!("/admin/keys/{scope}/done-1"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(again.status, 404);
    let bad = admin_get(on.admin, "/admin/keys/nothex/k", Some(TOKEN)).await;
    assert_eq!(bad.status, 400);
    assert!(bad.problem_type().ends_with("#admin-bad-request"));
    let bad = admin_get(on.admin, "/admin/keys?state=stuck", Some(TOKEN)).await;
    assert_eq!(bad.status, 400);

    stuck.abort();
    drop(on.proc);
    let log = std::fs::read_to_string(on.log.path()).unwrap();
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("idem::audit") && l.contains("deleted"))
        .collect();
    assert_eq!(audit.len(), 2, "{log}");
    assert!(
        audit[0].contains("previous_state=\"in_flight\"")
            || audit[0].contains("previous_state=in_flight"),
        "{log}"
    );
    assert!(
        audit
            .iter()
            .all(|l| l.contains(&scope) && l.contains("127.0.0.1")),
        "{log}"
    );
}

fn rid(scope: Scope, key: &str) -> RecordId {
    RecordId::new(scope, IdempotencyKey::new(key).unwrap())
}

/// One completed and one in-flight record under `scope`.
async fn seed(store: &impl Store, scope: Scope) {
    let Claim::Acquired(lease) = store
        .claim(&claim_req(&rid(scope, "paid"), 1))
        .await
        .unwrap()
    else {
        panic!("claim")
    };
    let done = store
        .complete(
            &lease,
            &snapshot(b"{\"ok\":true}"),
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    assert_eq!(done, Finish::Done);
    let mut req = claim_req(&rid(scope, "stuck"), 2);
    req.lease = Duration::from_secs(600);
    assert!(matches!(
        store.claim(&req).await.unwrap(),
        Claim::Acquired(_)
    ));
}

/// `idem keys --store URL`: list, get and delete straight at a store.
fn cli_against_store(url: &str, scope: Scope) {
    let hex = scope.to_hex();
    let page = json_out(&keys(&["list", "--store", url, "--json"]));
    let mut names: Vec<&str> = page["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["paid", "stuck"], "{page}");
    let page = json_out(&keys(&["list", "--store", url, "--in-flight", "--json"]));
    assert_eq!(page["keys"].as_array().unwrap().len(), 1);
    assert_eq!(page["keys"][0]["key"], "stuck");
    // Paging: one a page, then the cursor leads to the other.
    let first = json_out(&keys(&["list", "--store", url, "--limit", "1", "--json"]));
    let next = first["next"].as_str().expect("a cursor").to_owned();
    let second = json_out(&keys(&[
        "list", "--store", url, "--limit", "1", "--after", &next, "--json",
    ]));
    assert_ne!(first["keys"][0]["key"], second["keys"][0]["key"]);
    assert!(second["next"].is_null());

    let got = json_out(&keys(&[
        "get", "--store", url, "--scope", &hex, "paid", "--json",
    ]));
    assert_eq!(got["state"], "completed");
    assert_eq!(got["response"]["body_bytes"], 11);
    let deleted = keys(&["delete", "--store", url, "--scope", &hex, "stuck", "--yes"]);
    assert!(deleted.status.success(), "{deleted:?}");
    assert!(
        stdout(&deleted).contains("was in_flight"),
        "{}",
        stdout(&deleted)
    );
    let missing = keys(&["get", "--store", url, "--scope", &hex, "stuck"]);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    let page = json_out(&keys(&["list", "--store", url, "--json"]));
    assert_eq!(page["keys"].as_array().unwrap().len(), 1);
    // Bad input: one line, exit 2.
    let bad = keys(&["get", "--store", url, "--scope", "zz", "paid"]);
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(stderr(&bad).lines().count(), 1, "{}", stderr(&bad));
}

#[tokio::test]
async fn cli_against_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let scope = Scope::from_bytes([3; 16]);
    {
        let store = idem::redb::RedbStore::open(dir.path(), Default::default()).unwrap();
        seed(&store, scope).await;
    }
    // The store's sweeper task holds no strong handle: the file is closed once the last
    // blocking operation ends; give it a moment to be reopened by the CLI.
    let url = format!("file:{}", dir.path().display());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !keys(&["list", "--store", &url]).status.success() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "store stayed locked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::spawn_blocking(move || cli_against_store(&url, scope))
        .await
        .unwrap();
}

#[tokio::test]
async fn cli_against_redis_store() {
    let prefix = format!("idem-keys-{}", &OwnerToken::random().to_hex()[..12]);
    let config = RedisStoreConfig {
        prefix: prefix.clone(),
        ..RedisStoreConfig::default()
    };
    let store = RedisStore::connect(REDIS, config)
        .await
        .unwrap_or_else(|e| panic!("Redis at {REDIS} must be reachable: {e:?}"));
    let scope = Scope::from_bytes([4; 16]);
    seed(&store, scope).await;
    let url = format!("{REDIS}/0?prefix={prefix}");
    tokio::task::spawn_blocking(move || cli_against_store(&url, scope))
        .await
        .unwrap();
}

#[tokio::test]
async fn cli_against_postgres_store() {
    let schema = idem_testkit::postgres::Schema::fresh("idem_keys");
    let config = PostgresStoreConfig {
        schema: schema.name().to_owned(),
        ..PostgresStoreConfig::default()
    };
    let store = PostgresStore::connect(POSTGRES, config)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {POSTGRES} must be reachable: {e:?}"));
    let scope = Scope::from_bytes([5; 16]);
    seed(&store, scope).await;
    let url = format!("{POSTGRES}?schema={}", schema.name());
    tokio::task::spawn_blocking(move || cli_against_store(&url, scope))
        .await
        .unwrap();
    drop(store);
    drop(schema);
}
