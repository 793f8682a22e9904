//! A damaged, emptied or foreign database file (R16, R25): opening never panics and
//! never takes such a file for an empty store; a record that does not decode is
//! reported by `list`, not a failure of the whole listing.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use idem_core::clock::ManualClock;
use idem_core::record::{Record, RecordId};
use idem_core::store::testkit::{claim_req, id, snapshot};
use idem_core::store::{Claim, ListFilter, Store, StoreError};
use idem_redb::layout::{EXPIRY, FILE_NAME, FORMAT, FORMAT_KEY, META, RECORDS};
use idem_redb::{OpenError, RedbStore, RedbStoreConfig};

fn config(clock: &ManualClock) -> RedbStoreConfig {
    RedbStoreConfig {
        clock: Arc::new(clock.clone()),
        ..RedbStoreConfig::default()
    }
}

/// The store in `dir` opened with `fresh` (R25: an unusable file is set aside).
fn open_fresh(dir: &Path, clock: &ManualClock) -> RedbStore {
    RedbStore::open(
        dir,
        RedbStoreConfig {
            fresh: true,
            ..config(clock)
        },
    )
    .unwrap()
}

/// The [`OpenError`] opening `dir` fails with.
fn refusal(dir: &Path, fresh: bool) -> OpenError {
    let clock = ManualClock::new();
    let e = RedbStore::open(
        dir,
        RedbStoreConfig {
            fresh,
            ..config(&clock)
        },
    )
    .expect_err("the file is refused");
    let StoreError::Backend { source, .. } = e else {
        panic!("expected a backend error, got {e:?}");
    };
    match source.downcast::<OpenError>() {
        Ok(e) => *e,
        Err(other) => panic!("expected an OpenError, got {other}"),
    }
}

/// A store in `dir` with `n` completed records, closed again; answers their ids and
/// records.
async fn populated(dir: &Path, n: usize) -> Vec<(RecordId, Record)> {
    let clock = ManualClock::new();
    let store = RedbStore::open(dir, config(&clock)).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let rid = id(&format!("kept-{i}"));
        let Claim::Acquired(lease) = store.claim(&claim_req(&rid, 1)).await.unwrap() else {
            panic!("fresh key");
        };
        let body = format!("response body number {i}");
        let _ = store
            .complete(
                &lease,
                &snapshot(body.as_bytes()),
                Duration::from_secs(3600),
            )
            .await
            .unwrap();
        out.push((rid.clone(), store.lookup(&rid).await.unwrap().unwrap()));
    }
    drop(store);
    out
}

fn aside_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{FILE_NAME}.unusable-")))
        .collect()
}

// R25: a 0-byte file where the database was is refused and left as found; fresh moves it
// aside and starts empty.
#[tokio::test]
async fn r25_an_empty_file_is_refused_unless_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(FILE_NAME);
    std::fs::File::create(&file).unwrap();
    let e = refusal(dir.path(), false);
    assert!(
        matches!(&e, OpenError::Empty { path } if *path == file),
        "{e}"
    );
    assert!(e.is_unusable_file());
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0);

    let clock = ManualClock::new();
    let store = open_fresh(dir.path(), &clock);
    assert!(store.is_empty().await.unwrap());
    drop(store);
    assert_eq!(aside_files(dir.path()).len(), 1);
    // A usable database is opened as it is, fresh or not.
    let kept = populated(dir.path(), 1).await;
    let store = open_fresh(dir.path(), &clock);
    assert_eq!(store.len().await.unwrap(), 1);
    assert!(store.lookup(&kept[0].0).await.unwrap().is_some());
    assert_eq!(aside_files(dir.path()).len(), 1);
}

