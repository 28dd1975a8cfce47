//! The compliance evidence report: controls of NIST SP 800-53 rev. 5, ISO/IEC
//! 27001:2022 Annex A and PCI DSS v4.0, each mapped to live evidence from
//! this CA (policy, inventory, audit log, revocations, keys).
//!
//! A control's status is `pass` when the evidence gathered here supports it
//! and shows nothing to act on, `attention` when the evidence shows
//! something to act on or could not be gathered. Evidence supports a
//! control; it does not certify compliance, and the report says so.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::review::{self, human_secs, AccessReview, FindingKind};
use crate::ca::CertKind;
use crate::config::{CaKeyConfig, Config, KeyProtection};
use crate::inventory::{self, Inventory};
use crate::policy::Policy;
use crate::store::reports::{AuditSpan, DailyIssuance};
use crate::store::{Store, StoreError};

/// User certificates meant to live longer than this get attention: the
/// point of the CA is minutes-long credentials.
pub const USER_TTL_LIMIT_SECS: u64 = 3600;
/// CA keys older than this get attention (rotate yearly).
pub const CA_KEY_AGE_LIMIT_DAYS: u64 = 365;

/// Whether the audit hash chain was verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ChainStatus {
    /// This report did not verify the chain; the reason says why.
    NotChecked {
        /// Why, and how to check it.
        reason: String,
    },
    /// Every record links to the one before it.
    Verified {
        /// Records checked.
        records: u64,
        /// Signed checkpoints found.
        checkpoints: u64,
        /// Checkpoint signatures verified with the audit public key.
        signatures_verified: u64,
    },
    /// The chain does not verify.
    Broken {
        /// The first problem.
        detail: String,
    },
}

/// Facts about one role, from the policy in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleFacts {
    /// Role name.
    pub name: String,
    /// Owner.
    pub owner: String,
    /// Description.
    pub description: String,
    /// Issuer name.
    pub issuer: String,
    /// `user` or `host`.
    pub cert_type: String,
    /// Principals (user) or host names (host), as written.
    pub principals: Vec<String>,
    /// Max TTL (seconds).
    pub max_ttl: u64,
    /// Default TTL (seconds).
    pub default_ttl: u64,
    /// Extensions granted.
    pub extensions: Vec<String>,
    /// Claim rules (names).
    pub claims: Vec<String>,
    /// `source-address` restriction present.
    pub source_address: bool,
    /// `force-command` present.
    pub force_command: bool,
    /// The `source-address` networks, as CIDRs.
    pub source_addresses: Vec<String>,
    /// The token claim that supplies `source-address`, if any.
    pub source_address_claim: Option<String>,
    /// The forced command, if any.
    pub forced_command: Option<String>,
    /// `[[window]]`s in words (`mon-fri 01:00-03:00 Europe/Berlin`); empty:
    /// usable at any time.
    pub windows: Vec<String>,
    /// The `[approval]` rule; `None`: no approval needed.
    pub approval: Option<ApprovalFacts>,
    /// `rate_limit`: requests for the whole role.
    pub rate_limit: Option<RateFacts>,
    /// `identity_rate_limit`: requests per identity in this role.
    pub identity_rate_limit: Option<RateFacts>,
    /// `max_active_certs`: valid certificates one identity may hold at once.
    pub max_active_certs: Option<u32>,
    /// Subject key types accepted (OpenSSH names).
    pub key_types: Vec<String>,
    /// Smallest RSA key accepted in bits, when RSA keys are accepted.
    pub min_rsa_bits: Option<u32>,
}

/// A role's `[approval]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalFacts {
    /// Distinct approvals needed.
    pub required: u32,
    /// Issuer of the approvers' tokens.
    pub issuer: String,
    /// Who may approve (`claim:pattern`, any of).
    pub approvers: Vec<String>,
    /// How long a request waits, and an approval stays usable (seconds).
    pub expires_secs: u64,
    /// `requester_claim=approver_claim` pairs whose values must differ.
    pub distinct: Vec<String>,
}

