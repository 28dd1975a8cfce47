//! One certificate request, end to end: auth -> policy -> ca -> audit/store.
//! The HTTP layer only translates to and from this.
//!
//! One file per job: `issue` runs the pipeline, [`spec`] turns a grant
//! into the certificate to sign (pure), `limits` holds rate limits,
//! active-certificate caps and deactivation answers, `approvals` the
//! approval workflow, `admin` admin authorisation, `keys` the CA key
//! rings in force, `krl` the cached revocation list.

mod admin;
mod hosts;
pub use hosts::HostReportError;
mod approvals;
mod issue;

/// The log target (module) of the one line logged per certificate
/// request (issued, refused, waiting for approval): `mayfly serve` writes
/// these in batches from a thread of its own.
pub const ISSUANCE_LOG_TARGET: &str = issue::LOG_TARGET;
mod keys;
mod krl;
mod limits;
pub mod spec;
pub mod webhook;

#[cfg(test)]
mod pipeline_tests;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::auth::{TokenError, Verifier};
use crate::ca::rotation::KeyRing;
use crate::ca::MintError;

use crate::clock::{unix_ms, Clock};
use crate::metrics::Metrics;
use crate::policy::{Denial, Policy};
use crate::store::{DisableTarget, StateVersion};
use crate::store::{Store, StoreError};

pub use issue::{Issuance, Issued, PendingApproval, RenewalProof, UserCertRequest};
pub use keys::KeyLoader;
pub use krl::{encode_krl, KrlSnapshot};

/// Why no certificate was issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// Malformed request (400).
    #[error("{message}")]
    BadRequest {
        /// Stable code.
        code: &'static str,
        /// What to fix.
        message: String,
    },
    /// Token not accepted (401; 503 for an unavailable issuer).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Policy said no (403).
    #[error(transparent)]
    Denied(#[from] Denial),
    /// Could not record the issuance: no certificate (503).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Minting failed (500).
    #[error(transparent)]
    Mint(#[from] MintError),
    /// An approval step failed (403/404).
    #[error(transparent)]
    Approval(#[from] crate::approval::ApprovalError),
    /// Too many requests (429).
    #[error("{scope} rate limit {limit} reached; retry in {}s", retry_after.as_secs().max(1))]
    RateLimited {
        /// `role` or `identity`.
        scope: &'static str,
        /// The limit, as written in the role file.
        limit: String,
        /// When a request will be allowed again.
        retry_after: Duration,
    },
}

impl IssueError {
    /// Stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            IssueError::BadRequest { code, .. } => code,
            IssueError::Token(t) => t.code(),
            IssueError::Denied(d) => d.code.as_str(),
            IssueError::Store(_) => "store_unavailable",
            IssueError::Mint(_) => "internal",
            IssueError::Approval(a) => a.code(),
            IssueError::RateLimited { .. } => "rate_limited",
        }
    }
}

/// Everything a request needs, shared by all requests.
pub struct Service {
    verifier: Verifier,
    policy: RwLock<Arc<Policy>>,
    user_keys: RwLock<Arc<KeyRing>>,
    host_keys: RwLock<Arc<KeyRing>>,
    group_keys: RwLock<std::collections::BTreeMap<String, Arc<KeyRing>>>,
    key_loader: Option<KeyLoader>,
    store: Store,
    backdate: Duration,
    metrics: Arc<Metrics>,
    admin: Mutex<AdminCache>,
    /// Held while the cache is reloaded ([`Service::refresh_admin`]).
    refreshing: tokio::sync::Mutex<()>,
    admins: Vec<(String, Vec<crate::policy::ClaimRule>)>,
    clock: Arc<dyn Clock>,
    unauthenticated: crate::audit::sampling::RefusalSampler,
    error_detail: crate::config::ErrorDetail,
    /// Notifies approvers of new approval requests (`None`: no webhook).
    webhook: Option<Arc<webhook::Notifier>>,
    /// The fleet as `[hosts]` defines it: when a host is stale, and the
    /// expected-hosts file.
    fleet: crate::store::hosts::Fleet,
}

