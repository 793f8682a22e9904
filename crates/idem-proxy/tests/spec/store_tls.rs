//! `idem serve` on PostgreSQL over TLS, against a TLS-only server of the test's own:
//! `sslmode=verify-full` with the right authority protects requests; with the wrong one
//! start-up fails with one line naming the cause.

use std::process::Command;

use idem_testkit::{Client, CountingUpstream, PgCluster, PgClusterOptions};

use crate::common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_postgres_protects_and_the_wrong_ca_is_one_line() {
    let cluster = PgCluster::start(PgClusterOptions {
        ssl: true,
        ..PgClusterOptions::default()
    });
    let upstream = CountingUpstream::spawn().await;
    let up = format!("http://{}", upstream.addr());
    let store = cluster.url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}&schema=idem_tls&pool_size=4",
            cluster.ca_cert().display()
        ),
    );
    let proc = common::serve(&["--store", &store, "--upstream", &up]).await;
    let client = Client::new(proc.addr);
    let first = client.post("/charges", "k-tls", r#"{"amount":1}"#).await;
    assert_eq!(first.status, 201);
    let again = client.post("/charges", "k-tls", r#"{"amount":1}"#).await;
    assert!(again.replayed(), "{again:?}");
    assert_eq!(upstream.executions_with_key("k-tls"), 1);
    proc.kill();

    let wrong = cluster.url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}&schema=idem_tls",
            cluster.other_ca_cert().display()
        ),
    );
    let out = Command::new(common::BIN)
        .args(["serve", "--store", &wrong, "--upstream", &up])
        .args(["--listen", &common::free_addr().to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("idem: "), "{stderr}");
    assert!(lines[0].contains("UnknownIssuer"), "{stderr}");
}
