//! Fault injection: a TCP link between a proxy and its store that can delay, stall or
//! reset, and the injector that picks one fault at a time and logs its time window.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::stores::Server;
use crate::{Rng, Slot};

/// A fault that hit the store side, in a time window.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    /// What happened.
    pub(crate) kind: &'static str,
    /// The instance it hit; `None`: every instance (the store itself).
    pub(crate) slot: Option<usize>,
    /// When it began.
    pub(crate) start: Instant,
    /// When it was over.
    pub(crate) end: Instant,
}

impl Window {
    /// True when it could have cost instance `slot` its lease or its completion.
    pub(crate) fn affects(&self, slot: usize) -> bool {
        self.slot.is_none_or(|s| s == slot)
    }
}

/// Counts by kind, and the windows.
type Faults = (BTreeMap<&'static str, u64>, Vec<Window>);

/// Every fault injected: counts by kind, and the windows of those that can end a lease.
#[derive(Debug, Clone, Default)]
pub(crate) struct FaultLog {
    inner: Arc<Mutex<Faults>>,
}

impl FaultLog {
    /// Counts a fault that opens no window (upstream misbehaviour).
    pub(crate) fn count(&self, kind: &'static str) {
        *self.inner.lock().unwrap().0.entry(kind).or_default() += 1;
    }

    fn window(&self, kind: &'static str, slot: Option<usize>, start: Instant) {
        self.window_at(kind, slot, start, Instant::now());
    }

    /// Logs a fault that lasted from `start` to `end`.
    pub(crate) fn window_at(
        &self,
        kind: &'static str,
        slot: Option<usize>,
        start: Instant,
        end: Instant,
    ) {
        let mut i = self.inner.lock().unwrap();
        *i.0.entry(kind).or_default() += 1;
        i.1.push(Window {
            kind,
            slot,
            start,
            end,
        });
    }

    /// Counts by kind.
    pub(crate) fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.inner.lock().unwrap().0.clone()
    }

    /// The windows.
    pub(crate) fn windows(&self) -> Vec<Window> {
        self.inner.lock().unwrap().1.clone()
    }
}

const PASS: u64 = 0;
const STALL: u64 = u64::MAX;

/// A TCP forwarder to a store: passes bytes, delays each chunk, stalls (holds bytes, as
/// a black-holed route does until TCP gives up), or resets every open connection.
#[derive(Debug)]
pub(crate) struct Link {
    addr: SocketAddr,
    /// `PASS`, `STALL` or a delay per chunk in milliseconds.
    mode: Arc<AtomicU64>,
    cut: watch::Sender<u64>,
}

impl Link {
    /// Listens on a free port and forwards to `target`.
    pub(crate) async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU64::new(PASS));
        let (cut, _) = watch::channel(0u64);
        let (m, c) = (mode.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (m, mut cut) = (m.clone(), c.subscribe());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (a, b) = (inbound, outbound);
                    let _ = a.set_nodelay(true);
                    let _ = b.set_nodelay(true);
                    let (ar, aw) = a.into_split();
                    let (br, bw) = b.into_split();
                    tokio::select! {
                        _ = pump(ar, bw, &m) => {}
                        _ = pump(br, aw, &m) => {}
                        _ = cut.changed() => {}
                    }
                    // Dropping both halves closes both connections mid-command.
                });
            }
        });
        Self { addr, mode, cut }
    }

    /// Where the proxy connects.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn set(&self, mode: u64) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn reset(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            match mode.load(Ordering::SeqCst) {
                PASS => break,
                STALL => tokio::time::sleep(Duration::from_millis(20)).await,
                ms => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    break;
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Injects one fault, waits for it to be over, and logs it.
pub(crate) async fn inject(
    rng: &mut Rng,
    log: &FaultLog,
    store: Option<&Server>,
    links: &[Link],
    slots: &[Arc<Slot>],
) {
    let start = Instant::now();
    // File store: only the instance can be killed.
    let choice = if links.is_empty() { 0 } else { rng.below(5) };
    let slot = rng.below(slots.len() as u64) as usize;
    match choice {
        0 => {
            slots[slot].kill();
            tokio::time::sleep(rng.ms(100, 1500)).await;
            slots[slot].restart().await;
            log.window("instance kill -9 and restart", Some(slot), start);
        }
        1 => {
            let store = store.expect("a store server");
            store.kill();
            tokio::time::sleep(rng.ms(100, 2000)).await;
            store.restart().await;
            log.window(store.restart_kind(), None, start);
        }
        2 => {
            links[slot].set(20 + rng.below(400));
            tokio::time::sleep(rng.ms(500, 4000)).await;
            links[slot].set(PASS);
            log.window("store link slow", Some(slot), start);
        }
        3 => {
            links[slot].set(STALL);
            tokio::time::sleep(rng.ms(500, 5000)).await;
            links[slot].set(PASS);
            log.window("store link black-holed", Some(slot), start);
        }
        _ => {
            links[slot].reset();
            log.window("store link reset mid-command", Some(slot), start);
        }
    }
}
