//! The volatile in-process store: for tests, demos and single-process use where losing
//! records on restart is acceptable (R16 does not hold here).
//!
//! It is bounded: at capacity it refuses new claims with [`StoreError::Full`] (a 503)
//! rather than evicting live records, which could let an operation run twice. A
//! background task sweeps expired records (R14).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use crate::clock::{Clock, Millis, SystemClock};
use crate::record::{Record, RecordId, Snapshot};
use crate::store::machine::{self, Write};
use crate::store::{
    Claim, ClaimRequest, Finish, Lease, ListFilter, ListPage, Store, StoreError, WaitHub, Watch,
};

const SHARDS: usize = 32;

/// Settings of a [`MemoryStore`].
#[derive(Clone, Debug)]
pub struct MemoryStoreConfig {
    /// The most records kept at once (default 100 000).
    pub capacity: usize,
    /// How often expired records are swept (default 10 s).
    pub sweep_interval: Duration,
    /// The time source for leases and expiry.
    pub clock: Arc<dyn Clock>,
}

impl Default for MemoryStoreConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
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
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<HashMap<RecordId, Held>>]>,
    hasher: RandomState,
    len: AtomicUsize,
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
            hasher: RandomState::new(),
            len: AtomicUsize::new(0),
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
}

impl Inner {
    fn shard(&self, id: &RecordId) -> MutexGuard<'_, HashMap<RecordId, Held>> {
        let i = self.hasher.hash_one(id) as usize % self.shards.len();
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies one transition under the shard lock; the lock makes it atomic.
    fn apply<T>(
        &self,
        id: &RecordId,
        f: impl FnOnce(Option<&Record>, u64) -> (T, Write),
    ) -> Result<T, StoreError> {
        let now = self.config.clock.now_ms();
        let mut shard = self.shard(id);
        let entry = shard.entry(id.clone());
        let existing = match &entry {
            Entry::Occupied(e) => Some(e.get().record()?),
            Entry::Vacant(_) => None,
        };
        let (answer, write) = f(existing.as_ref(), now);
        if let Write::Put(r) = &write {
            self.next_due.fetch_min(r.ends_at(), Ordering::Relaxed);
        }
        match (entry, write) {
            (_, Write::Keep) => {}
            (Entry::Occupied(mut e), Write::Put(r)) => {
                e.insert(Held::new(&r));
            }
            (Entry::Vacant(e), Write::Put(r)) => {
                // Refuse rather than evict: evicting a live record could run an
                // operation twice.
                if self.len.load(Ordering::Relaxed) >= self.config.capacity {
                    return Err(StoreError::Full);
                }
                self.len.fetch_add(1, Ordering::Relaxed);
                e.insert(Held::new(&r));
            }
            (Entry::Occupied(e), Write::Delete) => {
                e.remove();
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
            (Entry::Vacant(_), Write::Delete) => {}
        }
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
            shard.retain(|_, held| {
                let live = held.ends_at > now;
                if live {
                    due = due.min(held.ends_at);
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

impl Store for MemoryStore {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        let result = self
            .inner
            .apply(&req.id, |r, now| machine::claim(r, req, now));
        if matches!(result, Err(StoreError::Full)) && self.inner.purge_if_due() > 0 {
            return self
                .inner
                .apply(&req.id, |r, now| machine::claim(r, req, now));
        }
        result
    }

    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<Finish, StoreError> {
        self.inner
            .apply(&lease.id, |r, now| machine::renew(r, lease, lease_for, now))
    }

    async fn complete(
        &self,
        lease: &Lease,
        snapshot: &Snapshot,
        ttl: Duration,
    ) -> Result<Finish, StoreError> {
        let done = self.inner.apply(&lease.id, |r, now| {
            machine::complete(r, lease, snapshot, ttl, now)
        })?;
        self.inner.hub.notify(&lease.id);
        Ok(done)
    }

    async fn release(&self, lease: &Lease) -> Result<Finish, StoreError> {
        let done = self
            .inner
            .apply(&lease.id, |r, _| machine::release(r, lease))?;
        self.inner.hub.notify(&lease.id);
        Ok(done)
    }

    async fn lookup(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let now = self.inner.config.clock.now_ms();
        let shard = self.inner.shard(id);
        match shard.get(id) {
            Some(held) if held.ends_at > now => held.record().map(Some),
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
        let gone = self.inner.apply(id, |r, now| match r {
            Some(r) => (Some(r.clone()).filter(|r| r.is_live(now)), Write::Delete),
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
            .field("capacity", &self.inner.config.capacity)
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
}
