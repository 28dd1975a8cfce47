//! Just-in-time access: roles that need a human's approval before a
//! certificate is minted.
//!
//! A bot whose request is allowed by policy but whose role says
//! `[approval] required = N` gets `202 Accepted` with an approval request
//! id. Approvers (people with their own OIDC token, matched like claims)
//! list, approve or deny it; the requester cannot approve itself. Once
//! approved, the same bot (same identity, role and public key) asks again
//! with the id and gets the certificate — exactly once. Pending requests and
//! approvals expire. Every step is audited.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::time::UnixSecs;

pub use crate::policy::approval::{ApprovalPolicy, DistinctClaims, MAX_APPROVAL_EXPIRY};

/// State of an approval request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    /// Waiting for approvals.
    Pending,
    /// Enough approvals; the requester may mint once.
    Approved,
    /// An approver said no.
    Denied,
    /// The certificate was minted.
    Used,
    /// Nobody decided in time, or the approval was not used in time.
    Expired,
    /// The requester (or an administrator) withdrew it.
    Cancelled,
}

impl ApprovalStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::Used => "used",
            ApprovalStatus::Expired => "expired",
            ApprovalStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<ApprovalStatus> {
        [
            ApprovalStatus::Pending,
            ApprovalStatus::Approved,
            ApprovalStatus::Denied,
            ApprovalStatus::Used,
            ApprovalStatus::Expired,
            ApprovalStatus::Cancelled,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

/// One vote.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Vote {
    /// `issuer:subject` of the approver.
    pub approver: String,
    /// Approve or deny.
    pub approve: bool,
    /// Why.
    pub reason: String,
    /// When the vote was cast.
    pub time: UnixSecs,
}

/// An approval request as stored and shown to approvers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApprovalRequest {
    /// Id (`apr_` + random).
    pub id: String,
    /// Role.
    pub role: String,
    /// Requester's issuer.
    pub issuer: String,
    /// Requester's subject.
    pub subject: String,
    /// `SHA256:` fingerprint of the key to certify.
    pub key_fingerprint: String,
    /// Principals that would be granted.
    pub principals: Vec<String>,
    /// Requested lifetime in seconds.
    pub ttl_seconds: u64,
    /// When the request was made.
    pub created_at: UnixSecs,
    /// Pending until then; once approved, usable until then.
    pub expires_at: UnixSecs,
    /// Approvals needed.
    pub required: u32,
    /// State.
    pub status: ApprovalStatus,
    /// Votes so far.
    pub votes: Vec<Vote>,
    /// The requester's claim values named by the role's `approval.distinct`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub requester_claims: std::collections::BTreeMap<String, String>,
    /// The requester's job claims (its issuer's `audit_claims`), so an
    /// approver sees the run, commit and actor being approved.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub job_claims: std::collections::BTreeMap<String, String>,
    /// Who withdrew the request, why and when (status `cancelled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<Cancellation>,
}

/// The withdrawal of an approval request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cancellation {
    /// `requester:<issuer>:<subject>` or `admin:<issuer>:<subject>`.
    pub by: String,
    /// Why.
    pub reason: String,
    /// When.
    pub time: UnixSecs,
}

impl ApprovalRequest {
    /// The status at `now` (pending/approved requests past `expires_at` are expired).
    pub fn status_at(&self, now: u64) -> ApprovalStatus {
        match self.status {
            ApprovalStatus::Pending | ApprovalStatus::Approved if now >= self.expires_at.get() => {
                ApprovalStatus::Expired
            }
            s => s,
        }
    }

    /// This request with its status as of `now` (what people are shown:
    /// an abandoned request reads "expired", not "pending").
    pub fn as_of(mut self, now: u64) -> ApprovalRequest {
        self.status = self.status_at(now);
        self
    }

    /// The vote that denied it, if one did.
    pub fn denial(&self) -> Option<&Vote> {
        self.votes.iter().find(|v| !v.approve)
    }

    /// Why this request cannot be redeemed or decided at `now`: for a
    /// denied one, the approver's own words; for a cancelled one, who
    /// withdrew it.
    pub fn not_pending(&self, now: u64) -> ApprovalError {
        let status = self.status_at(now);
        match (status, self.denial(), &self.cancelled) {
            (ApprovalStatus::Denied, Some(v), _) => ApprovalError::Denied {
                id: self.id.clone(),
                by: v.approver.clone(),
                reason: v.reason.clone(),
            },
            (ApprovalStatus::Cancelled, _, Some(c)) => ApprovalError::NotPending {
                id: self.id.clone(),
                status: format!("cancelled by {}", c.by),
            },
            _ => ApprovalError::NotPending {
                id: self.id.clone(),
                status: status.as_str().into(),
            },
        }
    }
}

