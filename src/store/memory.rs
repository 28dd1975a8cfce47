//! The issuance counters in process memory: what SQLite mode wants, where
//! one server owns the database. A store shared by many replicas keeps the
//! same state in the database instead ([`super::IssuanceCounters`]).
//!
//! * Serials are never reused, even across restarts: they start above the
//!   highest serial ever recorded and above a clock-derived floor
//!   (`now << 24`), so a restored backup without the latest records does
//!   not hand out a serial again either.
//! * Single use of workload tokens: a token that minted a certificate
//!   cannot mint another. Entries live until the token itself expires; on
//!   start the set is refilled from the log so a restart does not reopen
//!   the window.
//! * Rate limits (`rate_limit = "30/m"`, `identity_rate_limit = "5/m"`) are
//!   token buckets: a burst up to the limit, refilled evenly over the
//!   period. Time is passed in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::policy::limits::RateLimit;

/// Allocates certificate serials that are never reused.
pub struct SerialAllocator {
    next: AtomicU64,
}

impl SerialAllocator {
    /// Starts above `max_recorded` and the clock-derived floor.
    pub fn new(max_recorded: u64, now_secs: u64) -> SerialAllocator {
        let floor = now_secs << 24;
        SerialAllocator {
            next: AtomicU64::new(max_recorded.max(floor).saturating_add(1)),
        }
    }

    /// The next serial.
    pub fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// In-memory set of used token ids with their expiry.
#[derive(Default)]
pub struct ReplayCache {
    inner: Mutex<ReplayInner>,
}

#[derive(Default)]
struct ReplayInner {
    used: HashMap<String, u64>,
    last_purge: u64,
}

impl ReplayCache {
    /// An empty cache.
    pub fn new() -> ReplayCache {
        ReplayCache::default()
    }

    /// Marks `id` (valid until `expires_at`) as used. Returns `false` if it
    /// was already used: the caller must refuse the request.
    pub fn claim(&self, id: &str, expires_at: u64, now: u64) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_sub(g.last_purge) >= 60 {
            g.used.retain(|_, exp| *exp > now);
            g.last_purge = now;
        }
        match g.used.get(id) {
            Some(exp) if *exp > now => false,
            _ => {
                g.used.insert(id.to_string(), expires_at);
                true
            }
        }
    }

    /// Number of remembered tokens (for metrics and tests).
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.used.len()).unwrap_or(0)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: f64,
}

/// Most buckets kept; beyond this, full buckets are dropped first.
const MAX_BUCKETS: usize = 100_000;

/// Token buckets by key.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// An empty limiter.
    pub fn new() -> RateLimiter {
        RateLimiter::default()
    }

    /// Takes one token from `key`'s bucket at time `now` (seconds, any
    /// monotonic origin). `Err(wait)` says how long until one is available.
    pub fn check(&self, key: &str, rate: RateLimit, now: f64) -> Result<(), Duration> {
        if rate.count == 0 || rate.per.is_zero() {
            return Err(rate.per.max(Duration::from_secs(1)));
        }
        let cap = f64::from(rate.count);
        let refill = cap / rate.per.as_secs_f64();
        let mut g = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= MAX_BUCKETS && !g.contains_key(key) {
            // A full bucket carries no state worth keeping.
            g.retain(|_, b| b.tokens + (now - b.last) * refill < cap);
        }
        let b = g.entry(key.to_string()).or_insert(Bucket {
            tokens: cap,
            last: now,
        });
        b.tokens = (b.tokens + (now - b.last).max(0.0) * refill).min(cap);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - b.tokens) / refill).max(0.001),
            ))
        }
    }
}

/// The counters of one process. Serial allocation fails until
/// [`MemoryCounters::start`] ran, so a serial is never handed out without
/// knowing the highest one recorded.
#[derive(Default)]
pub struct MemoryCounters {
    serials: std::sync::OnceLock<SerialAllocator>,
    replay: ReplayCache,
    limiter: RateLimiter,
}

impl MemoryCounters {
    /// Counters that are not started yet.
    pub fn new() -> MemoryCounters {
        MemoryCounters::default()
    }

    /// Starts the serials above `max_serial` (and the clock floor of
    /// `now`) and remembers `used_tokens` as used. A second start is
    /// ignored: serials never go back.
    pub fn start(&self, max_serial: u64, used_tokens: &[(String, u64)], now: u64) {
        for (id, exp) in used_tokens {
            self.replay.claim(id, *exp, now);
        }
        let _ = self.serials.set(SerialAllocator::new(max_serial, now));
    }

    /// The next serial, or `None` before [`MemoryCounters::start`].
    pub fn next_serial(&self) -> Option<u64> {
        self.serials.get().map(SerialAllocator::next)
    }

    /// See [`ReplayCache::claim`].
    pub fn claim_token(&self, id: &str, expires_at: u64, now: u64) -> bool {
        self.replay.claim(id, expires_at, now)
    }

    /// See [`RateLimiter::check`].
    pub fn take_rate(&self, key: &str, rate: RateLimit, now: f64) -> Result<(), Duration> {
        self.limiter.check(key, rate, now)
    }

    /// Remembered token ids.
    pub fn used_tokens(&self) -> usize {
        self.replay.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn serials_start_above_recorded_and_clock_floor() {
        let a = SerialAllocator::new(5, 1_800_000_000);
        assert!(a.next() > 1_800_000_000u64 << 24);
        let b = SerialAllocator::new(u64::MAX - 10, 1);
        assert_eq!(b.next(), u64::MAX - 9);
    }

    #[test]
    fn second_claim_is_refused_until_expiry() {
        let c = ReplayCache::new();
        assert!(c.claim("gh:jti:1", 100, 10));
        assert!(!c.claim("gh:jti:1", 100, 20));
        assert!(c.claim("gh:jti:2", 100, 20));
        // After the token expired it cannot verify anyway; the slot may go.
        assert!(c.claim("gh:jti:1", 300, 200));
    }

    #[test]
    fn purge_drops_expired_entries() {
        let c = ReplayCache::new();
        assert!(c.claim("a", 50, 0));
        assert!(c.claim("b", 500, 0));
        assert!(c.claim("c", 500, 100));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn burst_then_refill() {
        let l = RateLimiter::new();
        let r: RateLimit = "3/m".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check("k", r, 0.0).is_ok());
        }
        let wait = l.check("k", r, 0.0).unwrap_err();
        assert!((19.0..=21.0).contains(&wait.as_secs_f64()), "{wait:?}");
        assert!(l.check("k", r, 20.5).is_ok());
        assert!(l.check("other", r, 20.5).is_ok(), "keys are independent");
    }

    #[test]
    fn counters_refuse_serials_until_started_and_restore_used_tokens() {
        let c = MemoryCounters::new();
        assert_eq!(
            c.next_serial(),
            None,
            "a serial before start could repeat one"
        );
        c.start(41, &[("gh:jti:1".into(), 500)], 0);
        assert_eq!(c.next_serial(), Some(42));
        assert_eq!(c.next_serial(), Some(43));
        assert!(
            !c.claim_token("gh:jti:1", 500, 10),
            "restored token replayed"
        );
        assert!(c.claim_token("gh:jti:2", 500, 10));
        // A second start never moves serials back.
        c.start(0, &[], 0);
        assert_eq!(c.next_serial(), Some(44));
    }
}
