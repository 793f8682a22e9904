//! The upstream of the chaos run: records every execution per key, and misbehaves at
//! random (slow, 500, connection reset before the head, hung past the proxy's timeout).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::TcpListener;

use crate::Rng;
use crate::faults::FaultLog;

/// The panic message that cuts a connection; silenced by [`quiet_resets`].
const RESET: &str = "chaos: upstream resets the connection";

/// How an execution ended at the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// 201 at once.
    Ok,
    /// 201 after a delay below the proxy's upstream timeout.
    Slow,
    /// 500.
    Status500,
    /// The connection was dropped before a response head.
    Reset,
    /// 201 only after the proxy's upstream timeout.
    Hang,
}

/// One execution of one key.
#[derive(Debug, Clone)]
pub(crate) struct Exec {
    /// The key.
    pub(crate) key: String,
    /// Numbers executions of all keys, so a body names its execution.
    pub(crate) n: u64,
    /// The instance the request came through.
    pub(crate) slot: usize,
    /// When the upstream started it.
    pub(crate) start: Instant,
    /// When the upstream answered (or cut the connection).
    pub(crate) end: Instant,
    /// How it ended.
    pub(crate) outcome: Outcome,
    /// The body it answered.
    pub(crate) body: bytes::Bytes,
}

#[derive(Debug)]
struct Inner {
    rng: Rng,
    next: u64,
    execs: Vec<Exec>,
}

/// The upstream, on a loopback port.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Clone)]
struct Ctx {
    inner: Arc<Mutex<Inner>>,
    log: FaultLog,
    timeout: Duration,
}

impl Upstream {
    /// Serves `POST /charges`.
    pub(crate) async fn spawn(rng: Rng, log: FaultLog, timeout: Duration) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            rng,
            next: 1,
            execs: Vec::new(),
        }));
        let ctx = Ctx {
            inner: inner.clone(),
            log,
            timeout,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/charges", post(charge))
            .with_state(ctx);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner }
    }

    /// Where it listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every execution so far.
    pub(crate) fn executions(&self) -> Vec<Exec> {
        self.inner.lock().unwrap().execs.clone()
    }
}

/// The work runs in a task of its own, so it finishes and is recorded even when the
/// proxy drops the connection (its upstream timeout, or the instance was killed): a real
/// API does not undo a charge because its caller went away.
async fn charge(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    match tokio::spawn(work(ctx, headers)).await {
        Ok(resp) => resp,
        Err(_) => std::panic::panic_any(RESET),
    }
}

async fn work(ctx: Ctx, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let slot = headers
        .get("x-chaos-slot")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(usize::MAX);
    let (n, outcome, delay, nonce) = {
        let mut i = ctx.inner.lock().unwrap();
        let n = i.next;
        i.next += 1;
        let roll = i.rng.below(100);
        let (outcome, delay) = match roll {
            0..=69 => (Outcome::Ok, Duration::ZERO),
            70..=81 => (Outcome::Slow, i.rng.ms(100, 1500)),
            82..=89 => (Outcome::Status500, Duration::ZERO),
            90..=94 => (Outcome::Reset, Duration::ZERO),
            _ => (Outcome::Hang, ctx.timeout + i.rng.ms(300, 1500)),
        };
        (n, outcome, delay, i.rng.next())
    };
    match outcome {
        Outcome::Slow => ctx.log.count("upstream slow"),
        Outcome::Status500 => ctx.log.count("upstream 500"),
        Outcome::Reset => ctx.log.count("upstream reset"),
        Outcome::Hang => ctx.log.count("upstream hung past timeout"),
        Outcome::Ok => {}
    }
    tokio::time::sleep(delay).await;
    let body = bytes::Bytes::from(format!(
        "{{\"key\":{key:?},\"exec\":{n},\"nonce\":\"{nonce:016x}\"}}"
    ));
    ctx.inner.lock().unwrap().execs.push(Exec {
        key,
        n,
        slot,
        start,
        end: Instant::now(),
        outcome,
        body: body.clone(),
    });
    let status = match outcome {
        Outcome::Reset => std::panic::panic_any(RESET),
        Outcome::Status500 => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::CREATED,
    };
    (
        status,
        [
            ("content-type", "application/json".to_owned()),
            ("x-exec", n.to_string()),
        ],
        body,
    )
        .into_response()
}

/// Keeps the upstream's deliberate connection resets (a panicking handler drops its
/// connection) out of the test output; every other panic is reported as usual.
pub(crate) fn quiet_resets() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&RESET) {
                previous(info);
            }
        }));
    });
}
