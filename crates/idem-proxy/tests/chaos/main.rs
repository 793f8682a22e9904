//! The chaos run: distinct keys with random duplicates, random concurrency and random
//! client timeouts go through several `idem serve` processes sharing a store while faults
//! are injected (upstream slow / reset / 5xx / hung, store killed and restarted, a proxy
//! `kill -9`'d and restarted, the link between a proxy and its store delayed, stalled or
//! reset). At the end an invariant checker accounts for every key and fails the test on
//! any violation (R6, R7, R8, R11, R12, R16, R18).
//!
//! Short by default (`IDEM_CHAOS_SECS`, 20 s of load per store); `scripts/chaos.sh 600`
//! runs the long form. `IDEM_CHAOS_SEED` replays a run's random choices (the seed is
//! printed). Redis and PostgreSQL are servers of the test's own (`redis-server`,
//! `initdb`/`pg_ctl` on PATH or under `/usr/lib/postgresql/*/bin`); the shared ones are
//! never touched.

#[path = "../common/mod.rs"]
mod common;
mod faults;
mod stores;
mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::common::{Proc, serve};
use crate::faults::{FaultLog, Link};
use crate::upstream::{Exec, Outcome, Upstream};

/// How long a proxy owns a key without renewal.
const LEASE: Duration = Duration::from_secs(3);
/// How long the proxy waits for the upstream's response head.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is mapped to 1).
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    /// The next number.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True with probability `pct`%.
    pub(crate) fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    /// A duration in `lo..hi` milliseconds.
    pub(crate) fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }
}

fn seed() -> u64 {
    match std::env::var("IDEM_CHAOS_SEED") {
        Ok(s) => s.parse().expect("IDEM_CHAOS_SEED must be a number"),
        Err(_) => idem::core::record::OwnerToken::random().get() as u64,
    }
}

fn load_time() -> Duration {
    let secs = std::env::var("IDEM_CHAOS_SECS")
        .map(|s| {
            s.parse()
                .expect("IDEM_CHAOS_SECS must be a number of seconds")
        })
        .unwrap_or(20);
    Duration::from_secs(secs)
}

/// One `idem serve` instance that the fault injector may kill and restart elsewhere.
#[derive(Debug)]
pub(crate) struct Slot {
    addr: RwLock<SocketAddr>,
    proc: Mutex<Option<Proc>>,
    args: Vec<String>,
}

impl Slot {
    async fn start(args: Vec<String>) -> Self {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = serve(&refs).await;
        Self {
            addr: RwLock::new(proc.addr),
            proc: Mutex::new(Some(proc)),
            args,
        }
    }

    fn addr(&self) -> SocketAddr {
        *self.addr.read().unwrap()
    }

    /// `kill -9`.
    fn kill(&self) {
        if let Some(p) = self.proc.lock().unwrap().take() {
            p.kill();
        }
    }

    /// Starts a fresh process on a new port.
    async fn restart(&self) {
        let refs: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let proc = serve(&refs).await;
        *self.addr.write().unwrap() = proc.addr;
        *self.proc.lock().unwrap() = Some(proc);
    }
}

/// What one client request got.
#[derive(Debug, Clone)]
struct Got {
    key: String,
    /// `None`: connection failed or the client gave up (its timeout).
    status: Option<u16>,
    timed_out: bool,
    replayed: bool,
    exec: Option<u64>,
    body: Bytes,
}

type Http = HyperClient<HttpConnector, Full<Bytes>>;

async fn send(
    http: &Http,
    addr: SocketAddr,
    slot: usize,
    key: &str,
    body: &str,
    timeout: Duration,
) -> Got {
    let req = http::Request::post(format!("http://{addr}/charges"))
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .header("x-chaos-slot", slot.to_string())
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let mut got = Got {
        key: key.to_owned(),
        status: None,
        timed_out: false,
        replayed: false,
        exec: None,
        body: Bytes::new(),
    };
    let exchange = async {
        let resp = http.request(req).await.ok()?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some((parts, body))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => got.timed_out = true,
        Ok(None) => {}
        Ok(Some((parts, body))) => {
            got.status = Some(parts.status.as_u16());
            got.replayed = parts
                .headers
                .get("idempotent-replayed")
                .is_some_and(|v| v == "true");
            got.exec = parts
                .headers
                .get("x-exec")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            got.body = body;
        }
    }
    got
}

