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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
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
    shards: Box<[Mutex<HashMap<RecordId, Record>>]>,
    hasher: RandomState,
    len: AtomicUsize,
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

impl Inner {
    fn shard(&self, id: &RecordId) -> MutexGuard<'_, HashMap<RecordId, Record>> {
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
            Entry::Occupied(e) => Some(e.get()),
            Entry::Vacant(_) => None,
        };
        let (answer, write) = f(existing, now);
        match (entry, write) {
            (_, Write::Keep) => {}
            (Entry::Occupied(mut e), Write::Put(r)) => {
                e.insert(r);
            }
            (Entry::Vacant(e), Write::Put(r)) => {
                // Refuse rather than evict: evicting a live record could run an
                // operation twice.
                if self.len.load(Ordering::Relaxed) >= self.config.capacity {
                    return Err(StoreError::Full);
                }
                self.len.fetch_add(1, Ordering::Relaxed);
                e.insert(r);
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
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let before = shard.len();
            shard.retain(|_, r| r.is_live(now));
            removed += before - shard.len();
        }
        self.len.fetch_sub(removed, Ordering::Relaxed);
        removed as u64
    }
}

impl Store for MemoryStore {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        let result = self
            .inner
            .apply(&req.id, |r, now| machine::claim(r, req, now));
        if matches!(result, Err(StoreError::Full)) && self.inner.purge() > 0 {
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
        Ok(self
            .inner
            .shard(id)
            .get(id)
            .filter(|r| r.is_live(now))
            .cloned())
    }

    async fn list(&self, filter: &ListFilter) -> Result<ListPage, StoreError> {
        let now = self.inner.config.clock.now_ms();
        let mut found = Vec::new();
        for shard in self.inner.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            found.extend(
                shard
                    .iter()
                    .filter(|(id, r)| filter.matches(id, r, now))
                    .map(|(id, r)| (id.clone(), r.clone())),
            );
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
}
