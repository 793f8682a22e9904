//! The `Retry-After` of a duplicate in progress (R10): a short, honest hint.
//!
//! The owner's remaining lease says when its claim would lapse if it died, not when it
//! will finish: a live owner renews it, so it is the full lease (60 s by default) however
//! soon the answer comes. The hint is instead how long a claim of this engine (one route)
//! was recently held: an exponentially weighted moving average of the time from claim to
//! complete or release, kept in one atomic. It is bounded below by 1 s and above by
//! the remaining lease and [`Policy::retry_after_max`](crate::Policy::retry_after_max).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The shortest hint: `Retry-After` is in whole seconds, and 0 would invite a busy loop.
const MIN: Duration = Duration::from_secs(1);

/// How long claims were recently held: an EWMA in microseconds, 0 before the first.
#[derive(Debug, Default)]
pub(crate) struct HoldTime {
    micros: AtomicU64,
}

impl HoldTime {
    /// Counts one claim held for `held`; each new one weighs a fifth.
    pub(crate) fn record(&self, held: Duration) {
        let new = u64::try_from(held.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    new
                } else {
                    old - old / 5 + new / 5
                })
            });
    }

    /// The estimate, if any claim ended yet.
    pub(crate) fn estimate(&self) -> Option<Duration> {
        match self.micros.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// The hint for a duplicate whose owner's lease ends in `lease_left`: the estimate
    /// (1 s before any), at least 1 s, at most `lease_left` and `max`.
    pub(crate) fn hint(&self, lease_left: Duration, max: Duration) -> Duration {
        self.estimate()
            .unwrap_or(MIN)
            .min(lease_left)
            .min(max)
            .max(MIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(60);
    const MAX: Duration = Duration::from_secs(10);

    // R10
    #[test]
    fn r10_the_hint_follows_recent_hold_times_within_bounds() {
        let h = HoldTime::default();
        assert_eq!(h.hint(LEASE, MAX), MIN);
        h.record(Duration::from_secs(2));
        assert_eq!(h.hint(LEASE, MAX), Duration::from_secs(2));
        // A slow one moves it a fifth of the way.
        h.record(Duration::from_secs(7));
        assert_eq!(h.hint(LEASE, MAX), Duration::from_secs(3));
        // Bounded by the lease left, the cap and 1 s.
        assert_eq!(
            h.hint(Duration::from_millis(1500), MAX),
            Duration::from_millis(1500)
        );
        assert_eq!(h.hint(Duration::from_millis(100), MAX), MIN);
        h.record(Duration::from_secs(3600));
        assert_eq!(h.hint(LEASE, MAX), MAX);
        let fast = HoldTime::default();
        fast.record(Duration::from_millis(20));
        assert_eq!(fast.hint(LEASE, MAX), MIN);
    }
}
