//! The identity inventory: every non-human identity (issuer + token
//! subject) the CA has seen, what it asked for and got, who owns those
//! roles, and whether it is active, disabled, stale or only refused.
//!
//! Built from the audit log (requests that got as far as a verified token)
//! and the `disabled` table; owners come from the policy in force. The
//! assembly ([`build`]) is pure, so tests control the clock; [`load`] is
//! the I/O edge for the CLI (`mayfly identity list`), and the admin API
//! (`GET /v1/identities`) calls [`collect`].

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;
use crate::policy::Policy;
use crate::store::reports::{IdentityRoleUsage, LastDenialRow};
use crate::store::{DisableTarget, DisabledEntry, OpenMode, Store, StoreConfig, StoreError};
use crate::time::utc_minute;

/// Days without a certificate after which an identity or role is stale.
pub const DEFAULT_STALE_DAYS: u64 = 30;

/// Longest stale window accepted (100 years); larger values are clamped.
const MAX_STALE_DAYS: u64 = 36_500;

/// Why an inventory could not be built.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The server config could not be read.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The policy directory is invalid.
    #[error("policy in {dir} is invalid:\n{errors}")]
    Policy {
        /// The policy directory.
        dir: std::path::PathBuf,
        /// One line per problem.
        errors: String,
    },
    /// There is no database yet.
    #[error("no database at {0}; is --config the CA's config and has the CA run once?")]
    NoDatabase(std::path::PathBuf),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether an identity (or one of its roles) may get certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Got a certificate within the stale window and is not disabled.
    Active,
    /// Disabled: by identity, by identity and role, or the whole role.
    Disabled,
    /// Not disabled, but no certificate within the stale window.
    Stale,
    /// Not disabled, never got a certificate, and every request it made
    /// was refused: not an identity that went quiet (stale) but one that
    /// never had access (a misconfigured bot, or someone trying).
    OnlyRefused,
}

impl Status {
    /// `active`, `disabled`, `stale` or `only_refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Disabled => "disabled",
            Status::Stale => "stale",
            Status::OnlyRefused => "only_refused",
        }
    }
}

/// What a deactivation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisabledScope {
    /// The identity in every role.
    Identity,
    /// The identity in one role.
    IdentityRole,
    /// A role, for every identity.
    Role,
}

/// One deactivation in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Deactivation {
    /// What it covers.
    pub scope: DisabledScope,
    /// The role, unless the scope is the whole identity.
    pub role: Option<String>,
    /// Since when (unix seconds).
    pub since: u64,
    /// Why.
    pub reason: String,
    /// Who.
    pub actor: String,
}

impl Deactivation {
    fn from_entry(e: &DisabledEntry) -> Deactivation {
        let scope = match &e.key {
            DisableTarget::Role(_) => DisabledScope::Role,
            DisableTarget::Identity { role: None, .. } => DisabledScope::Identity,
            DisableTarget::Identity { role: Some(_), .. } => DisabledScope::IdentityRole,
        };
        Deactivation {
            scope,
            role: e.key.role().map(str::to_string),
            since: e.time_ms / 1000,
            reason: e.reason.clone(),
            actor: e.actor.clone(),
        }
    }
}

/// One identity's use of one role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RoleUse {
    /// Role name as requested.
    pub role: String,
    /// The role's owner in the policy in force (`None`: no such role now).
    pub owner: Option<String>,
    /// Whether the role exists in the policy in force.
    pub in_policy: bool,
    /// Requests for this role that got past token verification.
    pub requested: u64,
    /// Certificates issued.
    pub issued: u64,
    /// Requests refused.
    pub denied: u64,
    /// First request (unix seconds; `None` if only a deactivation names it).
    pub first_seen: Option<u64>,
    /// Last request (unix seconds).
    pub last_seen: Option<u64>,
    /// Last certificate (unix seconds).
    pub last_issued: Option<u64>,
    /// Active, disabled or stale in this role.
    pub status: Status,
    /// The deactivation that blocks this role, if any.
    pub disabled_by: Option<Deactivation>,
}

/// The latest refusal of an identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LastDenial {
    /// When (unix seconds).
    pub time: u64,
    /// Stable reason code, e.g. `claim_mismatch`.
    pub reason_code: String,
    /// The role it asked for.
    pub role: String,
}

