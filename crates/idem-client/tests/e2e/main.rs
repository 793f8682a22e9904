//! The client against a real `idem serve` (in-process, memory store) in front of a
//! scripted upstream.

mod retry;
mod transport;
mod upstream;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use idem::core::store::MemoryStore;
use idem_client::{Backoff, IdempotencyMiddleware, Retry};
use idem_proxy::config::ProxyConfig;
use idem_proxy::server::Running;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

/// `idem serve` on `addr` (port 0: any) over a fresh memory store, in front of `upstream`.
pub async fn start_proxy_on(addr: SocketAddr, upstream: SocketAddr) -> Running {
    start_proxy_with(addr, MemoryStore::new(), upstream).await
}

/// `idem serve` on `addr` over `store`, in front of `upstream`.
pub async fn start_proxy_with(
    addr: SocketAddr,
    store: MemoryStore,
    upstream: SocketAddr,
) -> Running {
    let config = ProxyConfig::new(format!("http://{upstream}").parse().unwrap());
    idem_proxy::spawn(addr, store, config).await.unwrap()
}

/// `idem serve` on a free port in front of `upstream`.
pub async fn start_proxy(upstream: SocketAddr) -> Running {
    start_proxy_on("127.0.0.1:0".parse().unwrap(), upstream).await
}

/// The retries a client announced, in order.
#[derive(Debug, Clone, Default)]
pub struct Retries(Arc<Mutex<Vec<Retry>>>);

impl Retries {
    /// Everything so far.
    pub fn all(&self) -> Vec<Retry> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records one.
    pub fn push(&self, r: &Retry) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(r.clone());
    }
}

/// Small waits, so tests do not sleep for long; `Retry-After` is capped at 2 s.
pub fn quick(max_attempts: u32) -> Backoff {
    Backoff::new(
        Duration::from_millis(5),
        Duration::from_secs(2),
        max_attempts,
    )
}

/// A reqwest client builder whose requests carry an API credential: idem refuses keyed
/// requests without one (R4).
pub fn http() -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_static("Bearer sk_test_e2e"),
    );
    reqwest::Client::builder().default_headers(headers)
}

/// A client with the middleware on `backoff`, recording its retries.
pub fn client(backoff: Backoff) -> (ClientWithMiddleware, Retries) {
    let retries = Retries::default();
    let seen = retries.clone();
    let middleware = IdempotencyMiddleware::builder()
        .backoff(backoff)
        .on_retry(move |r| seen.push(r))
        .build();
    let client = ClientBuilder::new(http().build().unwrap())
        .with(middleware)
        .build();
    (client, retries)
}

/// `POST /charges` with `{}` through `proxy`, by `client`.
pub async fn charge(client: &ClientWithMiddleware, proxy: &Running) -> reqwest::Response {
    client
        .post(format!("http://{}/charges", proxy.addr()))
        .body("{}")
        .send()
        .await
        .unwrap()
}

/// A loopback address nothing listens on (yet).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
