//! R24: clients that try to make the rules, the key, the scope or the fingerprint see
//! another request than the upstream runs. Every request is written byte for byte on a
//! raw socket, in front of an upstream that routes the way common frameworks do: it
//! decodes every `%XX` (even `%2F`), reads `\` as `/`, merges `//`, resolves dot
//! segments, drops `;parameters`, ignores a trailing `/` and the case of paths and
//! methods. Whatever reaches its payments handler must have gone through the payments
//! rule.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use idem::core::ProblemKind;
use idem::core::policy::Policy;
use idem::core::store::MemoryStore;
use idem_proxy::config::ProxyConfig;
use idem_proxy::routes::Route;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the framework received it.
#[derive(Clone, Debug)]
struct Seen {
    /// The method as sent on the wire.
    method: String,
    /// The request target as sent on the wire.
    target: String,
    /// `METHOD /path` as the framework routes it.
    route: String,
    key: Option<String>,
    authorization: Option<String>,
    account: Option<String>,
}

/// An upstream that routes like common web frameworks and remembers what it ran.
#[derive(Clone)]
struct Framework {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// What a lenient framework routes `target` to.
fn framework_path(target: &str) -> String {
    let path = target.split('?').next().unwrap_or_default();
    let raw = path.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        if raw[i] == b'%'
            && let (Some(h), Some(l)) = (hex(raw.get(i + 1)), hex(raw.get(i + 2)))
        {
            bytes.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        bytes.push(if raw[i] == b'\\' { b'/' } else { raw[i] });
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        // Tomcat drops path parameters before it resolves dot segments.
        match seg.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

impl Framework {
    async fn spawn() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move { Ok::<_, Infallible>(Self::handle(&log, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    async fn handle(log: &Mutex<Vec<Seen>>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let _ = body.collect().await;
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let target = parts.uri.to_string();
        let seen = Seen {
            method: parts.method.as_str().to_owned(),
            route: format!(
                "{} {}",
                parts.method.as_str().to_ascii_uppercase(),
                framework_path(&target)
            ),
            target,
            key: header("idempotency-key"),
            authorization: header("authorization"),
            account: header("x-account"),
        };
        let n = {
            let mut log = log.lock().unwrap();
            log.push(seen.clone());
            log.len()
        };
        let doc = serde_json::json!({ "execution": n, "route": seen.route });
        Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(doc.to_string())))
            .unwrap()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Executions of the payments handler (`POST /v1/payments/{id}`), however reached.
    fn payments(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| {
                let mut parts = s.route.split('/');
                s.route.starts_with("POST /v1/payments/")
                    && parts.clone().count() == 4
                    && parts.nth(3).is_some_and(|id| !id.is_empty())
            })
            .count()
    }
}

/// A proxy in front of `upstream` (`http://addr` + `prefix`) with `edit` applied.
async fn proxy(
    upstream: &Framework,
    prefix: &str,
    edit: impl FnOnce(&mut ProxyConfig),
) -> idem_proxy::Running {
    let url = format!("http://{}{prefix}", upstream.addr);
    let mut config = ProxyConfig::new(url.parse().unwrap());
    edit(&mut config);
    idem_proxy::spawn("127.0.0.1:0".parse().unwrap(), MemoryStore::new(), config)
        .await
        .unwrap()
}

/// `[[route]] match = "POST /v1/payments/*"` with `require_key = true`.
fn payments_require_key(config: &mut ProxyConfig) {
    config.routes.push(Route {
        pattern: "POST /v1/payments/*".parse().unwrap(),
        policy: Some(Policy::builder().require_key(true).build().unwrap()),
        origin: "test".into(),
    });
}

/// An answer read off a raw socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn problem(&self) -> String {
        let doc: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        doc["type"].as_str().unwrap_or_default().to_owned()
    }

    fn is(&self, status: u16, kind: ProblemKind) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.problem(), kind.type_uri(), "{self:?}");
    }

    fn replayed(&self) -> bool {
        self.head
            .to_ascii_lowercase()
            .contains("idempotent-replayed: true")
    }
}

/// Writes `request` exactly and reads one answer (framed by `Content-Length`).
async fn send(addr: SocketAddr, request: &str) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            let len = crate::content_length(&head);
            while buf.len() < end + 4 + len {
                let n = read(&mut s, &mut chunk).await;
                assert!(n > 0, "body cut short: {head}");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            return Answer { status, head, body };
        }
        let n = read(&mut s, &mut chunk).await;
        assert!(n > 0, "closed without an answer to {request:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn read(s: &mut TcpStream, chunk: &mut [u8]) -> usize {
    tokio::time::timeout(Duration::from_secs(30), s.read(chunk))
        .await
        .expect("an answer within 30 s")
        .unwrap_or(0)
}