/// A rate limit: `count` requests per `per_secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateFacts {
    /// Requests allowed in one period.
    pub count: u32,
    /// The period in seconds.
    pub per_secs: u64,
}

impl RateFacts {
    fn of(r: &crate::policy::limits::RateLimit) -> RateFacts {
        RateFacts {
            count: r.count,
            per_secs: r.per.as_secs(),
        }
    }
}

/// Facts about one trusted issuer, from the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuerFacts {
    /// Name.
    pub name: String,
    /// `iss` URL.
    pub url: String,
    /// Required audience.
    pub audience: String,
    /// Tokens are single use.
    pub replay_protection: bool,
    /// Static JWKS file instead of discovery.
    pub jwks_file: bool,
}

/// Facts about one CA key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaKeyFacts {
    /// `user` or `host`.
    pub ca: String,
    /// `file (unencrypted)`, `file (passphrase)` or `pkcs11`.
    pub protection: String,
    /// Days since the key file was written (files only).
    pub age_days: Option<u64>,
}

/// Everything the report shows, gathered once.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    /// When (unix seconds).
    pub generated_at: u64,
    /// The window in days.
    pub days: u64,
    /// Start of the window (unix seconds).
    pub window_start: u64,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Policy directory.
    pub policy_dir: PathBuf,
    /// Policy digest in force.
    pub policy_digest: String,
    /// Roles.
    pub roles: Vec<RoleFacts>,
    /// Trusted issuers.
    pub issuers: Vec<IssuerFacts>,
    /// `[[admin]]` rules.
    pub admin_rules: usize,
    /// HTTPS configured.
    pub tls: bool,
    /// `insecure_http` set.
    pub insecure_http: bool,
    /// CA keys.
    pub ca_keys: Vec<CaKeyFacts>,
    /// Identity inventory (stale window = report window).
    pub inventory: Inventory,
    /// Access review.
    pub review: AccessReview,
    /// Audit log size and span.
    pub audit: AuditSpan,
    /// Records per event in the window.
    pub events: Vec<(String, u64)>,
    /// Refusals per reason code in the window.
    pub denials: Vec<(String, u64)>,
    /// Issuance records in the window missing a required field.
    pub incomplete_issuance_records: u64,
    /// Revocations recorded in the window.
    pub revocations_in_window: u64,
    /// Revocations of certificates not yet expired.
    pub revocations_live: u64,
    /// Issuance per role and day in the window.
    pub daily: Vec<DailyIssuance>,
    /// Audit chain verification.
    pub chain: ChainStatus,
    /// Unix mode of the database file.
    pub db_mode: Option<u32>,
    /// Unix mode of the data directory.
    pub data_dir_mode: Option<u32>,
}

impl Evidence {
    /// Count of `event` in the window.
    pub fn event(&self, event: &str) -> u64 {
        self.events
            .iter()
            .find(|(e, _)| e == event)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }

    /// Refusals in the window.
    pub fn denied_total(&self) -> u64 {
        self.denials.iter().map(|(_, n)| n).sum()
    }

    /// Roles with a non-blank owner.
    pub fn roles_with_owner(&self) -> usize {
        self.roles
            .iter()
            .filter(|r| !r.owner.trim().is_empty())
            .count()
    }

    /// Disabled entries in force (identity, identity+role, role).
    pub fn disabled_entries(&self) -> usize {
        self.inventory
            .identities
            .iter()
            .map(|i| i.deactivations.len())
            .sum::<usize>()
            + self.inventory.disabled_roles.len()
    }
}

/// Pass or attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlStatus {
    /// The evidence supports the control and shows nothing to act on.
    Pass,
    /// Something to act on, or evidence this report could not gather.
    Attention,
}

impl ControlStatus {
    /// `pass` or `attention`.
    pub fn as_str(self) -> &'static str {
        match self {
            ControlStatus::Pass => "pass",
            ControlStatus::Attention => "attention",
        }
    }
}

