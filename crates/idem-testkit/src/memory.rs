//! The memory store on a manual clock.

use idem_core::store::MemoryStore;
use idem_core::store::testkit::ManualFixture;

/// A fresh memory store on a manual clock.
pub fn fixture() -> ManualFixture<MemoryStore> {
    ManualFixture::memory()
}