/// `METHOD TARGET HTTP/1.1`, a Host, `headers`, and a two-byte body.
/// A request with `headers`, and a credential unless they name one: a keyed request
/// needs one to be scoped (R4).
fn request(method: &str, target: &str, headers: &[&str]) -> String {
    let mut r = format!("{method} {target} HTTP/1.1\r\nhost: api.example\r\n");
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("authorization:"))
    {
        r.push_str("authorization: Bearer view-client\r\n");
    }
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("content-length: 2\r\n\r\n{}");
    r
}

// R24, R3: every spelling of a payments path that a framework routes to the payments
// handler is held to the payments rule: a keyless POST is 400, the handler never runs.
#[tokio::test]
async fn r24_route_rule_sees_the_path_the_upstream_routes_on() {
    let api = Framework::spawn().await;
    let front = proxy(&api, "", payments_require_key).await;
    for target in [
        "/v1/payments/1",
        "/v1/%70ayments/1",
        "//v1/payments/1",
        "/v1//payments/1",
        "/v1/./payments/1",
        "/v1/x/../payments/1",
        "/v1/payments/%2e/1",
        "/v1/payments/x/%2E%2E/1",
        "/v1/payments/1/",
        "/V1/Payments/1",
        "/v1/payments;jsessionid=a/1",
        "http://elsewhere/v1/x/../payments/1",
    ] {
        let answer = send(front.addr(), &request("POST", target, &[])).await;
        answer.is(400, ProblemKind::MissingKey);
    }
    assert_eq!(api.payments(), 0, "{:?}", api.seen());
    assert!(api.seen().is_empty());

    // With a key: forwarded as the rule matched it, and fingerprinted so (R5): another
    // spelling of the same request is the same request, replayed.
    let first = send(
        front.addr(),
        &request("POST", "/v1/x/../payments/1", &["idempotency-key: k-1"]),
    )
    .await;
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(api.seen()[0].target, "/v1/payments/1");
    let again = send(
        front.addr(),
        &request("POST", "/v1/%70ayments//1", &["idempotency-key: k-1"]),
    )
    .await;
    assert_eq!(again.status, 201, "{again:?}");
    assert!(again.replayed(), "{again:?}");
    assert_eq!(again.body, first.body);
    assert_eq!(api.payments(), 1);
}

// R24: paths that upstreams read differently are refused, not guessed.
#[tokio::test]
async fn r24_ambiguous_paths_are_400() {
    let api = Framework::spawn().await;
    let front = proxy(&api, "", payments_require_key).await;
    for target in [
        "/v1/payments%2F1",
        "/v1/payments%2f1",
        "/v1%2Fpayments%2F1",
        "/v1/payments%5C1",
        "/v1\\payments\\1",
        "/v1/x/..;/payments/1",
        "/v1/payments/%zz",
        "/v1/payments/1%00",
    ] {
        for key in [&[][..], &["idempotency-key: amb"][..]] {
            let answer = send(front.addr(), &request("POST", target, key)).await;
            answer.is(400, ProblemKind::AmbiguousRequest);
        }
    }
    assert!(api.seen().is_empty(), "{:?}", api.seen());
}

// R2, R24: `post` is POST to many frameworks; a case variant of a covered method is
// refused, keyless or keyed, so a retried `post` never runs three times.
#[tokio::test]
async fn r02_case_variant_of_covered_method_is_400() {
    let api = Framework::spawn().await;
    let front = proxy(&api, "", payments_require_key).await;
    for method in ["post", "Post", "pOsT"] {
        let answer = send(front.addr(), &request(method, "/v1/payments/1", &[])).await;
        answer.is(400, ProblemKind::AmbiguousRequest);
    }
    for _ in 0..3 {
        let answer = send(
            front.addr(),
            &request("post", "/v1/orders", &["idempotency-key: lower"]),
        )
        .await;
        answer.is(400, ProblemKind::AmbiguousRequest);
    }
    assert!(api.seen().is_empty(), "{:?}", api.seen());
    // The method as registered still works, once per key.
    for _ in 0..3 {
        let answer = send(
            front.addr(),
            &request("POST", "/v1/orders", &["idempotency-key: upper"]),
        )
        .await;
        assert_eq!(answer.status, 201, "{answer:?}");
    }
    assert_eq!(api.seen().len(), 1);
}

