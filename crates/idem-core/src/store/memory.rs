//! The volatile in-process store: for tests, demos and single-process use where losing
//! records on restart is acceptable (R16 does not hold here).
//!
//! It is bounded in bytes (R25): every record is accounted at its encoded size plus
//! its key and a fixed overhead, and the total never exceeds
//! [`MemoryStoreConfig::max_bytes`] (default 256 MiB). At the bound it refuses new
//! claims with [`StoreError::Full`] (a 503) rather than evicting live records, which
//! could let an operation run twice; records that have expired are swept first. A
//! completion that would not fit keeps its record without the response
//! ([`NotRetained::StoreFull`]: the operation still never runs twice).
//!
//! **One scope cannot lock out the others (R15, R25).** Once the store holds three
//! quarters of its bound, a claim is refused only for a scope that holds more than its
//! fair share (those three quarters divided among the scopes that hold records); the
//! last quarter stays for everyone else. A flood of keys under one credential fills
//! the store to three quarters and then gets 503s; other tenants are still served.
//!
//! A background task sweeps expired records (R14).

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use http::HeaderMap;

use crate::clock::{Clock, Millis, SystemClock};
use crate::record::{NotRetained, Record, RecordId, Snapshot, SnapshotBody, State};
use crate::scope::Scope;
use crate::store::machine::{self, Write};
use crate::store::{
    Claim, ClaimRequest, Finish, Lease, ListFilter, ListPage, Store, StoreError, WaitHub, Watch,
};

const SHARDS: usize = 32;

/// What a record costs beyond its encoded bytes and its key: the map entry (record id
/// and handle, about 56 bytes), the table's spare slots and two allocations.
pub const RECORD_OVERHEAD: usize = 96;

/// The default bound: 256 MiB, about 800 000 records of small JSON responses.
pub const DEFAULT_MAX_BYTES: usize = 256 << 20;

/// Settings of a [`MemoryStore`].
#[derive(Clone, Debug)]
pub struct MemoryStoreConfig {
    /// The most bytes held at once, as accounted: each record's encoded size, its key
    /// and [`RECORD_OVERHEAD`] (default [`DEFAULT_MAX_BYTES`], 256 MiB).
    pub max_bytes: usize,
    /// The most records held at once, a hard limit of its own (default: none, only
    /// `max_bytes` bounds the store).
    pub capacity: usize,
    /// How often expired records are swept (default 10 s).
    pub sweep_interval: Duration,
    /// The time source for leases and expiry.
    pub clock: Arc<dyn Clock>,
}

impl Default for MemoryStoreConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            capacity: usize::MAX,
            sweep_interval: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
        }
    }
}

/// A bounded, volatile, in-process [`Store`]. Clones share one store.
///
/// ```
/// use idem_core::store::{MemoryStore, Store};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = MemoryStore::new();
/// assert_eq!(store.purge_expired().await.unwrap(), 0);
/// assert_eq!(store.used_bytes(), 0);
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

/// The records of one shard, each under the keyed hash of its id.
type Records = HashTable<(RecordId, Held)>;

/// The bytes held by the scopes of one shard.
type Scopes = HashTable<(Scope, usize)>;

struct Inner {
    shards: Box<[Mutex<Records>]>,
    /// Bytes held per scope, sharded by scope; taken after a record shard, never
    /// before one.
    scopes: Box<[Mutex<Scopes>]>,
    /// Keyed (SipHash under a random key): ids carry the client's key, and a table
    /// whose hashes a client could predict could be flooded with collisions.
    hasher: RandomState,
    len: AtomicUsize,
    /// Accounted bytes of every record held.
    used: AtomicUsize,
    /// How many scopes hold at least one record.
    holders: AtomicUsize,
    /// No record stops counting before this instant (ms): a lower bound on every held
    /// record's deadline, lowered by each write and recomputed by each sweep. A full
    /// store sweeps on a claim only once this has passed, so a flood of new keys at
    /// capacity costs one refusal each, not one scan of every record each.
    next_due: AtomicU64,
    /// How many sweeps have run.
    sweeps: AtomicU64,
    config: MemoryStoreConfig,
    hub: WaitHub,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store with the default settings.
    pub fn new() -> Self {
        Self::with_config(MemoryStoreConfig::default())
    }