/// A new random approval request id.
pub fn new_id() -> String {
    format!("apr_{}", uuid::Uuid::new_v4().simple())
}

/// Why an approval step was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    /// No such request.
    #[error("no approval request {0}")]
    NotFound(String),
    /// The caller may not approve this role.
    #[error("{0} is not an approver for role {1:?}")]
    NotApprover(String, String),
    /// Requester tried to approve its own request.
    #[error("the requester cannot approve its own request")]
    SelfApproval,
    /// Already decided, used or expired.
    #[error("approval request {id} is {status}")]
    NotPending {
        /// Id.
        id: String,
        /// Its state.
        status: String,
    },
    /// The approval is for another identity, role or key.
    #[error("approval request {0} was made for another identity, role or key")]
    Mismatch(String),
    /// An approver denied the request; the bot is told who and why.
    #[error("approval request {id} was denied by {by}: {}", if reason.is_empty() { "(no reason given)" } else { reason.as_str() })]
    Denied {
        /// Id.
        id: String,
        /// `issuer:subject` of the approver who denied it.
        by: String,
        /// The reason the approver wrote.
        reason: String,
    },
    /// The caller is neither the requester nor an administrator.
    #[error("{0} may not cancel approval request {1}: only the identity that made it, or an administrator, may")]
    NotCanceller(String, String),
    /// Same approver twice.
    #[error("{0} already voted on this request")]
    AlreadyVoted(String),
    /// The approver's claim equals the requester's (`approval.distinct`),
    /// or the approver's token lacks the claim to compare.
    #[error("{0}")]
    SameAsRequester(String),
    /// A renewal under an approval that no longer allows one.
    #[error("approval request {id} allows no more renewals: {reason}; ask for a new approval")]
    NotRenewable {
        /// Id.
        id: String,
        /// Why (expired, never redeemed, denied...).
        reason: String,
    },
}

impl ApprovalError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApprovalError::NotFound(_) => "approval_not_found",
            ApprovalError::NotApprover(..) => "not_approver",
            ApprovalError::SelfApproval => "self_approval",
            ApprovalError::NotPending { .. } => "approval_not_pending",
            // The same code as any other request that is no longer pending
            // (an existing contract); the message carries the reason.
            ApprovalError::Denied { .. } => "approval_not_pending",
            ApprovalError::NotCanceller(..) => "not_canceller",
            ApprovalError::Mismatch(_) => "approval_mismatch",
            ApprovalError::AlreadyVoted(_) => "already_voted",
            ApprovalError::SameAsRequester(_) => "self_approval",
            ApprovalError::NotRenewable { .. } => "approval_not_renewable",
        }
    }
}

/// Refuses an approver whose claims equal the requester's where the role's
/// `approval.distinct` says they must differ (case-insensitive, since
/// account names such as GitHub logins are). An approver token without the
/// claim is refused too: it cannot prove it is someone else.
pub fn check_distinct(
    distinct: &[DistinctClaims],
    req: &ApprovalRequest,
    approver_claims: &Map<String, Value>,
) -> Result<(), ApprovalError> {
    for d in distinct {
        let Some(requester) = req.requester_claims.get(&d.requester) else {
            return Err(ApprovalError::SameAsRequester(format!(
                "approval request {} holds no {:?} claim of the requester, so approval.distinct cannot be checked; the requester must ask again",
                req.id, d.requester
            )));
        };
        let approver = match approver_claims.get(&d.approver) {
            Some(Value::String(v)) => v.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(ApprovalError::SameAsRequester(format!(
                    "your token has no {:?} claim, so mayfly cannot tell you from the requester ({}={})",
                    d.approver, d.requester, requester
                )))
            }
        };
        if approver.trim().eq_ignore_ascii_case(requester.trim()) {
            return Err(ApprovalError::SameAsRequester(format!(
                "you are the requester: your {} {:?} equals the job's {} (approval.distinct); another person must approve",
                d.approver, approver, d.requester
            )));
        }
    }
    Ok(())
}

/// Whether approval `r` may mint a renewal at `now`: it was redeemed (a
/// certificate went out under it) and has not expired. An approval grants
/// access until its `expires_at`; renewals (`mayfly exec`) keep a job's
/// access inside that time, one chain of keys, never past it. (The key
/// and identity are checked by the caller.)
pub fn renewable(r: &ApprovalRequest, now: u64) -> Result<(), ApprovalError> {
    let refuse = |reason: String| {
        Err(ApprovalError::NotRenewable {
            id: r.id.clone(),
            reason,
        })
    };
    if r.status != ApprovalStatus::Used {
        return refuse(format!(
            "it is {}, and only an approval whose certificate was issued can be renewed",
            r.status.as_str()
        ));
    }
    if now >= r.expires_at.get() {
        return refuse(format!("it expired at {}", r.expires_at));
    }
    Ok(())
}

