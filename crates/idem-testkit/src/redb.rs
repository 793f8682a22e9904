//! The embedded store in a fresh temporary directory, on a manual clock.

use std::sync::Arc;
use std::time::Duration;

use idem_core::clock::ManualClock;
use idem_core::store::testkit::ManualFixture;
use idem_redb::{RedbStore, RedbStoreConfig};

/// A redb store in a temporary directory (removed with the fixture) on a manual clock.
pub fn fixture() -> ManualFixture<RedbStore> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let clock = ManualClock::new();
    let store = RedbStore::open(
        dir.path(),
        RedbStoreConfig {
            clock: Arc::new(clock.clone()),
            sweep_interval: Duration::from_secs(1),
            ..RedbStoreConfig::default()
        },
    )
    .expect("open a redb store in a fresh directory");
    ManualFixture::new(store, clock, dir)
}
