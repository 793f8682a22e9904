//! `idem serve`'s wiring in-process (`idem_proxy::run`): settings resolved from the
//! command line, the store opened and sealed, the admin listener on the same store.

use clap::Parser as _;
use http::Method;
use idem_proxy::cli::{Cli, Command};
use idem_testkit::{Client, CountingUpstream};

const TOKEN: &str = "0123456789abcdef-token";
const K1: &str = "k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

// The admin API reads through the same sealed
// store as the proxy, so it finds the record the proxy stored under its key's digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_seals_the_store_and_the_admin_api_reads_through_it() {
    let upstream = CountingUpstream::spawn().await;
    let up = format!("http://{}", upstream.addr());
    let cli = Cli::try_parse_from([
        "idem",
        "serve",
        "--upstream",
        &up,
        "--store",
        "memory",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token",
        TOKEN,
        "--encryption-keys",
        K1,
        "--scope-header",
        "none",
    ])
    .unwrap();
    let Command::Serve(args) = cli.command else {
        unreachable!()
    };
    let config = args.resolve().unwrap().serve_config().unwrap();
    assert!(config.encryption.is_some());
    let bound = idem_proxy::run::bind(config).await.unwrap();
    let addr = bound.addr().unwrap();
    let admin_addr = bound.admin_addr().unwrap().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(bound.run(async move {
        let _ = stopped.await;
    }));

    let client = Client::new(addr);
    assert_eq!(client.post("/charges", "k-1", "{}").await.status, 201);
    assert!(client.post("/charges", "k-1", "{}").await.replayed());
    assert_eq!(upstream.executions_of("/charges"), 1);

    let admin = Client::new(admin_addr).anonymous();
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    let record = admin
        .send(Method::GET, "/admin/keys/global/k-1", &auth, b"")
        .await;
    assert_eq!(record.status, 200, "{record:?}");
    assert_eq!(record.json()["state"], "completed");
    let missing = admin
        .send(Method::GET, "/admin/keys/global/k-2", &auth, b"")
        .await;
    assert_eq!(missing.status, 404);
    let refused = admin
        .send(Method::GET, "/admin/keys/global/k-1", &[], b"")
        .await;
    assert_eq!(refused.status, 401);
    let metrics = admin.send(Method::GET, "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("idem_requests_total{outcome=\"replayed\"} 1"),
        "{text}"
    );

    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
    // The admin listener went with the proxy.
    assert!(tokio::net::TcpStream::connect(admin_addr).await.is_err());
}
