//! `rediss://`: the store over TLS, against a TLS-only `redis-server` of the test's own
//! with a self-signed certificate made by `openssl`.

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
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&cert)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        Self {
            child,
            port,
            _dir: dir,
        }
    }
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