/// Redeems approval `a` for an issuance by `(issuer, subject, role)` of
/// the key `key_fingerprint`, in the store's commit (both stores call this
/// with the row they locked): the same identity and role; a first redemption needs an approved request for
/// this key and marks it used; a renewal needs a used, unexpired request
/// held by the renewed key and moves it to the new key, so of two
/// renewals racing from one key only one gets through.
pub fn redeem(
    a: &mut ApprovalRequest,
    (issuer, subject, role): (&str, &str, &str),
    key_fingerprint: &str,
    renews_key: Option<&str>,
    now: u64,
) -> Result<(), ApprovalError> {
    let held = renews_key.unwrap_or(key_fingerprint);
    if a.issuer != issuer || a.subject != subject || a.role != role || a.key_fingerprint != held {
        return Err(ApprovalError::Mismatch(a.id.clone()));
    }
    if renews_key.is_some() {
        renewable(a, now)?;
        a.key_fingerprint = key_fingerprint.to_string();
        return Ok(());
    }
    if a.status_at(now) != ApprovalStatus::Approved {
        return Err(a.not_pending(now));
    }
    a.status = ApprovalStatus::Used;
    Ok(())
}

/// Bounds a redemption's grant by what the approver saw: the same or fewer
/// principals and no longer lifetime. Principals or a TTL the redemption
/// asks for beyond the approval are refused, naming the difference; what it
/// leaves out defaults to the approved values. (The key is bound by the
/// stored fingerprint, the identity and role by the lookup.)
pub fn bound_grant(
    mut grant: crate::policy::Grant,
    approved: &ApprovalRequest,
    requested_principals: Option<&[String]>,
    requested_ttl: Option<Duration>,
) -> Result<crate::policy::Grant, crate::policy::Denial> {
    use crate::policy::{Denial, DenialCode};
    let denial = |message: String| Denial {
        code: DenialCode::ApprovalExceeded,
        rule: "approval".into(),
        message,
    };
    if let Some(asked) = requested_principals {
        let extra: Vec<&String> = asked
            .iter()
            .filter(|p| !approved.principals.contains(p))
            .collect();
        if !extra.is_empty() {
            return Err(denial(format!(
                "approval request {} was approved for principals {:?}; this request also asks for {:?} (ask for a new approval)",
                approved.id, approved.principals, extra
            )));
        }
    }
    let approved_ttl = Duration::from_secs(approved.ttl_seconds);
    if let Some(ttl) = requested_ttl {
        if ttl > approved_ttl {
            return Err(denial(format!(
                "approval request {} was approved for {}s; this request asks for {}s",
                approved.id,
                approved.ttl_seconds,
                ttl.as_secs()
            )));
        }
    }
    grant
        .principals
        .retain(|p| approved.principals.iter().any(|a| a == p.as_str()));
    if grant.principals.is_empty() {
        return Err(denial(format!(
            "none of the approved principals {:?} is granted by the role any more",
            approved.principals
        )));
    }
    grant.ttl = grant.ttl.min(approved_ttl);
    Ok(grant)
}

/// Applies one vote (pure): checks self-approval, duplicate votes and
/// state, and returns the updated request.
pub fn apply_vote(
    mut req: ApprovalRequest,
    approver: &str,
    approve: bool,
    reason: &str,
    now: u64,
) -> Result<ApprovalRequest, ApprovalError> {
    if approver == format!("{}:{}", req.issuer, req.subject) {
        return Err(ApprovalError::SelfApproval);
    }
    if req.status_at(now) != ApprovalStatus::Pending {
        return Err(req.not_pending(now));
    }
    if req.votes.iter().any(|v| v.approver == approver) {
        return Err(ApprovalError::AlreadyVoted(approver.into()));
    }
    req.votes.push(Vote {
        approver: approver.into(),
        approve,
        reason: reason.into(),
        time: UnixSecs(now),
    });
    if !approve {
        req.status = ApprovalStatus::Denied;
    } else if req.votes.iter().filter(|v| v.approve).count() as u32 >= req.required {
        req.status = ApprovalStatus::Approved;
    }
    Ok(req)
}

