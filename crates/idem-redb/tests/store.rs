//! `RedbStore` against the shared store contract, plus what only a durable embedded
//! store promises: restart durability (R16), physical expiry (R14), one process per
//! directory, and corrupt records never replayed.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idem_core::clock::ManualClock;
use idem_core::record::{OwnerToken, RecordId, State};
use idem_core::store::testkit::{ManualFixture, claim_req, id, snapshot};
use idem_core::store::{Claim, Finish, Lease, Store, StoreError};
use idem_redb::layout::{FILE_NAME, RECORDS};
use idem_redb::{OpenError, RedbStore, RedbStoreConfig};

fn config(clock: &ManualClock) -> RedbStoreConfig {
    RedbStoreConfig {
        clock: Arc::new(clock.clone()),
        ..RedbStoreConfig::default()
    }
}

fn open(dir: &Path, clock: &ManualClock) -> RedbStore {
    RedbStore::open(dir, config(clock)).unwrap()
}

idem_core::store_tests!(async {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = open(dir.path(), &clock);
    ManualFixture::new(store, clock, dir)
});

// R4, R6–R14: the store follows the shared model on random histories.
idem_core::store_model_test!(
    async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let store = open(dir.path(), &clock);
        ManualFixture::new(store, clock, dir)
    },
    64
);

async fn acquire(store: &RedbStore, req: &idem_core::store::ClaimRequest) -> Lease {
    match store.claim(req).await.unwrap() {
        Claim::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

// R16: a completed record and an in-flight one both survive dropping every handle
// and reopening the directory.
#[tokio::test]
async fn r16_records_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = open(dir.path(), &clock);

    let done = id("durable-done");
    let req = claim_req(&done, 1);
    let lease = acquire(&store, &req).await;
    let snap = snapshot(b"{\"charged\":true}");
    let ttl = Duration::from_secs(3600);
    assert_eq!(
        store.complete(&lease, &snap, ttl).await.unwrap(),
        Finish::Done
    );

    let flying = id("durable-inflight");
    let flying_req = claim_req(&flying, 2);
    let flying_lease = acquire(&store, &flying_req).await;

    drop(store);
    let store = open(dir.path(), &clock);

    assert_eq!(
        store.claim(&claim_req(&done, 1)).await.unwrap(),
        Claim::Completed(snap.clone())
    );
    assert!(matches!(
        store.claim(&claim_req(&flying, 2)).await.unwrap(),
        Claim::InFlight { .. }
    ));
    let rec = store
        .lookup(&flying)
        .await
        .unwrap()
        .expect("in-flight record");
    assert!(matches!(rec.state, State::InFlight { owner, .. } if owner == flying_req.owner));
    // The owner from before the restart still holds its lease and can finish.
    assert_eq!(
        store.complete(&flying_lease, &snap, ttl).await.unwrap(),
        Finish::Done
    );
    assert_eq!(store.len().await.unwrap(), 2);
    assert_eq!(store.expiry_len().await.unwrap(), 2);
}

// R14: purge_expired removes expired records physically, index entries included, and
// keeps live ones.
#[tokio::test]
async fn r14_purge_deletes_rows_and_index_entries() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = RedbStore::open(
        dir.path(),
        RedbStoreConfig {
            // Several batches per sweep.
            sweep_batch: 7,
            ..config(&clock)
        },
    )
    .unwrap();
    let ttl = Duration::from_secs(5);
    for i in 0..30 {
        let lease = acquire(&store, &claim_req(&id(&format!("purge{i}")), 1)).await;
        let _ = store.complete(&lease, &snapshot(b"x"), ttl).await.unwrap();
    }
    // Released records leave nothing behind either.
    let released = acquire(&store, &claim_req(&id("released"), 1)).await;
    assert_eq!(store.release(&released).await.unwrap(), Finish::Done);
    // In flight past its lease: as expired as a completed record past its TTL.
    let _abandoned = acquire(&store, &claim_req(&id("abandoned"), 1)).await;
    assert_eq!(store.len().await.unwrap(), 31);
    assert_eq!(store.expiry_len().await.unwrap(), 31);

    clock.advance(Duration::from_secs(11));
    let live = id("live");
    let live_lease = acquire(&store, &claim_req(&live, 1)).await;
    let _ = store
        .complete(&live_lease, &snapshot(b"y"), ttl)
        .await
        .unwrap();

    assert_eq!(store.purge_expired().await.unwrap(), 31);
    assert_eq!(store.len().await.unwrap(), 1);
    assert_eq!(store.expiry_len().await.unwrap(), 1);
    assert!(store.lookup(&live).await.unwrap().is_some());
    assert_eq!(store.purge_expired().await.unwrap(), 0);
}