/// A non-human identity: one subject of one issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Identity {
    /// Issuer name (`[[issuer]]` in the config).
    pub issuer: String,
    /// Token subject.
    pub subject: String,
    /// Active, disabled or stale.
    pub status: Status,
    /// First request (unix seconds).
    pub first_seen: Option<u64>,
    /// Last request (unix seconds).
    pub last_seen: Option<u64>,
    /// Last certificate (unix seconds).
    pub last_issued: Option<u64>,
    /// Certificates issued, all roles.
    pub certs_issued: u64,
    /// Requests refused, all roles.
    pub requests_denied: u64,
    /// The latest refusal.
    pub last_denial: Option<LastDenial>,
    /// Roles it asked for.
    pub roles_requested: Vec<String>,
    /// Roles it got certificates for.
    pub roles_granted: Vec<String>,
    /// Owners of the roles it asked for (from the policy in force).
    pub owners: Vec<String>,
    /// Per-role detail.
    pub roles: Vec<RoleUse>,
    /// Deactivations naming this identity.
    pub deactivations: Vec<Deactivation>,
}

/// How many identities are in each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
pub struct StatusCounts {
    /// Active identities.
    pub active: u64,
    /// Disabled identities.
    pub disabled: u64,
    /// Stale identities.
    pub stale: u64,
    /// Identities that never got a certificate and were only refused.
    pub only_refused: u64,
}

/// The whole inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Inventory {
    /// When it was built (unix seconds).
    pub generated_at: u64,
    /// The stale window in days.
    pub stale_days: u64,
    /// Digest of the policy whose owners are shown.
    pub policy_digest: String,
    /// Identities by issuer, then subject.
    pub identities: Vec<Identity>,
    /// Whole roles that are disabled.
    pub disabled_roles: Vec<Deactivation>,
    /// Identities per state.
    pub counts: StatusCounts,
}

fn secs(ms: u64) -> u64 {
    ms / 1000
}

/// The earliest unix millisecond that is still inside a window of `days`
/// ending at `now` (unix seconds).
pub fn window_start_ms(now: u64, days: u64) -> u64 {
    now.saturating_sub(days.min(MAX_STALE_DAYS).saturating_mul(86_400))
        .saturating_mul(1000)
}

type IdKey = (String, String);