// R25: a redb database that is not idem's is refused; one holding only idem's tables
// (written before the format marker) is idem's and gets the marker.
#[tokio::test]
async fn r25_a_foreign_database_is_refused_and_an_unmarked_idem_one_is_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(FILE_NAME);
    {
        let db = redb::Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("invoices"))
            .unwrap()
            .insert("a", 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let e = refusal(dir.path(), false);
    assert!(matches!(e, OpenError::Foreign { .. }), "{e}");
    assert!(e.to_string().contains("`invoices`"), "{e}");

    // A marker of another format: refused too.
    std::fs::remove_file(&file).unwrap();
    {
        let db = redb::Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(FORMAT_KEY, "idem-redb/99")
            .unwrap();
        txn.commit().unwrap();
    }
    let e = refusal(dir.path(), false);
    assert!(e.to_string().contains("idem-redb/99"), "{e}");

    // Only idem's tables, no marker: the layout before the marker existed.
    std::fs::remove_file(&file).unwrap();
    let rid = id("from-before-the-marker");
    {
        let db = redb::Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(RECORDS).unwrap();
        txn.open_table(EXPIRY).unwrap();
        txn.commit().unwrap();
    }
    let clock = ManualClock::new();
    let store = RedbStore::open(dir.path(), config(&clock)).unwrap();
    assert!(matches!(
        store.claim(&claim_req(&rid, 1)).await.unwrap(),
        Claim::Acquired(_)
    ));
    drop(store);
    let db = redb::Database::create(&file).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let meta = txn.open_table(META).unwrap();
    let marker = redb::ReadableTable::get(&meta, FORMAT_KEY)
        .unwrap()
        .unwrap();
    assert_eq!(marker.value(), FORMAT);
}

// R25: one byte changed anywhere in the file: opening and reading it never panic, and
// no key answers another record than its own. (redb does not verify a cleanly closed
// file on open, so damage to its own pages may still hide a record: `Ok(None)`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r25_damage_anywhere_in_the_file_never_panics_nor_replays_other_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let kept = populated(dir.path(), 24).await;
    let file = dir.path().join(FILE_NAME);
    let good = std::fs::read(&file).unwrap();
    // Where the file holds something: changing a byte redb never reads proves nothing.
    let used: Vec<usize> = (0..good.len()).filter(|&i| good[i] != 0).collect();
    let step = (used.len() / 120).max(1);
    let (mut refused, mut opened) = (0, 0);
    let clock = ManualClock::new();
    for &at in used.iter().step_by(step) {
        let mut bad = good.clone();
        bad[at] ^= 0x5a;
        std::fs::write(&file, &bad).unwrap();
        let Ok(store) = RedbStore::open(dir.path(), config(&clock)) else {
            refused += 1;
            continue;
        };
        opened += 1;
        for (rid, record) in &kept {
            if let Ok(Some(found)) = store.lookup(rid).await {
                assert_eq!(&found, record, "byte {at}: another record for {rid}");
            }
        }
        let _ = store.list(&ListFilter::default()).await;
        drop(store);
    }
    assert!(
        opened > 0 && refused > 0,
        "opened {opened}, refused {refused}"
    );
}

// R16: list reports a record that does not decode (each on exactly one page) and goes
// on with the others.
#[tokio::test]
async fn r16_list_reports_corrupt_records_and_lists_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let kept = populated(dir.path(), 7).await;
    let mut ids: Vec<RecordId> = kept.iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    let damaged = [ids[1].clone(), ids[4].clone(), ids[5].clone()];
    {
        let db = redb::Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut records = txn.open_table(RECORDS).unwrap();
            for rid in &damaged {
                let key = rid.to_bytes();
                let mut bytes = redb::ReadableTable::get(&records, key.as_slice())
                    .unwrap()
                    .unwrap()
                    .value()
                    .to_vec();
                let last = bytes.len() - 12;
                bytes[last] ^= 1; // in the body: only the checksum notices
                records.insert(key.as_slice(), bytes.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let clock = ManualClock::new();
    let store = RedbStore::open(dir.path(), config(&clock)).unwrap();
    for limit in [1, 2, 3, 100] {
        let mut filter = ListFilter {
            limit,
            ..ListFilter::default()
        };
        let (mut good, mut corrupt) = (Vec::new(), Vec::new());
        loop {
            let page = store.list(&filter).await.unwrap();
            assert!(page.records.len() + page.corrupt.len() <= limit);
            good.extend(page.records.into_iter().map(|(id, _)| id));
            corrupt.extend(page.corrupt.into_iter().map(|c| c.id.unwrap()));
            match page.next {
                Some(next) => filter.after = Some(next),
                None => break,
            }
        }
        assert_eq!(corrupt, damaged, "limit {limit}");
        let expected: Vec<_> = ids
            .iter()
            .filter(|i| !damaged.contains(i))
            .cloned()
            .collect();
        assert_eq!(good, expected, "limit {limit}");
    }
}
