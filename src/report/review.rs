//! The access review: identities and roles unused for N days (candidates
//! for removal) and roles whose grants exceed what the audit log shows is
//! used. Every finding is computed from the audit log and the policy; what
//! the CA cannot observe (whether a session used port forwarding) is said
//! to be unobservable, not guessed.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::ca::{CertKind, Extension};
use crate::inventory::{Inventory, Status};
use crate::policy::history::{Appeared, Source};
use crate::policy::{Pattern, Policy, PrincipalTemplate, Segment};
use crate::store::reports::{PrincipalUse, RoleAllTime, RoleWindowUsage};

/// A role's max TTL at least this many times the longest TTL used is flagged.
const TTL_HEADROOM_FACTOR: u64 = 4;
/// ... and only when it is longer than this (seconds): short roles are fine.
const TTL_HEADROOM_MIN: u64 = 600;

/// Extensions that widen what a session can do beyond a shell.
const WIDENING: [Extension; 4] = [
    Extension::PermitPortForwarding,
    Extension::PermitAgentForwarding,
    Extension::PermitX11Forwarding,
    Extension::PermitUserRc,
];

/// How a role was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleUsage {
    /// Certificates issued inside the window.
    Used,
    /// Certificates issued before the window, none inside it.
    Unused,
    /// No certificate ever issued.
    NeverUsed,
    /// No certificate ever issued, but the role appeared less than the
    /// review window ago: too new to judge.
    NewRole,
}

impl RoleUsage {
    /// `used`, `unused`, `never_used` or `new_role`.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleUsage::Used => "used",
            RoleUsage::Unused => "unused",
            RoleUsage::NeverUsed => "never_used",
            RoleUsage::NewRole => "new_role",
        }
    }
}

/// One role of the policy, measured against its use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleReview {
    /// Role name.
    pub role: String,
    /// Owner from the policy.
    pub owner: String,
    /// `user` or `host`.
    pub cert_type: String,
    /// Certificates issued inside the window.
    pub issued_in_window: u64,
    /// Distinct identities that got one inside the window.
    pub identities_in_window: u64,
    /// Certificates ever issued.
    pub issued_all_time: u64,
    /// Last certificate (unix seconds).
    pub last_issued: Option<u64>,
    /// The role's max TTL (seconds).
    pub max_ttl: u64,
    /// Longest TTL granted inside the window (seconds).
    pub max_ttl_used: Option<u64>,
    /// Principals (as written in policy) that no certificate carried inside
    /// the window; only judged for user roles that were used.
    pub principals_unused: Vec<String>,
    /// Extensions granted that widen a session (forwarding, user rc).
    pub widening_extensions: Vec<String>,
    /// Used, unused, never used, or too new to judge.
    pub usage: RoleUsage,
    /// When the role first appeared, as far as the CA host can tell (the
    /// earliest of its file's git history, the file's time and the first
    /// audit record naming it).
    pub appeared: Option<Appeared>,
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// An identity with no certificate inside the window.
    StaleIdentity,
    /// An identity that never got a certificate: every request refused.
    OnlyRefusedIdentity,
    /// A role that never issued a certificate.
    RoleNeverUsed,
    /// A role that issued nothing inside the window.
    RoleUnused,
    /// A principal the role grants that no certificate carried.
    PrincipalUnused,
    /// A max TTL far above the TTLs used.
    TtlHeadroom,
    /// A role grants `root`.
    RootPrincipal,
    /// An extension whose use the CA cannot see.
    WideningExtension,
}

impl FindingKind {
    /// The stable snake_case name (as in JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::StaleIdentity => "stale_identity",
            FindingKind::OnlyRefusedIdentity => "only_refused_identity",
            FindingKind::RoleNeverUsed => "role_never_used",
            FindingKind::RoleUnused => "role_unused",
            FindingKind::PrincipalUnused => "principal_unused",
            FindingKind::TtlHeadroom => "ttl_headroom",
            FindingKind::RootPrincipal => "root_principal",
            FindingKind::WideningExtension => "widening_extension",
        }
    }
}

/// One item for the access review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What kind.
    pub kind: FindingKind,
    /// The role concerned.
    pub role: Option<String>,
    /// The identity concerned (`issuer/subject`).
    pub identity: Option<String>,
    /// Who should decide (the role owner(s)).
    pub owner: Option<String>,
    /// What was found and what to consider.
    pub detail: String,
}