pub use crate::store::hosts::FleetViewError;

/// Revocation/deactivation state cached from the store, reloaded whenever
/// the store's state version changes (also by `mayfly revoke` on the CA host).
#[derive(Default)]
struct AdminCache {
    version: Option<StateVersion>,
    disabled: HashSet<DisableTarget>,
    krl: Option<Arc<KrlSnapshot>>,
}

/// Parts to build a [`Service`].
pub struct ServiceParts {
    /// Token verifier.
    pub verifier: Verifier,
    /// Loaded policy.
    pub policy: Policy,
    /// User CA keys.
    pub user_keys: KeyRing,
    /// Host CA keys.
    pub host_keys: KeyRing,
    /// Reloads the key rings after a rotation (None: keys are fixed).
    pub key_loader: Option<KeyLoader>,
    /// Store handle; its issuance counters (serials, used tokens, rate
    /// limits) must be started ([`crate::store::IssuanceCounters::start`]).
    pub store: Store,
    /// Backdating of `valid_after`.
    pub backdate: Duration,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Who may use the admin API.
    pub admins: Vec<crate::config::AdminRule>,
    /// The time source.
    pub clock: Arc<dyn Clock>,
}

impl Service {
    /// Notifies approvers of new approval requests through `notifier`.
    pub fn with_approval_webhook(mut self, notifier: Arc<webhook::Notifier>) -> Service {
        self.webhook = Some(notifier);
        self
    }

    /// Assembles the service.
    pub fn new(p: ServiceParts) -> Service {
        let store = p.store;
        let fleet =
            crate::store::hosts::Fleet::new(store.clone(), &crate::config::HostsConfig::default());
        Service {
            verifier: p.verifier,
            policy: RwLock::new(Arc::new(p.policy)),
            user_keys: RwLock::new(Arc::new(p.user_keys)),
            host_keys: RwLock::new(Arc::new(p.host_keys)),
            group_keys: RwLock::new(Default::default()),
            key_loader: p.key_loader,
            store,
            backdate: p.backdate,
            metrics: p.metrics,
            admin: Mutex::new(AdminCache::default()),
            refreshing: tokio::sync::Mutex::new(()),
            clock: p.clock,
            unauthenticated: crate::audit::sampling::RefusalSampler::new(),
            error_detail: crate::config::ErrorDetail::Full,
            webhook: None,
            fleet,
            admins: p
                .admins
                .into_iter()
                .map(|a| {
                    let rules = a
                        .claims
                        .into_iter()
                        .map(|(claim, values)| crate::policy::ClaimRule {
                            claim,
                            patterns: values
                                .iter()
                                .map(|v| crate::policy::Pattern::new(v))
                                .collect(),
                        })
                        .collect();
                    (a.issuer, rules)
                })
                .collect(),
        }
    }

    /// Sets how much refusals tell the caller (`error_detail`).
    pub fn with_error_detail(mut self, detail: crate::config::ErrorDetail) -> Service {
        self.error_detail = detail;
        self
    }

    /// Judges the hosts' sync reports as `fleet` does (default: the
    /// shipped timer's interval, no expected-hosts file).
    pub fn with_fleet(mut self, fleet: crate::store::hosts::Fleet) -> Service {
        self.fleet = fleet;
        self
    }

    /// The fleet as the hosts' reports show it as of `now` (unix seconds):
    /// `GET /v1/admin/hosts`, the answer of `mayfly hosts --json`. The
    /// expected-hosts file is read again on each call, as `/metrics` does.
    pub async fn fleet_view(&self, now: u64) -> Result<crate::fleet::FleetView, FleetViewError> {
        self.fleet.view(now).await
    }

    /// How much refusals tell the caller.
    pub fn error_detail(&self) -> crate::config::ErrorDetail {
        self.error_detail
    }

