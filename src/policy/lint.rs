//! Warnings about risky grants: valid policy that a reviewer should look at
//! twice. `mayfly policy check` prints them (and fails on them with
//! `--deny-warnings`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::{Pattern, Policy, Role, Segment};
use crate::ca::{CertKind, Extension};

/// Longest `max_ttl` that draws no warning.
pub const LONG_TTL: Duration = Duration::from_secs(3600);

/// Principals that are administrators on most systems.
pub const PRIVILEGED_PRINCIPALS: [&str; 5] = ["root", "admin", "administrator", "toor", "sudo"];

/// Subjects of unrelated workloads, one per common issuer format. A `sub`
/// pattern that matches one of them lets in workloads of any repository,
/// project or namespace.
const FOREIGN_SUBJECTS: [&str; 6] = [
    "repo:mayfly-lint-probe/any:ref:refs/heads/main",
    "repo:mayfly-lint-probe/any:environment:production",
    "repo:mayfly-lint-probe/any:pull_request",
    "project_path:mayfly-lint-probe/any:ref_type:branch:ref:main",
    "system:serviceaccount:mayfly-lint-probe:any",
    "mayfly-lint-probe",
];

/// What kind of risk a warning is about; the string form is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarningKind {
    /// `sub` is not constrained.
    MissingSub,
    /// `sub` is a glob that matches any repository, project or namespace.
    WildcardSub,
    /// Every claim rule is a glob.
    NoExactClaim,
    /// `max_ttl` above [`LONG_TTL`].
    LongTtl,
    /// Agent, port or X11 forwarding permitted.
    RiskyExtension,
    /// An administrator account as principal.
    PrivilegedPrincipal,
    /// A principal template takes its value from a claim no rule pins.
    UnpinnedTemplate,
}

impl WarningKind {
    /// The stable name, printed in brackets after the message.
    pub fn as_str(self) -> &'static str {
        match self {
            WarningKind::MissingSub => "missing_sub",
            WarningKind::WildcardSub => "wildcard_sub",
            WarningKind::NoExactClaim => "no_exact_claim",
            WarningKind::LongTtl => "long_ttl",
            WarningKind::RiskyExtension => "risky_extension",
            WarningKind::PrivilegedPrincipal => "privileged_principal",
            WarningKind::UnpinnedTemplate => "unpinned_template",
        }
    }
}

/// One warning about one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The role file.
    pub file: PathBuf,
    /// 1-based line of the key at fault.
    pub line: usize,
    /// What kind of risk.
    pub kind: WarningKind,
    /// What is risky and what to do instead.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: warning: {} [{}]",
            self.file.display(),
            self.line,
            self.message,
            self.kind.as_str()
        )
    }
}

/// Every warning for every role, sorted by file and line.
pub fn lint(policy: &Policy) -> Vec<Warning> {
    let mut out: Vec<Warning> = policy.roles.values().flat_map(lint_role).collect();
    out.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    out
}

fn is_exact(p: &Pattern) -> bool {
    !p.is_glob()
}

