//! One certificate request, end to end: auth -> policy -> ca -> audit/store.
//! The HTTP layer only translates to and from this.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::audit::{AuditRecord, EventKind};
use crate::auth::replay::ReplayCache;
use crate::auth::{TokenError, VerifiedToken, Verifier};
use crate::ca::rotation::KeyRing;
use crate::ca::{self, key_id, CertKind, CertSpec, MintError, SubjectKey};
use crate::metrics::Metrics;
use crate::policy::{CertRequest, Denial, DenialCode, HostCertRequest, Policy};
use crate::store::{DisabledKey, StateVersion};
use crate::store::{Store, StoreError};
use std::collections::HashSet;
use std::sync::Mutex;

/// A bot's (or host's) request for a certificate.
#[derive(Debug)]
pub struct UserCertRequest {
    /// User or host certificate.
    pub kind: CertKind,
    /// Host names (host certificates only).
    pub hostnames: Option<Vec<String>>,
    /// The bearer token (never logged).
    pub token: Option<crate::auth::BearerToken>,
    /// Requested role.
    pub role: String,
    /// OpenSSH public key line.
    pub public_key: String,
    /// Requested lifetime.
    pub ttl_seconds: Option<u64>,
    /// Requested subset of principals.
    pub principals: Option<Vec<String>>,
    /// Id for logs and the audit record.
    pub request_id: String,
    /// Client address.
    pub client_addr: Option<SocketAddr>,
    /// The approval request this call redeems (roles that need approval).
    pub approval_request: Option<String>,
}

/// An issued certificate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Issued {
    /// OpenSSH certificate line.
    pub certificate: String,
    /// Serial.
    pub serial: u64,
    /// Key id.
    pub key_id: String,
    /// Principals.
    pub principals: Vec<String>,
    /// Unix seconds.
    pub valid_after: u64,
    /// Unix seconds.
    pub valid_before: u64,
}

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
    /// The role needs approval; the request waits (202).
    #[error("role needs approval: request {id} waits for {needed} approval(s) until {expires_at}; an approver runs `mayfly request approve {id}`")]
    ApprovalPending {
        /// Approval request id to poll with.
        id: String,
        /// Approvals still needed.
        needed: u32,
        /// Unix seconds.
        expires_at: u64,
    },
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
            IssueError::ApprovalPending { .. } => "approval_pending",
            IssueError::Approval(a) => a.code(),
            IssueError::RateLimited { .. } => "rate_limited",
        }
    }
}

/// Allocates certificate serials that are never reused, even across
/// restarts and even if the database were lost: each run starts above both
/// the highest recorded serial and `start_time << 24`.
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

/// Loads CA key rings from `data_dir` as `[ca]` says.
pub struct KeyLoader {
    /// `[ca]` settings.
    pub cfg: crate::config::CaKeyConfig,
    /// Where key files live.
    pub data_dir: std::path::PathBuf,
}

impl KeyLoader {
    /// Loads the ring of `base` (`user_ca` / `host_ca`).
    pub fn load(&self, base: &str) -> Result<KeyRing, ca::rotation::RotationError> {
        ca::rotation::load(&self.cfg, &self.data_dir, base, &|k| std::env::var(k).ok())
            .map(|(r, _)| r)
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
    replay: ReplayCache,
    serials: SerialAllocator,
    backdate: Duration,
    metrics: Arc<Metrics>,
    admin: Mutex<AdminCache>,
    admins: Vec<(String, Vec<crate::policy::ClaimRule>)>,
    limiter: crate::limits::RateLimiter,
    started: std::time::Instant,
    unauthenticated: crate::audit::sampling::RefusalSampler,
}

/// Revocation/deactivation state cached from the store, reloaded whenever
/// the store's state version changes (also by `mayfly revoke` on the CA host).
#[derive(Default)]
struct AdminCache {
    version: Option<StateVersion>,
    disabled: HashSet<DisabledKey>,
    krl: Option<Arc<KrlSnapshot>>,
}

/// An encoded KRL and its HTTP validators.
#[derive(Debug)]
pub struct KrlSnapshot {
    /// KRL version (the store's state version).
    pub version: u64,
    /// Unix seconds of the last revocation change.
    pub generated_date: u64,
    /// The encoded KRL.
    pub bytes: Vec<u8>,
    /// Strong ETag.
    pub etag: String,
}

use crate::clock::{unix_ms, unix_secs as unix};

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
    /// Store handle.
    pub store: Store,
    /// Used tokens restored from the store.
    pub used_tokens: Vec<(String, u64)>,
    /// Serial allocator.
    pub serials: SerialAllocator,
    /// Backdating of `valid_after`.
    pub backdate: Duration,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Who may use the admin API.
    pub admins: Vec<crate::config::AdminRule>,
}