    /// A store with these settings. Starts the sweeper when called inside a tokio
    /// runtime; it stops when the last clone of the store is dropped.
    pub fn with_config(config: MemoryStoreConfig) -> Self {
        let inner = Arc::new(Inner {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            scopes: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            len: AtomicUsize::new(0),
            used: AtomicUsize::new(0),
            holders: AtomicUsize::new(0),
            next_due: AtomicU64::new(u64::MAX),
            sweeps: AtomicU64::new(0),
            config,
            hub: WaitHub::new(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&inner), inner.config.sweep_interval));
        }
        Self { inner }
    }

    /// How many records are held, live or not yet swept.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes held, as accounted against [`MemoryStoreConfig::max_bytes`].
    pub fn used_bytes(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// The bound in bytes.
    pub fn max_bytes(&self) -> usize {
        self.inner.config.max_bytes
    }

    /// The bytes held by one scope's records.
    pub fn scope_bytes(&self, scope: &Scope) -> usize {
        self.inner.scope_held(scope)
    }
}

async fn sweep(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.purge();
    }
}

/// A record as the store holds it: encoded ([`Record::encode`]), which takes well under
/// half the memory of the decoded form (no header map, no separate body allocation),
/// beside its deadline, so sweeps never decode.
struct Held {
    ends_at: Millis,
    bytes: Box<[u8]>,
}

impl Held {
    fn new(record: &Record) -> Self {
        Self {
            ends_at: record.ends_at(),
            bytes: record.encode().into_boxed_slice(),
        }
    }

    fn record(&self) -> Result<Record, StoreError> {
        // Only this store wrote it; a failure would be a codec bug, answered as one.
        Ok(Record::decode(&self.bytes)?)
    }

    /// The bytes accounted for this record under `id`.
    fn cost(&self, id: &RecordId) -> usize {
        self.bytes.len() + id.key().as_str().len() + RECORD_OVERHEAD
    }
}

/// How a write that grows the store is admitted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// A claim: refused at the bound, or above the scope's fair share.
    Claim,
    /// A completion: it must be stored (the operation ran); when it does not fit, its
    /// record is kept without the response.
    Completion,
    /// Renewals and deletions do not grow records.
    Other,
}

/// Which of `shards` holds the entries hashed to `hash`: bits the tables do not look
/// at (they place an entry by the low bits and tag it with the top seven), so the
/// entries of one shard spread over all of its table.
fn shard_of(hash: u64, shards: usize) -> usize {
    (hash >> 32) as usize % shards
}

impl Inner {
    /// The keyed hash of `id` and the shard that holds it: hashed once, for the shard
    /// and for the table.
    fn shard(&self, id: &RecordId) -> (u64, MutexGuard<'_, Records>) {
        let hash = self.hasher.hash_one(id);
        let shard = self.shards[shard_of(hash, self.shards.len())]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (hash, shard)
    }

    fn scope_shard(&self, scope: &Scope) -> (u64, MutexGuard<'_, Scopes>) {
        let hash = self.hasher.hash_one(scope);
        let shard = self.scopes[shard_of(hash, self.scopes.len())]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (hash, shard)
    }

    /// The bytes held by `scope`'s records.
    fn scope_held(&self, scope: &Scope) -> usize {
        let (hash, scopes) = self.scope_shard(scope);
        scopes
            .find(hash, |(s, _)| s == scope)
            .map_or(0, |(_, held)| *held)
    }

