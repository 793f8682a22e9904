//! Time as the stores see it, so tests can move it by hand.

use std::fmt;

/// Milliseconds since the UNIX epoch.
pub type Millis = u64;

/// A source of wall-clock time for lease deadlines and expiry.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Now, in milliseconds since the UNIX epoch.
    fn now_ms(&self) -> Millis;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place real time enters the engine
    fn now_ms(&self) -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as Millis)
    }
}

#[cfg(any(test, feature = "testkit"))]
pub use manual::ManualClock;

#[cfg(any(test, feature = "testkit"))]
mod manual {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::{Clock, Millis};

    /// A clock that moves only when told to; clones share one time.
    #[derive(Clone, Debug)]
    pub struct ManualClock(Arc<AtomicU64>);

    impl Default for ManualClock {
        fn default() -> Self {
            Self::new()
        }
    }

    impl ManualClock {
        /// A clock at a fixed, realistic instant (2026-01-01T00:00:00Z).
        pub fn new() -> Self {
            Self(Arc::new(AtomicU64::new(1_767_225_600_000)))
        }

        /// Moves time forward.
        pub fn advance(&self, by: Duration) {
            self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now_ms(&self) -> Millis {
            self.0.load(Ordering::SeqCst)
        }
    }
}