/// One control with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Control {
    /// `NIST SP 800-53 r5`, `ISO/IEC 27001:2022` or `PCI DSS v4.0`.
    pub framework: &'static str,
    /// e.g. `AC-2`, `A.5.15`, `Req 7`.
    pub id: &'static str,
    /// The control's name.
    pub title: &'static str,
    /// What this CA shows for it.
    pub evidence: Vec<String>,
    /// What to act on (empty for pass).
    pub attention: Vec<String>,
    /// Pass or attention.
    pub status: ControlStatus,
}

/// The report: evidence and the controls it maps to.
#[derive(Debug, Clone, Serialize)]
pub struct ComplianceReport {
    /// The evidence.
    pub evidence: Evidence,
    /// The controls, in framework order.
    pub controls: Vec<Control>,
}

/// The sentence every rendering carries.
pub const DISCLAIMER: &str =
    "This report collects live evidence from this mayfly CA that supports \
the controls listed. It does not certify compliance with any framework: an assessor decides \
whether the evidence is sufficient, and controls outside the CA (host hardening, the identity \
providers, people and process) are not covered.";

fn file_mode(p: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

pub(crate) fn role_facts(policy: &Policy) -> Vec<RoleFacts> {
    policy
        .roles
        .values()
        .map(|r| RoleFacts {
            name: r.name.clone(),
            owner: r.owner.clone(),
            description: r.description.clone(),
            issuer: r.issuer.clone(),
            cert_type: r.cert_type.as_str().to_string(),
            principals: match r.cert_type {
                CertKind::User => r.principals.iter().map(|p| p.source.clone()).collect(),
                CertKind::Host => r.hostnames.iter().map(|p| p.source.clone()).collect(),
            },
            max_ttl: r.max_ttl.as_secs(),
            default_ttl: r.default_ttl.as_secs(),
            extensions: r
                .extensions
                .iter()
                .map(|e| e.as_str().to_string())
                .collect(),
            claims: r.claims.iter().map(|c| c.claim.clone()).collect(),
            source_address: !r.source_address.is_empty() || r.source_address_claim.is_some(),
            force_command: r.force_command.is_some(),
            source_addresses: r.source_address.iter().map(|n| n.to_string()).collect(),
            source_address_claim: r.source_address_claim.clone(),
            forced_command: r.force_command.clone(),
            windows: r.windows.iter().map(|w| w.to_string()).collect(),
            approval: r.approval.as_ref().map(|a| ApprovalFacts {
                required: a.required,
                issuer: a.issuer.clone(),
                approvers: a
                    .approvers
                    .iter()
                    .flat_map(|c| {
                        c.patterns
                            .iter()
                            .map(move |p| format!("{}:{}", c.claim, p.as_str()))
                    })
                    .collect(),
                expires_secs: a.expires.as_secs(),
                distinct: a
                    .distinct
                    .iter()
                    .map(|d| format!("{}={}", d.requester, d.approver))
                    .collect(),
            }),
            rate_limit: r.rate_limit.as_ref().map(RateFacts::of),
            identity_rate_limit: r.identity_rate_limit.as_ref().map(RateFacts::of),
            max_active_certs: r.max_active_certs,
            key_types: r.key_types.iter().map(|k| k.as_str().to_string()).collect(),
            min_rsa_bits: r
                .key_types
                .contains(&crate::policy::limits::KeyType::Rsa)
                .then_some(r.min_rsa_bits),
        })
        .collect()
}

/// Gathers the evidence from the config, the policy and the database.
pub async fn gather(
    cfg: &Config,
    policy: &Policy,
    store: &Store,
    days: u64,
    now: u64,
) -> Result<Evidence, StoreError> {
    let since_ms = inventory::window_start_ms(now, days);
    let inv = inventory::collect(store, policy, days, now).await?;
    let db = store.reports();
    let review = review::build(
        policy,
        &inv,
        &db.role_window_usage(since_ms).await?,
        &db.role_all_time().await?,
        &db.principals_granted(since_ms).await?,
        &crate::policy::history::appeared(&cfg.policy_dir, policy),
        days,
        now,
    );
    let protection = match &cfg.ca {
        CaKeyConfig::File {
            protection: KeyProtection::None,
            ..
        } => "file (unencrypted)",
        CaKeyConfig::File {
            protection: KeyProtection::Passphrase,
            ..
        } => "file (passphrase)",
        CaKeyConfig::Pkcs11(_) => "pkcs11",
    };
    let mut ca_keys = Vec::new();
    for (ca, base) in [
        ("user", crate::config::files::USER_CA_KEY),
        ("host", crate::config::files::HOST_CA_KEY),
    ] {
        // PKCS#11 keys are not stored: their age is not known.
        let created = match (&cfg.ca, store.keys().ca_keys(base).await?) {
            (CaKeyConfig::File { .. }, Ok(k)) => k.active.and_then(|a| a.created_at),
            _ => None,
        };
        ca_keys.push(CaKeyFacts {
            ca: ca.to_string(),
            protection: protection.to_string(),
            age_days: created.map(|t| now.saturating_sub(t) / 86_400),
        });
    }
    let live: u64 = db.scrape_gauges(now).await?.live_revocations;
    Ok(Evidence {
        generated_at: now,
        days,
        window_start: since_ms / 1000,
        data_dir: cfg.data_dir.clone(),
        policy_dir: cfg.policy_dir.clone(),
        policy_digest: policy.digest.clone(),
        roles: role_facts(policy),
        issuers: cfg
            .issuers
            .iter()
            .map(|i| IssuerFacts {
                name: i.name.clone(),
                url: i.url.clone(),
                audience: i.audience.clone(),
                replay_protection: i.replay_protection,
                jwks_file: i.jwks_file.is_some(),
            })
            .collect(),
        admin_rules: cfg.admins.len(),
        tls: cfg.tls.is_some(),
        insecure_http: cfg.insecure_http,
        ca_keys,
        inventory: inv,
        review,
        audit: db.audit_span().await?,
        events: db.event_counts(since_ms).await?,
        denials: db.denials_by_reason(since_ms).await?,
        incomplete_issuance_records: db.incomplete_issuance_records(since_ms).await?,
        revocations_in_window: db.revocations_since(since_ms).await?,
        revocations_live: live,
        daily: db.daily_issuance(since_ms).await?,
        chain: chain_status(cfg, store).await,
        db_mode: file_mode(&cfg.data_dir.join(crate::config::files::DATABASE)),
        data_dir_mode: file_mode(&cfg.data_dir),
    })
}

/// Runs the same verification as `mayfly audit verify`: every record
/// against the hash chain, and every checkpoint signature against
/// `data_dir/audit_key.pub` when that file exists.
async fn chain_status(cfg: &Config, store: &Store) -> ChainStatus {
    use crate::audit::checkpoint::{AuditPublicKey, PUB_FILE};
    let key_path = cfg.data_dir.join(PUB_FILE);
    let key = if key_path.exists() {
        match AuditPublicKey::read(&key_path) {
            Ok(k) => Some(k),
            Err(e) => {
                return ChainStatus::NotChecked {
                    reason: format!(
                        "not checked: the audit public key {} cannot be read ({e})",
                        key_path.display()
                    ),
                }
            }
        }
    } else {
        None
    };
    let subject = format!(
        "database {}",
        cfg.data_dir.join(crate::config::files::DATABASE).display()
    );
    match crate::evidence::verify::verify_db(store.audit(), key.as_ref(), &subject).await {
        Ok(r) if r.is_intact() => ChainStatus::Verified {
            records: r.records,
            checkpoints: r.checkpoints,
            signatures_verified: r.checkpoints_signed_ok,
        },
        Ok(r) => ChainStatus::Broken {
            detail: format!(
                "{} problem(s); first: {}",
                r.problem_count,
                r.problems
                    .first()
                    .map(|p| p.to_string())
                    .unwrap_or_default()
            ),
        },
        Err(e) => ChainStatus::NotChecked {
            reason: format!("not checked: the verification could not read the log ({e})"),
        },
    }
}

/// Token-verification refusals (who could not prove an identity).
const TOKEN_CODES: [&str; 16] = [
    "missing_token",
    "malformed_authorization",
    "malformed_token",
    "token_too_large",
    "algorithm_not_allowed",
    "unknown_issuer",
    "unknown_key",
    "algorithm_mismatch",
    "bad_signature",
    "wrong_audience",
    "token_expired",
    "token_not_yet_valid",
    "token_issued_in_future",
    "missing_claim",
    "token_replayed",
    "unsupported_critical_header",
];

fn identities_word(n: u64) -> &'static str {
    if n == 1 {
        "identity"
    } else {
        "identities"
    }
}