/// The access review report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessReview {
    /// When (unix seconds).
    pub generated_at: u64,
    /// The window in days.
    pub days: u64,
    /// Policy digest reviewed.
    pub policy_digest: String,
    /// Every role of the policy.
    pub roles: Vec<RoleReview>,
    /// Everything worth a decision, most important kinds first.
    pub findings: Vec<Finding>,
}

impl AccessReview {
    /// Findings of one kind.
    pub fn of(&self, kind: FindingKind) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.kind == kind)
    }
}

/// A glob that matches what a principal template can produce: each
/// `{claim}` becomes `*` (principal characters hold no `*`).
fn template_pattern(t: &PrincipalTemplate) -> Pattern {
    let mut s = String::new();
    for seg in &t.segments {
        match seg {
            Segment::Literal(l) => s.push_str(l),
            Segment::Claim(_) => s.push('*'),
        }
    }
    Pattern::new(&s)
}

/// `90s`, `10m`, `2h`, `7d` style.
pub fn human_secs(s: u64) -> String {
    if s >= 86_400 && s % 86_400 == 0 {
        format!("{}d", s / 86_400)
    } else if s >= 3600 && s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s >= 60 && s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The first audit record naming each role, from the inventory (requests
/// that got past token verification, granted or refused).
fn first_requests(inventory: &Inventory) -> BTreeMap<&str, u64> {
    let mut out: BTreeMap<&str, u64> = BTreeMap::new();
    for r in inventory.identities.iter().flat_map(|i| &i.roles) {
        if let Some(t) = r.first_seen {
            out.entry(r.role.as_str())
                .and_modify(|v| *v = (*v).min(t))
                .or_insert(t);
        }
    }
    out
}

/// Builds the review (pure) from the policy, the inventory (for stale
/// identities), the audit aggregates, and when each role file appeared
/// ([`crate::policy::history::appeared`]).
#[allow(clippy::too_many_arguments)]
pub fn build(
    policy: &Policy,
    inventory: &Inventory,
    window: &[RoleWindowUsage],
    all_time: &[RoleAllTime],
    principals: &[PrincipalUse],
    appeared: &BTreeMap<String, Appeared>,
    days: u64,
    now: u64,
) -> AccessReview {
    let first_requests = first_requests(inventory);
    let window_start = crate::inventory::window_start_ms(now, days) / 1000;
    let window: BTreeMap<&str, &RoleWindowUsage> =
        window.iter().map(|w| (w.role.as_str(), w)).collect();
    let all_time: BTreeMap<&str, &RoleAllTime> =
        all_time.iter().map(|a| (a.role.as_str(), a)).collect();
    let mut granted: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for p in principals {
        granted
            .entry(p.role.as_str())
            .or_default()
            .insert(p.principal.as_str());
    }
    let mut roles = Vec::new();
    let mut findings = Vec::new();
    for (name, role) in &policy.roles {
        let w = window.get(name.as_str());
        let a = all_time.get(name.as_str());
        let role_appeared = Appeared::earliest(
            appeared.get(name.as_str()).copied(),
            first_requests.get(name.as_str()).map(|&at| Appeared {
                at,
                source: Source::AuditLog,
            }),
        );
        let usage = match (w, a) {
            (Some(w), _) if w.issued > 0 => RoleUsage::Used,
            (_, Some(a)) if a.issued > 0 => RoleUsage::Unused,
            // Younger than the window: it has not had the window to be used.
            _ if role_appeared.is_some_and(|x| x.at > window_start) => RoleUsage::NewRole,
            _ => RoleUsage::NeverUsed,
        };
        let max_ttl = role.max_ttl.as_secs();
        let max_ttl_used = w.map(|w| w.max_ttl_used);
        let is_user = role.cert_type == CertKind::User;
        let principals_unused: Vec<String> = if is_user && usage == RoleUsage::Used {
            let seen = granted.get(name.as_str());
            role.principals
                .iter()
                .filter(|t| {
                    let pat = template_pattern(t);
                    !seen.is_some_and(|s| s.iter().any(|g| pat.matches(g)))
                })
                .map(|t| t.source.clone())
                .collect()
        } else {
            Vec::new()
        };
        let widening: Vec<String> = role
            .extensions
            .iter()
            .filter(|e| WIDENING.contains(e))
            .map(|e| e.as_str().to_string())
            .collect();
        let owner = Some(role.owner.clone());
        let f = |kind, detail: String| Finding {
            kind,
            role: Some(name.clone()),
            identity: None,
            owner: owner.clone(),
            detail,
        };
        match usage {
            RoleUsage::NeverUsed => findings.push(f(
                FindingKind::RoleNeverUsed,
                "no certificate was ever issued for this role; remove it if nothing needs it"
                    .into(),
            )),
            RoleUsage::Unused => findings.push(f(
                FindingKind::RoleUnused,
                format!(
                    "no certificate in the last {days} days (last {}); remove it or confirm it is still needed",
                    a.map(|a| crate::time::utc_minute(a.last_ms / 1000))
                        .unwrap_or_default()
                ),
            )),
            RoleUsage::Used | RoleUsage::NewRole => {}
        }
        for p in &principals_unused {
            findings.push(f(
                FindingKind::PrincipalUnused,
                format!("principal {p:?} was in no certificate of the last {days} days; drop it from principals if it is not needed"),
            ));
        }
        if let Some(used) = max_ttl_used.filter(|_| usage == RoleUsage::Used) {
            if max_ttl > TTL_HEADROOM_MIN
                && max_ttl >= used.max(1).saturating_mul(TTL_HEADROOM_FACTOR)
            {
                findings.push(f(
                    FindingKind::TtlHeadroom,
                    format!(
                        "max_ttl {} is {}x the longest certificate issued in the last {days} days ({}); lower max_ttl toward what is used",
                        human_secs(max_ttl),
                        max_ttl / used.max(1),
                        human_secs(used)
                    ),
                ));
            }
        }
        if is_user && role.principals.iter().any(|t| t.source == "root") {
            findings.push(f(
                FindingKind::RootPrincipal,
                "grants the root principal (privileged access); prefer an unprivileged account with sudo rules".into(),
            ));
        }
        for e in &widening {
            findings.push(f(
                FindingKind::WideningExtension,
                format!("grants {e}; the CA cannot see whether sessions use it, so confirm it is needed"),
            ));
        }
        roles.push(RoleReview {
            role: name.clone(),
            owner: role.owner.clone(),
            cert_type: role.cert_type.as_str().to_string(),
            issued_in_window: w.map(|w| w.issued).unwrap_or(0),
            identities_in_window: w.map(|w| w.identities).unwrap_or(0),
            issued_all_time: a.map(|a| a.issued).unwrap_or(0),
            last_issued: a.map(|a| a.last_ms / 1000),
            max_ttl,
            max_ttl_used,
            principals_unused,
            widening_extensions: widening,
            usage,
            appeared: role_appeared,
        });
    }
    for id in &inventory.identities {
        if id.status == Status::OnlyRefused {
            let last = id
                .last_denial
                .as_ref()
                .map(|d| {
                    format!(
                        "; the last {} ({} for role {})",
                        crate::time::utc_minute(d.time),
                        d.reason_code,
                        d.role
                    )
                })
                .unwrap_or_default();
            findings.push(Finding {
                kind: FindingKind::OnlyRefusedIdentity,
                role: (!id.roles_requested.is_empty()).then(|| id.roles_requested.join(", ")),
                identity: Some(format!("{}/{}", id.issuer, id.subject)),
                owner: (!id.owners.is_empty()).then(|| id.owners.join(", ")),
                detail: format!(
                    "never got a certificate: {} request(s), all refused{last}; it holds no access, so there is nothing to disable. If it should have access, fix its token's claims or the role; if nobody knows it, find who runs it (`mayfly audit search --subject ...`)",
                    id.requests_denied
                ),
            });
            continue;
        }
        if id.status != Status::Stale {
            continue;
        }
        let last = id
            .last_issued
            .map(|t| format!("last certificate {}", crate::time::utc_minute(t)))
            .unwrap_or_else(|| "never got a certificate".into());
        findings.push(Finding {
            kind: FindingKind::StaleIdentity,
            role: (!id.roles_requested.is_empty()).then(|| id.roles_requested.join(", ")),
            identity: Some(format!("{}/{}", id.issuer, id.subject)),
            owner: (!id.owners.is_empty()).then(|| id.owners.join(", ")),
            detail: format!(
                "no certificate in the last {} days ({last}); disable it (`mayfly identity disable`) or narrow the role's claims if it is gone",
                inventory.stale_days
            ),
        });
    }
    findings.sort_by(|a, b| a.kind.cmp(&b.kind).then_with(|| a.role.cmp(&b.role)));
    AccessReview {
        generated_at: now,
        days,
        policy_digest: policy.digest.clone(),
        roles,
        findings,
    }
}

/// The review as plain text for a terminal.
pub fn render_text(r: &AccessReview) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "Access review, last {} days (policy {}), {}\n\n",
        r.days,
        short_digest(&r.policy_digest),
        crate::time::utc_minute(r.generated_at)
    ));
    o.push_str("ROLE  USAGE  CERTS(window/all)  IDENTITIES  MAX_TTL  LONGEST_USED  OWNER\n");
    for x in &r.roles {
        o.push_str(&format!(
            "{}  {}  {}/{}  {}  {}  {}  {}\n",
            x.role,
            x.usage.as_str(),
            x.issued_in_window,
            x.issued_all_time,
            x.identities_in_window,
            human_secs(x.max_ttl),
            x.max_ttl_used.map(human_secs).unwrap_or_else(|| "-".into()),
            x.owner
        ));
    }
    let new: Vec<String> = r
        .roles
        .iter()
        .filter(|x| x.usage == RoleUsage::NewRole)
        .map(|x| match &x.appeared {
            Some(a) => format!(
                "{} (appeared {}, per its {})",
                x.role,
                crate::time::utc_minute(a.at),
                a.source.words()
            ),
            None => x.role.clone(),
        })
        .collect();
    if !new.is_empty() {
        o.push_str(&format!(
            "\nnew_role: not judged until they are {} days old: {}\n",
            r.days,
            new.join(", ")
        ));
    }
    o.push('\n');
    if r.findings.is_empty() {
        o.push_str("no findings\n");
    }
    for f in &r.findings {
        let what = match (&f.identity, &f.role) {
            (Some(i), _) => format!("identity {i}"),
            (None, Some(role)) => format!("role {role}"),
            _ => String::new(),
        };
        o.push_str(&format!(
            "{}: {what}: {}{}\n",
            f.kind.as_str(),
            f.detail,
            f.owner
                .as_ref()
                .map(|w| format!(" [owner {w}]"))
                .unwrap_or_default()
        ));
    }
    o.chars()
        .map(|c| if c.is_control() && c != '\n' { '?' } else { c })
        .collect()
}

