//! `rediss://`: the store over TLS, against TLS-only `redis-server`s of the test's own:
//! one with a self-signed certificate (`#insecure`), one with a test PKI that checks the
//! server against `tls_ca_cert_file` and requires a client certificate.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use idem_core::store::testkit::{claim_req, id, snapshot};
use idem_core::store::{Claim, Finish, Store};
use idem_redis::{RedisStore, RedisStoreConfig};

struct TlsRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let made = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl must be installed");
        assert!(made.success());
        let (child, port) = spawn_tls_redis(&cert, &key, &cert, false);
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

/// A TLS-only `redis-server` on a free port with these files; `auth_clients` makes it
/// require a client certificate signed by `ca`.
fn spawn_tls_redis(cert: &Path, key: &Path, ca: &Path, auth_clients: bool) -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--tls-cert-file")
        .arg(cert)
        .arg("--tls-key-file")
        .arg(key)
        .arg("--tls-ca-cert-file")
        .arg(ca)
        .args([
            "--tls-auth-clients",
            if auth_clients { "yes" } else { "no" },
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed");
    (child, port)
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn rediss_claims_and_completes_over_tls() {
    let server = TlsRedis::start();
    let url = format!("rediss://127.0.0.1:{}/#insecure", server.port);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let store = loop {
        match RedisStore::connect(&url, RedisStoreConfig::default()).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no TLS connection: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let id = id("tls");
    let Claim::Acquired(lease) = store.claim(&claim_req(&id, 1)).await.unwrap() else {
        panic!("expected to acquire")
    };
    let done = store
        .complete(&lease, &snapshot(b"over tls"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done, Finish::Done);
    assert_eq!(
        store.claim(&claim_req(&id, 1)).await.unwrap(),
        Claim::Completed(snapshot(b"over tls"))
    );
}

/// Connects, retrying while the server starts; answers the last error once it is up
/// (a refused handshake is not a server still starting).
async fn connect_when_up(url: &str, port: u16) -> Result<RedisStore, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis-server did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    RedisStore::connect(url, RedisStoreConfig::default())
        .await
        .map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        })
}

#[tokio::test]
async fn rediss_verifies_the_server_with_a_ca_file_and_presents_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = idem_testkit::TestPki::make(dir.path());
    let (child, port) =
        spawn_tls_redis(&pki.server_cert(), &pki.server_key(), &pki.ca_cert(), true);
    let _server = TlsRedis {
        child,
        port,
        _dir: dir,
    };
    let ca = pki.ca_cert();
    let client = format!(
        "tls_cert_file={}&tls_key_file={}",
        pki.client_cert().display(),
        pki.client_key().display()
    );
    let url = format!(
        "rediss://localhost:{port}/?tls_ca_cert_file={}&{client}",
        ca.display()
    );
    let store = connect_when_up(&url, port).await.unwrap();
    let id = id("tls-verified");
    let Claim::Acquired(lease) = store.claim(&claim_req(&id, 1)).await.unwrap() else {
        panic!("expected to acquire")
    };
    let done = store
        .complete(&lease, &snapshot(b"verified"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done, Finish::Done);
    assert_eq!(
        store.claim(&claim_req(&id, 1)).await.unwrap(),
        Claim::Completed(snapshot(b"verified"))
    );

    // The server's certificate names localhost, not 127.0.0.1.
    let by_ip = format!(
        "rediss://127.0.0.1:{port}/?tls_ca_cert_file={}&{client}",
        ca.display()
    );
    let e = connect_when_up(&by_ip, port)
        .await
        .expect_err("name checked");
    assert!(e.contains("not valid for name"), "{e}");
    // An authority that did not sign it, or the system's store, does not trust it.
    let other = format!(
        "rediss://localhost:{port}/?tls_ca_cert_file={}&{client}",
        pki.other_ca_cert().display()
    );
    let e = connect_when_up(&other, port)
        .await
        .expect_err("chain checked");
    assert!(e.contains("UnknownIssuer"), "{e}");
    let system = format!("rediss://localhost:{port}/?{client}");
    let e = connect_when_up(&system, port)
        .await
        .expect_err("chain checked");
    assert!(e.contains("UnknownIssuer"), "{e}");
    // The server requires a client certificate.
    let anonymous = format!(
        "rediss://localhost:{port}/?tls_ca_cert_file={}",
        ca.display()
    );
    assert!(connect_when_up(&anonymous, port).await.is_err());
}
