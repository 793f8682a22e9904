//! TLS through the `idem` binary: an `https://` upstream with its own authority
//! (`--upstream-ca-file`), over HTTP/1.1 and HTTP/2; a listener terminating TLS
//! (`--tls-cert`, `--tls-key`) for HTTP/1.1 and HTTP/2 clients; and its certificate
//! swapped on disk or on SIGHUP without dropping the listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use idem_testkit::{Client, CountingUpstream, Resp, TestPki};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tower::ServiceExt as _;

use crate::common::{self, Proc};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// A test PKI in a temporary directory.
fn pki() -> (tempfile::TempDir, TestPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::make(dir.path());
    (dir, pki)
}

/// The counting upstream's routes served over TLS with the PKI's `localhost`
/// certificate, offering `alpn`. While `fail` is set, every request is answered by
/// breaking the connection (a reset stream on HTTP/2).
struct TlsUpstream {
    port: u16,
    fail: Arc<AtomicBool>,
    /// Connections that negotiated `h2`, and all connections.
    h2: Arc<AtomicUsize>,
    all: Arc<AtomicUsize>,
}

impl TlsUpstream {
    async fn spawn(pki: &TestPki, counting: &CountingUpstream, alpn: &[&[u8]]) -> Self {
        Self::spawn_with(pki, counting, alpn, false).await
    }