/// Warnings for one role.
pub fn lint_role(role: &Role) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut warn = |key: &str, kind: WarningKind, message: String| {
        out.push(Warning {
            file: role.file.clone(),
            line: role.line(key),
            kind,
            message,
        })
    };

    match role.claims.iter().find(|r| r.claim == "sub") {
        None => warn(
            "claims",
            WarningKind::MissingSub,
            "[claims] does not constrain sub: any workload of the issuer whose other claims match may use this role; pin sub to one workload".into(),
        ),
        Some(rule) => {
            for p in &rule.patterns {
                let foreign = FOREIGN_SUBJECTS.iter().find(|s| p.matches(s));
                if let Some(s) = foreign {
                    warn(
                        "claims.sub",
                        WarningKind::WildcardSub,
                        format!(
                            "sub = {:?} matches subjects of any repository or namespace (e.g. {s:?}); pin the owner and name",
                            p.as_str()
                        ),
                    );
                }
            }
        }
    }

    if !role.claims.is_empty() && !role.claims.iter().any(|r| r.patterns.iter().all(is_exact)) {
        warn(
            "claims",
            WarningKind::NoExactClaim,
            "every claim rule is a glob: no claim is matched exactly, so unforeseen values may match; pin at least one claim exactly".into(),
        );
    }

    if role.max_ttl > LONG_TTL && role.cert_type == CertKind::User {
        warn(
            "max_ttl",
            WarningKind::LongTtl,
            format!(
                "max_ttl {} is above 1h: a leaked certificate stays usable that long; keep bot certificates to minutes",
                humantime::format_duration(role.max_ttl)
            ),
        );
    }

    for e in &role.extensions {
        let why = match e {
            Extension::PermitAgentForwarding => {
                "lets the login use the bot's agent on the host (and anyone root there can too)"
            }
            Extension::PermitPortForwarding => "turns the host into a tunnel into its network",
            Extension::PermitX11Forwarding => "exposes an X11 display to the host",
            _ => continue,
        };
        warn(
            &format!("extensions.{}", e.as_str()),
            WarningKind::RiskyExtension,
            format!("{} {why}; bots rarely need it", e.as_str()),
        );
    }

    for (i, t) in role.principals.iter().enumerate() {
        let key = format!("principals.{i}");
        let literal: String = t
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.as_str(),
                Segment::Claim(_) => "",
            })
            .collect();
        let only_literal = t.segments.iter().all(|s| matches!(s, Segment::Literal(_)));
        if only_literal && PRIVILEGED_PRINCIPALS.contains(&literal.to_ascii_lowercase().as_str()) {
            warn(
                &key,
                WarningKind::PrivilegedPrincipal,
                format!(
                    "principal {:?} is an administrator account; grant a dedicated account with only the rights the job needs",
                    t.source
                ),
            );
        }
        for s in &t.segments {
            let Segment::Claim(c) = s else { continue };
            let pinned = role
                .claims
                .iter()
                .any(|r| &r.claim == c && r.patterns.iter().all(is_exact));
            if !pinned {
                warn(
                    &key,
                    WarningKind::UnpinnedTemplate,
                    format!(
                        "principal {:?} takes {{{c}}} from the token, and [claims] does not pin {c:?} to exact values: whatever the issuer puts there becomes a login name",
                        t.source
                    ),
                );
            }
        }
    }
    out.sort_by_key(|w| w.line);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load::parse_role;
    use std::path::Path;

    fn role(body: &str) -> Role {
        parse_role("r", Path::new("r.toml"), body).unwrap()
    }

    fn kinds(body: &str) -> Vec<(usize, &'static str)> {
        lint_role(&role(body))
            .into_iter()
            .map(|w| (w.line, w.kind.as_str()))
            .collect()
    }

    const HEAD: &str = "description = \"d\"\nowner = \"o\"\nissuer = \"gh\"\n";

    #[test]
    fn a_tight_role_has_no_warnings() {
        let body = format!(
            "{HEAD}principals = [\"deploy\"]\nmax_ttl = \"10m\"\nextensions = [\"permit-pty\"]\n[claims]\nsub = \"repo:acme/api:ref:refs/heads/main\"\nrepository = \"acme/*\"\n"
        );
        assert_eq!(kinds(&body), vec![]);
    }

    #[test]
    fn wildcard_and_missing_sub_are_flagged() {
        let body =
            format!("{HEAD}principals = [\"deploy\"]\nmax_ttl = \"10m\"\n[claims]\nsub = \"*\"\n");
        assert_eq!(
            kinds(&body),
            vec![(6, "no_exact_claim"), (7, "wildcard_sub")]
        );
        let body = format!(
            "{HEAD}principals = [\"deploy\"]\nmax_ttl = \"10m\"\n[claims]\nsub = \"repo:*:ref:refs/heads/main\"\nrepository = \"acme/api\"\n"
        );
        assert_eq!(kinds(&body), vec![(7, "wildcard_sub")]);
        // Any repo of one owner is a conscious choice, not flagged.
        let body = format!(
            "{HEAD}principals = [\"deploy\"]\nmax_ttl = \"10m\"\n[claims]\nsub = \"repo:acme/*:ref:refs/heads/main\"\n"
        );
        assert_eq!(kinds(&body), vec![(6, "no_exact_claim")]);
        let body = format!(
            "{HEAD}principals = [\"deploy\"]\nmax_ttl = \"10m\"\n[claims]\nrepository = \"acme/api\"\n"
        );
        assert_eq!(kinds(&body), vec![(6, "missing_sub")]);
        let body = format!(
            "{HEAD}principals = [\"deploy\"]\nmax_ttl = \"10m\"\n[claims]\nsub = \"system:serviceaccount:*\"\nx = \"y\"\n"
        );
        assert_eq!(kinds(&body), vec![(7, "wildcard_sub")]);
    }

    #[test]
    fn long_ttl_forwarding_and_root_are_flagged_on_their_lines() {
        let body = format!(
            "{HEAD}principals = [\"deploy\", \"root\"]\nmax_ttl = \"2h\"\nextensions = [\"permit-pty\",\n  \"permit-agent-forwarding\",\n  \"permit-port-forwarding\",\n  \"permit-X11-forwarding\"]\n[claims]\nsub = \"x\"\n"
        );
        assert_eq!(
            kinds(&body),
            vec![
                (4, "privileged_principal"),
                (5, "long_ttl"),
                (7, "risky_extension"),
                (8, "risky_extension"),
                (9, "risky_extension"),
            ]
        );
    }

    #[test]
    fn templates_from_unpinned_claims_are_flagged() {
        let body = format!(
            "{HEAD}principals = [\"gh-{{repository_owner}}\"]\nmax_ttl = \"10m\"\n[claims]\nsub = \"x\"\n"
        );
        assert_eq!(kinds(&body), vec![(4, "unpinned_template")]);
        let body = format!(
            "{HEAD}principals = [\"gh-{{repository_owner}}\"]\nmax_ttl = \"10m\"\n[claims]\nsub = \"x\"\nrepository_owner = \"acme*\"\n"
        );
        assert_eq!(kinds(&body), vec![(4, "unpinned_template")]);
        let body = format!(
            "{HEAD}principals = [\"gh-{{repository_owner}}\"]\nmax_ttl = \"10m\"\n[claims]\nsub = \"x\"\nrepository_owner = [\"acme\", \"acme-labs\"]\n"
        );
        assert_eq!(kinds(&body), vec![]);
    }

    #[test]
    fn warnings_print_as_file_line_message_kind() {
        let body =
            format!("{HEAD}principals = [\"root\"]\nmax_ttl = \"10m\"\n[claims]\nsub = \"x\"\n");
        let w = lint_role(&role(&body));
        assert_eq!(
            w[0].to_string(),
            "r.toml:4: warning: principal \"root\" is an administrator account; grant a dedicated account with only the rights the job needs [privileged_principal]"
        );
    }
}
