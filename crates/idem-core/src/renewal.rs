//! R11: the leases of running requests, renewed in the background by one task per
//! engine.
//!
//! A request registers its lease when it claims a record and drops the registration when
//! it completes or releases it. Registering costs a map insert: nothing is spawned and no
//! timer is armed per request, which matters because most requests finish long before
//! their first renewal is due. One task wakes every half renewal period and renews each
//! lease that would otherwise go longer than the period without one; it stops when a
//! whole period passed with nothing registered and is started again by the next
//! registration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::metrics::{StoreOp, timed};
use crate::store::{Finish, Lease, Store};

/// The registry of live leases of one engine.
pub(crate) struct Renewals<St> {
    shared: Arc<Shared<St>>,
}

struct Shared<St> {
    store: St,
    /// How far each renewal extends a lease.
    lease_for: Duration,
    /// The longest a lease goes without a renewal.
    every: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next: u64,
    live: HashMap<u64, Live>,
    task: Option<JoinHandle<()>>,
}

struct Live {
    lease: Lease,
    renewed: Instant,
}

/// One registered lease; dropping it stops its renewals.
pub(crate) struct Registration<St> {
    id: u64,
    shared: Arc<Shared<St>>,
}

impl<St: Store> Renewals<St> {
    /// Renewals that extend leases by `lease_for`, each at least every `every`.
    pub(crate) fn new(store: St, lease_for: Duration, every: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                lease_for,
                every: every.max(Duration::from_millis(2)),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Renews `lease` until the registration is dropped (or another owner took the record
    /// over). Must be called inside a Tokio runtime.
    pub(crate) fn register(&self, lease: Lease) -> Registration<St> {
        let mut state = self.shared.lock();
        let id = state.next;
        state.next += 1;
        state.live.insert(
            id,
            Live {
                lease,
                renewed: Instant::now(),
            },
        );
        // Started on demand; also again when the runtime that ran it has gone (an engine
        // may outlive one runtime, as in tests).
        if state.task.as_ref().is_none_or(JoinHandle::is_finished) {
            state.task = Some(tokio::spawn(run(Arc::downgrade(&self.shared))));
        }
        Registration {
            id,
            shared: self.shared.clone(),
        }
    }
}

impl<St> Shared<St> {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic: every change is one map operation.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<St> Drop for Registration<St> {
    fn drop(&mut self) {
        self.shared.lock().live.remove(&self.id);
    }
}

/// The renewal task: ends when the engine is dropped or nothing was registered for a
/// whole tick.
async fn run<St: Store>(shared: Weak<Shared<St>>) {
    let Some(tick) = shared.upgrade().map(|s| s.every / 2) else {
        return;
    };
    loop {
        tokio::time::sleep(tick).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // Due: every lease whose age would pass `every` before the next tick.
        let due: Vec<(u64, Lease)> = {
            let mut state = shared.lock();
            if state.live.is_empty() {
                state.task = None;
                return;
            }
            let now = Instant::now();
            state
                .live
                .iter()
                .filter(|(_, l)| now.saturating_duration_since(l.renewed) + tick >= shared.every)
                .map(|(id, l)| (*id, l.lease.clone()))
                .collect()
        };
        if due.is_empty() {
            continue;
        }
        let mut renewals = JoinSet::new();
        for (id, lease) in due {
            let store = shared.store.clone();
            let lease_for = shared.lease_for;
            renewals.spawn(async move {
                let started = Instant::now();
                let result = timed(StoreOp::Renew, store.renew(&lease, lease_for))
                    .await
                    .0;
                (id, lease, started, result)
            });
        }
        while let Some(done) = renewals.join_next().await {
            let Ok((id, lease, started, result)) = done else {
                continue;
            };
            match result {
                Ok(Finish::Done) => {
                    if let Some(live) = shared.lock().live.get_mut(&id) {
                        live.renewed = started;
                    }
                }
                Ok(Finish::Superseded) => {
                    tracing::warn!(key = %lease.id.key(), "lease lost to another owner");
                    shared.lock().live.remove(&id);
                }
                // Tried again at the next tick, while the lease may still hold.
                Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::record::State;
    use crate::store::testkit::{claim_req, id};
    use crate::store::{Claim, MemoryStore, MemoryStoreConfig};

    /// The lease's end as the store has it.
    async fn lease_until(store: &MemoryStore, lease: &Lease) -> u64 {
        match store.lookup(&lease.id).await.unwrap().unwrap().state {
            State::InFlight { lease_until, .. } => lease_until,
            other => panic!("not in flight: {other:?}"),
        }
    }

    // R11: the renewal task stops once nothing is registered, and the next registration
    // starts it again: that lease is renewed too.
    #[tokio::test(start_paused = true)]
    async fn r11_a_lease_registered_after_the_task_stopped_is_renewed() {
        let clock = ManualClock::new();
        let store = MemoryStore::with_config(MemoryStoreConfig {
            clock: Arc::new(clock.clone()),
            ..MemoryStoreConfig::default()
        });
        let Claim::Acquired(lease) = store.claim(&claim_req(&id("renew"), 1)).await.unwrap() else {
            panic!("not acquired");
        };
        let lease_for = Duration::from_secs(30);
        let renewals = Renewals::new(store.clone(), lease_for, Duration::from_secs(1));

        drop(renewals.register(lease.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            renewals.shared.lock().task.is_none(),
            "the idle task stopped"
        );

        let _registered = renewals.register(lease.clone());
        clock.advance(Duration::from_secs(5));
        assert_eq!(
            lease_until(&store, &lease).await,
            clock.now_ms() - 5_000 + 10_000,
            "the claim's own lease"
        );
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(
            lease_until(&store, &lease).await,
            clock.now_ms() + lease_for.as_millis() as u64
        );
    }
}
