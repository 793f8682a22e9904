//! What Redis itself can do for idem: the rate of `claim` + `complete` pairs on new
//! keys, running idem's own Lua scripts (the very files the Redis store loads), at a
//! given concurrency. Each of `CONNS` tasks has its own connection and sends one pair
//! after another, as `redis-benchmark` does; `redis-benchmark` alone cannot chain the
//! two scripts on one key.
//!
//! Usage: `store-limit REDIS_URL CONNS SECONDS`; prints `pairs/s <rate>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::Script;

const CLAIM: &str = include_str!("../../../idem-redis/src/lua/claim.lua");
const COMPLETE: &str = include_str!("../../../idem-redis/src/lua/complete.lua");

/// About the size of an encoded snapshot of the bench upstream's answer.
const SNAPSHOT: [u8; 160] = [7; 160];

#[tokio::main]
async fn main() -> redis::RedisResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, conns, seconds] = args.as_slice() else {
        eprintln!("usage: store-limit REDIS_URL CONNS SECONDS");
        std::process::exit(2);
    };
    let conns: u64 = conns.parse().expect("CONNS is a number");
    let seconds: u64 = seconds.parse().expect("SECONDS is a number");
    let client = redis::Client::open(url.as_str())?;
    let (claim, complete) = (
        Arc::new(Script::new(CLAIM)),
        Arc::new(Script::new(COMPLETE)),
    );
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let run = std::process::id();
    let mut tasks = Vec::new();
    for task in 0..conns {
        let mut con = client.get_multiplexed_async_connection().await?;
        let (claim, complete) = (Arc::clone(&claim), Arc::clone(&complete));
        let (done, stop) = (Arc::clone(&done), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut n = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("idem-bench:{{{run:x}-{task}-{n}}}");
                let owner = format!("{:032x}", u128::from(n) << 64 | u128::from(task));
                let _: redis::Value = claim
                    .key(&key)
                    .arg(&[9_u8; 32][..])
                    .arg(&owner)
                    .arg(60_000)
                    .invoke_async(&mut con)
                    .await?;
                let stored: i64 = complete
                    .key(&key)
                    .arg(&owner)
                    .arg(&SNAPSHOT[..])
                    .arg(60_000)
                    .arg("idem-bench:done")
                    .arg(&key)
                    .invoke_async(&mut con)
                    .await?;
                assert_eq!(stored, 1, "the completion must find its own claim");
                done.fetch_add(1, Ordering::Relaxed);
            }
            redis::RedisResult::Ok(())
        }));
    }
    // Warm up (scripts loaded, connections busy), then count a clean window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (start, before) = (Instant::now(), done.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let pairs = done.load(Ordering::Relaxed) - before;
    let rate = pairs as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("task panicked")?;
    }
    println!("pairs/s {rate:.0}");
    Ok(())
}