    /// With `mtls`, clients must show a certificate the PKI's authority signed.
    async fn spawn_with(
        pki: &TestPki,
        counting: &CountingUpstream,
        alpn: &[&[u8]],
        mtls: bool,
    ) -> Self {
        let key = PrivateKeyDer::from_pem_file(pki.server_key()).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if mtls {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(&pki.ca_cert()) {
                roots.add(cert).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(certs(&pki.server_cert()), key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let router = counting.router();
        let fail = Arc::new(AtomicBool::new(false));
        let (h2, all) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let up = Self {
            port,
            fail: Arc::clone(&fail),
            h2: Arc::clone(&h2),
            all: Arc::clone(&all),
        };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, router, fail) = (acceptor.clone(), router.clone(), fail.clone());
                let (h2, all) = (h2.clone(), all.clone());
                tokio::spawn(async move {
                    // A handshake the proxy refused (wrong authority) just ends here.
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    all.fetch_add(1, Ordering::SeqCst);
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        h2.fetch_add(1, Ordering::SeqCst);
                    }
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (router, fail) = (router.clone(), fail.clone());
                        async move {
                            if fail.load(Ordering::SeqCst) {
                                return Err(std::io::Error::other("the test upstream broke"));
                            }
                            Ok(router.oneshot(req).await.unwrap())
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        up
    }

    /// The upstream URL: the certificate names `localhost` only.
    fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

/// `idem serve` on `store` in front of the `https://` upstream `url`, with `extra`
/// settings; its log goes to `log` when given.
async fn via_https(store: &str, url: &str, extra: &[&str], log: Option<&Path>) -> Proc {
    let mut args = vec!["--store", store, "--upstream", url];
    args.extend_from_slice(extra);
    match log {
        Some(log) => common::serve_logged(&args, log).await,
        None => common::serve(&args).await,
    }
}

/// `POST /charges` with `key` and an empty JSON object, through `proc`.
async fn charge_once(proc: &Proc, key: &str) -> Resp {
    Client::new(proc.addr).post("/charges", key, "{}").await
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not after 30 s");
}

/// R8, R9, R10 and R12 through `idem serve` in front of an `https://` upstream that
/// offers `alpn`: the upstream's certificate is verified against `--upstream-ca-file`.
async fn spec_core_over_https(alpn: &[&[u8]]) {
    let (_dir, pki) = pki();
    let counting = CountingUpstream::spawn().await;
    let up = TlsUpstream::spawn(&pki, &counting, alpn).await;
    let ca = pki.ca_cert().display().to_string();
    let url = up.url();
    let proc = via_https("memory", &url, &["--upstream-ca-file", &ca], None).await;
    let client = Client::new(proc.addr);

    // R8: the replay is the stored status, headers and body byte for byte.
    let body = "{\"amount\":\"\u{e9}\u{1f600}\"}";
    let first = client.post("/charges", "tls-bytes", body).await;
    assert_eq!(first.status, 201, "{first:?}");
    let retry = client.post("/charges", "tls-bytes", body).await;
    assert_eq!(retry.status, first.status);
    assert_eq!(retry.body, first.body);
    for h in ["content-type", "x-charge", "x-seen-key", "x-secret"] {
        assert_eq!(retry.headers.get(h), first.headers.get(h), "{h}");
    }
    assert!(retry.replayed() && !first.replayed());
    assert_eq!(counting.executions_with_key("tls-bytes"), 1);

    // R9: another payload under the key is 422, the upstream not called.
    let other = client.post("/charges", "tls-bytes", "{\"amount\":2}").await;
    assert_eq!(other.status, 422, "{other:?}");
    assert_eq!(counting.executions_with_key("tls-bytes"), 1);

    // R10: a duplicate while the first is in flight is 409 with Retry-After.
    let slow = {
        let c = client.clone();
        tokio::spawn(async move { c.post("/charges?delay_ms=1500", "tls-dup", "{}").await })
    };
    eventually("the first execution", || {
        counting.executions_with_key("tls-dup") == 1
    })
    .await;
    let dup = client.post("/charges?delay_ms=1500", "tls-dup", "{}").await;
    assert_eq!(dup.status, 409, "{dup:?}");
    assert!(dup.header("retry-after").is_some());
    assert_eq!(slow.await.unwrap().status, 201);
    assert_eq!(counting.executions_with_key("tls-dup"), 1);

    // R12: the upstream breaks the exchange: 502, the key is released, and a retry
    // runs the operation.
    up.fail.store(true, Ordering::SeqCst);
    let broken = client.post("/charges", "tls-broken", "{}").await;
    assert_eq!(broken.status, 502, "{broken:?}");
    up.fail.store(false, Ordering::SeqCst);
    let again = client.post("/charges", "tls-broken", "{}").await;
    assert_eq!(again.status, 201, "{again:?}");
    assert!(!again.replayed());
    assert_eq!(counting.executions_with_key("tls-broken"), 1);

    let (h2, all) = (up.h2.load(Ordering::SeqCst), up.all.load(Ordering::SeqCst));
    assert!(all > 0);
    if alpn.contains(&&b"h2"[..]) {
        assert_eq!(
            h2, all,
            "the proxy should speak HTTP/2 to an upstream offering it"
        );
    } else {
        assert_eq!(h2, 0);
    }
    proc.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r08_r09_r10_r12_over_an_https_upstream_http1() {
    spec_core_over_https(&[b"http/1.1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r08_r09_r10_r12_over_an_https_upstream_http2() {
    spec_core_over_https(&[b"h2", b"http/1.1"]).await;
}

/// R12: an upstream whose certificate the configured authority did not sign is a 502,
/// logged with the upstream and the TLS error, and the key is released: the same
/// request through a proxy that trusts the right authority, on the same store, runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r12_wrong_upstream_ca_is_502_and_releases_the_key() {
    let (dir, pki) = pki();
    let counting = CountingUpstream::spawn().await;
    let up = TlsUpstream::spawn(&pki, &counting, &[b"h2", b"http/1.1"]).await;
    let store = format!("file:{}", dir.path().join("store").display());
    let url = up.url();
    let log = dir.path().join("idem.log");
    let wrong = pki.other_ca_cert().display().to_string();
    let proc = via_https(&store, &url, &["--upstream-ca-file", &wrong], Some(&log)).await;
    let refused = charge_once(&proc, "tls-ca").await;
    assert_eq!(refused.status, 502, "{refused:?}");
    assert_eq!(counting.executions(), 0);
    proc.kill();
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("upstream request failed"))
        .unwrap_or_else(|| panic!("no failure line in\n{text}"));
    assert!(line.contains(&url), "{line}");
    assert!(line.contains("UnknownIssuer"), "{line}");

    let ca = pki.ca_cert().display().to_string();
    let proc = via_https(&store, &url, &["--upstream-ca-file", &ca], None).await;
    let ran = charge_once(&proc, "tls-ca").await;
    assert_eq!(ran.status, 201, "{ran:?}");
    assert!(!ran.replayed());
    assert_eq!(counting.executions_with_key("tls-ca"), 1);
    proc.kill();
}

/// `--upstream-insecure` skips verification (for tests), and says so in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_insecure_skips_verification_loudly() {
    let (dir, pki) = pki();
    let counting = CountingUpstream::spawn().await;
    let up = TlsUpstream::spawn(&pki, &counting, &[b"http/1.1"]).await;
    let url = up.url();
    let log = dir.path().join("idem.log");
    let proc = via_https("memory", &url, &["--upstream-insecure"], Some(&log)).await;
    let resp = charge_once(&proc, "tls-insecure").await;
    assert_eq!(resp.status, 201, "{resp:?}");
    proc.kill();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("WARN") && l.contains("NOT verified")),
        "{text}"
    );
}

/// An upstream that asks for a client certificate: without `--upstream-client-cert`
/// the handshake fails (502, nothing ran); with the PKI's client certificate it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_client_certificate_for_mtls() {
    let (_dir, pki) = pki();
    let counting = CountingUpstream::spawn().await;
    let up = TlsUpstream::spawn_with(&pki, &counting, &[b"h2", b"http/1.1"], true).await;
    let url = up.url();
    let ca = pki.ca_cert().display().to_string();
    let (cert, key) = (
        pki.client_cert().display().to_string(),
        pki.client_key().display().to_string(),
    );
    let proc = via_https("memory", &url, &["--upstream-ca-file", &ca], None).await;
    let refused = charge_once(&proc, "tls-mtls").await;
    assert_eq!(refused.status, 502, "{refused:?}");
    assert_eq!(counting.executions(), 0);
    proc.kill();

    let with_cert = [
        "--upstream-ca-file",
        &ca,
        "--upstream-client-cert",
        &cert,
        "--upstream-client-key",
        &key,
    ];
    let proc = via_https("memory", &url, &with_cert, None).await;
    let ran = charge_once(&proc, "tls-mtls").await;
    assert_eq!(ran.status, 201, "{ran:?}");
    assert_eq!(counting.executions_with_key("tls-mtls"), 1);
    proc.kill();
}

/// A TLS client of the proxy: trusts the PKI's authority, names `localhost`, offers
/// `alpn`.
async fn tls_connect(addr: SocketAddr, pki: &TestPki, alpn: &[u8]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(&pki.ca_cert()) {
        roots.add(cert).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    tls
}

/// The certificate the proxy presented on `tls`.
fn presented(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

fn charge(key: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri("https://localhost/charges")
        .header("host", "localhost")
        .header("idempotency-key", key)
        // Whose key it is (R4).
        .header("authorization", idem_testkit::client::CREDENTIAL)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn collect(resp: http::Response<Incoming>) -> Resp {
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// One exchange on an HTTP/1.1 connection, once it is ready for the next request.
async fn exchange(
    send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Resp {
    send.ready().await.unwrap();
    collect(send.send_request(req).await.unwrap()).await
}

/// An HTTP/1.1 connection over TLS; its task ends with the connection.
async fn h1(tls: TlsStream<TcpStream>) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// The proxy terminating TLS with the certificate and key `files` (PEM text), written
/// to files in `dir` that a test may replace, in front of `upstream` (a URL).
async fn tls_proxy(
    dir: &Path,
    files: (Vec<u8>, Vec<u8>),
    upstream: &str,
    extra: &[&str],
) -> (Proc, PathBuf, PathBuf) {
    let (cert, key) = (dir.join("tls.pem"), dir.join("tls.key"));
    std::fs::write(&cert, files.0).unwrap();
    std::fs::write(&key, files.1).unwrap();
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let mut args = vec![
        "--store",
        "memory",
        "--upstream",
        upstream,
        "--tls-cert",
        &c,
        "--tls-key",
        &k,
    ];
    args.extend_from_slice(extra);
    let proc = common::serve_logged(&args, &dir.join("idem.log")).await;
    (proc, cert, key)
}

/// The URL of a plain HTTP upstream.
fn http(counting: &CountingUpstream) -> String {
    format!("http://{}", counting.addr())
}

/// The PKI's `localhost` certificate and key, as PEM text.
fn server_files(pki: &TestPki) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(pki.server_cert()).unwrap(),
        std::fs::read(pki.server_key()).unwrap(),
    )
}

/// `idem serve --tls-cert --tls-key`: an HTTP/1.1 and an HTTP/2 client (ALPN) each get
/// a first answer and its replay (R8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r08_replay_over_terminated_tls_http1_and_http2() {
    let (dir, pki) = pki();
    let counting = CountingUpstream::spawn().await;
    let (proc, _, _) = tls_proxy(dir.path(), server_files(&pki), &http(&counting), &[]).await;

    let mut send = h1(tls_connect(proc.addr, &pki, b"http/1.1").await).await;
    let first = exchange(&mut send, charge("tls-h1", "{}")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let replay = exchange(&mut send, charge("tls-h1", "{}")).await;
    assert!(replay.replayed(), "{replay:?}");
    assert_eq!(replay.body, first.body);

    let tls = tls_connect(proc.addr, &pki, b"h2").await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let first = collect(send.send_request(charge("tls-h2", "{}")).await.unwrap()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let replay = collect(send.send_request(charge("tls-h2", "{}")).await.unwrap()).await;
    assert!(replay.replayed(), "{replay:?}");
    assert_eq!(replay.body, first.body);
    assert_eq!(counting.executions_with_key("tls-h1"), 1);
    assert_eq!(counting.executions_with_key("tls-h2"), 1);
}

/// R25: a TLS handshake that stalls (half a ClientHello, then nothing) is cut off by the
/// read timeout from the accept, as a head that does not arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r25_a_stalled_tls_handshake_is_closed_at_the_read_timeout() {
    let (dir, pki) = pki();
    let counting = CountingUpstream::spawn().await;
    let (proc, _, _) = tls_proxy(
        dir.path(),
        server_files(&pki),
        &http(&counting),
        &["--request-read-timeout", "1s"],
    )
    .await;
    let mut stream = TcpStream::connect(proc.addr).await.unwrap();
    // A handshake record header announcing 512 bytes, and 4 of them.
    stream
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await {
            Err(_) => panic!("the stalled handshake is still open after 30 s"),
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => {}
        }
    }
    // The listener still serves.
    let tls = tls_connect(proc.addr, &pki, b"http/1.1").await;
    let mut send = h1(tls).await;
    let ok = exchange(&mut send, charge("tls-after", "{}")).await;
    assert_eq!(ok.status, StatusCode::CREATED);
}

/// R25 over TLS: a header block above `--max-header-bytes` is 431, and a keep-alive
/// connection left idle is closed after `--idle-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r25_header_limit_and_idle_timeout_hold_over_tls() {
    let (dir, pki) = pki();
    let counting = CountingUpstream::spawn().await;
    let limits = ["--max-header-bytes", "8KiB", "--idle-timeout", "1s"];
    let (proc, _, _) = tls_proxy(dir.path(), server_files(&pki), &http(&counting), &limits).await;
    let mut send = h1(tls_connect(proc.addr, &pki, b"http/1.1").await).await;
    let mut big = charge("tls-big", "{}");
    big.headers_mut()
        .insert("x-big", "a".repeat(16 * 1024).parse().unwrap());
    let refused = exchange(&mut send, big).await;
    assert_eq!(refused.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(counting.executions(), 0);

    let mut send = h1(tls_connect(proc.addr, &pki, b"http/1.1").await).await;
    let ok = exchange(&mut send, charge("tls-idle", "{}")).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    eventually("the idle connection to close", || send.is_closed()).await;
}

/// R25 over TLS: beyond `--max-connections` a connection waits in the backlog, its
/// handshake unanswered, until an open one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r25_max_connections_holds_over_tls() {
    let (dir, pki) = pki();
    let counting = CountingUpstream::spawn().await;
    let limits = ["--max-connections", "1"];
    let (proc, _, _) = tls_proxy(dir.path(), server_files(&pki), &http(&counting), &limits).await;
    // The start-up probe's connection may still hold the slot: the first handshake
    // waits for its read timeout at worst.
    let first = tls_connect(proc.addr, &pki, b"http/1.1").await;
    let (addr, pki2) = (proc.addr, pki.clone());
    let second = tokio::spawn(async move { tls_connect(addr, &pki2, b"http/1.1").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "a second connection was served at once"
    );
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the second connection is served once the first closes")
        .unwrap();
    let mut send = h1(second).await;
    let ok = exchange(&mut send, charge("tls-max", "{}")).await;
    assert_eq!(ok.status, StatusCode::CREATED);
}

/// Requests that came over TLS reach the upstream with `X-Forwarded-Proto: https`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_proto_is_https_over_tls() {
    let (dir, pki) = pki();
    let echo = axum::Router::new().route(
        "/proto",
        axum::routing::get(|headers: http::HeaderMap| async move {
            headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned()
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, echo).await });
    let plain = common::serve(&["--store", "memory", "--upstream", &upstream]).await;
    let resp = Client::new(plain.addr)
        .send(Method::GET, "/proto", &[], b"")
        .await;
    assert_eq!(resp.body, "http");
    let (tls, _, _) = tls_proxy(dir.path(), server_files(&pki), &upstream, &[]).await;
    let mut send = h1(tls_connect(tls.addr, &pki, b"http/1.1").await).await;
    let req = Request::get("https://localhost/proto")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(exchange(&mut send, req).await.body, "https");
}

/// Waits until a new connection is presented `want`; every connection on the way must
/// complete its handshake (the listener is never dropped).
async fn until_presented(addr: SocketAddr, pki: &TestPki, want: &CertificateDer<'_>) {
    for _ in 0..300 {
        let tls = tls_connect(addr, pki, b"http/1.1").await;
        if presented(&tls) == *want {
            // And it serves requests.
            let mut send = h1(tls).await;
            let req = Request::get("https://localhost/")
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap();
            assert_eq!(exchange(&mut send, req).await.status, 200);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the new certificate was not presented after 30 s");
}

/// A certificate replaced on disk is picked up by new connections; an open connection
/// keeps working; a broken file keeps the certificate in use, with an error line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_on_disk_is_used_by_new_connections() {
    let (dir, pki) = pki();
    let (rotated_cert, rotated_key) = pki.server_leaf("rotated", "idem rotated");
    let counting = CountingUpstream::spawn().await;
    let (proc, cert, key) = tls_proxy(dir.path(), server_files(&pki), &http(&counting), &[]).await;
    let original = certs(&pki.server_cert()).remove(0);
    let rotated = certs(&rotated_cert).remove(0);
    assert_ne!(original, rotated);

    let open = tls_connect(proc.addr, &pki, b"http/1.1").await;
    assert_eq!(presented(&open), original);
    let mut open = h1(open).await;
    let first = exchange(&mut open, charge("tls-open", "{}")).await;
    assert_eq!(first.status, StatusCode::CREATED);

    // The key first, then the certificate, as a renewal script would: the pair may be
    // read half-way, which must not stick.
    std::fs::copy(&rotated_key, &key).unwrap();
    std::fs::copy(&rotated_cert, &cert).unwrap();
    until_presented(proc.addr, &pki, &rotated).await;
    let subject = presented(&tls_connect(proc.addr, &pki, b"http/1.1").await);
    assert!(
        subject.windows(12).any(|w| w == b"idem rotated"),
        "the subject is CN=idem rotated"
    );

    // The connection opened before the swap still works.
    let replay = exchange(&mut open, charge("tls-open", "{}")).await;
    assert!(replay.replayed(), "{replay:?}");

    // A broken certificate file: the rotated certificate stays, and the log says so.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let log = dir.path().join("idem.log");
    eventually("the reload error line", || {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("TLS certificate not reloaded"))
    })
    .await;
    let tls = tls_connect(proc.addr, &pki, b"http/1.1").await;
    assert_eq!(presented(&tls), rotated);
    proc.kill();
}

/// The PEM text of `path` padded with blank lines to `len` bytes.
fn padded(path: &Path, len: usize) -> Vec<u8> {
    let mut text = std::fs::read(path).unwrap();
    assert!(text.len() <= len);
    text.resize(len, b'\n');
    text
}

/// SIGHUP reloads the certificate even when nothing on disk looks changed: the files
/// are rewritten in place with their size and modification time kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate() {
    let (dir, pki) = pki();
    let (rotated_cert, rotated_key) = pki.server_leaf("rotated", "idem rotated");
    let counting = CountingUpstream::spawn().await;
    let files = (
        padded(&pki.server_cert(), 4096),
        padded(&pki.server_key(), 1024),
    );
    let (proc, cert, key) = tls_proxy(dir.path(), files, &http(&counting), &[]).await;
    let original = certs(&pki.server_cert()).remove(0);
    let rotated = certs(&rotated_cert).remove(0);
    assert_eq!(
        presented(&tls_connect(proc.addr, &pki, b"http/1.1").await),
        original
    );

    for (path, new, len) in [(&key, &rotated_key, 1024), (&cert, &rotated_cert, 4096)] {
        let modified = std::fs::metadata(path).unwrap().modified().unwrap();
        std::fs::write(path, padded(new, len)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
    }
    // The files look unchanged, so the poll leaves them be.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        presented(&tls_connect(proc.addr, &pki, b"http/1.1").await),
        original
    );
    let pid = proc.child.id().to_string();
    let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(status.success());
    until_presented(proc.addr, &pki, &rotated).await;
    proc.kill();
}

/// A missing certificate, or a key that does not go with it: one line, exit 2.
#[test]
fn unusable_tls_files_are_one_line_and_exit_2() {
    let (_dir, pki) = pki();
    let cert = pki.server_cert().display().to_string();
    let wrong_key = pki.client_key().display().to_string();
    for (args, want) in [
        (
            vec![
                "--tls-cert",
                "/nonexistent/tls.pem",
                "--tls-key",
                &wrong_key,
            ],
            "--tls-cert /nonexistent/tls.pem",
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &wrong_key],
            "does not go with --tls-cert",
        ),
    ] {
        let out = common::serve_command().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].starts_with("idem: ") && lines[0].contains(want),
            "{stderr}"
        );
    }
}
