//! R22: a route that holds keys whose request may have reached the upstream runs each
//! key at most once, through the `idem` binary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::Method;
use idem::core::ProblemKind;
use idem_testkit::{Client, Resp};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::common::{free_addr, read_request, serve};

/// An upstream that does the work (counts the request once it has read it whole),
/// then loses its answer: the connection closes before any byte of a response.
struct LosesAnswers {
    addr: SocketAddr,
    ran: Arc<AtomicU64>,
}

impl LosesAnswers {
    async fn spawn() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ran = Arc::new(AtomicU64::new(0));
        let counter = ran.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    if read_request(&mut conn).await.is_none() {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    // The work is done; the answer is lost: the connection closes
                    // before any byte of a response.
                    let _ = conn.shutdown().await;
                });
            }
        });
        Self { addr, ran }
    }

    fn ran(&self) -> u64 {
        self.ran.load(Ordering::SeqCst)
    }
}

async fn charge(client: &Client, key: &str) -> Resp {
    client
        .send(
            Method::POST,
            "/charges",
            &[("idempotency-key", key)],
            b"{\"amount\":4200}",
        )
        .await
}

const TOKEN: &str = "at-most-once-admin-token";

// R22: the upstream did the work and the connection broke before its answer: in `hold`
// mode the key is held, every retry gets the outcome-unknown problem and nothing runs
// again; the admin API shows the record, and deleting it lets the key run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r22_a_lost_answer_is_never_run_again_in_hold_mode() {
    let upstream = LosesAnswers::spawn().await;
    let admin = free_addr();
    let idem = serve(&[
        "--upstream",
        &format!("http://{}", upstream.addr),
        "--store",
        "memory",
        "--on-ambiguous-failure",
        "hold",
        "--admin-listen",
        &admin.to_string(),
        "--admin-token",
        TOKEN,
    ])
    .await;
    let client = Client::new(idem.addr);
    let first = charge(&client, "pay-1").await;
    assert_eq!(first.status, 502, "{first:?}");
    assert_eq!(first.problem_slug(), ProblemKind::OutcomeUnknown.slug());
    assert!(!first.replayed());
    for _ in 0..3 {
        let retry = charge(&client, "pay-1").await;
        assert_eq!(retry.status, 502, "{retry:?}");
        assert_eq!(retry.problem_slug(), ProblemKind::OutcomeUnknown.slug());
        assert!(retry.replayed(), "{retry:?}");
        assert_eq!(retry.json()["idempotency_key"], "pay-1");
    }
    assert_eq!(
        upstream.ran(),
        1,
        "the operation ran once, whatever the retries"
    );

    let bearer = format!("Bearer {TOKEN}");
    let scope = idem_testkit::client::credential_scope().to_hex();
    let path = format!("/admin/keys/{scope}/pay-1");
    let admin = Client::new(admin).anonymous();
    let record = admin
        .send(Method::GET, &path, &[("authorization", &bearer)], b"")
        .await;
    assert_eq!(record.status, 200, "{record:?}");
    assert_eq!(
        record.json()["response"]["not_retained"],
        "outcome_unknown",
        "{record:?}"
    );
    let deleted = admin
        .send(Method::DELETE, &path, &[("authorization", &bearer)], b"")
        .await;
    assert_eq!(deleted.status, 200, "{deleted:?}");
    let after = charge(&client, "pay-1").await;
    assert_eq!(after.problem_slug(), ProblemKind::OutcomeUnknown.slug());
    assert!(!after.replayed());
    assert_eq!(upstream.ran(), 2, "an operator's delete releases the key");
}

// R12, R22: by default the key is released and a retry runs the operation again; and in
// `hold` mode a connection that was refused (nothing sent) is released too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r22_release_stays_the_default_and_refused_connections_are_released() {
    let upstream = LosesAnswers::spawn().await;
    let up = format!("http://{}", upstream.addr);
    let idem = serve(&["--upstream", &up, "--store", "memory"]).await;
    let client = Client::new(idem.addr);
    for _ in 0..2 {
        let r = charge(&client, "pay-2").await;
        assert_eq!(r.status, 502, "{r:?}");
        assert_eq!(r.problem_slug(), ProblemKind::UpstreamUnavailable.slug());
    }
    assert_eq!(upstream.ran(), 2, "released: the retry ran again");
    idem.kill();

    let nobody = format!("http://{}", free_addr());
    let idem = serve(&[
        "--upstream",
        &nobody,
        "--store",
        "memory",
        "--on-ambiguous-failure",
        "hold",
    ])
    .await;
    let client = Client::new(idem.addr);
    for _ in 0..2 {
        let r = charge(&client, "pay-3").await;
        assert_eq!(r.status, 502, "{r:?}");
        assert_eq!(
            r.problem_slug(),
            ProblemKind::UpstreamUnavailable.slug(),
            "{r:?}"
        );
        assert!(!r.replayed());
    }
}
