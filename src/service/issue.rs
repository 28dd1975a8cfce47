//! The issuance pipeline: token, policy, limits, replay, mint, durable record.

/// The target of this module's log lines (see `ISSUANCE_LOG_TARGET`).
pub(super) const LOG_TARGET: &str = module_path!();
use std::time::SystemTime;

use crate::audit::{AuditRecord, EventKind};
use crate::auth::{TokenError, VerifiedToken};
use crate::clock::{unix_ms, unix_secs as unix};
use crate::store::{GuardRefusal, StoreError};

use super::{IssueError, Service};
use std::net::SocketAddr;

use crate::ca::{self, CertKind, MintError, SubjectKey};

use super::limits::{disabled_denial, guard_refusal};
use super::spec;
use crate::policy::{CertRequest, HostCertRequest};
use crate::time::{Ttl, UnixSecs};

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
    /// Proof that the caller holds a live certificate it renews
    /// (`mayfly exec`); see [`crate::ca::renewal`].
    pub renewal: Option<RenewalProof>,
}

/// The `renewal` object of a certificate request.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalProof {
    /// The certificate being renewed (OpenSSH line).
    pub certificate: String,
    /// Armored SSHSIG by that certificate's key over the renewal message.
    pub signature: String,
}

/// What a certificate request comes to when nothing went wrong.
#[derive(Debug, Clone)]
pub enum Issuance {
    /// The certificate, its audit record durable (200).
    Issued(Issued),
    /// The role needs approval and the request waits (202).
    Pending(PendingApproval),
}

/// An approval request that still waits for approvals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingApproval {
    /// Approval request id to poll with.
    pub id: String,
    /// Approvals still needed.
    pub needed: u32,
    /// When the approval request expires.
    pub expires_at: UnixSecs,
}

impl std::fmt::Display for PendingApproval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "role needs approval: request {} waits for {} approval(s) until {}; an approver runs `mayfly request approve {}`",
            self.id, self.needed, self.expires_at, self.id
        )
    }
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
    /// Start of validity.
    pub valid_after: UnixSecs,
    /// End of validity.
    pub valid_before: UnixSecs,
}

