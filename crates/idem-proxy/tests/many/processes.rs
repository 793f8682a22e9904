//! Three `idem serve` processes on one shared store (R18), and a replay through another
//! instance after one was killed (R16).

use std::collections::HashMap;
use std::sync::Arc;

use idem_testkit::client::the_one_executed;
use idem_testkit::{Client, CountingUpstream, Resp};
use tokio::sync::Semaphore;

use crate::common::{Proc, serve};
use idem_testkit::postgres::Schema;

use crate::{POSTGRES, REDIS, unique};

/// A small deterministic generator, seeded per run.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        Self(idem::core::record::OwnerToken::random().get() as u64 | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A store URL for one test: Redis under its own prefix, or PostgreSQL in its own schema.
fn store_url(kind: &str) -> (String, Option<Schema>) {
    match kind {
        "redis" => (format!("{REDIS}/0?prefix={}", unique("idem-r18")), None),
        _ => {
            let schema = Schema::fresh("idem_t");
            (
                format!("{POSTGRES}?schema={}&pool_size=4", schema.name()),
                Some(schema),
            )
        }
    }
}

async fn three(store: &str, upstream: &CountingUpstream, extra: &[&str]) -> Vec<Proc> {
    let up = format!("http://{}", upstream.addr());
    let mut args = vec!["--upstream", up.as_str(), "--store", store];
    args.extend_from_slice(extra);
    let mut procs = Vec::new();
    for _ in 0..3 {
        procs.push(serve(&args).await);
    }
    procs
}

/// 200 simultaneous duplicates spread over three instances.
async fn burst(procs: &[Proc], key: &str) -> Vec<Resp> {
    let clients: Vec<Client> = procs.iter().map(|p| Client::new(p.addr)).collect();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let c = clients[i % clients.len()].clone();
            let key = key.to_owned();
            tokio::spawn(async move {
                c.post("/charges?delay_ms=300", &key, "{\"amount\":1}")
                    .await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn r18_conflict(kind: &str) {
    let (store, _schema) = store_url(kind);
    let upstream = CountingUpstream::spawn().await;
    let procs = three(&store, &upstream, &[]).await;
    let key = unique("burst");
    let resps = burst(&procs, &key).await;
    assert_eq!(upstream.executions_with_key(&key), 1);
    the_one_executed(&resps);
    for r in &resps {
        assert!(r.status == 201 || r.status == 409, "{r:?}");
    }
}

async fn r18_wait(kind: &str) {
    let (store, _schema) = store_url(kind);
    let upstream = CountingUpstream::spawn().await;
    let procs = three(
        &store,
        &upstream,
        &["--on-concurrent", "wait", "--wait-timeout", "30s"],
    )
    .await;
    let key = unique("burst");
    let resps = burst(&procs, &key).await;
    assert_eq!(upstream.executions_with_key(&key), 1);
    for r in &resps {
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(r.body, resps[0].body);
    }
}

/// 1000 distinct keys, each sent 1 to 4 times to random instances, 64 in flight.
async fn r18_mixed(kind: &str) {
    let (store, _schema) = store_url(kind);
    let upstream = CountingUpstream::spawn().await;
    let procs = three(&store, &upstream, &[]).await;
    let clients: Vec<Client> = procs.iter().map(|p| Client::new(p.addr)).collect();
    let mut rng = Rng::new();
    let run = unique("mix");
    let mut sends = Vec::new();
    for k in 0..1000 {
        for _ in 0..=rng.below(4) {
            sends.push(format!("{run}-{k}"));
        }
    }
    for i in (1..sends.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        sends.swap(i, j);
    }
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    for key in sends {
        let c = clients[rng.below(3) as usize].clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let r = c.post("/charges?delay_ms=20", &key, "{\"amount\":1}").await;
            (key, r)
        }));
    }
    let mut by_key: HashMap<String, Vec<Resp>> = HashMap::new();
    for t in tasks {
        let (key, r) = t.await.unwrap();
        by_key.entry(key).or_default().push(r);
    }
    assert_eq!(by_key.len(), 1000);
    for (key, resps) in &by_key {
        assert_eq!(upstream.executions_with_key(key), 1, "{key}");
        let executed = the_one_executed(resps);
        for r in resps {
            match r.status.as_u16() {
                201 => assert_eq!(r.body, executed.body, "{key}"),
                409 => {}
                other => panic!("{key}: unexpected {other}: {r:?}"),
            }
        }
    }
}

/// Complete through one instance, kill it, replay through another.
async fn r16_replay_through_another(kind: &str) {
    let (store, _schema) = store_url(kind);
    let upstream = CountingUpstream::spawn().await;
    let mut procs = three(&store, &upstream, &[]).await;
    let key = unique("kill");
    let first = Client::new(procs[0].addr)
        .post("/charges", &key, "{}")
        .await;
    assert_eq!(first.status, 201);
    procs.remove(0).kill();
    let replay = Client::new(procs[0].addr)
        .post("/charges", &key, "{}")
        .await;
    assert!(replay.replayed());
    assert_eq!(replay.body, first.body);
    assert_eq!(upstream.executions(), 1);
}

// R18
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r18_three_processes_on_redis_conflict_mode() {
    r18_conflict("redis").await;
}

// R18
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r18_three_processes_on_redis_wait_mode() {
    r18_wait("redis").await;
}

// R18
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r18_mixed_load_on_redis() {
    r18_mixed("redis").await;
}

// R18
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r18_three_processes_on_postgres_conflict_mode() {
    r18_conflict("postgres").await;
}

// R18
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r18_three_processes_on_postgres_wait_mode() {
    r18_wait("postgres").await;
}

// R18
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r18_mixed_load_on_postgres() {
    r18_mixed("postgres").await;
}

// R16
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r16_replay_through_another_instance_redis() {
    r16_replay_through_another("redis").await;
}

// R16
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r16_replay_through_another_instance_postgres() {
    r16_replay_through_another("postgres").await;
}

// `idem migrate` applies the PostgreSQL schema alone, once.
#[test]
fn migrate_command_applies_once() {
    let schema = Schema::fresh("idem_t");
    let url = format!("{POSTGRES}?schema={}", schema.name());
    let run = || {
        let out = std::process::Command::new(crate::common::BIN)
            .args(["migrate", "--store", &url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run();
    assert!(
        first.starts_with("postgres: ") && !first.starts_with("postgres: 0 "),
        "{first}"
    );
    assert_eq!(run().trim(), "postgres: 0 migration(s) applied");
}