/// One operation: a fresh key sent 1..=4 times, in sequence or as a concurrent burst,
/// each send to a random instance with a random client timeout.
async fn operation(slots: &[Arc<Slot>], http: &Http, key: String, mut rng: Rng) -> Vec<Got> {
    let body = format!("{{\"amount\":{}}}", rng.below(10_000));
    let sends = 1 + rng.below(4) as usize;
    let burst = rng.chance(30);
    let mut plan = Vec::new();
    for _ in 0..sends {
        let slot = rng.below(slots.len() as u64) as usize;
        let timeout = if rng.chance(15) {
            rng.ms(50, 2500)
        } else {
            Duration::from_secs(20)
        };
        plan.push((slot, timeout, rng.ms(0, 400)));
    }
    if burst {
        let tasks: Vec<_> = plan
            .into_iter()
            .map(|(slot, timeout, _)| {
                let (http, s, key, body) =
                    (http.clone(), slots[slot].clone(), key.clone(), body.clone());
                tokio::spawn(async move { send(&http, s.addr(), slot, &key, &body, timeout).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    } else {
        let mut out = Vec::new();
        for (slot, timeout, pause) in plan {
            out.push(send(http, slots[slot].addr(), slot, &key, &body, timeout).await);
            tokio::time::sleep(pause).await;
        }
        out
    }
}

/// Which store a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Redis,
    Postgres,
    File,
}

/// The whole run for one store.
async fn chaos(kind: Kind) {
    let seed = seed();
    let secs = load_time();
    println!(
        "chaos {kind:?}: seed {seed} (IDEM_CHAOS_SEED={seed} replays), {}s of load",
        secs.as_secs()
    );
    let mut rng = Rng::new(seed ^ kind as u64);
    let log = FaultLog::default();
    let upstream = Upstream::spawn(Rng::new(rng.next()), log.clone(), UPSTREAM_TIMEOUT).await;

    // The store, and one link per instance.
    let tmp = tempfile::tempdir().unwrap();
    let store = match kind {
        Kind::Redis => Some(stores::Server::redis(tmp.path()).await),
        Kind::Postgres => Some(stores::Server::postgres().await),
        Kind::File => None,
    };
    let instances = if kind == Kind::File { 1 } else { 3 };
    let mut links = Vec::new();
    let mut slots = Vec::new();
    for _ in 0..instances {
        let store_url = match &store {
            Some(s) => {
                let link = Link::start(s.addr()).await;
                let url = s.url_via(link.addr());
                links.push(link);
                url
            }
            None => format!("file:{}", tmp.path().join("idem-data").display()),
        };
        let args = vec![
            "--upstream".to_owned(),
            format!("http://{}", upstream.addr()),
            "--store".to_owned(),
            store_url,
            "--lease".to_owned(),
            format!("{}ms", LEASE.as_millis()),
            "--upstream-timeout".to_owned(),
            format!("{}ms", UPSTREAM_TIMEOUT.as_millis()),
            "--scope-header".to_owned(),
            "none".to_owned(),
        ];
        slots.push(Arc::new(Slot::start(args).await));
    }

    // Load.
    let stop = Arc::new(AtomicBool::new(false));
    let http: Http = HyperClient::builder(TokioExecutor::new()).build_http();
    let workers = 4 + rng.below(12) as usize;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (slots, http, stop) = (slots.clone(), http.clone(), stop.clone());
        let mut rng = Rng::new(rng.next());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let key = format!("k-{seed:x}-{w}-{n}");
                n += 1;
                out.extend(operation(&slots, &http, key, Rng::new(rng.next())).await);
                tokio::time::sleep(rng.ms(0, 50)).await;
            }
            out
        }));
    }

    // Faults, one at a time, until the load time is over.
    let started = Instant::now();
    while started.elapsed() < secs {
        tokio::time::sleep(rng.ms(300, 1500)).await;
        faults::inject(&mut rng, &log, store.as_ref(), &links, &slots).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut got = Vec::new();
    for t in tasks {
        got.extend(t.await.unwrap());
    }
    // Let abandoned exchanges (client timeouts, killed instances, hung upstream calls)
    // finish at the upstream before counting.
    tokio::time::sleep(UPSTREAM_TIMEOUT * 2).await;
    let execs = upstream.executions();
    let report = check(&got, &execs, &log, LEASE);
    report.print(kind, seed, &log);
    for s in &slots {
        s.kill();
    }
    assert!(
        report.violations.is_empty(),
        "{} violations (seed {seed}):\n{}",
        report.violations.len(),
        report.violations.join("\n")
    );
    assert!(report.keys > 0 && !execs.is_empty(), "no load went through");
}