    /// Moves `scope`'s share of the accounted bytes from `old` to `new` (the total in
    /// `used` is kept by the callers: growth is reserved before a write).
    fn resize(&self, scope: &Scope, old: usize, new: usize) {
        if old == new {
            return;
        }
        let (hash, mut scopes) = self.scope_shard(scope);
        let rehash = |(s, _): &(Scope, usize)| self.hasher.hash_one(s);
        match scopes.entry(hash, |(s, _)| s == scope, rehash) {
            Entry::Occupied(mut e) => {
                let held = &mut e.get_mut().1;
                *held = (*held + new).saturating_sub(old);
                if *held == 0 {
                    e.remove();
                    self.holders.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Entry::Vacant(e) => {
                let held = new.saturating_sub(old);
                if held > 0 {
                    e.insert((*scope, held));
                    self.holders.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Adds `grow` bytes to the total if they fit under the bound.
    fn reserve(&self, grow: usize) -> bool {
        let max = self.config.max_bytes;
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(grow).filter(|total| *total <= max)
            })
            .is_ok()
    }

    /// Whether a claim of `scope` may grow the store by `grow` bytes: from three
    /// quarters of the bound on, only within the scope's fair share of those three
    /// quarters, so the flood of one scope leaves the last quarter to the others.
    fn fair(&self, scope: &Scope, grow: usize) -> bool {
        let high = self.config.max_bytes / 4 * 3;
        if self.used.load(Ordering::Relaxed).saturating_add(grow) <= high {
            return true;
        }
        let held = self.scope_held(scope);
        let holders = self.holders.load(Ordering::Relaxed) + usize::from(held == 0);
        held.saturating_add(grow) <= high / holders.max(1)
    }

    /// Applies one transition under the shard lock; the lock makes it atomic.
    fn apply<T>(
        &self,
        id: &RecordId,
        admit: Admit,
        f: impl FnOnce(Option<Record>, u64) -> (T, Write),
    ) -> Result<T, StoreError> {
        let now = self.config.clock.now_ms();
        let (hash, mut shard) = self.shard(id);
        let rehash = |(id, _): &(RecordId, Held)| self.hasher.hash_one(id);
        let entry = shard.entry(hash, |(stored, _)| stored == id, rehash);
        let existing = match &entry {
            Entry::Occupied(e) => Some(e.get().1.record()?),
            Entry::Vacant(_) => None,
        };
        let (answer, write) = f(existing, now);
        let held = match write {
            Write::Put(r) => Some(Held::new(&r)),
            Write::Delete => None,
            Write::Keep => return Ok(answer),
        };
        let old = match &entry {
            Entry::Occupied(e) => e.get().1.cost(id),
            Entry::Vacant(_) => 0,
        };
        let Some(mut held) = held else {
            if let Entry::Occupied(e) = entry {
                e.remove();
                self.len.fetch_sub(1, Ordering::Relaxed);
                self.used.fetch_sub(old, Ordering::Relaxed);
                self.resize(id.scope(), old, 0);
            }
            return Ok(answer);
        };
        let vacant = matches!(entry, Entry::Vacant(_));
        let mut new = held.cost(id);
        if new > old {
            let grow = new - old;
            match admit {
                // Refuse rather than evict: evicting a live record could run an
                // operation twice.
                Admit::Claim => {
                    let counted =
                        !vacant || self.len.load(Ordering::Relaxed) < self.config.capacity;
                    if !(counted && self.fair(id.scope(), grow) && self.reserve(grow)) {
                        return Err(StoreError::Full);
                    }
                }
                Admit::Completion => {
                    if !self.reserve(grow) {
                        held = without_response(held)?;
                        new = held.cost(id);
                        if new > old {
                            // Smaller than any in-flight record: a few bytes at most.
                            self.used.fetch_add(new - old, Ordering::Relaxed);
                        } else {
                            self.used.fetch_sub(old - new, Ordering::Relaxed);
                        }
                    }
                }
                Admit::Other => {
                    self.used.fetch_add(grow, Ordering::Relaxed);
                }
            }
        } else {
            self.used.fetch_sub(old - new, Ordering::Relaxed);
        }
        self.next_due.fetch_min(held.ends_at, Ordering::Relaxed);
        match entry {
            Entry::Occupied(mut e) => e.get_mut().1 = held,
            Entry::Vacant(e) => {
                self.len.fetch_add(1, Ordering::Relaxed);
                e.insert((id.clone(), held));
            }
        }
        self.resize(id.scope(), old, new);
        Ok(answer)
    }

    fn purge(&self) -> u64 {
        let now = self.config.clock.now_ms();
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        // Writes during the sweep lower the bound from "nothing held" on; the records
        // already held are accounted for by the pass below.
        self.next_due.store(u64::MAX, Ordering::Relaxed);
        let (mut removed, mut due) = (0, u64::MAX);
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let before = shard.len();
            shard.retain(|(id, held)| {
                let live = held.ends_at > now;
                if live {
                    due = due.min(held.ends_at);
                } else {
                    let cost = held.cost(id);
                    self.used.fetch_sub(cost, Ordering::Relaxed);
                    self.resize(id.scope(), cost, 0);
                }
                live
            });
            removed += before - shard.len();
        }
        self.next_due.fetch_min(due, Ordering::Relaxed);
        self.len.fetch_sub(removed, Ordering::Relaxed);
        removed as u64
    }

    /// Sweeps if some record may have stopped counting since the last sweep.
    fn purge_if_due(&self) -> u64 {
        if self.config.clock.now_ms() < self.next_due.load(Ordering::Relaxed) {
            return 0;
        }
        self.purge()
    }
}

/// A completed record that does not fit, kept without its response: headers and body
/// dropped, so it is smaller than the in-flight record it replaces.
fn without_response(held: Held) -> Result<Held, StoreError> {
    let mut record = held.record()?;
    if let State::Completed { snapshot, .. } = &mut record.state {
        snapshot.headers = HeaderMap::new();
        snapshot.body = SnapshotBody::NotRetained(NotRetained::StoreFull);
    }
    Ok(Held::new(&record))
}

impl Store for MemoryStore {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        let claim = |r: Option<Record>, now| machine::claim(r, req, now);
        let result = self.inner.apply(&req.id, Admit::Claim, claim);
        // Expired records go first: sweep (when something is due) and try once more.
        if matches!(result, Err(StoreError::Full)) && self.inner.purge_if_due() > 0 {
            return self.inner.apply(&req.id, Admit::Claim, claim);
        }
        result
    }

    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<Finish, StoreError> {
        self.inner.apply(&lease.id, Admit::Other, |r, now| {
            machine::renew(r.as_ref(), lease, lease_for, now)
        })
    }

    async fn complete(
        &self,
        lease: &Lease,
        snapshot: &Snapshot,
        ttl: Duration,
    ) -> Result<Finish, StoreError> {
        let done = self.inner.apply(&lease.id, Admit::Completion, |r, now| {
            machine::complete(r.as_ref(), lease, snapshot, ttl, now)
        })?;
        self.inner.hub.notify(&lease.id);
        Ok(done)
    }

    async fn release(&self, lease: &Lease) -> Result<Finish, StoreError> {
        let done = self.inner.apply(&lease.id, Admit::Other, |r, _| {
            machine::release(r.as_ref(), lease)
        })?;
        self.inner.hub.notify(&lease.id);
        Ok(done)
    }

    async fn lookup(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let now = self.inner.config.clock.now_ms();
        let (hash, shard) = self.inner.shard(id);
        match shard.find(hash, |(stored, _)| stored == id) {
            Some((_, held)) if held.ends_at > now => held.record().map(Some),
            _ => Ok(None),
        }
    }

    async fn list(&self, filter: &ListFilter) -> Result<ListPage, StoreError> {
        let now = self.inner.config.clock.now_ms();
        let mut found = Vec::new();
        for shard in self.inner.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, held) in shard.iter().filter(|(_, held)| held.ends_at > now) {
                let record = held.record()?;
                if filter.matches(id, &record, now) {
                    found.push((id.clone(), record));
                }
            }
        }
        Ok(ListPage::from_matches(found, filter))
    }