/// Assembles the inventory from audit aggregates, the latest denials and
/// the deactivations in force (pure).
pub fn build(
    policy: &Policy,
    usage: &[IdentityRoleUsage],
    denials: &[LastDenialRow],
    disabled: &[DisabledEntry],
    stale_days: u64,
    now: u64,
) -> Inventory {
    let stale_days = stale_days.min(MAX_STALE_DAYS);
    let cutoff_ms = window_start_ms(now, stale_days);
    let mut by_identity: BTreeMap<IdKey, Vec<&IdentityRoleUsage>> = BTreeMap::new();
    for u in usage {
        by_identity
            .entry((u.issuer.clone(), u.subject.clone()))
            .or_default()
            .push(u);
    }
    let mut identity_off: BTreeMap<IdKey, &DisabledEntry> = BTreeMap::new();
    let mut identity_role_off: BTreeMap<(String, String, String), &DisabledEntry> = BTreeMap::new();
    let mut role_off: BTreeMap<String, &DisabledEntry> = BTreeMap::new();
    for e in disabled {
        match &e.key {
            DisableTarget::Role(role) => {
                role_off.insert(role.clone(), e);
            }
            DisableTarget::Identity {
                issuer,
                subject,
                role,
            } => {
                let id = (issuer.clone(), subject.clone());
                match role {
                    None => identity_off.insert(id.clone(), e),
                    Some(r) => identity_role_off.insert((id.0.clone(), id.1.clone(), r.clone()), e),
                };
                by_identity.entry(id).or_default();
            }
        }
    }
    let last_denial: BTreeMap<IdKey, &LastDenialRow> = denials
        .iter()
        .map(|d| ((d.issuer.clone(), d.subject.clone()), d))
        .collect();

    let mut identities = Vec::with_capacity(by_identity.len());
    let mut counts = StatusCounts::default();
    for ((issuer, subject), rows) in by_identity {
        let whole = identity_off
            .get(&(issuer.clone(), subject.clone()))
            .copied();
        let mut roles: Vec<RoleUse> = rows
            .iter()
            .map(|u| {
                let role_entry = identity_role_off
                    .get(&(issuer.clone(), subject.clone(), u.role.clone()))
                    .or_else(|| role_off.get(&u.role))
                    .copied()
                    .or(whole);
                let fresh = u.last_issued_ms.is_some_and(|t| t >= cutoff_ms);
                RoleUse {
                    role: u.role.clone(),
                    owner: policy.roles.get(&u.role).map(|r| r.owner.clone()),
                    in_policy: policy.roles.contains_key(&u.role),
                    requested: u.issued + u.denied,
                    issued: u.issued,
                    denied: u.denied,
                    first_seen: Some(secs(u.first_ms)),
                    last_seen: Some(secs(u.last_ms)),
                    last_issued: u.last_issued_ms.map(secs),
                    status: match (role_entry, fresh) {
                        (Some(_), _) => Status::Disabled,
                        (None, true) => Status::Active,
                        (None, false) if u.issued == 0 && u.denied > 0 => Status::OnlyRefused,
                        (None, false) => Status::Stale,
                    },
                    disabled_by: role_entry.map(Deactivation::from_entry),
                }
            })
            .collect();
        // A role disabled for this identity that it never asked for.
        for ((i, s, role), e) in &identity_role_off {
            if *i == issuer && *s == subject && !roles.iter().any(|r| &r.role == role) {
                roles.push(RoleUse {
                    role: role.clone(),
                    owner: policy.roles.get(role).map(|r| r.owner.clone()),
                    in_policy: policy.roles.contains_key(role),
                    requested: 0,
                    issued: 0,
                    denied: 0,
                    first_seen: None,
                    last_seen: None,
                    last_issued: None,
                    status: Status::Disabled,
                    disabled_by: Some(Deactivation::from_entry(e)),
                });
            }
        }
        roles.sort_by(|a, b| a.role.cmp(&b.role));
        let mut deactivations: Vec<Deactivation> =
            whole.map(Deactivation::from_entry).into_iter().collect();
        deactivations.extend(
            identity_role_off
                .iter()
                .filter(|((i, s, _), _)| *i == issuer && *s == subject)
                .map(|(_, e)| Deactivation::from_entry(e)),
        );
        let last_issued = rows.iter().filter_map(|u| u.last_issued_ms).max();
        let certs_issued: u64 = rows.iter().map(|u| u.issued).sum();
        let requests_denied: u64 = rows.iter().map(|u| u.denied).sum();
        // Roles gone from the policy cannot issue anyway: an identity whose
        // every remaining role is disabled gets nothing.
        let mut usable = roles.iter().filter(|r| r.in_policy).peekable();
        let all_disabled = usable.peek().is_some() && usable.all(|r| r.status == Status::Disabled);
        let status = if whole.is_some() || all_disabled {
            Status::Disabled
        } else if last_issued.is_some_and(|t| t >= cutoff_ms) {
            Status::Active
        } else if certs_issued == 0 && requests_denied > 0 {
            Status::OnlyRefused
        } else {
            Status::Stale
        };
        match status {
            Status::Active => counts.active += 1,
            Status::Disabled => counts.disabled += 1,
            Status::Stale => counts.stale += 1,
            Status::OnlyRefused => counts.only_refused += 1,
        }
        let mut owners: Vec<String> = roles.iter().filter_map(|r| r.owner.clone()).collect();
        owners.sort();
        owners.dedup();
        identities.push(Identity {
            first_seen: rows.iter().map(|u| u.first_ms).min().map(secs),
            last_seen: rows.iter().map(|u| u.last_ms).max().map(secs),
            last_issued: last_issued.map(secs),
            certs_issued,
            requests_denied,
            last_denial: last_denial
                .get(&(issuer.clone(), subject.clone()))
                .map(|d| LastDenial {
                    time: secs(d.time_ms),
                    reason_code: d.reason_code.clone(),
                    role: d.role.clone(),
                }),
            roles_requested: rows
                .iter()
                .filter(|u| u.issued + u.denied > 0)
                .map(|u| u.role.clone())
                .collect(),
            roles_granted: rows
                .iter()
                .filter(|u| u.issued > 0)
                .map(|u| u.role.clone())
                .collect(),
            owners,
            roles,
            deactivations,
            status,
            issuer,
            subject,
        });
    }
    Inventory {
        generated_at: now,
        stale_days,
        policy_digest: policy.digest.clone(),
        identities,
        disabled_roles: role_off
            .values()
            .map(|e| Deactivation::from_entry(e))
            .collect(),
        counts,
    }
}

/// Reads what the inventory needs from the database and assembles it.
pub async fn collect(
    store: &Store,
    policy: &Policy,
    stale_days: u64,
    now: u64,
) -> Result<Inventory, StoreError> {
    let usage = store.reports().identity_usage().await?;
    let denials = store.reports().last_denials().await?;
    let disabled = store.access().disabled().await?;
    Ok(build(policy, &usage, &denials, &disabled, stale_days, now))
}