    /// Writes the summary of unauthenticated refusals counted in a window
    /// that has ended (the server calls this periodically).
    pub async fn flush_refusal_summary(&self, now: SystemTime) {
        if let Some(rec) = self.unauthenticated.flush(unix_ms(now)) {
            if let Err(se) = self.store.append(rec).await {
                tracing::error!(error = %se, "summary of unauthenticated refusals not stored");
            }
        }
    }

    /// Writes the summary of the current window of unauthenticated
    /// refusals, ended or not (on shutdown).
    pub async fn finish_refusal_summary(&self, now: SystemTime) {
        if let Some(rec) = self.unauthenticated.finish(unix_ms(now)) {
            if let Err(se) = self.store.append(rec).await {
                tracing::error!(error = %se, "summary of unauthenticated refusals not stored");
            }
        }
    }

    /// The store handle (for admin operations).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Picks up changes made by other processes (revocations, rotations);
    /// errors are logged and the state in force is kept.
    pub async fn refresh(&self) {
        if let Err(e) = self.refresh_admin().await.map(drop) {
            tracing::warn!(error = %e, "cannot read the store's state version");
        }
    }

    /// Reads the store's state version and, if it moved, reloads the
    /// revocation/deactivation cache and the CA key rings; returns the
    /// version the cache now holds.
    ///
    /// The cache's version is published last, after the deactivations and
    /// the keys it stands for were read (each read after the version was):
    /// whoever sees version `v` in the cache sees state at least as new as
    /// `v`. An issuance names the version it acted on in its guard, and
    /// the commit refuses it if the CA keys changed at a later version
    /// ([`crate::store::IssueGuard::acted_on`]); deactivations the commit
    /// reads itself.
    pub(super) async fn refresh_admin(&self) -> Result<StateVersion, StoreError> {
        let v = self.store.access().state_version().await?;
        if self.cached_version() == Some(v) {
            return Ok(v);
        }
        // One reload at a time, so an older one cannot publish after a
        // newer one.
        let _one = self.refreshing.lock().await;
        let v = self.store.access().state_version().await?;
        if self.cached_version() == Some(v) {
            return Ok(v);
        }
        let disabled = self.store.access().disabled().await?;
        // Also on the first version seen: a rotation may have come between
        // loading the keys at start and now. Unchanged keys cost one read.
        self.reload_keys().await;
        let mut g = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        g.disabled = disabled.into_iter().map(|d| d.key).collect();
        g.krl = None;
        g.version = Some(v);
        Ok(v)
    }

    /// The state version the cache holds (`None` before the first read).
    fn cached_version(&self) -> Option<StateVersion> {
        self.admin.lock().unwrap_or_else(|p| p.into_inner()).version
    }

    /// The state version a request acts on: the cache's, without a store
    /// read. The commit checks it (see [`Service::refresh_admin`]).
    pub(super) async fn version_for_request(&self) -> Result<StateVersion, StoreError> {
        match self.cached_version() {
            Some(v) => Ok(v),
            None => self.refresh_admin().await,
        }
    }

    /// Which disabled entry, if any, blocks this identity in this role, as
    /// the cache has it.
    pub(super) fn disabled_for(
        &self,
        issuer: &str,
        subject: &str,
        role: &str,
    ) -> Option<DisableTarget> {
        let g = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        // Usually nothing is disabled: skip building the candidates.
        if g.disabled.is_empty() {
            return None;
        }
        let candidates = DisableTarget::blocking(issuer, subject, role);
        candidates.into_iter().find(|k| g.disabled.contains(k))
    }

    /// The time source every request of this service uses.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// The token verifier (to warm issuer keys).
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Puts a new policy in force; requests already running finish with
    /// the one they started with.
    pub fn set_policy(&self, policy: Policy) {
        let mut g = self.policy.write().unwrap_or_else(|p| p.into_inner());
        *g = Arc::new(policy);
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}
