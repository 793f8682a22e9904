//! How much memory the memory store spends per completed record, against the record's
//! raw size (key, scope, fingerprint, timestamps, status, header names and values,
//! body). Fills a store with `N` completed records carrying a `BODY`-byte body and the
//! headers the bench upstream answers with, and reads the process's resident size
//! before and after.
//!
//! Usage: `memory-footprint [N] [BODY]` (defaults 1000000 and 200).

use std::time::Duration;

use idem_core::IdempotencyKey;
use idem_core::fingerprint::Fingerprint;
use idem_core::record::{OwnerToken, RecordId, Snapshot, SnapshotBody};
use idem_core::scope::Scope;
use idem_core::store::{Claim, ClaimRequest, MemoryStore, MemoryStoreConfig, Store};

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(1_000_000, |a| a.parse().expect("N"));
    let body_len: usize = args.next().map_or(200, |a| a.parse().expect("BODY"));
    // One scope holds every record: no bound, so the fair share never refuses.
    let store = MemoryStore::with_config(MemoryStoreConfig {
        capacity: n,
        max_bytes: usize::MAX,
        ..MemoryStoreConfig::default()
    });
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().expect("value"));
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    let before = resident_bytes();
    let mut raw = 0;
    for i in 0..n {
        // A UUID-sized key, as clients typically send.
        let key = format!("{i:036}");
        let id = RecordId::new(
            Scope::from_bytes([7; 16]),
            IdempotencyKey::new(&key).expect("key"),
        );
        let req = ClaimRequest {
            id,
            fingerprint: Fingerprint::from_bytes([9; 32]),
            owner: OwnerToken::random(),
            lease: Duration::from_secs(60),
            waiting: false,
        };
        let Ok(Claim::Acquired(lease)) = store.claim(&req).await else {
            panic!("claim {i} was not acquired");
        };
        // Each response is its own: a body and headers of its own, as the layer builds.
        let snapshot = Snapshot {
            status: http::StatusCode::CREATED,
            reason: None,
            headers: headers.clone(),
            body: SnapshotBody::Full(vec![b'x'; body_len].into()),
        };
        let done = store
            .complete(&lease, &snapshot, Duration::from_secs(3600))
            .await
            .expect("complete");
        drop(snapshot);
        assert_eq!(done, idem_core::store::Finish::Done);
        // key + scope + fingerprint + created/expires + status + headers + body
        raw += key.len() + 16 + 32 + 16 + 2 + header_bytes + body_len;
    }
    let used = resident_bytes().saturating_sub(before);
    println!(
        "records {n} raw_bytes {raw} resident_bytes {used} per_record {:.0} ratio {:.2} \
         accounted_bytes {} accounted/resident {:.2}",
        used as f64 / n as f64,
        used as f64 / raw as f64,
        store.used_bytes(),
        store.used_bytes() as f64 / used as f64
    );
    assert_eq!(store.len(), n);
}