/// Withdraws a request (pure): only one still waiting for votes, or
/// approved and not yet used, can be cancelled; the caller has checked
/// that `by` may. Decided against the stored row inside the store's
/// commit, so a cancel and a vote or a redemption never both win.
pub fn apply_cancel(
    mut req: ApprovalRequest,
    by: &str,
    reason: &str,
    now: u64,
) -> Result<ApprovalRequest, ApprovalError> {
    match req.status_at(now) {
        ApprovalStatus::Pending | ApprovalStatus::Approved => {}
        _ => return Err(req.not_pending(now)),
    }
    req.status = ApprovalStatus::Cancelled;
    req.cancelled = Some(Cancellation {
        by: by.into(),
        reason: reason.into(),
        time: UnixSecs(now),
    });
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> ApprovalRequest {
        ApprovalRequest {
            id: "apr_1".into(),
            role: "deploy".into(),
            issuer: "ci".into(),
            subject: "bot".into(),
            key_fingerprint: "SHA256:x".into(),
            principals: vec!["deploy".into()],
            ttl_seconds: 300,
            created_at: UnixSecs(100),
            expires_at: UnixSecs(1000),
            required: 2,
            status: ApprovalStatus::Pending,
            votes: vec![],
            requester_claims: Default::default(),
            cancelled: None,
            job_claims: Default::default(),
        }
    }

    #[test]
    fn cancelled_and_expired_requests_take_no_votes_and_denials_carry_the_reason() {
        let c = apply_cancel(req(), "requester:ci:bot", "gave up", 200).unwrap();
        assert_eq!(c.status, ApprovalStatus::Cancelled);
        let e = apply_vote(c.clone(), "corp:alice", true, "", 201).unwrap_err();
        assert!(
            e.to_string().contains("cancelled by requester:ci:bot"),
            "{e}"
        );
        assert!(apply_cancel(c, "admin:corp:root", "", 202).is_err());
        // Past expires_at, nothing can be cancelled or approved: it expired.
        let e = apply_cancel(req(), "requester:ci:bot", "", 1000).unwrap_err();
        assert_eq!(e.to_string(), "approval request apr_1 is expired");
        assert_eq!(req().as_of(1000).status, ApprovalStatus::Expired);
        let denied = apply_vote(req(), "corp:alice", false, "not during the freeze", 300).unwrap();
        let e = apply_vote(denied.clone(), "corp:bob", true, "", 301).unwrap_err();
        assert_eq!(
            e.to_string(),
            "approval request apr_1 was denied by corp:alice: not during the freeze"
        );
        assert_eq!(e.code(), "approval_not_pending");
        let mut a = denied;
        let e = redeem(&mut a, ("ci", "bot", "deploy"), "SHA256:x", None, 302).unwrap_err();
        assert!(e.to_string().contains("not during the freeze"), "{e}");
    }

    #[test]
    fn two_distinct_approvers_are_needed_and_one_denial_ends_it() {
        let r = apply_vote(req(), "corp:alice", true, "ok", 200).unwrap();
        assert_eq!(r.status, ApprovalStatus::Pending);
        assert_eq!(
            apply_vote(r.clone(), "corp:alice", true, "again", 201).unwrap_err(),
            ApprovalError::AlreadyVoted("corp:alice".into())
        );
        let r2 = apply_vote(r.clone(), "corp:bob", true, "ok", 202).unwrap();
        assert_eq!(r2.status, ApprovalStatus::Approved);
        let r3 = apply_vote(r, "corp:bob", false, "no", 202).unwrap();
        assert_eq!(r3.status, ApprovalStatus::Denied);
    }

    #[test]
    fn requester_cannot_approve_itself() {
        assert_eq!(
            apply_vote(req(), "ci:bot", true, "", 200).unwrap_err(),
            ApprovalError::SelfApproval
        );
    }

    #[test]
    fn expired_requests_take_no_votes() {
        assert!(matches!(
            apply_vote(req(), "corp:alice", true, "", 1000),
            Err(ApprovalError::NotPending { .. })
        ));
    }

    #[test]
    fn approvers_parse_and_match() {
        let rules =
            ApprovalPolicy::parse_approvers(&["group:sre".into(), "sub:alice@*".into()]).unwrap();
        let p = ApprovalPolicy {
            required: 1,
            issuer: "corp".into(),
            approvers: rules,
            expires: Duration::from_secs(900),
            distinct: vec![],
            webhook: None,
        };
        let c = |v: Value| v.as_object().unwrap().clone();
        assert!(p.is_approver(
            "corp",
            &c(serde_json::json!({"sub": "x", "groups": ["dev", "sre"]}))
        ));
        assert!(p.is_approver("corp", &c(serde_json::json!({"sub": "alice@example.com"}))));
        assert!(!p.is_approver("ci", &c(serde_json::json!({"sub": "alice@example.com"}))));
        assert!(!p.is_approver("corp", &c(serde_json::json!({"sub": "mallory"}))));
        assert!(ApprovalPolicy::parse_approvers(&["nocolon".into()]).is_err());
    }
}
