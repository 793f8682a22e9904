//! A bound on failed admin-token attempts, per client address (R25).
//!
//! Each address has a bucket of [`BURST`] failures that refills at [`PER_SECOND`]; a
//! request from an address whose bucket is empty is refused (429 with `Retry-After`)
//! before its token is looked at, so guessing runs at that rate whatever the client
//! sends. A correct token costs nothing: an address that does not fail is never slowed.
//! IPv6 addresses count by their /64, what one host usually holds. At most
//! [`MAX_PEERS`] addresses are tracked; beyond, buckets that have refilled are
//! forgotten, and while none has, new addresses share one bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Failures an address may make in a row.
pub(crate) const BURST: f64 = 10.0;
/// Failures per second it earns back.
pub(crate) const PER_SECOND: f64 = 1.0;
/// Addresses tracked at most.
const MAX_PEERS: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Self {
        Self {
            tokens: BURST,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * PER_SECOND;
        self.tokens = (self.tokens + earned).min(BURST);
        self.at = now;
    }
}

/// Which bucket an address uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Peer {
    Addr(IpAddr),
    /// New addresses while the table is full of unrefilled buckets.
    Overflow,
}

/// Failed attempts by address.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    buckets: Mutex<HashMap<Peer, Bucket>>,
}

impl Throttle {
    /// `Err(wait)` when `ip` must wait that long before its next attempt.
    pub(crate) fn check(&self, ip: Option<IpAddr>) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.lock();
        let Some(bucket) = Self::bucket(&mut buckets, ip, now, false) else {
            return Ok(());
        };
        bucket.refill(now);
        if bucket.tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / PER_SECOND))
        }
    }

    /// Counts one failed attempt from `ip`.
    pub(crate) fn failed(&self, ip: Option<IpAddr>) {
        let now = Instant::now();
        let mut buckets = self.lock();
        if let Some(bucket) = Self::bucket(&mut buckets, ip, now, true) {
            bucket.refill(now);
            bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Peer, Bucket>> {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bucket of `ip`; with `create`, a new one (full) if it has none.
    fn bucket(
        buckets: &mut HashMap<Peer, Bucket>,
        ip: Option<IpAddr>,
        now: Instant,
        create: bool,
    ) -> Option<&mut Bucket> {
        let mut peer = ip.map_or(Peer::Overflow, |ip| Peer::Addr(host(ip)));
        if !buckets.contains_key(&peer) {
            if buckets.len() >= MAX_PEERS {
                buckets.retain(|_, b| {
                    b.refill(now);
                    b.tokens < BURST
                });
            }
            if buckets.len() >= MAX_PEERS {
                peer = Peer::Overflow;
            }
        }
        if create || buckets.contains_key(&peer) {
            Some(buckets.entry(peer).or_insert_with(|| Bucket::full(now)))
        } else {
            None
        }
    }
}

/// The address as a host: IPv6 by its /64 prefix.
fn host(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_limited_per_address_and_earned_back() {
        let t = Throttle::default();
        let a = ip("10.0.0.1");
        for _ in 0..10 {
            assert_eq!(t.check(a), Ok(()));
            t.failed(a);
        }
        let wait = t.check(a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another address is not affected.
        assert_eq!(t.check(ip("10.0.0.2")), Ok(()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.check(a), Ok(()));
        t.failed(a);
        assert!(t.check(a).is_err());
    }

    #[test]
    fn ipv6_counts_by_its_prefix() {
        assert_eq!(
            host("2001:db8:1:2:aaaa::1".parse().unwrap()),
            host("2001:db8:1:2:bbbb::2".parse().unwrap())
        );
        assert_ne!(
            host("2001:db8:1:2::1".parse().unwrap()),
            host("2001:db8:1:3::1".parse().unwrap())
        );
        assert_eq!(
            host("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_is_bounded() {
        let t = Throttle::default();
        for i in 0..MAX_PEERS as u32 {
            t.failed(Some(IpAddr::V4(i.into())));
        }
        assert_eq!(t.lock().len(), MAX_PEERS);
        // Full of unrefilled buckets: newcomers share one.
        let late = ip("250.0.0.1");
        for _ in 0..10 {
            t.failed(late);
        }
        assert!(t.check(ip("250.0.0.2")).is_err());
        assert!(t.lock().len() <= MAX_PEERS + 1);
        // Once the buckets have refilled, they are forgotten.
        tokio::time::advance(Duration::from_secs(10)).await;
        t.failed(ip("250.0.0.3"));
        assert!(t.lock().len() < 10);
    }
}