impl Service {
    /// Assembles the service.
    pub fn new(p: ServiceParts, now: SystemTime) -> Service {
        let replay = ReplayCache::new();
        let now_s = unix(now);
        for (id, exp) in &p.used_tokens {
            replay.claim(id, *exp, now_s);
        }
        Service {
            verifier: p.verifier,
            policy: RwLock::new(Arc::new(p.policy)),
            user_keys: RwLock::new(Arc::new(p.user_keys)),
            host_keys: RwLock::new(Arc::new(p.host_keys)),
            group_keys: RwLock::new(Default::default()),
            key_loader: p.key_loader,
            store: p.store,
            replay,
            serials: p.serials,
            backdate: p.backdate,
            metrics: p.metrics,
            admin: Mutex::new(AdminCache::default()),
            limiter: crate::limits::RateLimiter::new(),
            started: std::time::Instant::now(),
            unauthenticated: crate::audit::sampling::RefusalSampler::new(),
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

    /// Checks an admin API token: verified like a bot token (without
    /// single use) and matched against the `[[admin]]` rules. Returns the
    /// actor name for audit records; refusals are audited.
    pub async fn authorize_admin(
        &self,
        token: Option<&crate::auth::BearerToken>,
        action: &str,
        request_id: &str,
        now: SystemTime,
    ) -> Result<String, IssueError> {
        let result = async {
            let token = token.ok_or(TokenError::Missing)?;
            let v = self.verifier.verify(token.expose(), unix(now)).await?;
            let mut why = format!("no [[admin]] rule names issuer {:?}", v.issuer());
            for (issuer, rules) in &self.admins {
                if issuer != v.issuer() {
                    continue;
                }
                match crate::policy::match_claims(rules, v.claims()) {
                    Ok(()) => return Ok(format!("admin:{}:{}", v.issuer(), v.subject())),
                    Err((rule, msg)) => why = format!("admin {rule}: {msg}"),
                }
            }
            Err(IssueError::Denied(Denial {
                code: DenialCode::NotAdmin,
                rule: "admin".into(),
                message: format!("{} is not an administrator: {why}", v.subject()),
            }))
        }
        .await;
        if let Err(e) = &result {
            self.record_admin_refusal(action, request_id, e.code(), &e.to_string(), now)
                .await;
        }
        result
    }

    /// Audits (and logs) a refused admin call.
    pub async fn record_admin_refusal(
        &self,
        action: &str,
        request_id: &str,
        code: &str,
        reason: &str,
        now: SystemTime,
    ) {
        let mut rec = AuditRecord::new(EventKind::AdminDenied, unix_ms(now), request_id);
        rec.reason_code = Some(code.to_string());
        rec.reason = Some(format!("{action}: {reason}"));
        if let Err(se) = self.store.append(rec).await {
            tracing::error!(error = %se, "audit record of a refused admin call not stored");
        }
        tracing::warn!(request_id, action, code, reason, "admin call refused");
    }

    /// Per-role and per-identity rate limits and the cap on concurrently
    /// valid certificates of one identity in a role.
    fn check_limits(
        &self,
        role: &crate::policy::Role,
        verified: &VerifiedToken,
        now_s: u64,
    ) -> Result<(), IssueError> {
        let t = self.started.elapsed().as_secs_f64();
        if let Some(r) = role.rate_limit {
            self.limiter
                .check(&format!("role\0{}", role.name), r, t)
                .map_err(|retry_after| IssueError::RateLimited {
                    scope: "role",
                    limit: r.to_string(),
                    retry_after,
                })?;
        }
        if let Some(r) = role.identity_rate_limit {
            let key = format!(
                "id\0{}\0{}\0{}",
                verified.issuer(),
                verified.subject(),
                role.name
            );
            self.limiter
                .check(&key, r, t)
                .map_err(|retry_after| IssueError::RateLimited {
                    scope: "identity",
                    limit: r.to_string(),
                    retry_after,
                })?;
        }
        self.check_active(role, verified, now_s)
    }

    /// The cap on concurrently valid certificates of one identity in a
    /// role, checked early for a clear answer before signing; the commit
    /// checks it again atomically ([`crate::store::IssueGuard`]).
    fn check_active(
        &self,
        role: &crate::policy::Role,
        verified: &VerifiedToken,
        now_s: u64,
    ) -> Result<(), IssueError> {
        if let Some(max) = role.max_active_certs {
            let filter = crate::store::CertFilter::Identity {
                issuer: verified.issuer().to_string(),
                subject: verified.subject().to_string(),
                role: Some(role.name.clone()),
            };
            let live = self.store.read(|b| b.live_certs(&filter, now_s))?.len();
            if live >= max as usize {
                return Err(too_many_active(&role.name, live as u64, max));
            }
        }
        Ok(())
    }

    /// Opens an approval request for a role that needs one and answers
    /// "pending" (202); the bot redeems it later with its id.
    async fn request_approval(
        &self,
        ap: &crate::approval::ApprovalPolicy,
        req: &UserCertRequest,
        verified: &VerifiedToken,
        grant: &crate::policy::Grant,
        rec: &AuditRecord,
        now: SystemTime,
    ) -> Result<std::convert::Infallible, IssueError> {
        use crate::approval::{ApprovalRequest, ApprovalStatus};
        let now_s = unix(now);
        let requester_claims = ap.requester_claims(verified.claims()).map_err(|message| {
            IssueError::Denied(Denial {
                code: DenialCode::ClaimMismatch,
                rule: format!("{}.toml approval.distinct", req.role),
                message,
            })
        })?;
        let id = crate::approval::new_id();
        let r = ApprovalRequest {
            id: id.clone(),
            role: req.role.clone(),
            issuer: verified.issuer().to_string(),
            subject: verified.subject().to_string(),
            key_fingerprint: rec.key_fingerprint.clone().unwrap_or_default(),
            principals: grant.principals.iter().map(|p| p.to_string()).collect(),
            ttl_seconds: grant.ttl.as_secs(),
            created_at: now_s,
            expires_at: now_s + ap.expires.as_secs(),
            required: ap.required,
            status: ApprovalStatus::Pending,
            votes: Vec::new(),
            requester_claims,
        };
        let mut arec = rec.clone();
        arec.event = EventKind::ApprovalRequested;
        arec.reason = Some(format!(
            "approval request {id}: {} approval(s) needed",
            ap.required
        ));
        arec.principals = r.principals.clone();
        let expires_at = r.expires_at;
        self.store
            .write(move |b| b.approval_put(&r, &[arec]))
            .await?;
        Err(IssueError::ApprovalPending {
            id,
            needed: ap.required,
            expires_at,
        })
    }

    /// The approved request `id` that this call may redeem: made by the same
    /// identity, for the same role and key. A pending one answers "pending"
    /// again (202, no limits charged: `mayfly ssh` polls); anything else is
    /// refused. Redeeming it happens in the issuance's own commit.
    fn approved_request(
        &self,
        id: &str,
        req: &UserCertRequest,
        verified: &VerifiedToken,
        fingerprint: &str,
        now_s: u64,
    ) -> Result<crate::approval::ApprovalRequest, IssueError> {
        use crate::approval::{ApprovalError, ApprovalStatus};
        let owned = id.to_string();
        let r = self
            .store
            .read(|b| b.approval_get(&owned))?
            .ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
        if r.issuer != verified.issuer()
            || r.subject != verified.subject()
            || r.role != req.role
            || r.key_fingerprint != fingerprint
        {
            return Err(ApprovalError::Mismatch(id.to_string()).into());
        }
        match r.status_at(now_s) {
            ApprovalStatus::Approved => Ok(r),
            ApprovalStatus::Pending => {
                let approvals = r.votes.iter().filter(|v| v.approve).count() as u32;
                Err(IssueError::ApprovalPending {
                    id: r.id,
                    needed: r.required.saturating_sub(approvals),
                    expires_at: r.expires_at,
                })
            }
            other => Err(ApprovalError::NotPending {
                id: id.to_string(),
                status: other.as_str().into(),
            }
            .into()),
        }
    }

    /// Pending approval requests the caller may decide, after checking the
    /// caller's token.
    pub async fn pending_approvals(
        &self,
        token: Option<&crate::auth::BearerToken>,
        now: SystemTime,
    ) -> Result<Vec<crate::approval::ApprovalRequest>, IssueError> {
        let v = self.verify_person(token, now).await?;
        let policy = self.policy();
        let all = self
            .store
            .read(|b| b.approval_list(Some(crate::approval::ApprovalStatus::Pending)))?;
        Ok(all
            .into_iter()
            .filter(|r| r.status_at(unix(now)) == crate::approval::ApprovalStatus::Pending)
            .filter(|r| {
                policy
                    .roles
                    .get(&r.role)
                    .and_then(|role| role.approval.as_ref())
                    .is_some_and(|ap| ap.is_approver(v.issuer(), v.claims()))
            })
            .collect())
    }

    /// Verifies a person's token (approvers): like a bot token, not single use.
    async fn verify_person(
        &self,
        token: Option<&crate::auth::BearerToken>,
        now: SystemTime,
    ) -> Result<VerifiedToken, IssueError> {
        let token = token.ok_or(TokenError::Missing)?;
        Ok(self.verifier.verify(token.expose(), unix(now)).await?)
    }

    /// Approves or denies approval request `id` as the caller. A refused
    /// vote (not an approver, self-approval, already voted, decided or
    /// expired) is audited like a refused admin call.
    pub async fn vote(
        &self,
        token: Option<&crate::auth::BearerToken>,
        id: &str,
        approve: bool,
        reason: &str,
        request_id: &str,
        now: SystemTime,
    ) -> Result<crate::approval::ApprovalRequest, IssueError> {
        let mut who = None;
        let result = self
            .vote_inner(token, id, approve, reason, request_id, now, &mut who)
            .await;
        if let Err(e) = &result {
            if !matches!(e, IssueError::Store(_)) {
                let mut rec =
                    AuditRecord::new(EventKind::ApprovalVoteRefused, unix_ms(now), request_id);
                rec.actor = who.map(|w| format!("approver:{w}"));
                rec.reason_code = Some(e.code().to_string());
                let action = if approve { "approve" } else { "deny" };
                rec.reason = Some(format!(
                    "{action} approval request {}: {e}",
                    id.chars().take(64).collect::<String>()
                ));
                if let Err(se) = self.store.append(rec).await {
                    tracing::error!(error = %se, "audit record of a refused approval vote not stored");
                }
                tracing::warn!(request_id, code = e.code(), reason = %e, "approval vote refused");
            }
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn vote_inner(
        &self,
        token: Option<&crate::auth::BearerToken>,
        id: &str,
        approve: bool,
        reason: &str,
        request_id: &str,
        now: SystemTime,
        who: &mut Option<String>,
    ) -> Result<crate::approval::ApprovalRequest, IssueError> {
        use crate::approval::ApprovalError;
        let v = self.verify_person(token, now).await?;
        let approver = format!("{}:{}", v.issuer(), v.subject());
        *who = Some(approver.clone());
        let policy = self.policy();
        let id_owned = id.to_string();
        let current = self
            .store
            .read(|b| b.approval_get(&id_owned))?
            .ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
        let ap = policy
            .roles
            .get(&current.role)
            .and_then(|role| role.approval.as_ref())
            .filter(|ap| ap.is_approver(v.issuer(), v.claims()))
            .ok_or_else(|| ApprovalError::NotApprover(approver.clone(), current.role.clone()))?;
        // Only approvals count against `distinct`: anyone allowed may say no.
        if approve {
            crate::approval::check_distinct(&ap.distinct, &current, v.claims())?;
        }
        let now_s = unix(now);
        let mut rec = AuditRecord::new(
            if approve {
                EventKind::ApprovalGranted
            } else {
                EventKind::ApprovalDenied
            },
            unix_ms(now),
            request_id,
        );
        rec.role = Some(current.role.clone());
        rec.issuer = Some(current.issuer.clone());
        rec.subject = Some(current.subject.clone());
        rec.actor = Some(format!("approver:{approver}"));
        rec.reason = Some(format!("approval request {id}: {reason}"));
        let (id, reason) = (id.to_string(), reason.to_string());
        let updated = self
            .store
            .write(move |b| {
                let Some(r) = b.approval_get(&id)? else {
                    return Ok(Err(ApprovalError::NotFound(id)));
                };
                match crate::approval::apply_vote(r, &approver, approve, &reason, now_s) {
                    Ok(r) => {
                        b.approval_put(&r, &[rec])?;
                        Ok(Ok(r))
                    }
                    Err(e) => Ok(Err(e)),
                }
            })
            .await??;
        tracing::info!(request_id, approval = %updated.id, status = updated.status.as_str(), "approval vote recorded");
        Ok(updated)
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
    pub fn refresh(&self) {
        if let Err(e) = self.refresh_admin() {
            tracing::warn!(error = %e, "cannot read the store's state version");
        }
    }

    /// Reloads the revocation/deactivation cache if the store changed.
    fn refresh_admin(&self) -> Result<(), StoreError> {
        let v = self.store.read(|b| b.state_version())?;
        let mut g = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        if g.version == Some(v) {
            return Ok(());
        }
        let disabled = self.store.read(|b| b.disabled())?;
        g.disabled = disabled.into_iter().map(|d| d.key).collect();
        g.krl = None;
        let first = g.version.is_none();
        g.version = Some(v);
        drop(g);
        if !first {
            self.reload_keys();
        }
        Ok(())
    }

    /// Which disabled entry, if any, blocks this identity in this role.
    fn disabled_for(
        &self,
        issuer: &str,
        subject: &str,
        role: &str,
    ) -> Result<Option<DisabledKey>, StoreError> {
        self.refresh_admin()?;
        let g = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        let candidates = [
            DisabledKey {
                issuer: issuer.into(),
                subject: subject.into(),
                role: String::new(),
            },
            DisabledKey {
                issuer: issuer.into(),
                subject: subject.into(),
                role: role.into(),
            },
            DisabledKey {
                issuer: String::new(),
                subject: String::new(),
                role: role.into(),
            },
        ];
        Ok(candidates.into_iter().find(|k| g.disabled.contains(k)))
    }

    /// The current KRL (rebuilt when revocations changed).
    pub fn krl(&self, now: SystemTime) -> Result<Arc<KrlSnapshot>, StoreError> {
        self.refresh_admin()?;
        let version = {
            let g = self.admin.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(k) = &g.krl {
                return Ok(k.clone());
            }
            g.version.unwrap_or_default()
        };
        let revocations = self.store.read(|b| b.live_revocations(unix(now)))?;
        let bytes = crate::revocation::encode_krl(&revocations, version);
        let snap = Arc::new(KrlSnapshot {
            version: version.version,
            generated_date: version.changed_at,
            etag: format!("\"krl-{}-{}\"", version.version, bytes.len()),
            bytes,
        });
        let mut g = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        if g.version == Some(version) {
            g.krl = Some(snap.clone());
        }
        Ok(snap)
    }

    /// The token verifier (to warm issuer keys).
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The user CA keys in force.
    pub fn user_keys(&self) -> Arc<KeyRing> {
        self.user_keys
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The host CA keys in force.
    pub fn host_keys(&self) -> Arc<KeyRing> {
        self.host_keys
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The key ring of CA group `group` (roles with `ca_group`), if loaded.
    pub fn group_keys(&self, group: &str) -> Option<Arc<KeyRing>> {
        self.group_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(group)
            .cloned()
    }

    /// Every published user CA key: the default CA's, then each group's.
    pub fn all_user_public_lines(&self) -> String {
        let mut out = self.user_keys().public_lines();
        for ring in self
            .group_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            out.push_str(&ring.public_lines());
        }
        out
    }

    /// Loads (generating on first use) the key ring of every CA group the
    /// policy names; groups already loaded are reloaded from disk.
    pub fn load_group_keys(&self, policy: &Policy) -> Result<(), ca::rotation::RotationError> {
        let Some(loader) = &self.key_loader else {
            return Ok(());
        };
        let mut fresh = std::collections::BTreeMap::new();
        for g in policy.ca_groups() {
            let ring = loader.load(&crate::rotation::group_base(&g))?;
            fresh.insert(g, Arc::new(ring));
        }
        *self.group_keys.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// Reloads both key rings from disk (after `mayfly ca rotate`). On
    /// failure the keys in force stay and the error is logged.
    fn reload_keys(&self) {
        if let Err(e) = self.load_group_keys(&self.policy()) {
            tracing::error!(error = %e, "reloading CA group keys failed; keeping the keys in force");
        }
        let Some(loader) = &self.key_loader else {
            return;
        };
        for (base, slot) in [("user_ca", &self.user_keys), ("host_ca", &self.host_keys)] {
            match loader.load(base) {
                Ok(ring) => {
                    let mut g = slot.write().unwrap_or_else(|p| p.into_inner());
                    if g.public_lines() != ring.public_lines() {
                        tracing::info!(ca = base, active = %ring.active.fingerprint(), "CA keys reloaded");
                    }
                    *g = Arc::new(ring);
                }
                Err(e) => {
                    tracing::error!(ca = base, error = %e, "reloading CA keys failed; keeping the keys in force")
                }
            }
        }
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

    /// Issues a user certificate, or explains why not. The certificate is
    /// returned only after its audit record is durable.
    pub async fn issue_user_cert(
        &self,
        req: UserCertRequest,
        now: SystemTime,
    ) -> Result<Issued, IssueError> {
        let mut rec = AuditRecord::new(EventKind::CertDenied, unix_ms(now), &req.request_id);
        rec.client_addr = req.client_addr.map(|a| a.to_string());
        rec.role = Some(req.role.chars().take(128).collect());
        let result = self.decide_and_mint(&req, now, &mut rec).await;
        // Metrics label only roles that exist, so random role names sent
        // by anyone cannot grow the label set.
        let policy = self.policy();
        let role_label = if policy.roles.contains_key(&req.role) {
            req.role.as_str()
        } else {
            "_unknown"
        };
        match &result {
            Ok(issued) => {
                self.metrics.issued(role_label);
                tracing::info!(
                    request_id = %req.request_id, role = %req.role,
                    issuer = rec.issuer.as_deref().unwrap_or(""),
                    subject = rec.subject.as_deref().unwrap_or(""),
                    serial = issued.serial, key_id = %issued.key_id,
                    principals = ?issued.principals, valid_before = issued.valid_before,
                    "certificate issued"
                );
            }
            Err(e) => {
                let code = e.code();
                self.metrics.denied(role_label, code);
                match e {
                    IssueError::Store(se) => {
                        tracing::error!(request_id = %req.request_id, role = %req.role, error = %se,
                            "audit record not stored; no certificate issued");
                    }
                    IssueError::Mint(me) => {
                        tracing::error!(request_id = %req.request_id, role = %req.role, error = %me, "minting failed");
                    }
                    _ => {
                        tracing::info!(request_id = %req.request_id, role = %req.role, code,
                            issuer = rec.issuer.as_deref().unwrap_or(""),
                            subject = rec.subject.as_deref().unwrap_or(""),
                            reason = %e, "certificate denied");
                    }
                }
                if !matches!(e, IssueError::Store(_) | IssueError::ApprovalPending { .. }) {
                    rec.event = EventKind::CertDenied;
                    rec.reason_code = Some(code.to_string());
                    rec.reason = Some(e.to_string());
                    rec.serial = None;
                    // Before the token is verified, a refusal costs the
                    // caller nothing: sample those (see audit::sampling).
                    let verified = rec.subject.is_some();
                    let (admit, summary) = if verified {
                        (crate::audit::sampling::Admit::Record, None)
                    } else {
                        self.unauthenticated.admit(code, unix_ms(now))
                    };
                    let mut records = Vec::with_capacity(2);
                    records.extend(summary);
                    if admit == crate::audit::sampling::Admit::Record {
                        records.push(rec);
                    }
                    // A refusal is recorded too; if that record fails the
                    // answer stays the same, since no credential leaves.
                    for r in records {
                        if let Err(se) = self.store.append(r).await {
                            tracing::error!(request_id = %req.request_id, error = %se, "audit record of a denial not stored");
                        }
                    }
                }
            }
        }
        result
    }

    async fn decide_and_mint(
        &self,
        req: &UserCertRequest,
        now: SystemTime,
        rec: &mut AuditRecord,
    ) -> Result<Issued, IssueError> {
        let now_s = unix(now);
        let token = req.token.as_ref().ok_or(TokenError::Missing)?;
        let verified: VerifiedToken = self.verifier.verify(token.expose(), now_s).await?;
        rec.issuer = Some(verified.issuer().to_string());
        rec.subject = Some(verified.subject().to_string());
        rec.token_id = Some(verified.replay_id().to_string());
        rec.token_exp = Some(verified.expires_at());

        let subject = SubjectKey::parse(&req.public_key).map_err(|e| IssueError::BadRequest {
            code: match e {
                ca::SubjectKeyError::Malformed(_) => "invalid_public_key",
                _ => "unsupported_key_type",
            },
            message: e.to_string(),
        })?;
        rec.key_fingerprint = Some(subject.fingerprint());
        let ttl = match req.ttl_seconds {
            None => None,
            Some(0) => {
                return Err(IssueError::BadRequest {
                    code: "invalid_ttl",
                    message: "ttl_seconds must be above 0; omit it for the role's default".into(),
                })
            }
            Some(s) => Some(Duration::from_secs(s)),
        };
        let policy = self.policy();
        rec.policy_digest = Some(policy.digest.clone());
        rec.cert_type = Some(req.kind.as_str().to_string());
        let grant = match req.kind {
            CertKind::User => policy.evaluate(
                &req.role,
                verified.issuer(),
                verified.claims(),
                &CertRequest {
                    principals: req.principals.clone(),
                    ttl,
                },
                now_s,
            )?,
            CertKind::Host => policy.evaluate_host(
                &req.role,
                verified.issuer(),
                verified.claims(),
                &HostCertRequest {
                    hostnames: req.hostnames.clone(),
                    ttl,
                },
            )?,
        };
        grant.admit_key(&crate::policy::KeyFacts::from(&subject))?;
        if let Some(d) = self.disabled_for(verified.issuer(), verified.subject(), &req.role)? {
            return Err(disabled_denial(&d));
        }

        let role_def = policy.roles.get(&req.role);
        let approval = role_def.and_then(|r| r.approval.as_ref());
        let mut grant = grant;
        let mut redeem = None;
        match (approval, &req.approval_request) {
            (None, Some(_)) => {
                return Err(IssueError::BadRequest {
                    code: "approval_not_required",
                    message: format!(
                    "role {:?} needs no approval; send the request without \"approval_request\"",
                    req.role
                ),
                })
            }
            (None, None) => {
                if let Some(role) = role_def {
                    self.check_limits(role, &verified, now_s)?;
                }
            }
            (Some(ap), None) => {
                if let Some(role) = role_def {
                    self.check_limits(role, &verified, now_s)?;
                }
                match self
                    .request_approval(ap, req, &verified, &grant, rec, now)
                    .await? {}
            }
            (Some(_), Some(id)) => {
                // A validated redemption skips the rate limits (the request
                // was charged when it was made), never max_active_certs.
                let fingerprint = rec.key_fingerprint.clone().unwrap_or_default();
                let approved = self.approved_request(id, req, &verified, &fingerprint, now_s)?;
                grant =
                    crate::approval::bound_grant(grant, &approved, req.principals.as_deref(), ttl)?;
                if let Some(role) = role_def {
                    self.check_active(role, &verified, now_s)?;
                }
                let mut used = rec.clone();
                used.event = EventKind::ApprovalUsed;
                used.reason = Some(format!("approval request {id} redeemed"));
                used.principals = grant.principals.iter().map(|p| p.to_string()).collect();
                redeem = Some(crate::store::Redemption {
                    id: id.clone(),
                    key_fingerprint: fingerprint,
                    record: used,
                });
            }
        }
        let guard = crate::store::IssueGuard {
            issuer: verified.issuer().to_string(),
            subject: verified.subject().to_string(),
            role: req.role.clone(),
            max_active: role_def.and_then(|r| r.max_active_certs),
            redeem,
        };

        if verified.replay_protection() {
            // The id older versions recorded for a jti-less token, so one
            // used just before an upgrade stays single-use after it.
            let legacy_used = verified
                .legacy_replay_id()
                .is_some_and(|l| !self.replay.claim(l, verified.expires_at(), now_s));
            if legacy_used
                || !self
                    .replay
                    .claim(verified.replay_id(), verified.expires_at(), now_s)
            {
                return Err(TokenError::Replayed.into());
            }
        }

        let serial = self.serials.next();
        let group = policy.roles.get(&req.role).and_then(|r| r.ca_group.clone());
        let ring = match (req.kind, group) {
            (CertKind::User, None) => self.user_keys(),
            (CertKind::User, Some(g)) => self.group_keys(&g).ok_or_else(|| {
                IssueError::Store(StoreError::Backend(format!(
                    "CA group {g:?} has no key loaded"
                )))
            })?,
            (CertKind::Host, _) => self.host_keys(),
        };
        let authority = &ring.active;
        let kid = key_id(&req.role, verified.issuer(), verified.subject(), serial);
        let spec = CertSpec {
            kind: req.kind,
            subject,
            serial,
            key_id: match req.kind {
                CertKind::User => kid,
                CertKind::Host => kid.replacen("mayfly:", "mayfly-host:", 1),
            },
            principals: grant.principals,
            valid_after: now_s.saturating_sub(self.backdate.as_secs()),
            // Policy already clipped the TTL; the window end bounds it again.
            valid_before: now_s
                .saturating_add(grant.ttl.as_secs())
                .min(grant.window_end.unwrap_or(u64::MAX)),
            extensions: grant.extensions,
            force_command: grant.force_command,
            source_address: grant.source_address,
        };
        let cert = authority.mint(&spec)?;
        let line = cert
            .to_openssh()
            .map_err(|e| IssueError::Mint(MintError::Sign(e)))?;
        let principals: Vec<String> = spec.principals.iter().map(|p| p.to_string()).collect();
        rec.event = EventKind::CertIssued;
        rec.serial = Some(serial);
        rec.key_id = Some(spec.key_id.clone());
        rec.principals = principals.clone();
        rec.valid_after = Some(spec.valid_after);
        rec.valid_before = Some(spec.valid_before);
        rec.ca_key = Some(authority.public_key_line());
        let commit_started = std::time::Instant::now();
        let stored = self.store.append_guarded(rec.clone(), Some(guard)).await;
        self.metrics.observe_store_commit(commit_started.elapsed());
        // The guard is checked again in the commit itself: a deactivation,
        // a second redemption or a parallel request that landed after the
        // checks above refuses this certificate instead of racing it.
        stored?.map_err(|refusal| guard_refusal(refusal, &req.role))?;
        Ok(Issued {
            certificate: line,
            serial,
            key_id: spec.key_id,
            principals,
            valid_after: spec.valid_after,
            valid_before: spec.valid_before,
        })
    }
}

fn too_many_active(role: &str, live: u64, max: u32) -> IssueError {
    Denial {
        code: DenialCode::TooManyActiveCerts,
        rule: format!("{role}.toml max_active_certs"),
        message: format!(
            "{live} certificate(s) of this identity are still valid; the role allows {max} at a time (wait for one to expire or have it revoked)"
        ),
    }
    .into()
}

/// Why the store refused a guarded issuance at commit, as the bot sees it.
fn guard_refusal(refusal: crate::store::GuardRefusal, role: &str) -> IssueError {
    use crate::store::GuardRefusal;
    match refusal {
        GuardRefusal::Disabled(d) => disabled_denial(&d),
        GuardRefusal::TooManyActive { live, max } => too_many_active(role, live, max),
        GuardRefusal::Approval(a) => IssueError::Approval(a),
    }
}

/// The answer for a disabled identity or role.
fn disabled_denial(d: &DisabledKey) -> IssueError {
    let what = if d.subject.is_empty() {
        format!("role {:?} is disabled", d.role)
    } else if d.role.is_empty() {
        format!("identity {}/{} is disabled", d.issuer, d.subject)
    } else {
        format!(
            "identity {}/{} is disabled for role {:?}",
            d.issuer, d.subject, d.role
        )
    };
    Denial {
        code: DenialCode::Disabled,
        rule: "deactivation".into(),
        message: format!("{what}; ask the CA operator (`mayfly identity enable`)"),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_start_above_recorded_and_clock_floor() {
        let a = SerialAllocator::new(5, 1_800_000_000);
        let first = a.next();
        assert!(first > 1_800_000_000u64 << 24);
        assert_eq!(a.next(), first + 1);
        let b = SerialAllocator::new(u64::MAX - 10, 1);
        assert_eq!(b.next(), u64::MAX - 9);
    }
}