/// The checker's findings.
#[derive(Debug, Default)]
struct Report {
    requests: usize,
    keys: usize,
    executions: usize,
    fresh: usize,
    replays: usize,
    conflicts: usize,
    by_status: BTreeMap<String, usize>,
    reruns: BTreeMap<String, usize>,
    violations: Vec<String>,
}

impl Report {
    fn print(&self, kind: Kind, seed: u64, log: &FaultLog) {
        let mut t = String::new();
        t.push_str(&format!("\nchaos run, store {kind:?}, seed {seed}\n"));
        t.push_str("| what | count |\n|---|---|\n");
        t.push_str(&format!("| requests sent | {} |\n", self.requests));
        t.push_str(&format!("| keys | {} |\n", self.keys));
        t.push_str(&format!("| upstream executions | {} |\n", self.executions));
        t.push_str(&format!("| fresh responses (201) | {} |\n", self.fresh));
        t.push_str(&format!("| replays | {} |\n", self.replays));
        t.push_str(&format!("| conflicts (409) | {} |\n", self.conflicts));
        for (s, n) in &self.by_status {
            t.push_str(&format!("| other: {s} | {n} |\n"));
        }
        for (k, n) in log.counts() {
            t.push_str(&format!("| fault: {k} | {n} |\n"));
        }
        for (r, n) in &self.reruns {
            t.push_str(&format!("| allowed re-run: {r} | {n} |\n"));
        }
        t.push_str(&format!("| violations | {} |\n", self.violations.len()));
        println!("{t}");
    }
}

