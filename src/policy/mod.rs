//! Roles from `ca-policy/<role>.toml`, and the pure decision
//! `(role, verified claims, request) -> Grant | Denial`.
//!
//! Policy knows nothing of JWTs or HTTP: it receives claims that the token
//! verifier already checked, and returns a grant that minting turns into a
//! certificate, or a denial that names the rule that said no.

pub mod glob;
pub mod load;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::ca::{CertKind, Extension, Principal};
pub use glob::Pattern;
pub use load::{load_dir, PolicyError};

/// A role name: the policy file name without `.toml`.
pub type RoleName = String;

/// One piece of a principal template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Literal text.
    Literal(String),
    /// `{claim}`: the value of a string claim.
    Claim(String),
}

/// A principal as written in policy, possibly with `{claim}` templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalTemplate {
    /// The text as written.
    pub source: String,
    /// Parsed pieces.
    pub segments: Vec<Segment>,
}

/// One claim constraint: the claim must be present and one of its values
/// must match one of the patterns.
#[derive(Debug, Clone)]
pub struct ClaimRule {
    /// Claim name.
    pub claim: String,
    /// Accepted patterns (any of).
    pub patterns: Vec<Pattern>,
}

/// A role: who may get which certificate.
#[derive(Debug, Clone)]
pub struct Role {
    /// Role name (file stem).
    pub name: RoleName,
    /// The file it came from.
    pub file: PathBuf,
    /// What this identity is for.
    pub description: String,
    /// Who answers for it.
    pub owner: String,
    /// The `[[issuer]]` name whose tokens may use the role.
    pub issuer: String,
    /// Principals granted (templates allowed).
    pub principals: Vec<PrincipalTemplate>,
    /// Longest lifetime a request may ask for.
    pub max_ttl: Duration,
    /// Lifetime when the request names none.
    pub default_ttl: Duration,
    /// Extensions permitted; nothing else is.
    pub extensions: Vec<Extension>,
    /// `source-address` critical option.
    pub source_address: Vec<IpNet>,
    /// `force-command` critical option.
    pub force_command: Option<String>,
    /// Claim constraints; all must match.
    pub claims: Vec<ClaimRule>,
    /// User or host certificates.
    pub cert_type: CertKind,
    /// Host roles: allowed host names (globs and `{claim}` templates).
    pub hostnames: Vec<PrincipalTemplate>,
}

/// Every loaded role, by name.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Roles by name.
    pub roles: BTreeMap<RoleName, Role>,
    /// SHA-256 over the role files, to tie certificates to a policy version.
    pub digest: String,
}

/// What the bot asked for, beyond the role.
#[derive(Debug, Clone, Default)]
pub struct CertRequest {
    /// A subset of the role's principals; `None` means all of them.
    pub principals: Option<Vec<String>>,
    /// Requested lifetime; `None` means the role's default.
    pub ttl: Option<Duration>,
}

/// What policy allows for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Principals, already substituted and checked.
    pub principals: Vec<Principal>,
    /// Lifetime.
    pub ttl: Duration,
    /// Extensions.
    pub extensions: Vec<Extension>,
    /// `force-command`.
    pub force_command: Option<String>,
    /// `source-address`.
    pub source_address: Vec<IpNet>,
}

/// Why policy said no. `rule` names the policy line; `message` says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule}: {message}")]
pub struct Denial {
    /// Stable code for the kind of denial.
    pub code: DenialCode,
    /// The rule that failed, e.g. `deploy.toml claims.sub`.
    pub rule: String,
    /// Human explanation.
    pub message: String,
}

/// Kinds of denial, stable for API error codes and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialCode {
    /// No such role.
    UnknownRole,
    /// Token from an issuer the role does not trust.
    IssuerMismatch,
    /// A claim is missing or does not match.
    ClaimMismatch,
    /// A requested principal is not granted by the role.
    PrincipalNotAllowed,
    /// A principal template produced an invalid principal.
    PrincipalInvalid,
    /// Requested TTL above the role's max.
    TtlExceedsMax,
    /// A user certificate from a host role or the reverse.
    WrongCertType,
    /// The identity or role is disabled.
    Disabled,
    /// The caller is not an administrator.
    NotAdmin,
}

