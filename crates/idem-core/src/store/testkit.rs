//! The store contract suite: one `pub async fn` per property, run against every store.
//!
//! A store crate stamps the whole suite into its tests with [`crate::store_tests!`],
//! given an expression that makes a fresh [`Fixture`]:
//!
//! ```ignore
//! idem_core::store_tests!(async { ManualFixture::memory() });
//! ```

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::clock::ManualClock;
use crate::fingerprint::Fingerprint;
use crate::key::IdempotencyKey;
use crate::record::{NotRetained, OwnerToken, RecordId, Snapshot, SnapshotBody, State};
use crate::scope::Scope;
use crate::store::{
    Claim, ClaimRequest, Finish, Lease, ListFilter, MemoryStore, MemoryStoreConfig, StateFilter,
    Store, StoreError,
};

pub mod model;

/// A store under test and a way to let time pass as it sees time.
pub trait Fixture: Send + Sync + 'static {
    /// The store.
    type Store: Store;
    /// The store under test.
    fn store(&self) -> &Self::Store;
    /// Lets `by` pass.
    fn advance(&self, by: Duration) -> impl Future<Output = ()> + Send;
    /// The lease the suite claims with; `advance(lease)` must end it.
    fn lease(&self) -> Duration;
}

/// A store on a [`ManualClock`]: time moves only by `advance`, instantly.
pub struct ManualFixture<St> {
    store: St,
    clock: ManualClock,
    _guard: Box<dyn Any + Send + Sync>,
}

impl<St: fmt::Debug> fmt::Debug for ManualFixture<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualFixture")
            .field("store", &self.store)
            .finish()
    }
}

impl<St: fmt::Debug> fmt::Debug for RealTimeFixture<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RealTimeFixture")
            .field("store", &self.store)
            .finish()
    }
}

impl<St: Store> ManualFixture<St> {
    /// A fixture over `store`, which must read time from `clock`; `guard` is kept
    /// alive as long as the fixture (a temporary directory, say).
    pub fn new(store: St, clock: ManualClock, guard: impl Any + Send + Sync) -> Self {
        Self {
            store,
            clock,
            _guard: Box::new(guard),
        }
    }

    /// The clock.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }
}

impl ManualFixture<MemoryStore> {
    /// A fresh memory store on a manual clock.
    pub fn memory() -> Self {
        let clock = ManualClock::new();
        let store = MemoryStore::with_config(MemoryStoreConfig {
            clock: Arc::new(clock.clone()),
            ..MemoryStoreConfig::default()
        });
        Self::new(store, clock, ())
    }
}

impl<St: Store> Fixture for ManualFixture<St> {
    type Store = St;
    fn store(&self) -> &St {
        &self.store
    }
    async fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
    fn lease(&self) -> Duration {
        Duration::from_secs(10)
    }
}

/// A store on real time (networked stores expire by their own clock): `advance` sleeps.
pub struct RealTimeFixture<St> {
    store: St,
    lease: Duration,
    _guard: Box<dyn Any + Send + Sync>,
}

impl<St: Store> RealTimeFixture<St> {
    /// A fixture over `store` claiming with `lease`; `guard` lives as long as it.
    pub fn new(store: St, lease: Duration, guard: impl Any + Send + Sync) -> Self {
        Self {
            store,
            lease,
            _guard: Box::new(guard),
        }
    }
}

impl<St: Store> Fixture for RealTimeFixture<St> {
    type Store = St;
    fn store(&self) -> &St {
        &self.store
    }
    async fn advance(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }
    fn lease(&self) -> Duration {
        self.lease
    }
}

/// A record id under the global scope with a key unique to this process run.
pub fn id(key: &str) -> RecordId {
    use std::sync::atomic::{AtomicU64, Ordering};
    static RUN: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let run = RUN.get_or_init(|| OwnerToken::random().get());
    let n = N.fetch_add(1, Ordering::Relaxed);
    let key = IdempotencyKey::new(&format!("{key}-{run:x}-{n}")).expect("valid test key");
    RecordId::new(Scope::from_bytes([9; 16]), key)
}

/// Two fixed test keys, `new` (seals) then `old`, for [`Sealed`](crate::store::Sealed)
/// stores under the contract suite.
pub fn sealing_keys() -> crate::store::SealingKeys {
    crate::store::SealingKeys::new([("new", [2; 32]), ("old", [1; 32])])
        .expect("two distinct valid keys")
}

