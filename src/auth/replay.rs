//! Single use of workload tokens: a token that minted a certificate cannot
//! mint another. Entries live until the token itself expires; on start-up
//! the cache is refilled from the store so a restart does not reopen the
//! window.

use std::collections::HashMap;
use std::sync::Mutex;

/// In-memory set of used token ids with their expiry.
#[derive(Default)]
pub struct ReplayCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