impl DenialCode {
    /// The stable string code.
    pub fn as_str(self) -> &'static str {
        match self {
            DenialCode::UnknownRole => "unknown_role",
            DenialCode::IssuerMismatch => "issuer_not_allowed",
            DenialCode::ClaimMismatch => "claim_mismatch",
            DenialCode::PrincipalNotAllowed => "principal_not_allowed",
            DenialCode::PrincipalInvalid => "principal_invalid",
            DenialCode::TtlExceedsMax => "ttl_exceeds_max",
            DenialCode::WrongCertType => "wrong_cert_type",
            DenialCode::Disabled => "disabled",
            DenialCode::NotAdmin => "not_admin",
        }
    }
}

/// The string forms of a claim's value(s): strings as-is, booleans and
/// numbers in JSON form, arrays element by element. Objects and null give none.
pub fn claim_values(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Bool(b) => vec![b.to_string()],
        Value::Number(n) => vec![n.to_string()],
        Value::Array(a) => a
            .iter()
            .filter(|e| !e.is_array())
            .flat_map(claim_values)
            .collect(),
        Value::Null | Value::Object(_) => vec![],
    }
}

fn short(s: &str) -> String {
    let mut out: String = s.chars().take(120).collect();
    if s.chars().count() > 120 {
        out.push('…');
    }
    format!("{out:?}")
}

/// Checks every claim rule against `claims`; on failure returns the rule
/// name (`claims.<name>`) and a message naming the claim and its value.
pub fn match_claims(
    rules: &[ClaimRule],
    claims: &Map<String, Value>,
) -> Result<(), (String, String)> {
    for rule in rules {
        let rule_name = format!("claims.{}", rule.claim);
        let Some(v) = claims.get(&rule.claim) else {
            return Err((rule_name, format!("token has no claim {:?}", rule.claim)));
        };
        let values = claim_values(v);
        if !values
            .iter()
            .any(|val| rule.patterns.iter().any(|p| p.matches(val)))
        {
            let wanted: Vec<&str> = rule.patterns.iter().map(|p| p.as_str()).collect();
            let got = values.first().map(|s| short(s)).unwrap_or_default();
            return Err((
                rule_name,
                format!(
                    "claim {:?} is {got}, which matches none of {wanted:?}",
                    rule.claim
                ),
            ));
        }
    }
    Ok(())
}