// R2, R24: a method only a route rule names (`PURGE /cache/*`) is as ambiguous in
// another case as a standard one: `purge` is 400 and never reaches the upstream, while
// `PURGE` as written passes.
#[tokio::test]
async fn r24_case_variant_of_a_method_a_rule_names_is_400() {
    let api = Framework::spawn().await;
    let front = proxy(&api, "", |config| {
        config.routes.push(Route {
            pattern: "PURGE /cache/*".parse().unwrap(),
            policy: None,
            origin: "test".into(),
        });
    })
    .await;
    for method in ["purge", "Purge", "pURGE"] {
        let answer = send(front.addr(), &request(method, "/cache/x", &[])).await;
        answer.is(400, ProblemKind::AmbiguousRequest);
    }
    assert!(api.seen().is_empty(), "{:?}", api.seen());
    let answer = send(front.addr(), &request("PURGE", "/cache/x", &[])).await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(api.seen().len(), 1);
    assert_eq!(api.seen()[0].method, "PURGE");
}

// R24: with `--upstream http://host/v1`, no target reaches a path outside `/v1`.
#[tokio::test]
async fn r24_upstream_prefix_cannot_be_escaped() {
    let api = Framework::spawn().await;
    let front = proxy(&api, "/v1", |_| {}).await;
    let targets = [
        "/../internal/admin",
        "/%2e%2e/internal/admin",
        "/.%2E/internal/admin",
        "//../internal/admin",
        "/a/../../internal/admin",
        "/a/%2e%2e/%2e%2e/internal/admin",
        "http://evil/../internal/admin",
    ];
    for target in targets {
        let answer = send(front.addr(), &request("GET", target, &[])).await;
        assert_eq!(answer.status, 201, "{target}: {answer:?}");
    }
    for answer in [
        send(front.addr(), &request("GET", "/..%2Finternal/admin", &[])).await,
        send(front.addr(), &request("GET", "/..\\internal/admin", &[])).await,
    ] {
        answer.is(400, ProblemKind::AmbiguousRequest);
    }
    let seen = api.seen();
    assert_eq!(seen.len(), targets.len());
    for s in &seen {
        assert_eq!(s.target, "/v1/internal/admin", "{s:?}");
        assert_eq!(s.route, "GET /v1/internal/admin", "{s:?}");
    }

    // `OPTIONS *` asks about the server as a whole: forwarded as `*`, no prefix.
    let answer = send(front.addr(), &request("OPTIONS", "*", &[])).await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let last = api.seen().pop().unwrap();
    assert_eq!(
        (last.method.as_str(), last.target.as_str()),
        ("OPTIONS", "*")
    );
    // `*` means nothing to other methods.
    send(front.addr(), &request("POST", "*", &[]))
        .await
        .is(400, ProblemKind::AmbiguousRequest);
    // CONNECT asks for a tunnel, which a reverse proxy does not open.
    let answer = send(
        front.addr(),
        "CONNECT internal:22 HTTP/1.1\r\nhost: internal:22\r\n\r\n",
    )
    .await;
    answer.is(501, ProblemKind::UnsupportedMethod);
    assert_eq!(api.seen().len(), targets.len() + 1);
}

// R1, R24: a key header that `Connection` nominates is stripped before forwarding, so
// it is not a key: the request is keyless, as the upstream sees it, and nothing is
// stored under the key.
#[tokio::test]
async fn r01_connection_nominated_key_never_counts() {
    let api = Framework::spawn().await;
    let front = proxy(&api, "", payments_require_key).await;
    let hop = [
        "connection: Authorization, Idempotency-Key, X-Account",
        "authorization: Bearer alice",
        "idempotency-key: hop-1",
        "x-account: acct-1",
    ];
    for _ in 0..2 {
        let answer = send(front.addr(), &request("POST", "/v1/orders", &hop)).await;
        assert_eq!(answer.status, 201, "{answer:?}");
        assert!(!answer.replayed(), "{answer:?}");
    }
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "keyless: it runs each time");
    for s in &seen {
        assert_eq!(
            (&s.key, &s.authorization, &s.account),
            (&None, &None, &None)
        );
    }
    // The key was never claimed: the client's real request with it runs, as its own.
    let answer = send(
        front.addr(),
        &request(
            "POST",
            "/v1/orders",
            &["authorization: Bearer alice", "idempotency-key: hop-1"],
        ),
    )
    .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert!(
        !answer.replayed(),
        "an anonymous answer replayed: {answer:?}"
    );
    assert_eq!(api.seen().len(), 3);
    // A route that requires a key gets none from a nominated header.
    send(front.addr(), &request("POST", "/v1/payments/1", &hop))
        .await
        .is(400, ProblemKind::MissingKey);
    assert_eq!(api.payments(), 0);
}