/// A fingerprint numbered `n`.
pub fn fp(n: u8) -> Fingerprint {
    Fingerprint::from_bytes([n; 32])
}

/// A claim of `id` with fingerprint `n`, a fresh owner and a 10 s lease.
pub fn claim_req(id: &RecordId, n: u8) -> ClaimRequest {
    ClaimRequest {
        id: id.clone(),
        fingerprint: fp(n),
        owner: OwnerToken::random(),
        lease: Duration::from_secs(10),
        waiting: false,
    }
}

/// A 201 snapshot with a JSON content type and `body`.
pub fn snapshot(body: &[u8]) -> Snapshot {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    Snapshot {
        status: StatusCode::CREATED,
        reason: None,
        headers,
        body: SnapshotBody::Full(Bytes::copy_from_slice(body)),
    }
}

fn req<F: Fixture>(fx: &F, id: &RecordId, n: u8) -> ClaimRequest {
    ClaimRequest {
        lease: fx.lease(),
        waiting: false,
        ..claim_req(id, n)
    }
}

fn ttl<F: Fixture>(fx: &F) -> Duration {
    fx.lease() * 3
}

/// `fx`'s store's answer to a claim of `id` with fingerprint `n`.
async fn claim<F: Fixture>(fx: &F, id: &RecordId, n: u8) -> Claim {
    fx.store().claim(&req(fx, id, n)).await.unwrap()
}

/// `fx`'s store's answer to completing `lease` with [`snapshot`]`(body)`.
async fn complete<F: Fixture>(fx: &F, lease: &Lease, body: &[u8]) -> Finish {
    fx.store()
        .complete(lease, &snapshot(body), ttl(fx))
        .await
        .unwrap()
}

