//! R15 through the proxy: the store goes away mid-test, protected requests fail closed
//! (503, Retry-After, upstream not called), unprotected ones pass, and the proxy recovers
//! by itself when the store comes back. The shared Redis and PostgreSQL are never
//! stopped: Redis is a server of the test's own, PostgreSQL is reached through a switch.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use idem::AnyStore;
use idem::core::ProblemKind;
use idem_testkit::{Client, CountingUpstream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::common::{OwnRedis, free_addr};
use idem_testkit::postgres::Schema;

use crate::unique;

async fn front(store_url: &str, upstream: &CountingUpstream) -> idem_proxy::Running {
    let store = AnyStore::from_url(store_url).await.unwrap();
    let mut config = idem_proxy::config::ProxyConfig::new(
        format!("http://{}", upstream.addr()).parse().unwrap(),
    );
    // Short store timeouts come from the URL; keep the lease short too.
    config.policy = idem::core::Policy::builder()
        .lease(Duration::from_secs(2))
        .build()
        .unwrap();
    idem_proxy::spawn("127.0.0.1:0".parse().unwrap(), store, config)
        .await
        .unwrap()
}

/// Asserts R15's fail-closed answer and that the upstream was not called.
async fn assert_fails_closed(client: &Client, upstream: &CountingUpstream) {
    let before = upstream.executions();
    let key = unique("down");
    let resp = client.post("/charges", &key, "{}").await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(
        resp.problem_type(),
        ProblemKind::StoreUnavailable.type_uri()
    );
    assert!(resp.header("retry-after").is_some());
    assert_eq!(upstream.executions(), before, "the upstream was called");
    // A request that needs no record is unaffected.
    let plain = client
        .send(http::Method::POST, "/charges", &[], b"{}")
        .await;
    assert_eq!(plain.status, 201);
}

/// Polls until a protected request succeeds again, without restarting anything.
async fn assert_recovers(client: &Client) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = client.post("/charges", &unique("back"), "{}").await;
        if r.status == 201 {
            return;
        }
        assert_eq!(r.status, 503, "{r:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// R15
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_redis_down_fails_closed_and_recovers() {
    let addr = free_addr();
    let redis = OwnRedis::start(addr).await;
    let upstream = CountingUpstream::spawn().await;
    let url = format!("redis://{addr}/0?command_timeout=500ms&connect_timeout=500ms");
    let proxy = front(&url, &upstream).await;
    let client = Client::new(proxy.addr());
    assert_eq!(
        client.post("/charges", &unique("up"), "{}").await.status,
        201
    );

    drop(redis);
    assert_fails_closed(&client, &upstream).await;

    let _redis = OwnRedis::start(addr).await;
    assert_recovers(&client).await;
}

/// A TCP forwarder to PostgreSQL that can be switched off: it then cuts every open
/// connection and refuses new ones.
struct Switch {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Switch {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let (accept_up, accept_cut) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !accept_up.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let mut cut = accept_cut.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { addr, up, cut }
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

// R15
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_postgres_cut_fails_closed_and_recovers() {
    let switch = Switch::start("127.0.0.1:5432".parse().unwrap()).await;
    let schema = Schema::fresh("idem_t");
    let upstream = CountingUpstream::spawn().await;
    let url = format!(
        "postgres://postgres@{}/test?schema={}&pool_size=4&statement_timeout=1s&connect_timeout=1",
        switch.addr,
        schema.name()
    );
    let proxy = front(&url, &upstream).await;
    let client = Client::new(proxy.addr());
    assert_eq!(
        client.post("/charges", &unique("up"), "{}").await.status,
        201
    );

    switch.set(false);
    assert_fails_closed(&client, &upstream).await;

    switch.set(true);
    assert_recovers(&client).await;
    drop(proxy);
}