// R14: a renewed lease moves its index entry, so a sweep at the old deadline keeps it.
#[tokio::test]
async fn r14_sweep_keeps_renewed_records() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = open(dir.path(), &clock);
    let rid = id("renewed");
    let lease = acquire(&store, &claim_req(&rid, 1)).await; // 10 s lease
    clock.advance(Duration::from_secs(8));
    assert_eq!(
        store.renew(&lease, Duration::from_secs(10)).await.unwrap(),
        Finish::Done
    );
    clock.advance(Duration::from_secs(4)); // past the first deadline, not the second
    assert_eq!(store.purge_expired().await.unwrap(), 0);
    assert!(store.lookup(&rid).await.unwrap().is_some());
    assert_eq!(store.expiry_len().await.unwrap(), 1);
    clock.advance(Duration::from_secs(10));
    assert_eq!(store.purge_expired().await.unwrap(), 1);
    assert_eq!(store.expiry_len().await.unwrap(), 0);
}

// R14: the background sweeper removes expired records on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r14_background_sweeper_removes_expired() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = RedbStore::open(
        dir.path(),
        RedbStoreConfig {
            sweep_interval: Duration::from_millis(20),
            sweep_batch: 3,
            ..config(&clock)
        },
    )
    .unwrap();
    for i in 0..10 {
        let lease = acquire(&store, &claim_req(&id(&format!("bg{i}")), 1)).await;
        let _ = store
            .complete(&lease, &snapshot(b"x"), Duration::from_secs(5))
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(6));
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.len().await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the sweeper did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.expiry_len().await.unwrap(), 0);
}

// The sweeper holds no strong handle: dropping the store closes the file, so the
// directory can be opened again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_releases_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = open(dir.path(), &clock);
    let clone = store.clone();
    drop(store);
    // A clone still holds it.
    assert!(RedbStore::open(dir.path(), config(&clock)).is_err());
    drop(clone);
    let _again = open(dir.path(), &clock);
}

// A held directory is refused with an error that says so.
#[tokio::test]
async fn second_open_of_a_held_directory_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let _store = open(dir.path(), &clock);
    let err = RedbStore::open(dir.path(), config(&clock)).unwrap_err();
    let StoreError::Backend { store, source } = &err else {
        panic!("expected a backend error, got {err:?}");
    };
    assert_eq!(*store, "redb");
    let open_err = source.downcast_ref::<OpenError>().expect("an OpenError");
    assert!(
        matches!(open_err, OpenError::DirectoryInUse { dir: d, .. } if d == dir.path()),
        "{open_err:?}"
    );
    assert!(
        open_err.to_string().contains("another idem process"),
        "{open_err}"
    );
}

/// A stored value that is no record.
const GARBAGE: &[u8] = b"\x01not a record";

/// Rewrites `rid`'s stored value in the closed store in `dir`, behind its back:
/// `damage` gets the value stored now, if any, and returns the bytes to store instead.
fn tamper(dir: &Path, rid: &RecordId, damage: impl FnOnce(Option<Vec<u8>>) -> Vec<u8>) {
    use redb::ReadableTable as _;
    let db = redb::Database::create(dir.join(FILE_NAME)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut records = txn.open_table(RECORDS).unwrap();
        let key = rid.to_bytes();
        let now = records
            .get(key.as_slice())
            .unwrap()
            .map(|v| v.value().to_vec());
        records.insert(key.as_slice(), &damage(now)[..]).unwrap();
    }
    txn.commit().unwrap();
}

/// A claim of `rid` and a lookup of it are both Corrupt (R16): never a replay.
async fn assert_corrupt(store: &RedbStore, rid: &RecordId) {
    let answer = store.claim(&claim_req(rid, 1)).await;
    assert!(matches!(answer, Err(StoreError::Corrupt(_))), "{answer:?}");
    let answer = store.lookup(rid).await;
    assert!(matches!(answer, Err(StoreError::Corrupt(_))), "{answer:?}");
}

