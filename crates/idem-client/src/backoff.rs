//! How long to wait before the next attempt: exponential backoff with full jitter,
//! overridden by the server's `Retry-After`.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderValue;

/// Exponential backoff with full jitter, bounded in attempts.
///
/// Before retry `n` (1 for the first retry) the middleware waits a random duration in
/// `[0, min(cap, base × 2^(n-1))]` ("full jitter": many clients that failed together do
/// not retry together). When the response carried a `Retry-After` header the server's
/// delay is used instead, exactly, but never more than `cap`: idem's 409 answers the
/// longest time the first request may still hold its key (its lease), which is an upper
/// bound, not a promise, so a client polls at least every `cap`.
///
/// ```
/// use std::time::Duration;
/// use idem_client::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 5);
/// assert_eq!(backoff.ceiling(1), Duration::from_millis(100));
/// assert_eq!(backoff.ceiling(3), Duration::from_millis(400));
/// assert_eq!(backoff.ceiling(10), Duration::from_secs(2));
/// assert!(backoff.delay(2, None) <= Duration::from_millis(200));
/// // The server's Retry-After wins over the jitter.
/// assert_eq!(backoff.delay(1, Some(Duration::from_secs(1))), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    max_attempts: u32,
}

impl Default for Backoff {
    /// 100 ms base, 2 s cap, 5 attempts (the first and four retries): at most about
    /// 8 s of waiting, as a caller waiting on a write would accept.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            max_attempts: 5,
        }
    }
}

impl Backoff {
    /// A backoff starting at `base`, doubling up to `cap`, for at most `max_attempts`
    /// sends in all (the first one included; 0 counts as 1, which never retries).
    pub fn new(base: Duration, cap: Duration, max_attempts: u32) -> Self {
        Self {
            base,
            cap,
            max_attempts: max_attempts.max(1),
        }
    }

    /// The first retry's ceiling; later ones double it.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The longest wait between two attempts, `Retry-After` included.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// How many times a request is sent at most, the first time included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The upper bound of the random wait before retry `retry` (1-based):
    /// `min(cap, base × 2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        if self.base.is_zero() {
            return Duration::ZERO;
        }
        // Past 2^31 (or past Duration::MAX) it is the cap anyway.
        2u32.checked_pow(retry.saturating_sub(1))
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// The wait before retry `retry` (1-based): the server's `retry_after` capped at
    /// [`cap`](Self::cap) when there is one, else a uniformly random duration up to
    /// [`ceiling`](Self::ceiling).
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        self.delay_with(retry, retry_after, |ceiling| {
            let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(fastrand::u64(0..=nanos))
        })
    }

    /// [`delay`](Self::delay) with the jitter drawn by `jitter(ceiling)`.
    fn delay_with(
        &self,
        retry: u32,
        retry_after: Option<Duration>,
        jitter: impl FnOnce(Duration) -> Duration,
    ) -> Duration {
        match retry_after {
            Some(after) => after.min(self.cap),
            None => {
                let ceiling = self.ceiling(retry);
                jitter(ceiling).min(ceiling)
            }
        }
    }
}

/// Parses a `Retry-After` value, RFC 9110 §10.2.3: delta-seconds (`120`) or an
/// HTTP-date (`Fri, 31 Dec 1999 23:59:59 GMT`), counted from `now`. A date in the past
/// is no wait; anything unreadable is `None` (the backoff decides).
pub(crate) fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // An absurdly long number still means "a long time", not "garbage".
        return Some(text.parse().map_or(Duration::MAX, Duration::from_secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> Backoff {
        Backoff::new(100 * MS, 2000 * MS, 6)
    }

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let b = policy();
        let ceilings: Vec<_> = (1..=7).map(|n| b.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [
                100 * MS,
                200 * MS,
                400 * MS,
                800 * MS,
                1600 * MS,
                2000 * MS,
                2000 * MS
            ]
        );
        assert_eq!(b.ceiling(u32::MAX), 2000 * MS, "no overflow");
        assert_eq!(b.ceiling(0), 100 * MS);
        assert_eq!(
            Backoff::new(Duration::ZERO, b.cap(), 3).ceiling(40),
            Duration::ZERO
        );
    }

    #[test]
    fn huge_base_saturates_at_the_cap() {
        let b = Backoff::new(Duration::MAX, Duration::from_secs(10), 3);
        assert_eq!(b.ceiling(5), Duration::from_secs(10));
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        let b = policy();
        assert_eq!(b.delay_with(3, None, |_| Duration::ZERO), Duration::ZERO);
        assert_eq!(b.delay_with(3, None, |c| c), 400 * MS);
        // A jitter source that overshoots is clamped.
        assert_eq!(b.delay_with(3, None, |c| c * 10), 400 * MS);
        for retry in 1..=8 {
            for _ in 0..200 {
                assert!(b.delay(retry, None) <= b.ceiling(retry));
            }
        }
    }

    #[test]
    fn jitter_is_random() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 2);
        let draws: std::collections::HashSet<_> = (0..50).map(|_| b.delay(1, None)).collect();
        assert!(draws.len() > 1, "fifty equal draws: {draws:?}");
    }

    #[test]
    fn retry_after_replaces_the_jitter() {
        let b = policy();
        let never = |_| panic!("no jitter when the server said when");
        assert_eq!(b.delay_with(1, Some(1500 * MS), never), 1500 * MS);
        assert_eq!(b.delay_with(5, Some(Duration::ZERO), never), Duration::ZERO);
        // Longer than the cap: capped.
        assert_eq!(
            b.delay_with(1, Some(Duration::from_secs(60)), never),
            2000 * MS
        );
        assert_eq!(
            b.delay(1, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn zero_attempts_means_one() {
        assert_eq!(Backoff::new(MS, MS, 0).max_attempts(), 1);
        assert_eq!(Backoff::default().max_attempts(), 5);
    }

    #[test]
    fn retry_after_delta_seconds() {
        let now = SystemTime::now();
        let parse = |s: &'static str| parse_retry_after(&HeaderValue::from_static(s), now);
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(parse("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse("99999999999999999999999"), Some(Duration::MAX));
        assert_eq!(parse("-1"), None);
        assert_eq!(parse("1.5"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("soon"), None);
    }

    #[test]
    fn retry_after_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let parse = |s: &'static str| parse_retry_after(&HeaderValue::from_static(s), now);
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:50:07 GMT"),
            Some(Duration::from_secs(30))
        );
        // The obsolete forms RFC 9110 asks recipients to accept.
        assert_eq!(
            parse("Sunday, 06-Nov-94 08:49:47 GMT"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse("Sun Nov  6 08:49:40 1994"),
            Some(Duration::from_secs(3))
        );
        // In the past: go now.
        assert_eq!(parse("Sat, 05 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(parse("Sun, 06 Nov 1994 25:00:00 GMT"), None);
    }
}
