//! The `[approval]` table of a role: who approves, how many approvals,
//! how long a request waits, and which claims must differ between the
//! requester and each approver. The workflow that uses it (requests,
//! votes, redemption) is [`crate::approval`].

use std::time::Duration;

use serde_json::{Map, Value};

use super::ClaimRule;

/// The `[approval]` table of a role.
#[derive(Debug, Clone)]
pub struct ApprovalPolicy {
    /// Distinct approvals needed.
    pub required: u32,
    /// `[[issuer]]` name whose tokens approvers use.
    pub issuer: String,
    /// Who may approve: any one rule matching is enough (each is
    /// `claim:pattern`, e.g. `groups:sre`, `sub:alice@example.com`;
    /// `group:x` means `groups:x`).
    pub approvers: Vec<ClaimRule>,
    /// How long a request may wait, and how long an approval stays usable.
    pub expires: Duration,
    /// Pairs of (requester claim, approver claim) whose values must differ:
    /// `distinct = ["actor=preferred_username"]` keeps the person who
    /// triggered a job from approving it from their own account.
    pub distinct: Vec<DistinctClaims>,
    /// Where new requests of this role are announced to approvers
    /// (instead of mayfly.toml's `[approval_webhook] url`).
    pub webhook: Option<url::Url>,
}

/// A requester claim that an approver's claim must not equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistinctClaims {
    /// Claim of the bot's token (e.g. GitHub's `actor`).
    pub requester: String,
    /// Claim of the approver's token (e.g. `preferred_username`).
    pub approver: String,
}

/// Longest an approval request may stay open.
pub const MAX_APPROVAL_EXPIRY: Duration = Duration::from_secs(24 * 3600);

impl ApprovalPolicy {
    /// Parses `approvers` entries (`claim:pattern`).
    pub fn parse_approvers(entries: &[String]) -> Result<Vec<ClaimRule>, String> {
        entries
            .iter()
            .map(|e| {
                let (claim, pattern) = e.split_once(':').ok_or_else(|| {
                    format!("approver {e:?} must be claim:value, e.g. \"groups:sre\" or \"sub:alice@example.com\"")
                })?;
                let claim = if claim == "group" { "groups" } else { claim };
                if claim.is_empty() || pattern.is_empty() {
                    return Err(format!("approver {e:?} must be claim:value"));
                }
                Ok(ClaimRule {
                    claim: claim.to_string(),
                    patterns: vec![crate::policy::Pattern::new(pattern)],
                })
            })
            .collect()
    }

    /// Parses `distinct` entries (`requester_claim=approver_claim`).
    pub fn parse_distinct(entries: &[String]) -> Result<Vec<DistinctClaims>, String> {
        entries
            .iter()
            .map(|e| {
                let (r, a) = e.split_once('=').ok_or_else(|| {
                    format!("approval.distinct entry {e:?} must be requester_claim=approver_claim, e.g. \"actor=preferred_username\"")
                })?;
                let ok = |c: &str| {
                    !c.is_empty()
                        && c.len() <= 128
                        && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
                };
                if !ok(r.trim()) || !ok(a.trim()) {
                    return Err(format!(
                        "approval.distinct entry {e:?}: both sides must be claim names"
                    ));
                }
                Ok(DistinctClaims {
                    requester: r.trim().to_string(),
                    approver: a.trim().to_string(),
                })
            })
            .collect()
    }

    /// The requester claim values that `distinct` compares approvers
    /// against, taken from the bot's verified claims. A missing or
    /// non-string claim is an error: without it mayfly could not tell the
    /// requester from an approver, so the request is refused (fail closed).
    pub fn requester_claims(
        &self,
        claims: &Map<String, Value>,
    ) -> Result<std::collections::BTreeMap<String, String>, String> {
        let mut out = std::collections::BTreeMap::new();
        for d in &self.distinct {
            match claims.get(&d.requester) {
                Some(Value::String(v)) if !v.is_empty() => {
                    out.insert(d.requester.clone(), v.clone());
                }
                Some(Value::Number(n)) => {
                    out.insert(d.requester.clone(), n.to_string());
                }
                _ => {
                    return Err(format!(
                        "the role's approval.distinct needs claim {:?} in the requester's token to tell the requester from approvers; it is missing or not a string",
                        d.requester
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Parses a webhook URL: https, or plain http to loopback only (the
    /// notice names who asks for what).
    pub fn parse_webhook(s: &str) -> Result<url::Url, String> {
        crate::config::parse_webhook_url(s)
    }

    /// Whether an identity from `issuer` with `claims` may approve.
    pub fn is_approver(&self, issuer: &str, claims: &Map<String, Value>) -> bool {
        issuer == self.issuer
            && self
                .approvers
                .iter()
                .any(|r| super::match_claims(std::slice::from_ref(r), claims).is_ok())
    }
}
