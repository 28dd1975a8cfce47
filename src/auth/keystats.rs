//! What the issuers' key caches report, by issuer URL: failed fetches,
//! the time of the last good fetch, tokens refused for stale keys. The
//! key cache ([`super::jwks`]) updates it; the metrics registry renders it.
//! Issuers come from the config, so the label set is bounded.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

/// Most distinct issuers kept in the JWKS metrics.
const MAX_ISSUER_LABELS: usize = 64;

/// The key caches' counters, shared by every issuer (a handle, not a
/// global: each server and test has its own).
#[derive(Default)]
pub struct JwksMetrics {
    issuers: Mutex<BTreeMap<String, IssuerKeyStats>>,
}

#[derive(Debug, Clone, Default)]
/// One issuer's key-cache counters.
pub struct IssuerKeyStats {
    /// Failed fetches of the discovery document or JWKS.
    pub fetch_errors: u64,
    /// Tokens refused because the keys were too old.
    pub stale_refusals: u64,
    /// When the keys were last fetched successfully.
    pub fetched_at: Option<SystemTime>,
}

impl JwksMetrics {
    fn with(&self, issuer: &str, f: impl FnOnce(&mut IssuerKeyStats)) {
        let mut g = self.issuers.lock().unwrap_or_else(|p| p.into_inner());
        let key = if g.len() >= MAX_ISSUER_LABELS && !g.contains_key(issuer) {
            "_other"
        } else {
            issuer
        };
        f(g.entry(key.to_string()).or_default());
    }

    /// Counts one failed fetch of `issuer`'s discovery document or JWKS.
    pub fn fetch_failed(&self, issuer: &str) {
        self.with(issuer, |s| s.fetch_errors += 1);
    }

    /// Notes that `issuer`'s keys were fetched successfully at `at`.
    pub fn fetched(&self, issuer: &str, at: SystemTime) {
        self.with(issuer, |s| s.fetched_at = Some(at));
    }

    /// Counts one token refused because `issuer`'s keys are older than its
    /// `max_stale_keys` and could not be refreshed.
    pub fn stale_refused(&self, issuer: &str) {
        self.with(issuer, |s| s.stale_refusals += 1);
    }

    /// The counters of every issuer, by issuer URL.
    pub fn snapshot(&self) -> BTreeMap<String, IssuerKeyStats> {
        self.issuers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