// R4, R24: an `Authorization` that `Connection` nominates does not scope the key: the
// upstream would run an anonymous request, so it is unscoped and refused, and nothing
// lands in alice's scope.
#[tokio::test]
async fn r04_connection_nominated_scope_header_never_scopes() {
    let api = Framework::spawn().await;
    let front = proxy(&api, "", |_| {}).await;
    let answer = send(
        front.addr(),
        &request(
            "POST",
            "/v1/orders",
            &[
                "connection: authorization",
                "authorization: Bearer alice",
                "idempotency-key: scoped-1",
            ],
        ),
    )
    .await;
    answer.is(400, ProblemKind::UnscopedRequest);
    assert!(api.seen().is_empty(), "an unscoped request never runs");
    let alice = send(
        front.addr(),
        &request(
            "POST",
            "/v1/orders",
            &["authorization: Bearer alice", "idempotency-key: scoped-1"],
        ),
    )
    .await;
    assert_eq!(alice.status, 201, "{alice:?}");
    assert!(
        !alice.replayed(),
        "alice got the anonymous answer: {alice:?}"
    );
    assert_eq!(api.seen().len(), 1);
    assert_eq!(api.seen()[0].authorization.as_deref(), Some("Bearer alice"));
}

// R5, R24: a significant header that `Connection` nominates is not fingerprinted: a
// retry that does send it upstream is a different request (422), not a replay.
#[tokio::test]
async fn r05_connection_nominated_significant_header_is_not_fingerprinted() {
    let api = Framework::spawn().await;
    let front = proxy(&api, "", |c| {
        c.policy = Policy::builder()
            .significant_headers(["x-account".parse().unwrap()])
            .build()
            .unwrap();
    })
    .await;
    let base = [
        "authorization: Bearer alice",
        "idempotency-key: fp-1",
        "x-account: a",
    ];
    let mut hop = base.to_vec();
    hop.push("connection: x-account");
    let first = send(front.addr(), &request("POST", "/v1/orders", &hop)).await;
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(api.seen()[0].account, None);
    // The same hop-by-hop request again: the same request, replayed.
    let again = send(front.addr(), &request("POST", "/v1/orders", &hop)).await;
    assert!(again.replayed(), "{again:?}");
    let with_account = send(front.addr(), &request("POST", "/v1/orders", &base)).await;
    with_account.is(422, ProblemKind::PayloadMismatch);
    assert_eq!(api.seen().len(), 1);
}

// R24: RFC 9112 §3.2: an HTTP/1.1 request without `Host`, or with two, or with an
// invalid one, is 400; HTTP/1.0 may leave it out.
#[tokio::test]
async fn r24_missing_or_repeated_host_is_400() {
    let api = Framework::spawn().await;
    let front = proxy(&api, "", |_| {}).await;
    for raw in [
        "POST /v1/orders HTTP/1.1\r\nauthorization: Bearer raw\r\nidempotency-key: h-1\r\ncontent-length: 2\r\n\r\n{}",
        "POST /v1/orders HTTP/1.1\r\nhost: a\r\nhost: b\r\nauthorization: Bearer raw\r\nidempotency-key: h-2\r\ncontent-length: 2\r\n\r\n{}",
        "POST /v1/orders HTTP/1.1\r\nhost: a\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}",
        "POST /v1/orders HTTP/1.1\r\nhost: a\r\nconnection: host\r\nhost: b\r\ncontent-length: 2\r\n\r\n{}",
        "POST /v1/orders HTTP/1.1\r\nhost: a/b\r\ncontent-length: 2\r\n\r\n{}",
        "POST /v1/orders HTTP/1.1\r\nhost: user@a\r\ncontent-length: 2\r\n\r\n{}",
    ] {
        send(front.addr(), raw)
            .await
            .is(400, ProblemKind::AmbiguousRequest);
    }
    assert!(api.seen().is_empty(), "{:?}", api.seen());
    let answer = send(
        front.addr(),
        "POST /v1/orders HTTP/1.0\r\nauthorization: Bearer raw\r\nidempotency-key: h-10\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(api.seen().len(), 1);
}