    async fn delete(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let gone = self.inner.apply(id, Admit::Other, |r, now| match r {
            Some(r) => (Some(r).filter(|r| r.is_live(now)), Write::Delete),
            None => (None, Write::Keep),
        })?;
        self.inner.hub.notify(id);
        Ok(gone)
    }

    fn watch(&self, id: &RecordId) -> Watch {
        self.inner.hub.watch(id)
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        Ok(self.inner.purge())
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len())
            .field("used_bytes", &self.used_bytes())
            .field("max_bytes", &self.inner.config.max_bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::testkit::ManualFixture;

    crate::store_tests!(async { ManualFixture::memory() });

    fn small(capacity: usize, clock: &ManualClock) -> MemoryStore {
        MemoryStore::with_config(MemoryStoreConfig {
            capacity,
            clock: Arc::new(clock.clone()),
            ..MemoryStoreConfig::default()
        })
    }

    // R14: bounded by live records; full means refused, never evicted.
    #[tokio::test]
    async fn r14_full_store_refuses_and_recovers_after_expiry() {
        use crate::store::testkit::{claim_req, id, snapshot};
        let clock = ManualClock::new();
        let store = small(2, &clock);
        let (a, b, c) = (id("a"), id("b"), id("c"));
        for k in [&a, &b] {
            let Claim::Acquired(l) = store.claim(&claim_req(k, 1)).await.unwrap() else {
                panic!()
            };
            let _ = store
                .complete(&l, &snapshot(b"x"), Duration::from_secs(5))
                .await
                .unwrap();
        }
        assert!(matches!(
            store.claim(&claim_req(&c, 1)).await,
            Err(StoreError::Full)
        ));
        // Live records were not evicted.
        assert!(store.lookup(&a).await.unwrap().is_some());
        assert!(store.lookup(&b).await.unwrap().is_some());
        clock.advance(Duration::from_secs(6));
        assert!(matches!(
            store.claim(&claim_req(&c, 1)).await.unwrap(),
            Claim::Acquired(_)
        ));
        assert_eq!(store.len(), 1);
    }

    // R14 at capacity: a flood of new keys is refused without sweeping every record
    // on every claim; the store sweeps once the earliest deadline it holds has passed.
    #[tokio::test]
    async fn r14_full_store_sweeps_only_when_something_is_due() {
        use crate::store::testkit::{claim_req, id, snapshot};
        let clock = ManualClock::new();
        let store = small(2, &clock);
        let due = || store.inner.next_due.load(Ordering::Relaxed);
        let sweeps = || store.inner.sweeps.load(Ordering::Relaxed);
        let start = clock.now_ms();
        assert_eq!(due(), u64::MAX, "an empty store has nothing due");
        let (a, b) = (id("a"), id("b"));
        for (k, ttl) in [(&a, 5), (&b, 9)] {
            let Claim::Acquired(l) = store.claim(&claim_req(k, 1)).await.unwrap() else {
                panic!()
            };
            let _ = store
                .complete(&l, &snapshot(b"x"), Duration::from_secs(ttl))
                .await
                .unwrap();
        }
        // The in-flight lease of `a` (60 s) was the first bound; completions lower it.
        assert_eq!(due(), start + 5_000);
        let before = sweeps();
        for _ in 0..100 {
            assert!(matches!(
                store.claim(&claim_req(&id("flood"), 1)).await,
                Err(StoreError::Full)
            ));
        }
        assert_eq!(sweeps(), before, "nothing was due, so nothing was swept");
        clock.advance(Duration::from_secs(6));
        assert!(matches!(
            store.claim(&claim_req(&id("c"), 1)).await.unwrap(),
            Claim::Acquired(_)
        ));
        // One sweep removed `a` and recomputed the bound from what is left.
        assert_eq!(sweeps(), before + 1);
        assert!(store.lookup(&a).await.unwrap().is_none());
        assert_eq!(due(), start + 9_000);
    }

    fn bytes_bound(max_bytes: usize, clock: &ManualClock) -> MemoryStore {
        MemoryStore::with_config(MemoryStoreConfig {
            max_bytes,
            clock: Arc::new(clock.clone()),
            ..MemoryStoreConfig::default()
        })
    }

    fn scoped(scope: u8, key: &str) -> RecordId {
        RecordId::new(
            Scope::from_bytes([scope; 16]),
            crate::IdempotencyKey::new(key).unwrap(),
        )
    }

    /// Claims and completes `id` with `body`; `Err(Full)` when the claim is refused.
    async fn store_one(store: &MemoryStore, id: &RecordId, body: &[u8]) -> Result<(), StoreError> {
        use crate::store::testkit::{claim_req, snapshot};
        let Claim::Acquired(lease) = store.claim(&claim_req(id, 1)).await? else {
            panic!("{id:?} was not new")
        };
        let done = store
            .complete(&lease, &snapshot(body), Duration::from_secs(60))
            .await?;
        assert_eq!(done, Finish::Done);
        Ok(())
    }

    // R25: the bound is in bytes: large responses fill it long before any count would,
    // the accounted total never passes it, and once not even an in-flight record fits,
    // claims are refused.
    #[tokio::test]
    async fn r25_bounded_in_bytes() {
        let clock = ManualClock::new();
        let store = bytes_bound(64 << 10, &clock);
        let body = vec![b'x'; 4 << 10];
        let (mut stored, mut kept, mut refused) = (0, 0, 0);
        // Each key under its own scope: no fair-share refusal, only the bound.
        for i in 0..=255u8 {
            let id = scoped(i, "k");
            match store_one(&store, &id, &body).await {
                Ok(()) => stored += 1,
                Err(StoreError::Full) => refused += 1,
                Err(e) => panic!("{e}"),
            }
            assert!(store.used_bytes() <= store.max_bytes(), "{store:?}");
            if let Some(Record {
                state: State::Completed { snapshot, .. },
                ..
            }) = store.lookup(&id).await.unwrap()
                && matches!(snapshot.body, SnapshotBody::Full(_))
            {
                kept += 1;
            }
        }
        assert!(
            (10..16).contains(&kept),
            "kept {kept} bodies of 4 KiB in 64 KiB"
        );
        assert!(refused > 0, "every claim admitted: {store:?}");
        // Accounting follows every removal back to zero.
        clock.advance(Duration::from_secs(61));
        assert_eq!(store.purge_expired().await.unwrap(), stored);
        assert_eq!(store.used_bytes(), 0);
        assert_eq!(store.scope_bytes(&Scope::from_bytes([0; 16])), 0);
        assert_eq!(store.inner.holders.load(Ordering::Relaxed), 0);
    }

    // R15, R25: one scope flooding new keys fills three quarters of the store and is
    // then refused; another scope is still served, until it too holds more than its
    // fair share.
    #[tokio::test]
    async fn r15_a_flooding_scope_does_not_lock_out_the_others() {
        let clock = ManualClock::new();
        let max = 64 << 10;
        let store = bytes_bound(max, &clock);
        let body = vec![b'x'; 512];
        let mut flood = 0;
        while store_one(&store, &scoped(1, &format!("flood-{flood}")), &body)
            .await
            .is_ok()
        {
            flood += 1;
        }
        let flooder = store.scope_bytes(&Scope::from_bytes([1; 16]));
        // The share is checked when a claim is admitted; the completion of the last one
        // admitted may pass it by that one record (its 512-byte body and overhead).
        assert!(flooder <= max / 4 * 3 + 1024, "{flooder}");
        assert!(flooder > max / 2, "{flooder}");
        // Refused again and again: still 503 for the flooding scope.
        for i in 0..10 {
            let refused = store_one(&store, &scoped(1, &format!("more-{i}")), &body).await;
            assert!(matches!(refused, Err(StoreError::Full)));
        }
        // Another tenant is served from the last quarter.
        for i in 0..10 {
            store_one(&store, &scoped(2, &format!("other-{i}")), &body)
                .await
                .unwrap();
        }
        // It, too, stops at its share of three quarters among the two, or the bound.
        let mut other = 10;
        while store_one(&store, &scoped(2, &format!("other-{other}")), &body)
            .await
            .is_ok()
        {
            other += 1;
        }
        assert!(store.used_bytes() <= max);
        // The flooding scope's own records are untouched: they still replay.
        assert!(store.lookup(&scoped(1, "flood-0")).await.unwrap().is_some());
    }

    // R25: a completion that would pass the bound is stored without its response:
    // the record still completes, so the operation never runs twice.
    #[tokio::test]
    async fn r25_a_completion_without_room_keeps_the_record_not_its_response() {
        use crate::store::testkit::{claim_req, snapshot};
        let clock = ManualClock::new();
        let store = bytes_bound(8 << 10, &clock);
        let id = scoped(1, "big");
        let Claim::Acquired(lease) = store.claim(&claim_req(&id, 1)).await.unwrap() else {
            panic!()
        };
        let done = store
            .complete(
                &lease,
                &snapshot(&[b'y'; 16 << 10]),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert_eq!(done, Finish::Done);
        assert!(store.used_bytes() <= store.max_bytes());
        let Claim::Completed(s) = store.claim(&claim_req(&id, 1)).await.unwrap() else {
            panic!("the record completed")
        };
        assert_eq!(s.status, http::StatusCode::CREATED);
        assert_eq!(s.body, SnapshotBody::NotRetained(NotRetained::StoreFull));
        assert!(s.headers.is_empty());
        // Deleting gives every byte back.
        assert!(store.delete(&id).await.unwrap().is_some());
        assert_eq!(store.used_bytes(), 0);
    }
}