/// The first 12 hex digits of a digest, for headings.
pub fn short_digest(d: &str) -> &str {
    d.get(..12).unwrap_or(d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::Path;

    fn role(name: &str, body: &str) -> crate::policy::Role {
        crate::policy::load::parse_role(name, Path::new("x.toml"), body).expect("role parses")
    }

    #[test]
    fn signals_come_from_use_and_policy() {
        let mut p = Policy::default();
        p.roles.insert(
            "deploy".into(),
            role(
                "deploy",
                r#"description = "d"
owner = "o@example.com"
issuer = "ci"
principals = ["deploy", "backup", "gh-{repository_owner}", "root"]
max_ttl = "2h"
extensions = ["permit-pty", "permit-agent-forwarding"]
[claims]
sub = "x"
"#,
            ),
        );
        p.roles.insert(
            "legacy".into(),
            role(
                "legacy",
                "description = \"l\"\nowner = \"l@example.com\"\nissuer = \"ci\"\nprincipals = [\"a\"]\nmax_ttl = \"5m\"\n[claims]\nsub = \"x\"\n",
            ),
        );
        let window = vec![RoleWindowUsage {
            role: "deploy".into(),
            issued: 3,
            identities: 2,
            max_ttl_used: 300,
            last_ms: 9_000_000,
        }];
        let all = vec![RoleAllTime {
            role: "deploy".into(),
            issued: 5,
            first_ms: 1,
            last_ms: 9_000_000,
        }];
        let principals = vec![
            PrincipalUse {
                role: "deploy".into(),
                principal: "deploy".into(),
                count: 3,
            },
            PrincipalUse {
                role: "deploy".into(),
                principal: "gh-acme".into(),
                count: 1,
            },
        ];
        let inv = crate::inventory::build(&p, &[], &[], &[], 30, 10_000);
        let r = build(
            &p,
            &inv,
            &window,
            &all,
            &principals,
            &BTreeMap::new(),
            30,
            10_000,
        );
        let kinds: Vec<FindingKind> = r.findings.iter().map(|f| f.kind).collect();
        assert!(kinds.contains(&FindingKind::RoleNeverUsed));
        assert!(kinds.contains(&FindingKind::TtlHeadroom));
        assert!(kinds.contains(&FindingKind::RootPrincipal));
        assert!(kinds.contains(&FindingKind::WideningExtension));
        let unused: Vec<&str> = r
            .of(FindingKind::PrincipalUnused)
            .map(|f| f.detail.as_str())
            .collect();
        assert_eq!(unused.len(), 2, "{unused:?}");
        assert!(unused[0].contains("\"backup\"") || unused[1].contains("\"backup\""));
        let ttl = r.of(FindingKind::TtlHeadroom).next().unwrap();
        assert!(ttl.detail.contains("max_ttl 2h is 24x"), "{}", ttl.detail);
        assert_eq!(r.roles[0].usage, RoleUsage::Used);
        assert_eq!(r.roles[1].usage, RoleUsage::NeverUsed);
        assert!(render_text(&r).contains("role_never_used: role legacy"));
    }

    #[test]
    fn a_role_younger_than_the_window_is_new_not_never_used() {
        const DAY: u64 = 86_400;
        let now = 100 * DAY;
        let mut p = Policy::default();
        for name in ["fresh", "old", "requested"] {
            p.roles.insert(
                name.into(),
                role(
                    name,
                    "description = \"d\"\nowner = \"o\"\nissuer = \"ci\"\nprincipals = [\"a\"]\nmax_ttl = \"5m\"\n[claims]\nsub = \"x\"\n",
                ),
            );
        }
        let file = |at| Appeared {
            at,
            source: Source::FileTime,
        };
        let appeared: BTreeMap<String, Appeared> = [
            ("fresh".to_string(), file(now - 600)),
            ("old".to_string(), file(now - 60 * DAY)),
            // The file looks new (rewritten), but a bot asked for the role
            // 50 days ago: the audit log shows it is older.
            ("requested".to_string(), file(now - 60)),
        ]
        .into_iter()
        .collect();
        let usage = vec![crate::store::reports::IdentityRoleUsage {
            issuer: "ci".into(),
            subject: "probe".into(),
            role: "requested".into(),
            issued: 0,
            denied: 2,
            first_ms: (now - 50 * DAY) * 1000,
            last_ms: (now - 40 * DAY) * 1000,
            last_issued_ms: None,
        }];
        let denials = vec![crate::store::reports::LastDenialRow {
            issuer: "ci".into(),
            subject: "probe".into(),
            time_ms: (now - 40 * DAY) * 1000,
            reason_code: "claim_mismatch".into(),
            role: "requested".into(),
        }];
        let inv = crate::inventory::build(&p, &usage, &denials, &[], 30, now);
        let r = build(&p, &inv, &[], &[], &[], &appeared, 30, now);
        let usage_of = |n: &str| r.roles.iter().find(|x| x.role == n).unwrap().usage;
        assert_eq!(usage_of("fresh"), RoleUsage::NewRole);
        assert_eq!(usage_of("old"), RoleUsage::NeverUsed);
        assert_eq!(usage_of("requested"), RoleUsage::NeverUsed);
        let req = r.roles.iter().find(|x| x.role == "requested").unwrap();
        assert_eq!(req.appeared.unwrap().source, Source::AuditLog);
        let never: Vec<&str> = r
            .of(FindingKind::RoleNeverUsed)
            .filter_map(|f| f.role.as_deref())
            .collect();
        assert_eq!(never, ["old", "requested"]);
        let text = render_text(&r);
        assert!(
            text.contains("new_role: not judged until they are 30 days old: fresh (appeared"),
            "{text}"
        );
        // The identity that was only ever refused is not called stale.
        assert_eq!(r.of(FindingKind::StaleIdentity).count(), 0);
        let refused: Vec<&Finding> = r.of(FindingKind::OnlyRefusedIdentity).collect();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].identity.as_deref(), Some("ci/probe"));
        assert!(
            refused[0]
                .detail
                .contains("2 request(s), all refused; the last"),
            "{}",
            refused[0].detail
        );
        assert!(
            text.contains("only_refused_identity: identity ci/probe"),
            "{text}"
        );
    }
}
