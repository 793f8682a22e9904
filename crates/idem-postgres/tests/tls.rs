//! `PostgresStore` over TLS, against PostgreSQL servers of the tests' own
//! ([`PgCluster`]) that accept TLS connections only: the store contract with
//! `sslmode=verify-full`, what each `sslmode` accepts and refuses, and client
//! certificates.

use std::sync::OnceLock;
use std::time::Duration;

use idem_core::record::OwnerToken;
use idem_core::store::StoreError;
use idem_postgres::{PostgresStore, PostgresStoreConfig};
use idem_testkit::{PgCluster, PgClusterOptions};

/// One TLS-only cluster for the tests of this file; it stops when the process exits.
fn cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        PgCluster::start(PgClusterOptions {
            ssl: true,
            ..PgClusterOptions::default()
        })
    })
}

fn config() -> PostgresStoreConfig {
    PostgresStoreConfig {
        schema: format!("idem_tls_{}", &OwnerToken::random().to_hex()[..16]),
        // As the plain contract suite: 400 parallel claims must finish well within a lease.
        pool_size: 8,
        ..PostgresStoreConfig::default()
    }
}

fn verify_full(cluster: &PgCluster) -> String {
    cluster.url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            cluster.ca_cert().display()
        ),
    )
}

async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
    PostgresStore::connect(url, config()).await
}

/// Whether the store's pooled connection is encrypted, as the server sees it.
async fn encrypted(store: &PostgresStore) -> bool {
    let client = store.pool().get().await.unwrap();
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Every error in the chain, for matching on the cause.
fn chain(e: &StoreError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// The shared store contract, every connection verified against the cluster's CA.
mod contract {
    use super::*;
    use idem_core::store::testkit::RealTimeFixture;

    idem_core::store_tests!(async {
        let store = PostgresStore::connect(&verify_full(cluster()), config())
            .await
            .unwrap_or_else(|e| panic!("TLS connect: {}\n{}", chain(&e), cluster().log()));
        assert!(encrypted(&store).await);
        // The cluster is thrown away at the end: the schema needs no cleanup.
        RealTimeFixture::new(store, Duration::from_secs(1), ())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sslmode_accepts_and_refuses_what_libpq_does() {
    let c = cluster();
    let ca = c.ca_cert();
    let other = c.other_ca_cert();
    let ok = |url: String| async move {
        let store = connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {}", chain(&e)));
        assert!(encrypted(&store).await, "{url}");
    };
    let refused = |url: String| async move {
        match connect(&url).await {
            Ok(_) => panic!("{url} connected"),
            Err(e) => chain(&e),
        }
    };

    // Encrypted without authenticating the server: any certificate passes.
    ok(c.url("localhost", "")).await; // prefer, the default
    ok(c.url("127.0.0.1", "sslmode=prefer")).await;
    ok(c.url("127.0.0.1", "sslmode=require")).await;
    ok(format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require",
        c.port()
    ))
    .await;
    // The server accepts TLS only: a plain connection is refused by pg_hba.conf.
    let e = refused(c.url("localhost", "sslmode=disable")).await;
    assert!(e.contains("no encryption"), "{e}");

    // verify-full checks the chain and the name: `localhost` is in the certificate,
    // `127.0.0.1` is not.
    ok(verify_full(c)).await;
    ok(format!(
        "host=localhost port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert='{}'",
        c.port(),
        ca.display()
    ))
    .await;
    let e = refused(c.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    ))
    .await;
    assert!(e.contains("not valid for name"), "{e}");
    // verify-ca checks the chain only.
    ok(c.url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
    ))
    .await;
    // An authority that did not sign the server's certificate fails every verifying
    // mode, `require` with a CA file included (it verifies the chain, as in libpq).
    for mode in ["verify-full", "verify-ca", "require"] {
        let e = refused(c.url(
            "localhost",
            &format!("sslmode={mode}&sslrootcert={}", other.display()),
        ))
        .await;
        assert!(e.contains("UnknownIssuer"), "{mode}: {e}");
    }
    // The operating system's store does not know the test authority either.
    let e = refused(c.url("localhost", "sslmode=verify-full&sslrootcert=system")).await;
    assert!(e.contains("UnknownIssuer"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_when_the_server_asks() {
    let c = PgCluster::start(PgClusterOptions {
        ssl: true,
        client_certs: true,
    });
    let base = format!("sslmode=verify-full&sslrootcert={}", c.ca_cert().display());
    let e = match connect(&c.url("localhost", &base)).await {
        Ok(_) => panic!("connected without a client certificate"),
        Err(e) => chain(&e),
    };
    assert!(e.contains("certificate"), "{e}");
    let url = c.url(
        "localhost",
        &format!(
            "{base}&sslcert={}&sslkey={}",
            c.client_cert().display(),
            c.client_key().display()
        ),
    );
    let store = connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{}\n{}", chain(&e), c.log()));
    assert!(encrypted(&store).await);
    // The key and the certificate must belong together.
    let wrong = c.url(
        "localhost",
        &format!(
            "{base}&sslcert={}&sslkey={}",
            c.client_cert().display(),
            c.other_ca_cert().with_extension("key").display()
        ),
    );
    let e = match connect(&wrong).await {
        Ok(_) => panic!("a key of another certificate was accepted"),
        Err(e) => chain(&e),
    };
    assert!(e.contains("sslcert"), "{e}");
}
