//! Callers without credentials, and what logs and stores learn of a credential (R4),
//! through the `idem` binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method};
use idem::core::ProblemKind;
use idem::core::scope::{ScopeSecret, ScopeSource};
use idem_testkit::{Client, CountingUpstream, Resp};

use super::common::{BIN, free_addr, serve};
use super::kind;

const BASIC: &str = "Basic YWxpY2U6c2VjcmV0";

async fn anonymous_charge(client: &Client, cookie: &str, body: &str) -> Resp {
    client
        .anonymous()
        .send(
            Method::POST,
            "/charges",
            &[("idempotency-key", "k-anon"), ("cookie", cookie)],
            body.as_bytes(),
        )
        .await
}

// R4: with the default configuration two callers without credentials, sending the same
// key, are refused before anything runs: neither can be handed the other's response.
// Configured to pass, each runs unprotected and gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r04_anonymous_callers_never_share_a_record() {
    let upstream = CountingUpstream::spawn().await;
    let up = format!("http://{}", upstream.addr());
    let idem = serve(&["--upstream", &up, "--store", "memory"]).await;
    let client = Client::new(idem.addr);
    for (cookie, body) in [("session=alice", "a"), ("session=bob", "a")] {
        let r = anonymous_charge(&client, cookie, body).await;
        assert_eq!(r.status, 400, "{r:?}");
        kind(&r, ProblemKind::UnscopedRequest);
        let detail = r.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains("`Authorization`"), "{detail}");
    }
    assert_eq!(upstream.executions(), 0);
    idem.kill();

    let idem = serve(&["--upstream", &up, "--store", "memory", "--unscoped", "pass"]).await;
    let client = Client::new(idem.addr);
    let alice = anonymous_charge(&client, "session=alice", "a").await;
    let bob = anonymous_charge(&client, "session=bob", "a").await;
    assert!(
        alice.status == 201 && bob.status == 201,
        "{alice:?} {bob:?}"
    );
    assert!(!alice.replayed() && !bob.replayed());
    assert_ne!(alice.body, bob.body, "bob never gets alice's answer");
    assert_eq!(upstream.executions(), 2);
}

// R4: under one shared scope, a response that sets a cookie is never replayed to
// another caller, unless the operator opts in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r04_a_shared_scope_never_replays_a_session_cookie() {
    let upstream = CountingUpstream::spawn().await;
    let up = format!("http://{}", upstream.addr());
    let login = |client: Client| async move {
        client
            .anonymous()
            .send(
                Method::POST,
                "/login",
                &[("idempotency-key", "login")],
                b"{}",
            )
            .await
    };
    let shared = |more: &'static [&'static str]| {
        let mut args = vec![
            "--upstream",
            &up,
            "--store",
            "memory",
            "--scope-header",
            "none",
        ];
        args.extend(more);
        async move { serve(&args).await }
    };
    let idem = shared(&[]).await;
    let first = login(Client::new(idem.addr)).await;
    assert_eq!(first.header("set-cookie"), Some("session=s1; HttpOnly"));
    let other = login(Client::new(idem.addr)).await;
    assert_eq!(other.status, 410, "{other:?}");
    kind(&other, ProblemKind::NotRetained);
    assert!(other.header("set-cookie").is_none(), "{other:?}");
    assert_eq!(upstream.executions_of("/login"), 1);
    idem.kill();

    let idem = shared(&["--store-set-cookie"]).await;
    let first = login(Client::new(idem.addr)).await;
    let again = login(Client::new(idem.addr)).await;
    assert!(again.replayed(), "{again:?}");
    assert_eq!(again.header("set-cookie"), first.header("set-cookie"));
}

/// `idem serve ARGS --log-format json` with its stderr lines sent to a channel.
fn serve_logging(args: &[&str]) -> (Child, std::net::SocketAddr, mpsc::Receiver<String>) {
    let addr = free_addr();
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(["--listen", &addr.to_string(), "--log-format", "json"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, addr, rx)
}

/// The `scope` of the first decision line.
fn logged_scope(lines: &mpsc::Receiver<String>) -> String {
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a decision line within 30 s");
        let Ok(doc) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if doc["target"] == "idem::decision" {
            return doc["fields"]["scope"].as_str().expect("a scope").to_owned();
        }
    }
}

async fn keyed_charge(addr: std::net::SocketAddr) -> Resp {
    Client::new(addr)
        .send(
            Method::POST,
            "/charges",
            &[("idempotency-key", "k-log"), ("authorization", BASIC)],
            b"{}",
        )
        .await
}

async fn wait_listening(addr: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "idem did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// R4: logs never carry the plain digest of a credential, which anyone with the logs
// could test guessed passwords against. With a scope secret the digest is keyed, in the
// logs and in the store alike (the admin API finds the record under the keyed digest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r04_logs_and_stores_never_hold_a_plain_credential_digest() {
    let upstream = CountingUpstream::spawn().await;
    let up = format!("http://{}", upstream.addr());
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static(BASIC));
    let plain = ScopeSource::default().scope(&headers).unwrap().to_hex();

    let (mut child, addr, lines) = serve_logging(&["--upstream", &up, "--store", "memory"]);
    wait_listening(addr).await;
    assert_eq!(keyed_charge(addr).await.status, 201);
    let logged = logged_scope(&lines);
    let _ = child.kill();
    let _ = child.wait();
    assert!(logged.starts_with('~'), "{logged}");
    assert!(
        !logged.contains(&plain[..8]),
        "{logged} shows the plain digest {plain}"
    );

    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("scope-secret");
    std::fs::write(
        &secret_file,
        "q7C1s0dYyq3bB5hJmVmE0C4kq2YH9Yl5wS5n3Tq1V6o=\n",
    )
    .unwrap();
    let secret = ScopeSecret::new(&std::fs::read(&secret_file).unwrap()).unwrap();
    let keyed = ScopeSource::default()
        .keyed(secret)
        .scope(&headers)
        .unwrap()
        .to_hex();
    let admin = free_addr();
    let token = "an-admin-token-of-some-length";
    let (mut child, addr, lines) = serve_logging(&[
        "--upstream",
        &up,
        "--store",
        "memory",
        "--scope-secret-file",
        secret_file.to_str().unwrap(),
        "--admin-listen",
        &admin.to_string(),
        "--admin-token",
        token,
    ]);
    wait_listening(addr).await;
    assert_eq!(keyed_charge(addr).await.status, 201);
    let logged = logged_scope(&lines);
    assert_eq!(logged, keyed);
    assert_ne!(keyed, plain);
    let bearer = format!("Bearer {token}");
    let record = Client::new(admin)
        .send(
            Method::GET,
            &format!("/admin/keys/{keyed}/k-log"),
            &[("authorization", &bearer)],
            b"",
        )
        .await;
    assert_eq!(record.status, 200, "{record:?}");
    let missing = Client::new(admin)
        .send(
            Method::GET,
            &format!("/admin/keys/{plain}/k-log"),
            &[("authorization", &bearer)],
            b"",
        )
        .await;
    assert_eq!(missing.status, 404, "{missing:?}");
    let _ = child.kill();
    let _ = child.wait();
}
