//! Audit records: one per issuance and one per refusal, stored durably
//! before any certificate is returned, in an append-only, hash-chained log.
//!
//! * [`chain`]: the canonical stored form of a record
//!   ([`chain::stored_form`]), its encoding, the SHA-256 chain and the
//!   walker (pure).
//! * [`claims`]: the job claims of a token recorded in its records (pure).
//! * [`checkpoint`]: the audit key and signed checkpoints of the chain head.
//! * [`verify`]: the verdict of `mayfly audit verify` over a stored log or
//!   an export, fed record by record (pure).
//! * [`export`]: the ECS-like JSON Lines schema (`docs/audit-schema.md`).
//! * [`search`]: the query of `mayfly audit search` and its reference
//!   semantics ([`search::AuditQuery::matches`]).
//! * the `mayfly audit ...` subcommands are the binary's (`src/cli/audit.rs`).
//!
//! This layer knows no store: a store turns records into their stored form
//! with [`chain::stored_form`] and chains them with [`chain::record_hash`]
//! inside the write transaction that inserts them, so every writer of the
//! log (the server, `mayfly revoke` on the CA host) extends the same chain,
//! and a second backend cannot drift from the first. Reading the log back
//! (export, verify, live streaming) is the evidence layer above the store
//! (`crate::evidence`).

pub mod chain;
pub mod checkpoint;
pub mod claims;
pub mod export;
pub mod sampling;
pub mod search;
pub mod syslog;
pub mod verify;

use serde::Serialize;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A user certificate was issued.
    CertIssued,
    /// A certificate request was refused (token, input or policy).
    CertDenied,
    /// A certificate was revoked.
    CertRevoked,
    /// An identity or role was disabled.
    Disabled,
    /// An identity or role was re-enabled.
    Enabled,
    /// An admin API call was refused.
    AdminDenied,
    /// A CA key rotation step (stage, activate, retire).
    CaKeyRotated,
    /// A new policy version took effect.
    PolicyReloaded,
    /// A policy change was invalid and rejected.
    PolicyRejected,
    /// A role needing approval got a pending approval request.
    ApprovalRequested,
    /// An approver approved.
    ApprovalGranted,
    /// An approver denied.
    ApprovalDenied,
    /// An approved request was redeemed for a certificate.
    ApprovalUsed,
    /// An approval vote was refused (not an approver, self-approval,
    /// already voted, decided or expired).
    ApprovalVoteRefused,
    /// The requester (or an administrator) cancelled an approval request.
    ApprovalCancelled,
    /// The approvers' webhook took the notice of a new approval request.
    ApprovalWebhookDelivered,
    /// The approvers' webhook did not take the notice after every retry.
    ApprovalWebhookFailed,
    /// Refusals before a token was verified, counted instead of recorded
    /// one by one once a window's sample is full.
    RefusalsSummarized,
}

impl EventKind {
    /// Every event, for validating names (`audit search --event`).
    pub const ALL: [EventKind; 18] = [
        EventKind::CertIssued,
        EventKind::CertDenied,
        EventKind::CertRevoked,
        EventKind::Disabled,
        EventKind::Enabled,
        EventKind::AdminDenied,
        EventKind::CaKeyRotated,
        EventKind::PolicyReloaded,
        EventKind::PolicyRejected,
        EventKind::ApprovalRequested,
        EventKind::ApprovalGranted,
        EventKind::ApprovalDenied,
        EventKind::ApprovalUsed,
        EventKind::ApprovalVoteRefused,
        EventKind::ApprovalCancelled,
        EventKind::ApprovalWebhookDelivered,
        EventKind::ApprovalWebhookFailed,
        EventKind::RefusalsSummarized,
    ];

    /// The event with stable name `s`.
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// The event named `s`, or why there is none, listing every name (for
    /// a filter a person typed: `audit search --event`, the admin API, the
    /// console).
    pub fn parse_named(s: &str) -> Result<EventKind, String> {
        EventKind::parse(s).ok_or_else(|| {
            let names: Vec<&str> = EventKind::ALL.iter().map(|e| e.as_str()).collect();
            format!("{s:?} is not an event; use one of: {}", names.join(", "))
        })
    }