/// Whether `s` is a DNS host name (labels of A-Z a-z 0-9 -, not starting or
/// ending with -, at most 253 characters) or an IP address literal.
pub fn valid_hostname(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// What a host asked for.
#[derive(Debug, Clone, Default)]
pub struct HostCertRequest {
    /// Host names for the certificate; `None` means the role's exact names.
    pub hostnames: Option<Vec<String>>,
    /// Requested lifetime; `None` means the role's default.
    pub ttl: Option<Duration>,
}

impl Role {
    /// Decides a host certificate request. Pure.
    pub fn evaluate_host(
        &self,
        issuer: &str,
        claims: &Map<String, Value>,
        req: &HostCertRequest,
    ) -> Result<Grant, Denial> {
        if issuer != self.issuer {
            return Err(self.deny(
                DenialCode::IssuerMismatch,
                "issuer",
                format!(
                    "role accepts tokens from issuer {:?}, this one is from {issuer:?}",
                    self.issuer
                ),
            ));
        }
        if let Err((rule, message)) = match_claims(&self.claims, claims) {
            return Err(self.deny(DenialCode::ClaimMismatch, &rule, message));
        }
        if self.cert_type != CertKind::Host {
            return Err(self.deny(
                DenialCode::WrongCertType,
                "cert_type",
                "this role issues user certificates; request them with POST /v1/certs/user".into(),
            ));
        }
        // Expand `{claim}` in the allowed patterns; substituted values must
        // be host-name labels so a claim cannot smuggle in a wildcard.
        let mut patterns = Vec::with_capacity(self.hostnames.len());
        for t in &self.hostnames {
            let mut s = String::new();
            for seg in &t.segments {
                match seg {
                    Segment::Literal(l) => s.push_str(l),
                    Segment::Claim(c) => match claims.get(c) {
                        Some(Value::String(v))
                            if valid_hostname(v) && v.parse::<std::net::IpAddr>().is_err() =>
                        {
                            s.push_str(v)
                        }
                        _ => {
                            return Err(self.deny(
                                DenialCode::PrincipalInvalid,
                                "hostnames",
                                format!(
                                    "template {:?} needs claim {c:?} to be a host name",
                                    t.source
                                ),
                            ))
                        }
                    },
                }
            }
            patterns.push(Pattern::new(&s.to_ascii_lowercase()));
        }
        let names: Vec<String> = match &req.hostnames {
            Some(asked) if !asked.is_empty() => asked.clone(),
            _ => patterns
                .iter()
                .filter(|p| !p.is_glob())
                .map(|p| p.as_str().to_string())
                .collect(),
        };
        if names.is_empty() {
            return Err(self.deny(
                DenialCode::PrincipalNotAllowed,
                "hostnames",
                "name the host names to certify (\"hostnames\"); this role only has patterns"
                    .into(),
            ));
        }
        let mut principals = Vec::with_capacity(names.len());
        for n in &names {
            let lower = n.to_ascii_lowercase();
            if !valid_hostname(&lower) {
                return Err(self.deny(
                    DenialCode::PrincipalInvalid,
                    "hostnames",
                    format!("{} is not a host name", short(n)),
                ));
            }
            if !patterns.iter().any(|p| p.matches(&lower)) {
                let allowed: Vec<&str> = patterns.iter().map(|p| p.as_str()).collect();
                return Err(self.deny(
                    DenialCode::PrincipalNotAllowed,
                    "hostnames",
                    format!(
                        "host name {} is not allowed; this role allows {allowed:?}",
                        short(n)
                    ),
                ));
            }
            let p = Principal::parse(&lower)
                .map_err(|e| self.deny(DenialCode::PrincipalInvalid, "hostnames", e.to_string()))?;
            if !principals.contains(&p) {
                principals.push(p);
            }
        }
        let ttl = self.ttl_for(req.ttl)?;
        Ok(Grant {
            principals,
            ttl,
            extensions: Vec::new(),
            force_command: None,
            source_address: Vec::new(),
        })
    }

    fn ttl_for(&self, asked: Option<Duration>) -> Result<Duration, Denial> {
        match asked {
            None => Ok(self.default_ttl),
            Some(t) if t > self.max_ttl => Err(self.deny(
                DenialCode::TtlExceedsMax,
                "max_ttl",
                format!(
                    "requested ttl {}s is above max_ttl {}s; ask for less",
                    t.as_secs(),
                    self.max_ttl.as_secs()
                ),
            )),
            Some(t) => Ok(t),
        }
    }

    fn deny(&self, code: DenialCode, rule: &str, message: String) -> Denial {
        Denial {
            code,
            rule: format!("{}.toml {rule}", self.name),
            message,
        }
    }

    /// Expands the principal templates with `claims`.
    pub fn principals_for(&self, claims: &Map<String, Value>) -> Result<Vec<Principal>, Denial> {
        let mut out = Vec::with_capacity(self.principals.len());
        for t in &self.principals {
            let mut s = String::new();
            for seg in &t.segments {
                match seg {
                    Segment::Literal(l) => s.push_str(l),
                    Segment::Claim(c) => match claims.get(c) {
                        Some(Value::String(v)) if !v.is_empty() => s.push_str(v),
                        Some(_) => {
                            return Err(self.deny(
                                DenialCode::PrincipalInvalid,
                                "principals",
                                format!(
                                    "template {:?} needs claim {c:?} to be a non-empty string",
                                    t.source
                                ),
                            ))
                        }
                        None => {
                            return Err(self.deny(
                                DenialCode::PrincipalInvalid,
                                "principals",
                                format!(
                                    "template {:?} needs claim {c:?}, which the token lacks",
                                    t.source
                                ),
                            ))
                        }
                    },
                }
            }
            let p = Principal::parse(&s).map_err(|e| {
                self.deny(
                    DenialCode::PrincipalInvalid,
                    "principals",
                    format!("template {:?} gave an invalid principal: {e}", t.source),
                )
            })?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Decides one request. Pure: same inputs, same answer.
    pub fn evaluate(
        &self,
        issuer: &str,
        claims: &Map<String, Value>,
        req: &CertRequest,
    ) -> Result<Grant, Denial> {
        if issuer != self.issuer {
            return Err(self.deny(
                DenialCode::IssuerMismatch,
                "issuer",
                format!(
                    "role accepts tokens from issuer {:?}, this one is from {issuer:?}",
                    self.issuer
                ),
            ));
        }
        if let Err((rule, message)) = match_claims(&self.claims, claims) {
            return Err(self.deny(DenialCode::ClaimMismatch, &rule, message));
        }
        if self.cert_type != CertKind::User {
            return Err(self.deny(
                DenialCode::WrongCertType,
                "cert_type",
                "this role issues host certificates; request them with POST /v1/certs/host".into(),
            ));
        }
        let granted = self.principals_for(claims)?;
        let principals = match &req.principals {
            None => granted,
            Some(asked) if asked.is_empty() => granted,
            Some(asked) => {
                let mut out = Vec::with_capacity(asked.len());
                for a in asked {
                    match granted.iter().find(|g| g.as_str() == a) {
                        Some(g) => {
                            if !out.contains(g) {
                                out.push(g.clone())
                            }
                        }
                        None => {
                            let allowed: Vec<&str> = granted.iter().map(|g| g.as_str()).collect();
                            return Err(self.deny(
                                DenialCode::PrincipalNotAllowed,
                                "principals",
                                format!(
                                    "principal {} is not granted; this role grants {allowed:?}",
                                    short(a)
                                ),
                            ));
                        }
                    }
                }
                out
            }
        };
        let ttl = self.ttl_for(req.ttl)?;
        Ok(Grant {
            principals,
            ttl,
            extensions: self.extensions.clone(),
            force_command: self.force_command.clone(),
            source_address: self.source_address.clone(),
        })
    }
}

fn unknown_role(role: &str) -> Denial {
    Denial {
        code: DenialCode::UnknownRole,
        rule: "role".into(),
        message: format!(
            "no role named {}; roles are the file names in the CA's policy directory",
            short(role)
        ),
    }
}

impl Policy {
    /// Looks up `role` and evaluates a host certificate request against it.
    pub fn evaluate_host(
        &self,
        role: &str,
        issuer: &str,
        claims: &Map<String, Value>,
        req: &HostCertRequest,
    ) -> Result<Grant, Denial> {
        match self.roles.get(role) {
            Some(r) => r.evaluate_host(issuer, claims, req),
            None => Err(unknown_role(role)),
        }
    }

    /// Looks up `role` and evaluates the request against it.
    pub fn evaluate(
        &self,
        role: &str,
        issuer: &str,
        claims: &Map<String, Value>,
        req: &CertRequest,
    ) -> Result<Grant, Denial> {
        match self.roles.get(role) {
            Some(r) => r.evaluate(issuer, claims, req),
            None => Err(unknown_role(role)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role() -> Role {
        load::parse_role(
            "deploy",
            std::path::Path::new("deploy.toml"),
            r#"
description = "d"
owner = "o@example.com"
issuer = "gh"
principals = ["deploy", "gh-{repository_owner}"]
max_ttl = "10m"
default_ttl = "5m"
extensions = ["permit-pty"]
[claims]
sub = "repo:acme/api:ref:refs/heads/main"
repository = ["acme/*", "other/x"]
"#,
        )
        .unwrap()
    }

    fn claims() -> Map<String, Value> {
        json!({"sub": "repo:acme/api:ref:refs/heads/main", "repository": "acme/api", "repository_owner": "acme"})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn matching_claims_get_all_principals_and_default_ttl() {
        let g = role()
            .evaluate("gh", &claims(), &CertRequest::default())
            .unwrap();
        let p: Vec<&str> = g.principals.iter().map(|p| p.as_str()).collect();
        assert_eq!(p, ["deploy", "gh-acme"]);
        assert_eq!(g.ttl, Duration::from_secs(300));
        assert_eq!(g.extensions, vec![Extension::PermitPty]);
    }

    #[test]
    fn mismatched_claim_is_denied_naming_the_rule() {
        let mut c = claims();
        c.insert("sub".into(), json!("repo:acme/api:ref:refs/heads/dev"));
        let d = role()
            .evaluate("gh", &c, &CertRequest::default())
            .unwrap_err();
        assert_eq!(d.code, DenialCode::ClaimMismatch);
        assert_eq!(d.rule, "deploy.toml claims.sub");
    }

    #[test]
    fn missing_claim_never_matches() {
        let mut c = claims();
        c.remove("repository");
        let d = role()
            .evaluate("gh", &c, &CertRequest::default())
            .unwrap_err();
        assert!(d.message.contains("no claim"));
    }

    #[test]
    fn array_claims_match_if_any_element_matches() {
        let mut c = claims();
        c.insert("repository".into(), json!(["zzz", "other/x"]));
        assert!(role().evaluate("gh", &c, &CertRequest::default()).is_ok());
    }

    #[test]
    fn other_issuer_is_denied() {
        let d = role()
            .evaluate("gitlab", &claims(), &CertRequest::default())
            .unwrap_err();
        assert_eq!(d.code, DenialCode::IssuerMismatch);
    }

    #[test]
    fn ttl_above_max_is_never_granted() {
        let r = role();
        let req = CertRequest {
            ttl: Some(Duration::from_secs(601)),
            ..Default::default()
        };
        assert_eq!(
            r.evaluate("gh", &claims(), &req).unwrap_err().code,
            DenialCode::TtlExceedsMax
        );
        let req = CertRequest {
            ttl: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        assert_eq!(
            r.evaluate("gh", &claims(), &req).unwrap().ttl,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn requested_principals_must_be_a_subset() {
        let r = role();
        let req = CertRequest {
            principals: Some(vec!["deploy".into()]),
            ..Default::default()
        };
        assert_eq!(
            r.evaluate("gh", &claims(), &req).unwrap().principals.len(),
            1
        );
        let req = CertRequest {
            principals: Some(vec!["root".into()]),
            ..Default::default()
        };
        assert_eq!(
            r.evaluate("gh", &claims(), &req).unwrap_err().code,
            DenialCode::PrincipalNotAllowed
        );
    }

    #[test]
    fn injected_template_values_are_refused() {
        let r = role();
        for evil in ["a,root", "*", "acme\nroot", "аcme", "", "a b", "x\u{0}"] {
            let mut c = claims();
            c.insert("repository_owner".into(), json!(evil));
            let d = r.evaluate("gh", &c, &CertRequest::default()).unwrap_err();
            assert_eq!(d.code, DenialCode::PrincipalInvalid, "{evil:?}");
        }
        let mut c = claims();
        c.insert("repository_owner".into(), json!(["acme"]));
        assert!(r.evaluate("gh", &c, &CertRequest::default()).is_err());
        // A claim-only template must not yield an option-looking principal.
        let mut bare = r.clone();
        bare.principals = vec![load::parse_template_for_test("{repository_owner}")];
        let mut c = claims();
        c.insert("repository_owner".into(), json!("-oProxyCommand=x"));
        let d = bare
            .evaluate("gh", &c, &CertRequest::default())
            .unwrap_err();
        assert_eq!(d.code, DenialCode::PrincipalInvalid);
    }

    #[test]
    fn unknown_role_is_denied() {
        let p = Policy::default();
        let d = p
            .evaluate("nope", "gh", &claims(), &CertRequest::default())
            .unwrap_err();
        assert_eq!(d.code, DenialCode::UnknownRole);
    }
}
