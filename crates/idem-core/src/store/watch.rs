//! Waking waiting duplicates (R10 `wait` mode) without polling the store.
//!
//! A [`WaitHub`] is an in-process registry of waiters per record. The store calls
//! [`WaitHub::notify`] when it completes or releases a record: directly (memory,
//! embedded) or when a notification arrives on its one subscriber connection
//! (Redis pub/sub, PostgreSQL LISTEN). A [`Watch`] taken *before* the claim cannot miss
//! a wake-up that happens after it: it remembers the generation it started from.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::record::RecordId;

#[derive(Default)]
struct Slot {
    generation: AtomicU64,
    notify: Notify,
}

/// Waiters per record. Clones share one registry.
#[derive(Clone, Default)]
pub struct WaitHub {
    slots: Arc<Mutex<HashMap<RecordId, Arc<Slot>>>>,
}

impl WaitHub {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts watching `id`.
    pub fn watch(&self, id: &RecordId) -> Watch {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = slots.entry(id.clone()).or_default().clone();
        let seen = slot.generation.load(Ordering::SeqCst);
        Watch {
            hub: self.clone(),
            id: id.clone(),
            slot,
            seen,
        }
    }

    /// Wakes every watcher of `id`. Cheap when nobody watches.
    pub fn notify(&self, id: &RecordId) {
        // Wake under the lock (it does not block) so no clone of a slot outlives it,
        // which keeps the last-watcher-out count in `Drop` exact.
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(id) {
            slot.generation.fetch_add(1, Ordering::SeqCst);
            slot.notify.notify_waiters();
        }
    }

    /// Wakes every watcher (after a reconnect, when notifications may have been lost).
    pub fn notify_all(&self) {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        for slot in slots.values() {
            slot.generation.fetch_add(1, Ordering::SeqCst);
            slot.notify.notify_waiters();
        }
    }

    /// How many records have watchers.
    pub fn watched(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl fmt::Debug for WaitHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitHub")
            .field("watched", &self.watched())
            .finish()
    }
}

/// A waiter's handle on one record. See [`WaitHub`].
pub struct Watch {
    hub: WaitHub,
    id: RecordId,
    slot: Arc<Slot>,
    seen: u64,
}

impl Watch {
    /// Resolves once the record may have changed since the watch began or since the
    /// last call returned.
    pub async fn changed(&mut self) {
        loop {
            let notified = self.slot.notify.notified();
            let now = self.slot.generation.load(Ordering::SeqCst);
            if now != self.seen {
                self.seen = now;
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut slots = self
            .hub
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The map holds one reference and this watch another: the last watcher out
        // removes the slot, so the registry holds only watched records.
        if Arc::strong_count(&self.slot) == 2 {
            slots.remove(&self.id);
        }
    }
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch").field("seen", &self.seen).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::IdempotencyKey;
    use crate::scope::Scope;
    use std::time::Duration;

    fn id(k: &str) -> RecordId {
        RecordId::new(Scope::GLOBAL, IdempotencyKey::new(k).unwrap())
    }

    #[tokio::test]
    async fn notify_before_wait_is_not_lost() {
        let hub = WaitHub::new();
        let mut w = hub.watch(&id("a"));
        hub.notify(&id("a"));
        tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn other_keys_do_not_wake() {
        let hub = WaitHub::new();
        let mut w = hub.watch(&id("a"));
        hub.notify(&id("b"));
        assert!(
            tokio::time::timeout(Duration::from_secs(1), w.changed())
                .await
                .is_err()
        );
    }

    #[test]
    fn slots_are_removed_with_the_last_watch() {
        let hub = WaitHub::new();
        let a = hub.watch(&id("a"));
        let b = hub.watch(&id("a"));
        assert_eq!(hub.watched(), 1);
        drop(a);
        assert_eq!(hub.watched(), 1);
        drop(b);
        assert_eq!(hub.watched(), 0);
    }
}