/// Accounts for every key: executions, re-runs and the rule that allows each, replays.
fn check(got: &[Got], execs: &[Exec], log: &FaultLog, lease: Duration) -> Report {
    let mut r = Report {
        requests: got.len(),
        executions: execs.len(),
        ..Report::default()
    };
    let mut by_key: HashMap<&str, Vec<&Exec>> = HashMap::new();
    for e in execs {
        by_key.entry(e.key.as_str()).or_default().push(e);
    }
    let mut keys: Vec<&str> = got.iter().map(|g| g.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    r.keys = keys.len();
    for e in execs {
        if keys.binary_search(&e.key.as_str()).is_err() {
            r.violations
                .push(format!("execution of a key never sent: {}", e.key));
        }
    }
    let faults = log.windows();
    for list in by_key.values_mut() {
        list.sort_by_key(|e| e.start);
        for pair in list.windows(2) {
            let (prev, next) = (pair[0], pair[1]);
            let released_before = prev.end <= next.start;
            let rule = match prev.outcome {
                Outcome::Status500 if released_before => {
                    Some("R7 previous answered 5xx".to_owned())
                }
                Outcome::Reset if released_before => Some("R12 previous upstream reset".to_owned()),
                Outcome::Hang => Some("R12 previous upstream timed out".to_owned()),
                _ => None,
            };
            let rule = rule.or_else(|| {
                // R11: the owner's lease can only end if its instance died or lost its store
                // between its claim and the takeover.
                faults
                    .iter()
                    .find(|f| {
                        f.affects(prev.slot)
                            && f.start <= next.start
                            && f.end + lease >= prev.start.checked_sub(lease).unwrap_or(prev.start)
                    })
                    .map(|f| format!("R11 lease lost: {}", f.kind))
            });
            match rule {
                Some(rule) => *r.reruns.entry(rule).or_default() += 1,
                None => r.violations.push(format!(
                    "key {}: execution {} ran after execution {} ({:?}, instance {}) with no rule allowing it",
                    prev.key, next.n, prev.n, prev.outcome, prev.slot
                )),
            }
        }
    }
    // Replays and fresh responses.
    let mut replay_of: HashMap<&str, &Bytes> = HashMap::new();
    for g in got {
        match g.status {
            None if g.timed_out => *r.by_status.entry("client timeout".into()).or_default() += 1,
            None => *r.by_status.entry("connection failed".into()).or_default() += 1,
            Some(409) => r.conflicts += 1,
            Some(201) => {
                if g.replayed {
                    r.replays += 1;
                } else {
                    r.fresh += 1;
                }
                let exec = g
                    .exec
                    .and_then(|n| by_key.get(g.key.as_str())?.iter().find(|e| e.n == n));
                match exec {
                    None => r.violations.push(format!(
                        "key {}: a 201 no execution of this key produced: {:?}",
                        g.key,
                        String::from_utf8_lossy(&g.body)
                    )),
                    Some(e) if e.body != g.body => r.violations.push(format!(
                        "key {}: body differs from execution {}: {:?} vs {:?}",
                        g.key,
                        e.n,
                        String::from_utf8_lossy(&g.body),
                        String::from_utf8_lossy(&e.body)
                    )),
                    Some(_) => {}
                }
                if g.replayed {
                    let first = replay_of.entry(g.key.as_str()).or_insert(&g.body);
                    if *first != &g.body {
                        r.violations.push(format!(
                            "key {}: two different replays: {:?} vs {:?}",
                            g.key, first, g.body
                        ));
                    }
                }
            }
            Some(s) => *r.by_status.entry(s.to_string()).or_default() += 1,
        }
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_redis() {
    upstream::quiet_resets();
    chaos(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_postgres() {
    upstream::quiet_resets();
    chaos(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_file() {
    upstream::quiet_resets();
    chaos(Kind::File).await;
}

/// The checker itself: an unexplained second execution, a replay of another key's response
/// and two different replays of one key are each a violation; a re-run after a 500 or
/// after the owner's instance was killed is not.
#[test]
fn checker_flags_what_no_rule_allows() {
    use crate::upstream::{Exec, Outcome};
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let exec = |key: &str, n: u64, slot: usize, start: u64, outcome: Outcome| Exec {
        key: key.to_owned(),
        n,
        slot,
        start: at(start),
        end: at(start + 10),
        outcome,
        body: Bytes::from(format!("{key}/{n}")),
    };
    let reply = |key: &str, n: u64, body: &str, replayed: bool| Got {
        key: key.to_owned(),
        status: Some(201),
        timed_out: false,
        replayed,
        exec: Some(n),
        body: Bytes::from(body.to_owned()),
    };
    let log = FaultLog::default();
    let execs = vec![
        exec("a", 1, 0, 0, Outcome::Status500),
        exec("a", 2, 1, 100, Outcome::Ok),
        exec("b", 3, 0, 0, Outcome::Ok),
        exec("b", 4, 1, 5000, Outcome::Ok),
    ];
    let got = vec![
        reply("a", 2, "a/2", false),
        reply("a", 2, "a/2", true),
        reply("b", 3, "b/3", false),
        reply("b", 3, "a/2", true),
        reply("b", 4, "b/4", true),
    ];
    let r = check(&got, &execs, &log, LEASE);
    assert_eq!(r.reruns.get("R7 previous answered 5xx"), Some(&1), "{r:?}");
    // b ran twice with no fault: a violation; a replay of b with a's bytes: another; the
    // two replays of b differ: a third.
    assert_eq!(r.violations.len(), 3, "{r:?}");

    // The same second execution of b is allowed once b's first instance was killed.
    log.window_at("instance kill -9 and restart", Some(0), at(1000), at(2000));
    let r = check(&got[..3], &execs, &log, LEASE);
    assert!(r.violations.is_empty(), "{r:?}");
    assert_eq!(
        r.reruns.get("R11 lease lost: instance kill -9 and restart"),
        Some(&1),
        "{r:?}"
    );
}