// R16: bytes that do not decode are Corrupt for every operation, never a replay.
#[tokio::test]
async fn r16_corrupt_record_is_an_error_not_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let rid = id("corrupt");
    let req = claim_req(&rid, 1);
    // Complete it properly first, so the record exists and is indexed …
    let store = open(dir.path(), &clock);
    let lease = acquire(&store, &req).await;
    let _ = store
        .complete(&lease, &snapshot(b"ok"), Duration::from_secs(60))
        .await
        .unwrap();
    drop(store);
    // … then damage it behind the store's back: a truncated value.
    tamper(dir.path(), &rid, |good| {
        let good = good.expect("the completed record");
        good[..good.len() - 1].to_vec()
    });
    let store = open(dir.path(), &clock);
    assert_corrupt(&store, &rid).await;
    let stranger = Lease {
        owner: OwnerToken::random(),
        ..lease
    };
    assert!(matches!(
        store
            .complete(&stranger, &snapshot(b"x"), Duration::from_secs(1))
            .await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.release(&stranger).await,
        Err(StoreError::Corrupt(_))
    ));
    // Once past its indexed expiry, the sweeper frees the key.
    clock.advance(Duration::from_secs(61));
    assert_eq!(store.purge_expired().await.unwrap(), 1);
    assert!(matches!(
        store.claim(&claim_req(&rid, 1)).await.unwrap(),
        Claim::Acquired(_)
    ));
}

// Garbage written under an id that was never indexed is Corrupt too.
#[tokio::test]
async fn r16_garbage_bytes_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    drop(open(dir.path(), &clock));
    let rid = id("garbage");
    tamper(dir.path(), &rid, |_| GARBAGE.to_vec());
    let store = open(dir.path(), &clock);
    assert_corrupt(&store, &rid).await;
    // On call can still remove it, and the key is usable again.
    assert_eq!(store.delete(&rid).await.unwrap(), None);
    assert_eq!(store.lookup(&rid).await.unwrap(), None);
    assert!(matches!(
        store.claim(&claim_req(&rid, 1)).await.unwrap(),
        Claim::Acquired(_)
    ));
}

// R16 with group commit: transitions that arrive together share one write transaction,
// yet each keeps its own answer. A record that does not decode fails its own
// transitions only; every other claim and completion of the same moment succeeds and
// is on disk once answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r16_concurrent_transitions_commit_together_and_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    drop(open(dir.path(), &clock));
    let bad = id("garbage-in-a-batch");
    tamper(dir.path(), &bad, |_| GARBAGE.to_vec());
    let store = open(dir.path(), &clock);
    let stranger = Lease {
        id: bad.clone(),
        fingerprint: claim_req(&bad, 1).fingerprint,
        owner: OwnerToken::random(),
        taken_over: false,
    };
    let ttl = Duration::from_secs(3600);
    let ids: Vec<_> = (0..64).map(|n| id(&format!("batched-{n}"))).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (n, rid) in (0..).zip(ids.clone()) {
        let owner = store.clone();
        tasks.spawn(async move {
            let store = owner;
            let lease = acquire(&store, &claim_req(&rid, n)).await;
            let body = format!("done {n}");
            let done = store
                .complete(&lease, &snapshot(body.as_bytes()), ttl)
                .await;
            assert_eq!(done.unwrap(), Finish::Done);
        });
        let (store, stranger) = (store.clone(), stranger.clone());
        tasks.spawn(async move {
            let done = store.complete(&stranger, &snapshot(b"x"), ttl).await;
            assert!(matches!(done, Err(StoreError::Corrupt(_))), "{done:?}");
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    drop(store);
    let store = open(dir.path(), &clock);
    for rid in &ids {
        let Some(record) = store.lookup(rid).await.unwrap() else {
            panic!("{rid} was answered but is not on disk");
        };
        assert!(
            matches!(record.state, State::Completed { .. }),
            "{record:?}"
        );
    }
    let answer = store.lookup(&bad).await;
    assert!(matches!(answer, Err(StoreError::Corrupt(_))), "{answer:?}");
}

/// The same contract on the store wrapped for encryption at rest.
mod sealed {
    use super::*;
    use idem_core::store::Sealed;
    use idem_core::store::testkit::sealing_keys;

    idem_core::store_tests!(sealed: async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let store = Sealed::new(open(dir.path(), &clock), sealing_keys());
        ManualFixture::new(store, clock, dir)
    });
}