/// Loads the policy directory of `cfg`, or explains every problem.
pub fn load_policy(cfg: &Config) -> Result<Policy, InventoryError> {
    crate::policy::load_dir(&cfg.policy_dir).map_err(|errs| InventoryError::Policy {
        dir: cfg.policy_dir.clone(),
        errors: errs
            .iter()
            .map(|e| format!("  {e}"))
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

/// The store of the CA configured by `cfg`; the database must exist.
pub fn open_db(cfg: &Config) -> Result<Store, InventoryError> {
    let sc = StoreConfig::from_config(cfg, OpenMode::Existing);
    crate::store::open(&sc).map_err(|e| match e {
        StoreError::Missing(_) => InventoryError::NoDatabase(sc.sqlite_path.clone()),
        other => InventoryError::Store(other),
    })
}

/// The inventory of the CA configured by `cfg`, as of `now` (unix
/// seconds). Synchronous, for commands outside an async runtime.
pub fn load(cfg: &Config, stale_days: u64, now: u64) -> Result<Inventory, InventoryError> {
    let policy = load_policy(cfg)?;
    let store = open_db(cfg)?;
    Ok(crate::store::block_on(collect(
        &store, &policy, stale_days, now,
    ))??)
}

fn opt_time(t: Option<u64>) -> String {
    t.map(utc_minute).unwrap_or_else(|| "-".into())
}

/// Renders the inventory as a text table for people: one line per
/// identity, then the disabled roles and a summary line.
pub fn render_table(inv: &Inventory) -> String {
    let header = [
        "STATUS",
        "ISSUER",
        "SUBJECT",
        "ROLES (certs)",
        "OWNERS",
        "FIRST SEEN",
        "LAST SEEN",
        "LAST CERT",
        "CERTS",
        "LAST DENIAL",
    ];
    let mut rows: Vec<[String; 10]> = Vec::with_capacity(inv.identities.len());
    for id in &inv.identities {
        let roles = if id.roles.is_empty() {
            "-".to_string()
        } else {
            id.roles
                .iter()
                .map(|r| {
                    let mut s = format!("{} ({}", r.role, r.issued);
                    if r.status == Status::Disabled {
                        s.push_str(", disabled");
                    }
                    if !r.in_policy {
                        s.push_str(", not in policy");
                    }
                    s.push(')');
                    s
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        rows.push([
            id.status.as_str().to_string(),
            id.issuer.clone(),
            id.subject.clone(),
            roles,
            if id.owners.is_empty() {
                "-".into()
            } else {
                id.owners.join(", ")
            },
            opt_time(id.first_seen),
            opt_time(id.last_seen),
            opt_time(id.last_issued),
            id.certs_issued.to_string(),
            id.last_denial
                .as_ref()
                .map(|d| format!("{} {}", utc_minute(d.time), d.reason_code))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let n = cells.len();
        let mut s = String::new();
        for (i, (c, w)) in cells.into_iter().zip(&widths).enumerate() {
            s.push_str(&sanitize(c));
            if i + 1 < n {
                let pad = w.saturating_sub(c.chars().count()) + 2;
                s.push_str(&" ".repeat(pad));
            }
        }
        s.push('\n');
        s
    };
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("no identity has requested a certificate yet\n");
    } else {
        out.push_str(&line(header.to_vec()));
        for r in &rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
        }
    }
    for d in &inv.disabled_roles {
        out.push_str(&sanitize(&format!(
            "role {} is disabled since {} by {}: {}",
            d.role.as_deref().unwrap_or(""),
            utc_minute(d.since),
            d.actor,
            d.reason
        )));
        out.push('\n');
    }
    out.push_str(&format!(
        "{} identities: {} active, {} disabled, {} stale (no certificate in {} days), {} only refused (never got a certificate)\n",
        inv.identities.len(),
        inv.counts.active,
        inv.counts.disabled,
        inv.counts.stale,
        inv.stale_days,
        inv.counts.only_refused
    ));
    out
}

/// Control characters in subjects (which come from tokens) must not reach
/// the terminal.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::DisableTarget;

    const DAY_MS: u64 = 86_400_000;

    fn policy() -> Policy {
        let text = r#"
description = "Deploy"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
[claims]
sub = "x"
"#;
        let role =
            crate::policy::load::parse_role("deploy", std::path::Path::new("deploy.toml"), text)
                .expect("role parses");
        let mut p = Policy::default();
        p.roles.insert("deploy".into(), role);
        p.digest = "abc".into();
        p
    }

    fn usage(sub: &str, role: &str, issued: u64, last_ms: u64) -> IdentityRoleUsage {
        IdentityRoleUsage {
            issuer: "ci".into(),
            subject: sub.into(),
            role: role.into(),
            issued,
            denied: 1,
            first_ms: 1000,
            last_ms,
            last_issued_ms: (issued > 0).then_some(last_ms),
        }
    }

    fn off(issuer: &str, subject: &str, role: &str) -> DisabledEntry {
        DisabledEntry {
            key: DisableTarget::from_columns(issuer.into(), subject.into(), role.into())
                .expect("a target"),
            time_ms: 5000,
            reason: "r".into(),
            actor: "cli:root".into(),
        }
    }

    #[test]
    fn statuses_follow_issuance_age_and_deactivations() {
        let now = 100 * 86_400;
        let u = vec![
            usage("fresh", "deploy", 2, 99 * DAY_MS),
            usage("old", "deploy", 1, 50 * DAY_MS),
            usage("never", "deploy", 0, 99 * DAY_MS),
            usage("gone", "deploy", 3, 99 * DAY_MS),
            usage("partly", "deploy", 1, 99 * DAY_MS),
            usage("partly", "legacy", 1, 99 * DAY_MS),
        ];
        let denials = vec![LastDenialRow {
            issuer: "ci".into(),
            subject: "never".into(),
            time_ms: 99 * DAY_MS,
            reason_code: "claim_mismatch".into(),
            role: "deploy".into(),
        }];
        let disabled = vec![
            off("ci", "gone", ""),
            off("ci", "partly", "legacy"),
            off("ci", "unseen", ""),
        ];
        let inv = build(&policy(), &u, &denials, &disabled, 30, now);
        let st: BTreeMap<&str, Status> = inv
            .identities
            .iter()
            .map(|i| (i.subject.as_str(), i.status))
            .collect();
        assert_eq!(st["fresh"], Status::Active);
        assert_eq!(st["old"], Status::Stale);
        // Only ever refused: not an identity that went quiet.
        assert_eq!(st["never"], Status::OnlyRefused);
        assert_eq!(st["gone"], Status::Disabled);
        assert_eq!(st["partly"], Status::Active);
        assert_eq!(st["unseen"], Status::Disabled);
        assert_eq!(
            inv.counts,
            StatusCounts {
                active: 2,
                disabled: 2,
                stale: 1,
                only_refused: 1,
            }
        );
        let partly = inv
            .identities
            .iter()
            .find(|i| i.subject == "partly")
            .unwrap();
        assert_eq!(partly.roles[1].role, "legacy");
        assert_eq!(partly.roles[1].status, Status::Disabled);
        assert!(!partly.roles[1].in_policy);
        assert_eq!(partly.roles[1].owner, None);
        assert_eq!(partly.owners, vec!["platform@example.com".to_string()]);
        let never = inv
            .identities
            .iter()
            .find(|i| i.subject == "never")
            .unwrap();
        assert_eq!(
            never.last_denial.as_ref().unwrap().reason_code,
            "claim_mismatch"
        );
        assert!(never.roles_granted.is_empty());
        assert_eq!(never.roles[0].status, Status::OnlyRefused);
        // A disabled role disables every identity that only uses it.
        let inv = build(&policy(), &u, &[], &[off("", "", "deploy")], 30, now);
        let fresh = inv
            .identities
            .iter()
            .find(|i| i.subject == "fresh")
            .unwrap();
        assert_eq!(fresh.status, Status::Disabled);
        assert_eq!(
            fresh.roles[0].disabled_by.as_ref().unwrap().scope,
            DisabledScope::Role
        );
        assert_eq!(inv.disabled_roles.len(), 1);
        // "partly" keeps only a role that is no longer in the policy.
        let partly = inv
            .identities
            .iter()
            .find(|i| i.subject == "partly")
            .unwrap();
        assert_eq!(partly.status, Status::Disabled);
        let table = render_table(&inv);
        assert!(
            table.contains("role deploy is disabled since 1970-01-01 00:00Z"),
            "{table}"
        );
        assert!(table.contains("legacy (1, not in policy)"), "{table}");
    }

    #[test]
    fn window_start_is_days_before_now() {
        // Date formats are pinned in crate::time.
        assert_eq!(window_start_ms(100, 1), 0);
        assert_eq!(window_start_ms(86_401, 1), 1000);
    }
}