    /// Stable name stored and exported.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::CertIssued => "cert_issued",
            EventKind::CertDenied => "cert_denied",
            EventKind::CertRevoked => "cert_revoked",
            EventKind::Disabled => "disabled",
            EventKind::Enabled => "enabled",
            EventKind::AdminDenied => "admin_denied",
            EventKind::CaKeyRotated => "ca_key_rotated",
            EventKind::PolicyReloaded => "policy_reloaded",
            EventKind::PolicyRejected => "policy_rejected",
            EventKind::ApprovalRequested => "approval_requested",
            EventKind::ApprovalGranted => "approval_granted",
            EventKind::ApprovalDenied => "approval_denied",
            EventKind::ApprovalUsed => "approval_used",
            EventKind::ApprovalVoteRefused => "approval_vote_refused",
            EventKind::ApprovalCancelled => "approval_cancelled",
            EventKind::ApprovalWebhookDelivered => "approval_webhook_delivered",
            EventKind::ApprovalWebhookFailed => "approval_webhook_failed",
            EventKind::RefusalsSummarized => "refusals_summarized",
        }
    }
}

/// One audit record. Holds no token and no key material: tokens appear
/// only as their replay id (`issuer:jti` or a hash), keys as fingerprints.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// Unix milliseconds.
    pub time_ms: u64,
    /// What happened.
    pub event: EventKind,
    /// The request id returned to the client.
    pub request_id: String,
    /// Client socket address.
    pub client_addr: Option<String>,
    /// Issuer name, once the token named a trusted one.
    pub issuer: Option<String>,
    /// Token subject, once verified.
    pub subject: Option<String>,
    /// Requested role.
    pub role: Option<String>,
    /// Stable code of the refusal (e.g. `token_expired`, `claim_mismatch`).
    pub reason_code: Option<String>,
    /// Human reason of the refusal, naming the failed check or rule.
    pub reason: Option<String>,
    /// Certificate serial.
    pub serial: Option<u64>,
    /// Certificate key id.
    pub key_id: Option<String>,
    /// Granted principals.
    pub principals: Vec<String>,
    /// Certificate validity start (unix seconds).
    pub valid_after: Option<u64>,
    /// Certificate validity end (unix seconds).
    pub valid_before: Option<u64>,
    /// `SHA256:` fingerprint of the certified public key.
    pub key_fingerprint: Option<String>,
    /// Replay id of the token used.
    pub token_id: Option<String>,
    /// When that token expires (unix seconds), for restoring the replay cache.
    pub token_exp: Option<u64>,
    /// Digest of the policy version that decided.
    pub policy_digest: Option<String>,
    /// `user` or `host` for certificate events.
    pub cert_type: Option<String>,
    /// OpenSSH line of the CA key that signed (certificate events).
    pub ca_key: Option<String>,
    /// Who performed an administrative action (`cli:<user>` or `admin:<issuer>:<sub>`).
    pub actor: Option<String>,
    /// The job behind the token: the issuer's `audit_claims` it carries,
    /// bounded ([`claims`]).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub claims: std::collections::BTreeMap<String, String>,
}

impl AuditRecord {
    /// An empty record of `event` at `time_ms`.
    pub fn new(event: EventKind, time_ms: u64, request_id: &str) -> AuditRecord {
        AuditRecord {
            time_ms,
            event,
            request_id: request_id.to_string(),
            client_addr: None,
            issuer: None,
            subject: None,
            role: None,
            reason_code: None,
            reason: None,
            serial: None,
            key_id: None,
            principals: Vec::new(),
            valid_after: None,
            valid_before: None,
            key_fingerprint: None,
            token_id: None,
            token_exp: None,
            policy_digest: None,
            cert_type: None,
            ca_key: None,
            actor: None,
            claims: std::collections::BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod event_name_tests {
    use super::EventKind;

    #[test]
    fn every_event_parses_from_its_name_and_typos_do_not() {
        // Exhaustive, so a new variant stops this compiling until it is in ALL.
        fn listed(e: EventKind) -> bool {
            match e {
                EventKind::CertIssued
                | EventKind::CertDenied
                | EventKind::CertRevoked
                | EventKind::Disabled
                | EventKind::Enabled
                | EventKind::AdminDenied
                | EventKind::CaKeyRotated
                | EventKind::PolicyReloaded
                | EventKind::PolicyRejected
                | EventKind::ApprovalRequested
                | EventKind::ApprovalGranted
                | EventKind::ApprovalDenied
                | EventKind::ApprovalUsed
                | EventKind::ApprovalVoteRefused
                | EventKind::ApprovalCancelled
                | EventKind::ApprovalWebhookDelivered
                | EventKind::ApprovalWebhookFailed
                | EventKind::RefusalsSummarized => EventKind::ALL.contains(&e),
            }
        }
        for e in EventKind::ALL {
            assert!(listed(e));
            assert_eq!(EventKind::parse(e.as_str()), Some(e));
        }
        assert_eq!(EventKind::parse("cert_issue"), None);
    }
}
