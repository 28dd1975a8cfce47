//! Rate limits for certificate requests: per role and per identity, as
//! declared in the role file (`rate_limit = "30/m"`,
//! `identity_rate_limit = "5/m"`). Token buckets in memory: a burst up to
//! the limit, refilled evenly over the period. Time is passed in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub use crate::policy::limits::RateLimit;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