fn control(
    framework: &'static str,
    id: &'static str,
    title: &'static str,
    evidence: Vec<String>,
    attention: Vec<String>,
) -> Control {
    let status = if attention.is_empty() {
        ControlStatus::Pass
    } else {
        ControlStatus::Attention
    };
    Control {
        framework,
        id,
        title,
        evidence,
        attention,
        status,
    }
}

const NIST: &str = "NIST SP 800-53 r5";
const ISO: &str = "ISO/IEC 27001:2022";
const PCI: &str = "PCI DSS v4.0";

/// Maps the evidence to the controls.
pub fn controls(e: &Evidence) -> Vec<Control> {
    let inv = &e.inventory;
    let c = &inv.counts;
    let days = e.days;
    let n_roles = e.roles.len();
    let owners = e.roles_with_owner();
    let stale = c.stale;
    let count = |k: FindingKind| e.review.of(k).count();
    let never_used = count(FindingKind::RoleNeverUsed);
    let unused = count(FindingKind::RoleUnused);
    let principals_unused = count(FindingKind::PrincipalUnused);
    let ttl_headroom = count(FindingKind::TtlHeadroom);
    let root_roles = count(FindingKind::RootPrincipal);
    let widening = count(FindingKind::WideningExtension);
    let long_user: Vec<String> = e
        .roles
        .iter()
        .filter(|r| r.cert_type == "user" && r.max_ttl > USER_TTL_LIMIT_SECS)
        .map(|r| format!("{} ({})", r.name, human_secs(r.max_ttl)))
        .collect();
    let issued = e.event("cert_issued");
    let denied = e.denied_total();
    let token_refusals: u64 = e
        .denials
        .iter()
        .filter(|(code, _)| TOKEN_CODES.contains(&code.as_str()))
        .map(|(_, n)| n)
        .sum();
    let no_replay: Vec<&str> = e
        .issuers
        .iter()
        .filter(|i| !i.replay_protection)
        .map(|i| i.name.as_str())
        .collect();
    let unencrypted = e
        .ca_keys
        .iter()
        .any(|k| k.protection == "file (unencrypted)");
    let old_keys: Vec<String> = e
        .ca_keys
        .iter()
        .filter(|k| k.age_days.is_some_and(|a| a > CA_KEY_AGE_LIMIT_DAYS))
        .map(|k| format!("{} CA key is {} days old", k.ca, k.age_days.unwrap_or(0)))
        .collect();
    let chain_text = match &e.chain {
        ChainStatus::NotChecked { reason } => format!("audit hash chain: {reason}"),
        ChainStatus::Verified {
            records,
            checkpoints,
            signatures_verified,
        } => format!(
            "audit hash chain verified over {records} records (as `mayfly audit verify`); {checkpoints} signed checkpoint(s), {signatures_verified} signature(s) verified"
        ),
        ChainStatus::Broken { detail } => format!("audit hash chain BROKEN: {detail}"),
    };
    let chain_attention: Vec<String> = match &e.chain {
        ChainStatus::Verified {
            records,
            signatures_verified,
            ..
        } if *records > 0 && *signatures_verified == 0 => vec![
            "no signed checkpoint verified yet: the chain alone does not stop someone who can write the database from rewriting it".into(),
        ],
        ChainStatus::Verified { .. } => vec![],
        ChainStatus::NotChecked { .. } => {
            vec!["the audit hash chain was not verified by this report".into()]
        }
        ChainStatus::Broken { detail } => vec![format!("the audit hash chain is broken: {detail}")],
    };
    let perm_attention: Vec<String> = [
        e.db_mode
            .filter(|m| m & 0o077 != 0)
            .map(|m| format!("the database file is mode {m:04o}; make it 0600")),
        e.data_dir_mode
            .filter(|m| m & 0o077 != 0)
            .map(|m| format!("the data directory is mode {m:04o}; make it 0700")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let modes = format!(
        "database mode {}, data directory mode {}",
        e.db_mode
            .map(|m| format!("{m:04o}"))
            .unwrap_or_else(|| "unknown".into()),
        e.data_dir_mode
            .map(|m| format!("{m:04o}"))
            .unwrap_or_else(|| "unknown".into())
    );
    let oldest = e
        .audit
        .first_ms
        .map(|t| crate::time::utc_minute(t / 1000))
        .unwrap_or_else(|| "-".into());
    let log_days = e
        .audit
        .first_ms
        .map(|t| e.generated_at.saturating_sub(t / 1000) / 86_400)
        .unwrap_or(0);
    let identities = format!(
        "{} identities inventoried: {} active, {} disabled, {} stale (no certificate in {days} days), {} only refused (never got a certificate)",
        inv.identities.len(),
        c.active,
        c.disabled,
        stale,
        c.only_refused
    );
    let owners_line = format!("{owners}/{n_roles} roles name an owner");
    let owner_attention: Vec<String> = (owners < n_roles)
        .then(|| format!("{} role(s) without an owner", n_roles - owners))
        .into_iter()
        .collect();
    let stale_attention: Vec<String> = (stale > 0)
        .then(|| {
            format!(
                "{stale} stale {} to disable or confirm",
                identities_word(stale)
            )
        })
        .into_iter()
        .collect();
    let ttls = e
        .roles
        .iter()
        .map(|r| format!("{} {}", r.name, human_secs(r.max_ttl)))
        .collect::<Vec<_>>()
        .join(", ");
    let ext = {
        let v: Vec<String> = e
            .roles
            .iter()
            .filter(|r| !r.extensions.is_empty())
            .map(|r| format!("{}: {}", r.name, r.extensions.join(" ")))
            .collect();
        if v.is_empty() {
            "no role grants an extension".to_string()
        } else {
            format!("extensions granted: {}", v.join("; "))
        }
    };
    let restricted = |f: &dyn Fn(&RoleFacts) -> bool| e.roles.iter().filter(|r| f(r)).count();
    let restrictions_line = format!(
        "role restrictions (details in the roles table): {} with time windows, {} needing approval, {} with rate limits or a cap on valid certificates, {} accepting fewer key types than mayfly does",
        restricted(&|r| !r.windows.is_empty()),
        restricted(&|r| r.approval.is_some()),
        restricted(&|r| {
            r.rate_limit.is_some() || r.identity_rate_limit.is_some() || r.max_active_certs.is_some()
        }),
        restricted(&|r| {
            r.key_types.len() < crate::policy::limits::KeyType::ALL.len()
                || r.min_rsa_bits
                    .is_some_and(|b| b > crate::policy::limits::RSA_FLOOR_BITS)
        }),
    );
    let least_priv_attention: Vec<String> = [
        (principals_unused > 0)
            .then(|| format!("{principals_unused} granted principal(s) unused in {days} days")),
        (ttl_headroom > 0)
            .then(|| format!("{ttl_headroom} role(s) with max_ttl far above the TTLs used")),
        (root_roles > 0).then(|| format!("{root_roles} role(s) grant root")),
        (widening > 0)
            .then(|| format!("{widening} forwarding/user-rc extension grant(s) to confirm")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let review_attention: Vec<String> = [
        (stale > 0).then(|| format!("{stale} stale {}", identities_word(stale))),
        (unused > 0).then(|| format!("{unused} role(s) unused for {days} days")),
        (never_used > 0).then(|| format!("{never_used} role(s) never used")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let revocations = format!(
        "{} revocation(s) in the window, {} live in the KRL; {} deactivation(s) in force",
        e.revocations_in_window,
        e.revocations_live,
        e.disabled_entries()
    );
    let issuers_line = if e.issuers.is_empty() {
        "no issuer configured: no token is accepted".to_string()
    } else {
        format!(
            "trusted issuers: {}",
            e.issuers
                .iter()
                .map(|i| format!(
                    "{} ({}, aud {}, single-use tokens {})",
                    i.name,
                    i.url,
                    i.audience,
                    if i.replay_protection { "on" } else { "off" }
                ))
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    let auth_attention: Vec<String> = [
        (!no_replay.is_empty()).then(|| {
            format!(
                "replay protection is off for issuer(s) {}",
                no_replay.join(", ")
            )
        }),
        (e.incomplete_issuance_records > 0).then(|| {
            format!(
                "{} issuance record(s) lack identity or key fields",
                e.incomplete_issuance_records
            )
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    let keys_line = e
        .ca_keys
        .iter()
        .map(|k| {
            format!(
                "{} CA key: {}{}",
                k.ca,
                k.protection,
                k.age_days
                    .map(|a| format!(", {a} days old"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let mut authn_attention: Vec<String> = Vec::new();
    if !long_user.is_empty() {
        authn_attention.push(format!(
            "user roles allowing certificates over 1h: {}",
            long_user.join(", ")
        ));
    }
    if unencrypted {
        authn_attention.push(
            "CA keys are unencrypted files; use key_protection = \"passphrase\" or PKCS#11".into(),
        );
    }
    authn_attention.extend(old_keys.iter().cloned());
    if e.insecure_http {
        authn_attention.push("insecure_http is set: tokens may cross the network in clear".into());
    }
    let events_line = if e.events.is_empty() {
        format!("no audit records in the last {days} days")
    } else {
        format!(
            "audit records in the window by event: {}",
            e.events
                .iter()
                .map(|(ev, n)| format!("{ev} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let denials_line = if e.denials.is_empty() {
        "no refusals in the window".to_string()
    } else {
        format!(
            "refusals by reason: {}",
            e.denials
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let span = format!(
        "{} audit records in total (highest sequence {}), oldest {oldest} ({log_days} days ago)",
        e.audit.records, e.audit.max_seq
    );
    let content = format!(
        "every issuance record holds time, request id, client address, issuer, subject, role, serial, key id, principals, validity, public key fingerprint, token replay id and policy digest; {} issuance record(s) in the window lack one of them",
        e.incomplete_issuance_records
    );
    let incomplete_attention: Vec<String> = (e.incomplete_issuance_records > 0)
        .then(|| {
            format!(
                "{} issuance record(s) are incomplete",
                e.incomplete_issuance_records
            )
        })
        .into_iter()
        .collect();
    let retention_attention: Vec<String> = (log_days < 365 && e.audit.first_ms.is_some())
        .then(|| {
            format!("the audit log covers {log_days} days; PCI DSS 10.5.1 asks for 12 months of history (check exports/backups)")
        })
        .into_iter()
        .collect();
    let mut au9 = chain_attention.clone();
    au9.extend(perm_attention.iter().cloned());
    let mut req10 = chain_attention.clone();
    req10.extend(retention_attention.iter().cloned());
    req10.extend(incomplete_attention.iter().cloned());
    let root_line = if root_roles == 0 {
        "no role grants the root principal".to_string()
    } else {
        format!("{root_roles} role(s) grant the root principal")
    };
    let admins = if e.admin_rules == 0 {
        "no [[admin]] rule: the admin API refuses everyone; administration happens on the CA host and is audited with the operator's login".to_string()
    } else {
        format!(
            "{} [[admin]] rule(s); every admin call and refusal is audited with the admin's identity",
            e.admin_rules
        )
    };
    let mut priv_attention: Vec<String> = Vec::new();
    if root_roles > 0 {
        priv_attention.push(format!("{root_roles} role(s) grant root"));
    }
    if widening > 0 {
        priv_attention.push(format!("{widening} forwarding/user-rc extension grant(s)"));
    }
    let mut ac2_attention = owner_attention.clone();
    ac2_attention.extend(stale_attention.iter().cloned());
    let mut req8_attention = auth_attention.clone();
    req8_attention.extend(stale_attention.iter().cloned());
    let mut req7_attention = least_priv_attention.clone();
    req7_attention.extend(review_attention.iter().cloned());
    let mut a518 = review_attention.clone();
    a518.extend(owner_attention.iter().cloned());
    let policy_line = format!(
        "{n_roles} roles as files in {} (policy digest {}); a request matches a role only if every claim rule matches, otherwise it is refused",
        e.policy_dir.display(),
        review::short_digest(&e.policy_digest)
    );
    let issued_line = format!(
        "{issued} certificate(s) issued and {denied} request(s) refused in the last {days} days, each with an audit record"
    );
    vec![
        control(NIST, "AC-2", "Account management", vec![identities.clone(), owners_line.clone(), revocations.clone()], ac2_attention.clone()),
        control(NIST, "AC-6", "Least privilege", vec![format!("max TTL per role: {ttls}"), ext.clone(), root_line.clone(), restrictions_line.clone()], least_priv_attention.clone()),
        control(NIST, "IA-2", "Identification and authentication", vec![issuers_line.clone(), format!("{token_refusals} request(s) refused at token verification in the window"), "every certificate's key id names role, issuer and subject; sshd logs it at login".into()], auth_attention.clone()),
        control(NIST, "IA-5", "Authenticator management", vec![format!("max TTL per role: {ttls}"), keys_line.clone(), revocations.clone()], authn_attention.clone()),
        control(NIST, "AU-2", "Event logging", vec![events_line.clone(), "logged events: issuance, refusal, revocation, deactivation, re-activation, refused admin call, CA key rotation".into()], vec![]),
        control(NIST, "AU-3", "Content of audit records", vec![content.clone()], incomplete_attention.clone()),
        control(NIST, "AU-9", "Protection of audit information", vec![chain_text.clone(), modes.clone()], au9),
        control(NIST, "AU-12", "Audit record generation", vec![issued_line.clone(), "a certificate is returned only after its audit record is committed (fail closed)".into()], incomplete_attention.clone()),
        control(ISO, "A.5.15", "Access control", vec![policy_line.clone(), owners_line.clone()], owner_attention.clone()),
        control(ISO, "A.5.16", "Identity management", vec![identities.clone()], stale_attention.clone()),
        control(ISO, "A.5.17", "Authentication information", vec!["certificates are short-lived and minted for a fresh key per request; no long-lived secret is handed out".into(), format!("max TTL per role: {ttls}"), keys_line.clone()], authn_attention.clone()),
        control(ISO, "A.5.18", "Access rights", vec![owners_line.clone(), format!("access review: {} finding(s)", e.review.findings.len()), revocations.clone()], a518),
        control(ISO, "A.8.2", "Privileged access rights", vec![admins.clone(), root_line.clone(), ext.clone()], priv_attention),
        control(ISO, "A.8.15", "Logging", vec![span.clone(), events_line.clone(), chain_text.clone()], chain_attention.clone()),
        control(PCI, "Req 7", "Restrict access by business need to know", vec![format!("max TTL per role: {ttls}"), ext, restrictions_line, format!("access review: {} finding(s)", e.review.findings.len())], req7_attention),
        control(PCI, "Req 8", "Identify users and authenticate access", vec![identities, issuers_line, denials_line], req8_attention),
        control(PCI, "Req 10", "Log and monitor all access", vec![span, issued_line, chain_text], req10),
    ]
}

/// Builds the whole report.
pub fn build(evidence: Evidence) -> ComplianceReport {
    let controls = controls(&evidence);
    ComplianceReport { evidence, controls }
}