impl Service {
    /// Issues a certificate, opens or reports a pending approval, or
    /// explains why not. The certificate is returned only after its audit
    /// record is durable.
    pub async fn issue_user_cert(
        &self,
        req: UserCertRequest,
        now: SystemTime,
    ) -> Result<Issuance, IssueError> {
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
            Ok(Issuance::Pending(p)) => {
                self.metrics.pending(role_label);
                tracing::info!(request_id = %req.request_id, role = %req.role,
                    issuer = rec.issuer.as_deref().unwrap_or(""),
                    subject = rec.subject.as_deref().unwrap_or(""),
                    approval_request = %p.id, needed = p.needed, "certificate waits for approval");
            }
            Ok(Issuance::Issued(issued)) => {
                self.metrics.issued(role_label);
                tracing::info!(
                    request_id = %req.request_id, role = %req.role,
                    issuer = rec.issuer.as_deref().unwrap_or(""),
                    subject = rec.subject.as_deref().unwrap_or(""),
                    serial = issued.serial, key_id = %issued.key_id,
                    principals = ?issued.principals, valid_before = issued.valid_before.get(),
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
                if !matches!(e, IssueError::Store(_)) {
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
    ) -> Result<Issuance, IssueError> {
        let now_s = unix(now);
        let token = req.token.as_ref().ok_or(TokenError::Missing)?;
        let verified: VerifiedToken = self.verifier.verify(token.expose(), now_s).await?;
        rec.issuer = Some(verified.issuer().to_string());
        rec.subject = Some(verified.subject().to_string());
        rec.token_id = Some(verified.replay_id().to_string());
        rec.token_exp = Some(verified.expires_at());
        rec.claims = verified.job_claims().clone();

        let subject = SubjectKey::parse(&req.public_key).map_err(|e| IssueError::BadRequest {
            code: match e {
                ca::SubjectKeyError::Malformed(_) => "invalid_public_key",
                _ => "unsupported_key_type",
            },
            message: e.to_string(),
        })?;
        rec.key_fingerprint = Some(subject.fingerprint());
        let ttl = match req.ttl_seconds.map(Ttl::from_secs) {
            None => None,
            Some(None) => {
                return Err(IssueError::BadRequest {
                    code: "invalid_ttl",
                    message: "ttl_seconds must be above 0; omit it for the role's default".into(),
                })
            }
            Some(Some(t)) => Some(t.duration()),
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
        let role_def = policy.roles.get(&req.role);
        let approval = role_def.and_then(|r| r.approval.as_ref());
        // Deactivations and CA keys as of the cache, without a store read:
        // the commit reads the deactivations itself, and refuses the
        // certificate if the CA keys changed since (then they are read and
        // the request decided again). An approval request writes no
        // certificate and has no such checks, so it reads them now; so
        // does a refusal that came from the cache.
        let fresh = approval.is_some() && req.approval_request.is_none();
        let mut state = match fresh {
            true => self.refresh_admin().await?,
            false => self.version_for_request().await?,
        };
        let previous = match self.state_checks(req, &verified, &subject, role_def, now_s) {
            Err(_) if !fresh => {
                state = self.refresh_admin().await?;
                self.state_checks(req, &verified, &subject, role_def, now_s)?
            }
            checked => checked?,
        };

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
                    self.check_limits(role, &verified, previous.as_ref(), now_s)
                        .await?;
                }
            }
            (Some(ap), None) => {
                if let Some(role) = role_def {
                    self.check_limits(role, &verified, previous.as_ref(), now_s)
                        .await?;
                }
                let pending = self
                    .request_approval(ap, req, &verified, &grant, rec, now)
                    .await?;
                return Ok(Issuance::Pending(pending));
            }
            (Some(_), Some(id)) => {
                // A validated redemption skips the rate limits (the request
                // was charged when it was made), never max_active_certs.
                let fingerprint = rec.key_fingerprint.clone().unwrap_or_default();
                let approved = match self
                    .approved_request(id, req, &verified, &fingerprint, previous.as_ref(), now_s)
                    .await?
                {
                    Ok(approved) => approved,
                    Err(pending) => return Ok(Issuance::Pending(pending)),
                };
                grant =
                    crate::approval::bound_grant(grant, &approved, req.principals.as_deref(), ttl)?;
                if previous.is_some() {
                    // A renewal lives inside the approval: the approver
                    // granted access until the approval expires, no longer.
                    let left = approved.expires_at.get().saturating_sub(now_s);
                    grant.ttl = grant.ttl.min(std::time::Duration::from_secs(left));
                }
                if let Some(role) = role_def {
                    self.check_active(role, &verified, previous.as_ref(), now_s)
                        .await?;
                }
                let mut used = rec.clone();
                used.event = EventKind::ApprovalUsed;
                used.reason = Some(match &previous {
                    None => format!("approval request {id} redeemed"),
                    Some(p) => format!(
                        "approval request {id} renewed: serial {} ({}) replaced by key {fingerprint}",
                        p.serial, p.key_fingerprint
                    ),
                });
                used.principals = grant.principals.iter().map(|p| p.to_string()).collect();
                redeem = Some(crate::store::Redemption {
                    id: id.clone(),
                    key_fingerprint: fingerprint,
                    renews_key: previous.as_ref().map(|p| p.key_fingerprint.clone()),
                    record: used,
                });
            }
        }
        let mut guard = crate::store::IssueGuard {
            issuer: verified.issuer().to_string(),
            subject: verified.subject().to_string(),
            role: req.role.clone(),
            max_active: role_def.and_then(|r| r.max_active_certs),
            redeem,
            renews: previous,
            acted_on: Some(state.version),
            claims: Vec::new(),
        };

        // The id older versions recorded for a jti-less token, so one used
        // just before an upgrade stays single-use after it.
        let counters = self.store.counters();
        if verified.replay_protection() && counters.claims_at_commit() {
            guard.claims = verified
                .legacy_replay_id()
                .into_iter()
                .chain([verified.replay_id()])
                .map(|id| (id.to_string(), verified.expires_at()))
                .collect();
        } else if verified.replay_protection() {
            let legacy_used = match verified.legacy_replay_id() {
                Some(l) => {
                    !counters
                        .claim_token(l, verified.expires_at(), now_s)
                        .await?
                }
                None => false,
            };
            if legacy_used
                || !counters
                    .claim_token(verified.replay_id(), verified.expires_at(), now_s)
                    .await?
            {
                return Err(TokenError::Replayed.into());
            }
        }

        let serial = self.store.counters().next_serial().await?;
        let group = role_def.and_then(|r| r.ca_group.as_deref());
        let who = spec::Requester {
            role: &req.role,
            issuer: verified.issuer(),
            subject: verified.subject(),
        };
        let spec = spec::cert_spec(
            req.kind,
            who,
            subject,
            serial,
            grant,
            UnixSecs(now_s),
            self.backdate,
        );
        let mut stale_retries = 0;
        loop {
            let ring = match spec::ca_choice(req.kind, group) {
                spec::CaChoice::User => self.user_keys(),
                spec::CaChoice::Group(g) => self.group_keys(&g).ok_or_else(|| {
                    IssueError::Store(StoreError::Backend(format!(
                        "CA group {g:?} has no key loaded"
                    )))
                })?,
                spec::CaChoice::Host => self.host_keys(),
            };
            let authority = &ring.active;
            let cert = authority.mint(&spec)?;
            let line = cert
                .to_openssh()
                .map_err(|e| IssueError::Mint(MintError::Sign(e)))?;
            let principals: Vec<String> = spec.principals.iter().map(|p| p.to_string()).collect();
            rec.event = EventKind::CertIssued;
            rec.serial = Some(serial);
            rec.key_id = Some(spec.key_id.clone());
            rec.principals = principals.clone();
            rec.valid_after = Some(spec.valid_after.get());
            rec.valid_before = Some(spec.valid_before.get());
            rec.ca_key = Some(authority.public_key_line());
            let commit_started = self.clock.monotonic();
            let stored = self
                .store
                .issuance()
                .issue(rec.clone(), Some(guard.clone()))
                .await;
            self.metrics
                .observe_store_commit(self.clock.monotonic().saturating_sub(commit_started));
            // The guard is checked again in the commit itself: a deactivation,
            // a second redemption or a parallel request that landed after the
            // checks above refuses this certificate instead of racing it.
            match stored? {
                Ok(()) => {
                    return Ok(Issuance::Issued(Issued {
                        certificate: line,
                        serial,
                        key_id: spec.key_id,
                        principals,
                        valid_after: spec.valid_after,
                        valid_before: spec.valid_before,
                    }))
                }
                Err(GuardRefusal::Stale {
                    acted_on,
                    keys_changed,
                }) if stale_retries < MAX_STALE_RETRIES => {
                    // Nothing was written and the certificate is dropped:
                    // decide again on the current state, sign again.
                    stale_retries += 1;
                    tracing::debug!(request_id = %req.request_id, acted_on, keys_changed,
                        "the CA keys changed during the request; deciding again");
                    state = self.refresh_admin().await?;
                    guard.renews =
                        self.state_checks(req, &verified, &spec.subject, role_def, now_s)?;
                    guard.acted_on = Some(state.version);
                }
                Err(refusal) => return Err(guard_refusal(refusal, &req.role)),
            }
        }
    }

    /// What a request's answer takes from the CA's state (see
    /// [`Service::refresh_admin`]): the CA keys a renewal's certificate
    /// must be signed by, and the deactivations. Returns the certificate
    /// a renewal replaces.
    fn state_checks(
        &self,
        req: &UserCertRequest,
        verified: &VerifiedToken,
        subject: &SubjectKey,
        role_def: Option<&crate::policy::Role>,
        now_s: u64,
    ) -> Result<Option<ca::renewal::PreviousCert>, IssueError> {
        let previous = match &req.renewal {
            None => None,
            Some(proof) => {
                Some(self.check_renewal(proof, req, verified, subject, role_def, now_s)?)
            }
        };
        if let Some(d) = self.disabled_for(verified.issuer(), verified.subject(), &req.role) {
            return Err(disabled_denial(&d));
        }
        Ok(previous)
    }
}

/// How often one request is decided again because the CA keys changed
/// between its decision and its commit, before it fails (503).
const MAX_STALE_RETRIES: u32 = 3;

impl Service {
    /// Checks a renewal proof against the CA keys that sign this role's
    /// certificates; the store re-checks revocation in the commit.
    fn check_renewal(
        &self,
        proof: &RenewalProof,
        req: &UserCertRequest,
        verified: &VerifiedToken,
        subject: &SubjectKey,
        role_def: Option<&crate::policy::Role>,
        now_s: u64,
    ) -> Result<ca::renewal::PreviousCert, IssueError> {
        let invalid = |message: String| IssueError::BadRequest {
            code: "invalid_renewal",
            message,
        };
        if req.kind != CertKind::User {
            return Err(invalid(
                "only user certificates are renewed; send the request without \"renewal\"".into(),
            ));
        }
        let group = role_def.and_then(|r| r.ca_group.as_deref());
        let ring = match spec::ca_choice(req.kind, group) {
            spec::CaChoice::Group(g) => self
                .group_keys(&g)
                .ok_or_else(|| invalid(format!("CA group {g:?} has no key loaded")))?,
            _ => self.user_keys(),
        };
        let authorities: Vec<&ca::Authority> = ring.authorities().collect();
        ca::renewal::verify(
            &proof.certificate,
            &proof.signature,
            subject,
            req.approval_request.as_deref(),
            (&req.role, verified.issuer(), verified.subject()),
            &authorities,
            now_s,
        )
        .map_err(|e| invalid(e.to_string()))
    }
}