async fn acquire<F: Fixture>(fx: &F, id: &RecordId, n: u8) -> Lease {
    match fx.store().claim(&req(fx, id, n)).await.expect("claim") {
        Claim::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// R6: an absent record is claimed; the record is in flight under the new owner.
pub async fn r06_claim_acquires_absent<F: Fixture>(fx: &F) {
    let id = id("absent");
    let r = req(fx, &id, 1);
    let lease = match fx.store().claim(&r).await.unwrap() {
        Claim::Acquired(l) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!(lease.owner, r.owner);
    assert!(!lease.taken_over);
    let rec = fx.store().lookup(&id).await.unwrap().expect("record");
    assert_eq!(rec.fingerprint, fp(1));
    assert!(matches!(rec.state, State::InFlight { owner, .. } if owner == r.owner));
}

/// R6, R18: of 50 concurrent claims, exactly one acquires.
pub async fn r06_claim_is_exclusive<F: Fixture>(fx: &F) {
    let id = id("race");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let store = fx.store().clone();
        let r = req(fx, &id, 1);
        tasks.push(tokio::spawn(async move { store.claim(&r).await }));
    }
    let mut acquired = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Claim::Acquired(_) => acquired += 1,
            Claim::InFlight { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(acquired, 1);
}

/// R6: concurrent claims over many keys: each key acquired exactly once.
pub async fn r06_many_keys_in_parallel<F: Fixture>(fx: &F) {
    let ids: Vec<_> = (0..100).map(|i| id(&format!("many{i}"))).collect();
    let mut tasks = Vec::new();
    for round in 0..4 {
        for (i, id) in ids.iter().enumerate() {
            let store = fx.store().clone();
            let r = req(fx, id, 1);
            tasks.push(tokio::spawn(async move {
                (i, round, store.claim(&r).await.unwrap())
            }));
        }
    }
    let mut acquired = vec![0; ids.len()];
    for t in tasks {
        let (i, _, claim) = t.await.unwrap();
        if matches!(claim, Claim::Acquired(_)) {
            acquired[i] += 1;
        }
    }
    assert!(acquired.iter().all(|n| *n == 1), "{acquired:?}");
}

/// R7, R8: a completed record replays its snapshot byte for byte and keeps its
/// fingerprint (a completion that dropped it would turn every retry into a mismatch).
pub async fn r08_completed_replays_snapshot<F: Fixture>(fx: &F) {
    let id = id("replay");
    let lease = acquire(fx, &id, 1).await;
    let body: Vec<u8> = (0..65_536u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut snap = snapshot(&body);
    snap.headers
        .append("set-cookie", HeaderValue::from_static("a=1"));
    snap.headers
        .append("set-cookie", HeaderValue::from_static("b=2"));
    assert_eq!(
        fx.store().complete(&lease, &snap, ttl(fx)).await.unwrap(),
        Finish::Done
    );
    for _ in 0..2 {
        assert_eq!(claim(fx, &id, 1).await, Claim::Completed(snap.clone()));
    }
    let rec = fx.store().lookup(&id).await.unwrap().expect("record");
    assert_eq!(rec.fingerprint, fp(1));
    assert!(matches!(rec.state, State::Completed { snapshot, .. } if snapshot == snap));
}

/// R4, R13, R19: snapshots without a body round-trip as such.
pub async fn r13_not_retained_snapshots<F: Fixture>(fx: &F) {
    for reason in NotRetained::ALL {
        let id = id("not-retained");
        let lease = acquire(fx, &id, 1).await;
        let snap = Snapshot {
            status: StatusCode::OK,
            reason: None,
            headers: HeaderMap::new(),
            body: SnapshotBody::NotRetained(reason),
        };
        let _ = fx.store().complete(&lease, &snap, ttl(fx)).await.unwrap();
        assert_eq!(claim(fx, &id, 1).await, Claim::Completed(snap));
    }
}

/// R9: another fingerprint is a mismatch, in flight or completed, and changes nothing.
pub async fn r09_mismatch_leaves_record_untouched<F: Fixture>(fx: &F) {
    let id = id("mismatch");
    let lease = acquire(fx, &id, 1).await;
    let before = fx.store().lookup(&id).await.unwrap();
    assert_eq!(claim(fx, &id, 2).await, Claim::Mismatch);
    assert_eq!(fx.store().lookup(&id).await.unwrap(), before);
    let _ = fx
        .store()
        .complete(&lease, &snapshot(b"ok"), ttl(fx))
        .await
        .unwrap();
    let before = fx.store().lookup(&id).await.unwrap();
    assert_eq!(claim(fx, &id, 2).await, Claim::Mismatch);
    assert_eq!(fx.store().lookup(&id).await.unwrap(), before);
    assert_eq!(claim(fx, &id, 1).await, Claim::Completed(snapshot(b"ok")));
}

/// R10: a duplicate of an in-flight record learns how long the lease has left.
pub async fn r10_in_flight_reports_lease_left<F: Fixture>(fx: &F) {
    let id = id("inflight");
    let _lease = acquire(fx, &id, 1).await;
    match claim(fx, &id, 1).await {
        Claim::InFlight { retry_after } => {
            assert!(retry_after <= fx.lease(), "{retry_after:?}");
            assert!(!retry_after.is_zero());
        }
        other => panic!("{other:?}"),
    }
}

/// R7, R12: a release deletes the record so the operation may run again; a second
/// release, and a completion after it, are superseded.
pub async fn r07_release_frees_key<F: Fixture>(fx: &F) {
    let id = id("release");
    let lease = acquire(fx, &id, 1).await;
    assert_eq!(fx.store().release(&lease).await.unwrap(), Finish::Done);
    assert_eq!(fx.store().lookup(&id).await.unwrap(), None);
    assert_eq!(
        fx.store().release(&lease).await.unwrap(),
        Finish::Superseded
    );
    assert_eq!(complete(fx, &lease, b"late").await, Finish::Superseded);
    // A retry after a release may even carry another payload: the key is free.
    let again = acquire(fx, &id, 2).await;
    assert!(!again.taken_over);
}

/// R11: a record whose lease ended is taken over with a new owner; the old owner's
/// late renew, completion and release are all refused and change nothing.
pub async fn r11_expired_lease_is_taken_over<F: Fixture>(fx: &F) {
    let id = id("takeover");
    let old = acquire(fx, &id, 1).await;
    fx.advance(fx.lease() + Duration::from_millis(50)).await;
    // Stores with native expiry may have dropped the record already, so whether
    // `taken_over` is set is the store's business; the new owner is what counts.
    let new = acquire(fx, &id, 1).await;
    assert_ne!(new.owner, old.owner);
    let store = fx.store();
    assert_eq!(
        store.renew(&old, fx.lease()).await.unwrap(),
        Finish::Superseded
    );
    assert_eq!(complete(fx, &old, b"stale").await, Finish::Superseded);
    assert_eq!(store.release(&old).await.unwrap(), Finish::Superseded);
    let rec = store.lookup(&id).await.unwrap().expect("record");
    assert!(matches!(rec.state, State::InFlight { owner, .. } if owner == new.owner));
    assert_eq!(complete(fx, &new, b"fresh").await, Finish::Done);
    assert_eq!(complete(fx, &old, b"stale").await, Finish::Superseded);
    assert_eq!(
        store.claim(&req(fx, &id, 1)).await.unwrap(),
        Claim::Completed(snapshot(b"fresh"))
    );
}

/// R11: of many late and current completions racing, only the owner's lands.
pub async fn r11_racing_completions_are_fenced<F: Fixture>(fx: &F) {
    let id = id("fence-race");
    let old = acquire(fx, &id, 1).await;
    fx.advance(fx.lease() + Duration::from_millis(50)).await;
    let new = acquire(fx, &id, 1).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = fx.store().clone();
        let (lease, body): (Lease, &[u8]) = if i == 20 {
            (new.clone(), b"new")
        } else {
            (old.clone(), b"old")
        };
        let ttl = ttl(fx);
        tasks.push(tokio::spawn(async move {
            (
                i,
                store.complete(&lease, &snapshot(body), ttl).await.unwrap(),
            )
        }));
    }
    for t in tasks {
        let (i, done) = t.await.unwrap();
        let expected = if i == 20 {
            Finish::Done
        } else {
            Finish::Superseded
        };
        assert_eq!(done, expected, "completion {i}");
    }
    assert_eq!(claim(fx, &id, 1).await, Claim::Completed(snapshot(b"new")));
}

/// R11: a renewed lease outlives its first deadline.
pub async fn r11_renew_keeps_lease_alive<F: Fixture>(fx: &F) {
    let id = id("renew");
    let lease = acquire(fx, &id, 1).await;
    let step = fx.lease() * 6 / 10;
    fx.advance(step).await;
    assert_eq!(
        fx.store().renew(&lease, fx.lease()).await.unwrap(),
        Finish::Done
    );
    fx.advance(step).await;
    assert!(matches!(claim(fx, &id, 1).await, Claim::InFlight { .. }));
    assert_eq!(complete(fx, &lease, b"ok").await, Finish::Done);
}

/// R14: a completed record expires after its TTL; the key is then new again.
pub async fn r14_completed_record_expires<F: Fixture>(fx: &F) {
    let id = id("expire");
    let lease = acquire(fx, &id, 1).await;
    let _ = fx
        .store()
        .complete(&lease, &snapshot(b"ok"), ttl(fx))
        .await
        .unwrap();
    fx.advance(ttl(fx) / 2).await;
    assert!(matches!(claim(fx, &id, 2).await, Claim::Mismatch));
    fx.advance(ttl(fx) / 2 + Duration::from_millis(100)).await;
    assert_eq!(fx.store().lookup(&id).await.unwrap(), None);
    let again = acquire(fx, &id, 2).await;
    assert!(!again.taken_over);
}

/// R14: expired records are removed, and the store still works afterwards.
pub async fn r14_purge_removes_expired<F: Fixture>(fx: &F) {
    let ids: Vec<_> = (0..20).map(|i| id(&format!("purge{i}"))).collect();
    for id in &ids {
        let lease = acquire(fx, id, 1).await;
        let _ = fx
            .store()
            .complete(&lease, &snapshot(b"x"), fx.lease())
            .await
            .unwrap();
    }
    let live = id("purge-live");
    let _live = acquire(fx, &live, 1).await;
    fx.advance(fx.lease() / 2).await;
    let _ = fx.store().renew(&_live, fx.lease()).await.unwrap();
    fx.advance(fx.lease() / 2 + Duration::from_millis(100))
        .await;
    fx.store().purge_expired().await.unwrap();
    for id in &ids {
        assert_eq!(fx.store().lookup(id).await.unwrap(), None);
    }
    assert!(
        fx.store().lookup(&live).await.unwrap().is_some(),
        "a live record was purged"
    );
}

/// R4: the same key under two scopes is two records.
pub async fn r04_scopes_are_independent<F: Fixture>(fx: &F) {
    let a = id("scoped");
    let b = RecordId::new(Scope::from_bytes([1; 16]), a.key().clone());
    let la = acquire(fx, &a, 1).await;
    let lb = acquire(fx, &b, 2).await;
    let _ = fx
        .store()
        .complete(&la, &snapshot(b"tenant-a"), ttl(fx))
        .await
        .unwrap();
    assert!(matches!(claim(fx, &b, 2).await, Claim::InFlight { .. }));
    let _ = fx
        .store()
        .complete(&lb, &snapshot(b"tenant-b"), ttl(fx))
        .await
        .unwrap();
    assert_eq!(
        claim(fx, &a, 1).await,
        Claim::Completed(snapshot(b"tenant-a"))
    );
    assert_eq!(
        claim(fx, &b, 2).await,
        Claim::Completed(snapshot(b"tenant-b"))
    );
}

/// R10: a watch taken before a waiting duplicate's claim wakes on the completion or
/// release that follows.
pub async fn r10_watch_wakes_on_finish<F: Fixture>(fx: &F) {
    for complete in [true, false] {
        let id = id("watch");
        let lease = acquire(fx, &id, 1).await;
        let mut watch = fx.store().watch(&id);
        let waiter = ClaimRequest {
            waiting: true,
            ..req(fx, &id, 1)
        };
        let Claim::InFlight { .. } = fx.store().claim(&waiter).await.unwrap() else {
            panic!("expected InFlight for the waiting duplicate");
        };
        let store = fx.store().clone();
        let ttl = ttl(fx);
        let finisher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if complete {
                store.complete(&lease, &snapshot(b"ok"), ttl).await.unwrap()
            } else {
                store.release(&lease).await.unwrap()
            }
        });
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("watch woke");
        assert_eq!(finisher.await.unwrap(), Finish::Done);
    }
}

/// Claims `id` with a long lease (so a slow machine cannot end it mid-test) and, with
/// `body`, completes it with a long TTL.
async fn admin_record<F: Fixture>(fx: &F, id: &RecordId, body: Option<&[u8]>) -> Lease {
    let req = ClaimRequest {
        lease: Duration::from_secs(60),
        ..claim_req(id, 1)
    };
    let Claim::Acquired(lease) = fx.store().claim(&req).await.expect("claim") else {
        panic!("expected Acquired for {id}");
    };
    if let Some(body) = body {
        let done = fx
            .store()
            .complete(&lease, &snapshot(body), Duration::from_secs(600))
            .await
            .expect("complete");
        assert_eq!(done, Finish::Done);
    }
    lease
}

fn ids_of(page: &crate::store::ListPage) -> Vec<RecordId> {
    page.records.iter().map(|(id, _)| id.clone()).collect()
}

/// Listing: live records by state, scope and age, in id order, paged by cursor.
pub async fn admin_list_filters_and_pages<F: Fixture>(fx: &F) {
    let store = fx.store();
    let scope = Scope::from_bytes([9; 16]);
    let other = RecordId::new(Scope::from_bytes([7; 16]), id("other").key().clone());
    let old = id("list-old");
    admin_record(fx, &old, Some(b"old")).await;
    admin_record(fx, &other, Some(b"other")).await;
    // Later records are created at least a millisecond after `old` on the store's clock.
    fx.advance(fx.lease() / 4).await;
    let flying = [id("list-f0"), id("list-f1")];
    let done = [id("list-c0"), id("list-c1")];
    for f in &flying {
        admin_record(fx, f, None).await;
    }
    for c in &done {
        admin_record(fx, c, Some(b"done")).await;
    }
    let mut mine: Vec<RecordId> = flying.iter().chain(&done).cloned().collect();
    mine.push(old.clone());
    mine.sort();

    // Everything, in id order, on one page.
    let all = store.list(&ListFilter::default()).await.unwrap();
    let mut everything = mine.clone();
    everything.push(other.clone());
    everything.sort();
    assert_eq!(ids_of(&all), everything);
    assert_eq!(all.next, None);
    for (id, record) in &all.records {
        assert_eq!(store.lookup(id).await.unwrap().as_ref(), Some(record));
    }

    // By state.
    let in_flight = store
        .list(&ListFilter {
            state: StateFilter::InFlight,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    let mut want = flying.to_vec();
    want.sort();
    assert_eq!(ids_of(&in_flight), want);
    assert!(
        in_flight
            .records
            .iter()
            .all(|(_, r)| matches!(r.state, State::InFlight { .. }))
    );
    let completed = store
        .list(&ListFilter {
            state: StateFilter::Completed,
            scope: Some(scope),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    let mut want = done.to_vec();
    want.push(old.clone());
    want.sort();
    assert_eq!(ids_of(&completed), want);

    // By scope.
    let theirs = store
        .list(&ListFilter {
            scope: Some(*other.scope()),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(ids_of(&theirs), vec![other.clone()]);

    // By age: only `old` was created before the others.
    let old_at = store.lookup(&old).await.unwrap().expect("old").created_at;
    let older = store
        .list(&ListFilter {
            created_before: Some(old_at + 1),
            scope: Some(scope),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(ids_of(&older), vec![old.clone()]);

    // Pages of two: every record once, in order, then no cursor.
    let mut seen = Vec::new();
    let mut filter = ListFilter {
        scope: Some(scope),
        limit: 2,
        ..ListFilter::default()
    };
    for page_no in 0.. {
        assert!(page_no < 5, "paging does not end");
        let page = store.list(&filter).await.unwrap();
        assert!(page.records.len() <= 2);
        seen.extend(ids_of(&page));
        match page.next {
            Some(next) => filter.after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, mine);
}

/// Listing leaves out records that are no longer live.
pub async fn admin_list_skips_expired<F: Fixture>(fx: &F) {
    let id = id("list-expired");
    let _lease = acquire(fx, &id, 1).await;
    fx.advance(fx.lease() + Duration::from_millis(50)).await;
    let page = fx.store().list(&ListFilter::default()).await.unwrap();
    assert!(
        !ids_of(&page).contains(&id),
        "an ended lease was listed: {page:?}"
    );
}

/// Deleting: whatever the state, the old owner is fenced out, the key is free again,
/// and watchers wake (R10, R11).
pub async fn admin_delete_frees_key_and_wakes<F: Fixture>(fx: &F) {
    let store = fx.store();
    let flying = id("delete-f");
    let lease = admin_record(fx, &flying, None).await;
    let mut watch = store.watch(&flying);
    let gone = store.delete(&flying).await.unwrap().expect("a live record");
    assert!(matches!(gone.state, State::InFlight { owner, .. } if owner == lease.owner));
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("the watch woke on delete");
    assert_eq!(store.lookup(&flying).await.unwrap(), None);
    // R11: the deleted record's owner can no longer complete it.
    assert_eq!(
        store
            .complete(&lease, &snapshot(b"late"), ttl(fx))
            .await
            .unwrap(),
        Finish::Superseded
    );
    assert_eq!(store.lookup(&flying).await.unwrap(), None);
    assert!(matches!(
        store.claim(&req(fx, &flying, 2)).await.unwrap(),
        Claim::Acquired(_)
    ));

    let done = id("delete-c");
    admin_record(fx, &done, Some(b"done")).await;
    let gone = store.delete(&done).await.unwrap().expect("a live record");
    assert!(matches!(gone.state, State::Completed { .. }));
    assert!(matches!(
        store.claim(&req(fx, &done, 3)).await.unwrap(),
        Claim::Acquired(_)
    ));

    assert_eq!(store.delete(&id("delete-absent")).await.unwrap(), None);
    // Another scope's record of the same key is untouched.
    let mine = id("delete-scoped");
    let theirs = RecordId::new(Scope::from_bytes([7; 16]), mine.key().clone());
    admin_record(fx, &mine, Some(b"a")).await;
    admin_record(fx, &theirs, Some(b"b")).await;
    assert!(store.delete(&mine).await.unwrap().is_some());
    assert!(store.lookup(&theirs).await.unwrap().is_some());
}

/// Listing through a [`Sealed`](crate::store::Sealed) store keyed by [`sealing_keys`]:
/// records come back opened, under the ids the inner store holds (key digests), never
/// under the client's keys.
pub async fn sealed_list_shows_digests<F: Fixture>(fx: &F) {
    let keys = sealing_keys();
    let (done, flying) = (id("sealed-list-done"), id("sealed-list-flying"));
    admin_record(fx, &done, Some(b"sealed-list-body")).await;
    admin_record(fx, &flying, None).await;
    let page = fx.store().list(&ListFilter::default()).await.unwrap();
    let listed = ids_of(&page);
    assert!(!listed.contains(&done) && !listed.contains(&flying));
    let Some((_, record)) = page
        .records
        .iter()
        .find(|(i, _)| *i == keys.store_id(&done))
    else {
        panic!("the completed record is listed under its digest");
    };
    let State::Completed { snapshot: s, .. } = &record.state else {
        panic!("expected a completed record, got {record:?}");
    };
    assert_eq!(s.body, SnapshotBody::Full(b"sealed-list-body"[..].into()));
    let in_flight = fx
        .store()
        .list(&ListFilter {
            state: StateFilter::InFlight,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert!(ids_of(&in_flight).contains(&keys.store_id(&flying)));
}

/// A networked store's cross-instance notifications as a test sees them: a connection
/// of the test's own on the channel the store notifies on.
///
/// [`r10_only_awaited_records_notify`] runs over it: stores whose instances tell each
/// other about finished records (PostgreSQL's `NOTIFY`, Redis's `PUBLISH`) implement it.
pub trait NotificationProbe: Send {
    /// Sends `marker` on the store's channel, as the store would send a notification.
    fn send_marker(&mut self, marker: &str) -> impl Future<Output = ()> + Send;
    /// The payload of the next message on the channel, in the order they were sent,
    /// however long that takes (the contract bounds the wait); panics if the channel
    /// closed.
    fn next(&mut self) -> impl Future<Output = Vec<u8>> + Send;
    /// The record a store's notification payload names, if it names one.
    fn record_of(payload: &[u8]) -> Option<RecordId>;
}

/// Claims `id` on `store` with [`claim_req`] (fingerprint 1, a 10 s lease); panics
/// unless the claim acquires it.
pub async fn acquired<St: Store>(store: &St, id: &RecordId) -> Lease {
    match store.claim(&claim_req(id, 1)).await.unwrap() {
        Claim::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// Claims `id` on `store` ([`acquired`]) and completes it with [`snapshot`]`(body)`,
/// kept for `ttl`; panics unless both succeed.
pub async fn completed<St: Store>(store: &St, id: &RecordId, body: &[u8], ttl: Duration) {
    let lease = acquired(store, id).await;
    let done = store.complete(&lease, &snapshot(body), ttl).await.unwrap();
    assert_eq!(done, Finish::Done, "completing {id}");
}

/// The next message `probe` hears, within 5 s.
async fn heard<P: NotificationProbe>(probe: &mut P) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(5), probe.next())
        .await
        .expect("a notification within 5 s")
}

/// A duplicate that will wait (R10 `wait` mode) claims `id`, in flight: from now on the
/// record's completion or release notifies every instance.
pub async fn wait_on<St: Store>(store: &St, id: &RecordId) {
    let req = ClaimRequest {
        waiting: true,
        ..claim_req(id, 1)
    };
    match store.claim(&req).await.unwrap() {
        Claim::InFlight { .. } => {}
        other => panic!("expected InFlight, got {other:?}"),
    }
}

/// R10: a completion or release that nobody waits for sends no notification (a
/// notification costs every instance a wake-up, and PostgreSQL serialises every
/// committing transaction that sends one); one that a waiting duplicate asked about does.
///
/// The marker `probe` sends after the store's writes arrives after anything they sent
/// (one channel, delivered in order), so "the marker comes first" means "nothing sent".
pub async fn r10_only_awaited_records_notify<F: Fixture, P: NotificationProbe>(
    fx: &F,
    probe: &mut P,
) {
    let store = fx.store();
    let ttl = Duration::from_secs(60);
    // Nobody waits (a duplicate that does not wait leaves no mark): the completion and
    // the release send nothing.
    let done = id("unwatched-done");
    let lease = admin_record(fx, &done, None).await;
    assert!(matches!(
        store.claim(&req(fx, &done, 1)).await.unwrap(),
        Claim::InFlight { .. }
    ));
    assert_eq!(
        store.complete(&lease, &snapshot(b"ok"), ttl).await.unwrap(),
        Finish::Done
    );
    let gone = id("unwatched-released");
    let lease = admin_record(fx, &gone, None).await;
    assert_eq!(store.release(&lease).await.unwrap(), Finish::Done);
    probe.send_marker("marker-1").await;
    assert_eq!(
        String::from_utf8_lossy(&heard(probe).await),
        "marker-1",
        "a record nobody waited for notified"
    );
    // A waiting duplicate marks the record: its completion notifies, then its release.
    for complete in [true, false] {
        let watched = id(if complete {
            "watched-done"
        } else {
            "watched-released"
        });
        let lease = admin_record(fx, &watched, None).await;
        wait_on(store, &watched).await;
        let finish = if complete {
            store.complete(&lease, &snapshot(b"ok"), ttl).await
        } else {
            store.release(&lease).await
        };
        assert_eq!(finish.unwrap(), Finish::Done);
        probe.send_marker("marker-2").await;
        let first = heard(probe).await;
        let first_text = String::from_utf8_lossy(&first);
        assert_ne!(
            first_text, "marker-2",
            "the awaited record sent no notification"
        );
        assert_eq!(P::record_of(&first), Some(watched), "{first_text}");
        assert_eq!(String::from_utf8_lossy(&heard(probe).await), "marker-2");
    }
}

/// R10, R18: a watch on one instance (`waiter`) wakes when another instance of the same
/// store (`finisher`) completes or releases the record a waiting duplicate asked about,
/// and what woke it is visible through the waiter at once.
pub async fn r10_watch_wakes_across_instances<St: Store>(waiter: &St, finisher: &St) {
    for complete in [true, false, true, false] {
        let id = id("cross-watch");
        let lease = acquired(finisher, &id).await;
        let mut watch = waiter.watch(&id);
        wait_on(waiter, &id).await;
        let task = {
            let finisher = finisher.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if complete {
                    finisher
                        .complete(&lease, &snapshot(b"done"), Duration::from_secs(60))
                        .await
                        .unwrap()
                } else {
                    finisher.release(&lease).await.unwrap()
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the watch on the other instance woke");
        let seen = waiter.lookup(&id).await.unwrap();
        if complete {
            assert!(
                matches!(seen, Some(ref r) if matches!(r.state, State::Completed { .. })),
                "{seen:?}"
            );
        } else {
            assert_eq!(seen, None);
        }
        assert_eq!(task.await.unwrap(), Finish::Done);
    }
}

/// R16: a completed record that `damage` then spoils behind the store's back (its
/// snapshot no longer decodes) is an error, never a replay; a mismatch needs no snapshot
/// and says so; listing reports it instead of failing, and goes on with the others.
///
/// `store` must hold no other record.
pub async fn r16_damaged_record_is_never_replayed<St: Store>(
    store: &St,
    damage: impl AsyncFnOnce(&RecordId),
) {
    let id = id("corrupt");
    completed(store, &id, b"ok", Duration::from_secs(60)).await;
    damage(&id).await;
    let answer = store.claim(&claim_req(&id, 1)).await;
    assert!(matches!(answer, Err(StoreError::Corrupt(_))), "{answer:?}");
    let answer = store.lookup(&id).await;
    assert!(matches!(answer, Err(StoreError::Corrupt(_))), "{answer:?}");
    assert_eq!(
        store.claim(&claim_req(&id, 2)).await.unwrap(),
        Claim::Mismatch
    );
    let other = crate::store::testkit::id("listed");
    let lease = acquired(store, &other).await;
    let page = store.list(&ListFilter::default()).await.unwrap();
    assert_eq!(page.corrupt.len(), 1, "{page:?}");
    assert_eq!(page.corrupt[0].id.as_ref(), Some(&id));
    assert_eq!(page.records.len(), 1, "{page:?}");
    assert_eq!(page.records[0].0, lease.id);
}

/// Stamps the whole contract suite as named tests for one store.
///
/// `$make` is an expression evaluating to a future of a [`Fixture`] (an `async` block),
/// evaluated afresh for each test. Tests run on a multi-threaded runtime, so races are real.
#[macro_export]
macro_rules! store_tests {
    // A store wrapped in `Sealed`: its listings show key digests, not the ids stored
    // through it, so the listing tests are `sealed_list_shows_digests` instead.
    (sealed: $make:expr) => {
        $crate::store_tests!(@contract $make;
            admin_delete_frees_key_and_wakes,
            sealed_list_shows_digests,
        );
    };
    ($make:expr) => {
        $crate::store_tests!(@contract $make;
            admin_list_filters_and_pages,
            admin_list_skips_expired,
            admin_delete_frees_key_and_wakes,
        );
    };
    (@contract $make:expr; $($admin:ident,)*) => {
        $crate::store_tests!(@each $make;
            r06_claim_acquires_absent,
            r06_claim_is_exclusive,
            r06_many_keys_in_parallel,
            r08_completed_replays_snapshot,
            r13_not_retained_snapshots,
            r09_mismatch_leaves_record_untouched,
            r10_in_flight_reports_lease_left,
            r07_release_frees_key,
            r11_expired_lease_is_taken_over,
            r11_racing_completions_are_fenced,
            r11_renew_keeps_lease_alive,
            r14_completed_record_expires,
            r14_purge_removes_expired,
            r04_scopes_are_independent,
            r10_watch_wakes_on_finish,
            $($admin,)*
        );
    };
    (@each $make:expr; $($name:ident,)*) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let fixture = $make.await;
                $crate::store::testkit::$name(&fixture).await;
            }
        )*
    };
}
