//! The approval workflow: open a request, vote on it, redeem it.

use std::time::SystemTime;

use crate::audit::{AuditRecord, EventKind};
use crate::auth::{TokenError, VerifiedToken};
use crate::clock::{unix_ms, unix_secs as unix};
use crate::policy::{Denial, DenialCode};

use super::{IssueError, Service};
use super::{PendingApproval, UserCertRequest};

impl Service {
    /// Opens an approval request for a role that needs one and answers
    /// "pending" (202); the bot redeems it later with its id.
    pub(super) async fn request_approval(
        &self,
        ap: &crate::approval::ApprovalPolicy,
        req: &UserCertRequest,
        verified: &VerifiedToken,
        grant: &crate::policy::Grant,
        rec: &AuditRecord,
        now: SystemTime,
    ) -> Result<PendingApproval, IssueError> {
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
            created_at: crate::time::UnixSecs(now_s),
            expires_at: crate::time::UnixSecs(now_s).saturating_add(ap.expires),
            required: ap.required,
            status: ApprovalStatus::Pending,
            votes: Vec::new(),
            requester_claims,
            cancelled: None,
            job_claims: verified.job_claims().clone(),
        };
        let mut arec = rec.clone();
        arec.event = EventKind::ApprovalRequested;
        arec.reason = Some(format!(
            "approval request {id}: {} approval(s) needed",
            ap.required
        ));
        arec.principals = r.principals.clone();
        let expires_at = r.expires_at;
        let notice = self.webhook.as_ref().map(|_| r.clone());
        self.store.approvals().put(r, vec![arec]).await?;
        // After the commit, and in its own task: the bot's answer never
        // waits for (or fails with) the approvers' webhook.
        if let (Some(n), Some(r)) = (&self.webhook, notice) {
            n.notify(&r, ap.webhook.as_ref());
        }
        Ok(PendingApproval {
            id,
            needed: ap.required,
            expires_at,
        })
    }

    /// The approved request `id` that this call may redeem: made by the same
    /// identity, for the same role and key. A pending one answers "pending"
    /// again (202, no limits charged: `mayfly ssh` polls); anything else is
    /// refused. Redeeming it happens in the issuance's own commit.
    pub(super) async fn approved_request(
        &self,
        id: &str,
        req: &UserCertRequest,
        verified: &VerifiedToken,
        fingerprint: &str,
        renews: Option<&crate::ca::renewal::PreviousCert>,
        now_s: u64,
    ) -> Result<Result<crate::approval::ApprovalRequest, PendingApproval>, IssueError> {
        use crate::approval::{ApprovalError, ApprovalStatus};
        let r = self
            .store
            .approvals()
            .get(id)
            .await?
            .ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
        // A first redemption certifies the approved key; a renewal proves
        // it holds the key the approval's last certificate went to.
        let held_key = renews.map_or(fingerprint, |p| p.key_fingerprint.as_str());
        if r.issuer != verified.issuer()
            || r.subject != verified.subject()
            || r.role != req.role
            || r.key_fingerprint != held_key
        {
            return Err(ApprovalError::Mismatch(id.to_string()).into());
        }
        if renews.is_some() {
            return match crate::approval::renewable(&r, now_s) {
                Ok(()) => Ok(Ok(r)),
                Err(e) => Err(e.into()),
            };
        }
        match r.status_at(now_s) {
            ApprovalStatus::Approved => Ok(Ok(r)),
            ApprovalStatus::Pending => {
                let approvals = r.votes.iter().filter(|v| v.approve).count() as u32;
                Ok(Err(PendingApproval {
                    id: r.id,
                    needed: r.required.saturating_sub(approvals),
                    expires_at: r.expires_at,
                }))
            }
            _ => Err(r.not_pending(now_s).into()),
        }
    }

    /// Pending approval requests the caller may decide, after checking the
    /// caller's token.
    pub async fn pending_approvals(
        &self,
        token: Option<&crate::auth::BearerToken>,
        now: SystemTime,
    ) -> Result<Vec<crate::approval::ApprovalRequest>, IssueError> {
        self.approval_requests(token, false, now).await
    }

    /// Approval requests of the roles the caller approves: the pending
    /// ones, or (`all`) the most recent in every state, each with its
    /// status as of `now`, so an abandoned request reads "expired".
    pub async fn approval_requests(
        &self,
        token: Option<&crate::auth::BearerToken>,
        all: bool,
        now: SystemTime,
    ) -> Result<Vec<crate::approval::ApprovalRequest>, IssueError> {
        let v = self.verify_person(token, now).await?;
        self.requests_for(&v, all, now).await
    }

    /// Pending approval requests that the verified person `v` may decide
    /// (the approvers of each request's role, as the policy says now).
    pub async fn pending_approvals_for(
        &self,
        v: &VerifiedToken,
        now: SystemTime,
    ) -> Result<Vec<crate::approval::ApprovalRequest>, IssueError> {
        self.requests_for(v, false, now).await
    }

    /// The requests of the roles `v` approves: pending ones, or (`all`)
    /// the recent ones in every state, each with its status as of `now`.
    async fn requests_for(
        &self,
        v: &VerifiedToken,
        all: bool,
        now: SystemTime,
    ) -> Result<Vec<crate::approval::ApprovalRequest>, IssueError> {
        Ok(self
            .listed(all, now)
            .await?
            .into_iter()
            .filter(|r| self.may_decide(v, &r.role))
            .collect())
    }

    /// Whether the verified person `v` is an approver of `role`'s requests.
    pub fn may_decide(&self, v: &VerifiedToken, role: &str) -> bool {
        self.policy()
            .roles
            .get(role)
            .and_then(|role| role.approval.as_ref())
            .is_some_and(|ap| ap.is_approver(v.issuer(), v.claims()))
    }

    /// Every approval request still pending at `now` (read-only views:
    /// the console shows them to viewers, who cannot decide them).
    pub async fn all_pending_approvals(
        &self,
        now: SystemTime,
    ) -> Result<Vec<crate::approval::ApprovalRequest>, IssueError> {
        self.listed(false, now).await
    }

    /// Stored requests with their status as of `now`: the pending ones, or
    /// (`all`) the recent ones in every state.
    async fn listed(
        &self,
        all: bool,
        now: SystemTime,
    ) -> Result<Vec<crate::approval::ApprovalRequest>, IssueError> {
        use crate::approval::ApprovalStatus;
        let listed = self
            .store
            .approvals()
            .list((!all).then_some(ApprovalStatus::Pending))
            .await?;
        Ok(listed
            .into_iter()
            .map(|r| r.as_of(unix(now)))
            .filter(|r| all || r.status == ApprovalStatus::Pending)
            .collect())
    }

    /// Cancels approval request `id`: the identity that made it may, and
    /// so may an administrator (`admin_ok`: the caller passed the admin
    /// transport checks, e.g. a TLS client certificate when required).
    /// Audited, refusals too.
    pub async fn cancel_request(
        &self,
        token: Option<&crate::auth::BearerToken>,
        id: &str,
        reason: &str,
        request_id: &str,
        admin_ok: bool,
        now: SystemTime,
    ) -> Result<crate::approval::ApprovalRequest, IssueError> {
        let mut who = None;
        let result = self
            .cancel_inner(token, id, reason, request_id, admin_ok, now, &mut who)
            .await;
        if let Err(e) = &result {
            self.record_request_refusal("cancel", id, who, e, request_id, now)
                .await;
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn cancel_inner(
        &self,
        token: Option<&crate::auth::BearerToken>,
        id: &str,
        reason: &str,
        request_id: &str,
        admin_ok: bool,
        now: SystemTime,
        who: &mut Option<String>,
    ) -> Result<crate::approval::ApprovalRequest, IssueError> {
        use crate::approval::ApprovalError;
        let v = self.verify_person(token, now).await?;
        let caller = format!("{}:{}", v.issuer(), v.subject());
        *who = Some(caller.clone());
        let current = self
            .store
            .approvals()
            .get(id)
            .await?
            .ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
        // The requester's identity never changes, so checking it before the
        // store's atomic decision is safe.
        let by = if current.issuer == v.issuer() && current.subject == v.subject() {
            format!("requester:{caller}")
        } else if admin_ok && self.is_admin(&v) {
            format!("admin:{caller}")
        } else {
            return Err(ApprovalError::NotCanceller(caller, id.to_string()).into());
        };
        *who = Some(by.clone());
        let mut rec = AuditRecord::new(EventKind::ApprovalCancelled, unix_ms(now), request_id);
        rec.role = Some(current.role.clone());
        rec.issuer = Some(current.issuer.clone());
        rec.subject = Some(current.subject.clone());
        rec.key_fingerprint = Some(current.key_fingerprint.clone());
        rec.actor = Some(by.clone());
        rec.reason = Some(format!("approval request {id} cancelled: {reason}"));
        let cancel = crate::store::Cancel {
            by,
            reason: reason.to_string(),
            now: unix(now),
        };
        let updated = self.store.approvals().cancel(id, cancel, rec).await??;
        tracing::info!(request_id, approval = %updated.id, "approval request cancelled");
        Ok(updated)
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
        let verified = self.verify_person(token, now).await;
        self.vote_checked(verified, id, approve, reason, request_id, now)
            .await
    }

    /// As [`Service::vote`] for a person already verified elsewhere (the
    /// web console verified their ID token at login): the same approver
    /// rules, self-approval checks and audit records.
    pub async fn vote_as(
        &self,
        v: &VerifiedToken,
        id: &str,
        approve: bool,
        reason: &str,
        request_id: &str,
        now: SystemTime,
    ) -> Result<crate::approval::ApprovalRequest, IssueError> {
        self.vote_checked(Ok(v.clone()), id, approve, reason, request_id, now)
            .await
    }

    async fn vote_checked(
        &self,
        verified: Result<VerifiedToken, IssueError>,
        id: &str,
        approve: bool,
        reason: &str,
        request_id: &str,
        now: SystemTime,
    ) -> Result<crate::approval::ApprovalRequest, IssueError> {
        let mut who = None;
        let result = match verified {
            Ok(v) => {
                self.vote_inner(&v, id, approve, reason, request_id, now, &mut who)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            let action = if approve { "approve" } else { "deny" };
            let who = who.map(|w| format!("approver:{w}"));
            self.record_request_refusal(action, id, who, e, request_id, now)
                .await;
        }
        result
    }

    /// Audits (and logs) a refused approve, deny or cancel of request
    /// `id` (`approval_vote_refused`); a store failure is only logged, as
    /// nothing changed.
    async fn record_request_refusal(
        &self,
        action: &str,
        id: &str,
        who: Option<String>,
        e: &IssueError,
        request_id: &str,
        now: SystemTime,
    ) {
        if matches!(e, IssueError::Store(_)) {
            return;
        }
        let mut rec = AuditRecord::new(EventKind::ApprovalVoteRefused, unix_ms(now), request_id);
        rec.actor = who;
        rec.reason_code = Some(e.code().to_string());
        rec.reason = Some(format!(
            "{action} approval request {}: {e}",
            id.chars().take(64).collect::<String>()
        ));
        if let Err(se) = self.store.append(rec).await {
            tracing::error!(error = %se, action, "audit record of a refused approval request change not stored");
        }
        tracing::warn!(request_id, action, code = e.code(), reason = %e, "approval request change refused");
    }

    #[allow(clippy::too_many_arguments)]
    async fn vote_inner(
        &self,
        v: &VerifiedToken,
        id: &str,
        approve: bool,
        reason: &str,
        request_id: &str,
        now: SystemTime,
        who: &mut Option<String>,
    ) -> Result<crate::approval::ApprovalRequest, IssueError> {
        use crate::approval::ApprovalError;
        let approver = format!("{}:{}", v.issuer(), v.subject());
        *who = Some(approver.clone());
        let policy = self.policy();
        let current = self
            .store
            .approvals()
            .get(id)
            .await?
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
        rec.claims = current.job_claims.clone();
        let vote = crate::store::Vote {
            approver,
            approve,
            reason: reason.to_string(),
            now: now_s,
        };
        let updated = self.store.approvals().vote(id, vote, rec).await??;
        tracing::info!(request_id, approval = %updated.id, status = updated.status.as_str(), "approval vote recorded");
        Ok(updated)
    }
}
