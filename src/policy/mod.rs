//! Roles from `ca-policy/<role>.toml`, and the pure decision
//! `(role, verified claims, request, now) -> Grant | Denial`.
//!
//! Policy knows nothing of JWTs or HTTP: it receives claims that the token
//! verifier already checked, and returns a grant that minting turns into a
//! certificate, or a denial that names the rule that said no. Time is passed
//! in, never read here.
//!
//! - [`load`]: role files, validated with `file:line` errors.
//! - [`window`]: `[[window]]` time windows in IANA time zones.
//! - [`limits`]: key types, RSA size, rate limits.
//! - [`lint`]: warnings about risky grants (`mayfly policy check`).
//! - [`cases`]: table-driven policy tests (`mayfly policy test --cases`).
//! - [`explain`]: a decision step by step (`mayfly policy explain`).

pub mod approval;
pub mod cases;
pub mod explain;
pub mod glob;
pub mod history;
pub mod limits;
pub mod lint;
pub mod load;
pub mod window;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::ca::{CertKind, Extension, Principal};
use explain::{Trace, Verdict};
pub use glob::Pattern;
pub use limits::{KeyFacts, KeyType, RateLimit};
pub use load::{load_dir, PolicyError};
pub use window::Window;

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
    /// The line of `issuer` in the file (for errors that point at it).
    pub issuer_line: usize,
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
    /// Just-in-time: approvals needed before a certificate is minted.
    pub approval: Option<crate::policy::approval::ApprovalPolicy>,
    /// User CA key group: roles of a group are signed by their own CA key,
    /// so hosts can trust one group only. `None`: the default user CA.
    pub ca_group: Option<String>,
    /// `[[window]]`s: when the role may be used. Empty: at any time.
    pub windows: Vec<Window>,
    /// Subject key types accepted; by default every type mayfly accepts.
    pub key_types: Vec<KeyType>,
    /// Smallest RSA subject key accepted, in bits (never below 3072).
    pub min_rsa_bits: u32,
    /// Claim whose value (an IP address or CIDR, or a list of them) becomes
    /// the `source-address` critical option.
    pub source_address_claim: Option<String>,
    /// Most requests per period for the whole role (enforced by the service).
    pub rate_limit: Option<RateLimit>,
    /// Most requests per period for one identity (issuer and subject) in
    /// this role (enforced by the service).
    pub identity_rate_limit: Option<RateLimit>,
    /// Most unexpired certificates one identity may hold in this role
    /// (enforced by the service).
    pub max_active_certs: Option<u32>,
    /// 1-based line of each key as written (`max_ttl`, `claims.sub`,
    /// `window.0`), for warnings and messages.
    pub lines: BTreeMap<String, usize>,
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
    /// Unix seconds when the time window this grant was made in closes; the
    /// certificate must not be valid after it (`ttl` is already clipped).
    pub window_end: Option<u64>,
    /// The role that granted.
    pub role: RoleName,
    /// Subject key types the role accepts (see [`Grant::admit_key`]).
    pub key_types: Vec<KeyType>,
    /// Smallest RSA subject key the role accepts.
    pub min_rsa_bits: u32,
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
    /// The identity already holds the most valid certificates its role allows.
    TooManyActiveCerts,
    /// The request came outside every time window of the role.
    OutsideWindow,
    /// The subject key's type or size is not accepted by the role.
    KeyTypeNotAllowed,
    /// `source_address_claim` did not give usable addresses.
    SourceAddressInvalid,
    /// A redemption asked for more than its approval covers.
    ApprovalExceeded,
    /// A renewal presented a certificate that was revoked.
    RenewedCertRevoked,
}

impl DenialCode {
    /// Every code, for validating test cases and documenting the API.
    pub const ALL: [DenialCode; 15] = [
        DenialCode::UnknownRole,
        DenialCode::IssuerMismatch,
        DenialCode::ClaimMismatch,
        DenialCode::PrincipalNotAllowed,
        DenialCode::PrincipalInvalid,
        DenialCode::TtlExceedsMax,
        DenialCode::WrongCertType,
        DenialCode::Disabled,
        DenialCode::NotAdmin,
        DenialCode::TooManyActiveCerts,
        DenialCode::OutsideWindow,
        DenialCode::KeyTypeNotAllowed,
        DenialCode::SourceAddressInvalid,
        DenialCode::ApprovalExceeded,
        DenialCode::RenewedCertRevoked,
    ];

    /// Parses a stable string code.
    pub fn parse(s: &str) -> Option<DenialCode> {
        DenialCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

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
            DenialCode::TooManyActiveCerts => "too_many_active_certs",
            DenialCode::OutsideWindow => "outside_window",
            DenialCode::KeyTypeNotAllowed => "key_type_not_allowed",
            DenialCode::SourceAddressInvalid => "source_address_invalid",
            DenialCode::ApprovalExceeded => "approval_exceeded",
            DenialCode::RenewedCertRevoked => "renewed_certificate_revoked",
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
    match_claims_traced(rules, claims, &mut Trace::off())
}

/// One claim rule: the value and pattern that matched, or why none did.
fn match_rule(rule: &ClaimRule, claims: &Map<String, Value>) -> Result<String, String> {
    let Some(v) = claims.get(&rule.claim) else {
        return Err(format!("token has no claim {:?}", rule.claim));
    };
    let values = claim_values(v);
    for val in &values {
        if let Some(p) = rule.patterns.iter().find(|p| p.matches(val)) {
            return Ok(format!("{} matches {:?}", short(val), p.as_str()));
        }
    }
    let wanted: Vec<&str> = rule.patterns.iter().map(|p| p.as_str()).collect();
    let got = values.first().map(|s| short(s)).unwrap_or_default();
    Err(format!(
        "claim {:?} is {got}, which matches none of {wanted:?}",
        rule.claim
    ))
}

/// As [`match_claims`]; when tracing, every rule is checked and recorded,
/// and the first failure is still the one returned.
fn match_claims_traced(
    rules: &[ClaimRule],
    claims: &Map<String, Value>,
    t: &mut Trace,
) -> Result<(), (String, String)> {
    let mut first = None;
    for rule in rules {
        match match_rule(rule, claims) {
            Ok(how) => {
                if t.is_on() {
                    t.step(Verdict::Pass, &format!("claims.{}", rule.claim), || how);
                }
            }
            Err(why) => {
                let name = format!("claims.{}", rule.claim);
                t.step(Verdict::Fail, &name, || why.clone());
                if first.is_none() {
                    first = Some((name, why));
                }
                if !t.is_on() {
                    break;
                }
            }
        }
    }
    first.map_or(Ok(()), Err)
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
            window_end: None,
            role: self.name.clone(),
            key_types: self.key_types.clone(),
            min_rsa_bits: self.min_rsa_bits,
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

    /// Decides one user certificate request at `now` (unix seconds). Pure:
    /// same inputs, same answer. The subject key is checked separately with
    /// [`Grant::admit_key`].
    pub fn evaluate(
        &self,
        issuer: &str,
        claims: &Map<String, Value>,
        req: &CertRequest,
        now: u64,
    ) -> Result<Grant, Denial> {
        self.decide(issuer, claims, req, now, &mut Trace::off())
    }

    /// The 1-based line of `key` in the role file (1 if unknown).
    pub fn line(&self, key: &str) -> usize {
        self.lines.get(key).copied().unwrap_or(1)
    }

    /// [`Role::evaluate`], recording each step in `t`.
    pub(crate) fn decide(
        &self,
        issuer: &str,
        claims: &Map<String, Value>,
        req: &CertRequest,
        now: u64,
        t: &mut Trace,
    ) -> Result<Grant, Denial> {
        if issuer != self.issuer {
            let d = self.deny(
                DenialCode::IssuerMismatch,
                "issuer",
                format!(
                    "role accepts tokens from issuer {:?}, this one is from {issuer:?}",
                    self.issuer
                ),
            );
            t.step(Verdict::Fail, "issuer", || d.message.clone());
            return Err(d);
        }
        t.step(Verdict::Pass, "issuer", || {
            format!("token is from {issuer:?}, the role's issuer")
        });
        if let Err((rule, message)) = match_claims_traced(&self.claims, claims, t) {
            return Err(self.deny(DenialCode::ClaimMismatch, &rule, message));
        }
        if self.cert_type != CertKind::User {
            let d = self.deny(
                DenialCode::WrongCertType,
                "cert_type",
                "this role issues host certificates; request them with POST /v1/certs/host".into(),
            );
            t.step(Verdict::Fail, "cert_type", || d.message.clone());
            return Err(d);
        }
        let window_end = self.check_window(now, t)?;
        let granted = self.principals_for(claims).inspect_err(|d| {
            t.step(Verdict::Fail, "principals", || d.message.clone());
        })?;
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
                            let d = self.deny(
                                DenialCode::PrincipalNotAllowed,
                                "principals",
                                format!(
                                    "principal {} is not granted; this role grants {allowed:?}",
                                    short(a)
                                ),
                            );
                            t.step(Verdict::Fail, "principals", || d.message.clone());
                            return Err(d);
                        }
                    }
                }
                out
            }
        };
        t.step(Verdict::Pass, "principals", || {
            let written: Vec<&str> = self.principals.iter().map(|p| p.source.as_str()).collect();
            let got: Vec<&str> = principals.iter().map(|p| p.as_str()).collect();
            match &req.principals {
                Some(asked) if !asked.is_empty() => {
                    format!("{written:?} grant {got:?}, all of which were asked for")
                }
                _ => format!("{written:?} -> {got:?}"),
            }
        });
        let source_address = self.source_address_for(claims, t)?;
        let mut ttl = self.ttl_for(req.ttl).inspect_err(|d| {
            t.step(Verdict::Fail, "max_ttl", || d.message.clone());
        })?;
        t.step(Verdict::Pass, "ttl", || match req.ttl {
            None => format!(
                "default_ttl {}",
                humantime::format_duration(self.default_ttl)
            ),
            Some(asked) => format!(
                "asked for {}, within max_ttl {}",
                humantime::format_duration(asked),
                humantime::format_duration(self.max_ttl)
            ),
        });
        if let Some(end) = window_end {
            let left = Duration::from_secs(end.saturating_sub(now));
            if left < ttl {
                ttl = left;
                t.step(Verdict::Info, "ttl", || {
                    format!(
                        "clipped to {} so the certificate expires when the window closes",
                        humantime::format_duration(left)
                    )
                });
            }
        }
        t.step(Verdict::Info, "extensions", || {
            let e: Vec<&str> = self.extensions.iter().map(|e| e.as_str()).collect();
            let mut s = format!("{e:?}");
            if let Some(fc) = &self.force_command {
                s.push_str(&format!(", force_command {fc:?}"));
            }
            s
        });
        Ok(Grant {
            principals,
            ttl,
            extensions: self.extensions.clone(),
            force_command: self.force_command.clone(),
            source_address,
            window_end,
            role: self.name.clone(),
            key_types: self.key_types.clone(),
            min_rsa_bits: self.min_rsa_bits,
        })
    }

    /// The end of the open window at `now` (unix seconds), `None` if the
    /// role has no windows, or an `outside_window` denial naming the next
    /// opening. A window closing within [`load::MIN_TTL`] counts as closed.
    fn check_window(&self, now: u64, t: &mut Trace) -> Result<Option<u64>, Denial> {
        if self.windows.is_empty() {
            t.step(Verdict::Info, "window", || {
                "none declared: the role may be used at any time".into()
            });
            return Ok(None);
        }
        let at = window::timestamp_from_unix(now);
        let (why, next) = match window::state(&self.windows, at) {
            window::WindowState::Open { index, closes } => {
                let end = window::unix_from_timestamp(closes);
                let w = &self.windows[index];
                if end.saturating_sub(now) >= load::MIN_TTL.as_secs() {
                    t.step(Verdict::Pass, "window", || {
                        format!(
                            "{} ({w}) is open at {}; it closes {}",
                            window_label(index),
                            w.show(at),
                            w.show(closes)
                        )
                    });
                    return Ok(Some(end));
                }
                (
                    format!(
                        "the window closes {}, in {}s, too soon for a certificate",
                        w.show(closes),
                        end.saturating_sub(now)
                    ),
                    window::next_opening(&self.windows, closes),
                )
            }
            window::WindowState::Closed { next } => {
                let w = next.map_or(&self.windows[0], |n| &self.windows[n.index]);
                (
                    format!("{} is outside every window of this role", w.show(at)),
                    next,
                )
            }
        };
        let message = match next {
            Some(n) => format!(
                "{why}; next window opens {}",
                self.windows[n.index].show(n.at)
            ),
            None => format!(
                "{why}; no window opens in the next {} days",
                window::SEARCH_DAYS
            ),
        };
        t.step(Verdict::Fail, "window", || message.clone());
        Err(self.deny(DenialCode::OutsideWindow, "window", message))
    }

    /// The `source-address` critical option: from `source_address_claim`
    /// (each address inside `source_address`, if that is set too) or the
    /// static `source_address`.
    fn source_address_for(
        &self,
        claims: &Map<String, Value>,
        t: &mut Trace,
    ) -> Result<Vec<IpNet>, Denial> {
        let Some(c) = &self.source_address_claim else {
            if !self.source_address.is_empty() {
                t.step(Verdict::Info, "source_address", || {
                    let a: Vec<String> =
                        self.source_address.iter().map(|a| a.to_string()).collect();
                    format!("{a:?}")
                });
            }
            return Ok(self.source_address.clone());
        };
        let fail = |t: &mut Trace, message: String| {
            t.step(Verdict::Fail, "source_address_claim", || message.clone());
            self.deny(
                DenialCode::SourceAddressInvalid,
                "source_address_claim",
                message,
            )
        };
        let values = match claims.get(c) {
            None => {
                return Err(fail(
                    t,
                    format!("token has no claim {c:?}, which source_address_claim takes source-address from"),
                ))
            }
            Some(v) => claim_values(v),
        };
        if values.is_empty() || values.len() > limits::MAX_CLAIMED_ADDRESSES {
            return Err(fail(
                t,
                format!(
                    "claim {c:?} must hold 1 to {} IP addresses or CIDRs",
                    limits::MAX_CLAIMED_ADDRESSES
                ),
            ));
        }
        let mut out: Vec<IpNet> = Vec::with_capacity(values.len());
        for v in &values {
            let Some(net) = limits::parse_net(v) else {
                return Err(fail(
                    t,
                    format!(
                        "claim {c:?} is {}, which is not an IP address or CIDR",
                        short(v)
                    ),
                ));
            };
            if net.prefix_len() == 0 {
                return Err(fail(
                    t,
                    format!("claim {c:?} is {net}, which would allow any source address"),
                ));
            }
            if !self.source_address.is_empty()
                && !self.source_address.iter().any(|s| s.contains(&net))
            {
                let allowed: Vec<String> =
                    self.source_address.iter().map(|a| a.to_string()).collect();
                return Err(fail(
                    t,
                    format!("claim {c:?} is {net}, which is outside source_address {allowed:?}"),
                ));
            }
            if !out.contains(&net) {
                out.push(net);
            }
        }
        t.step(Verdict::Pass, "source_address_claim", || {
            let a: Vec<String> = out.iter().map(|a| a.to_string()).collect();
            format!("claim {c:?} gives source-address {a:?}")
        });
        Ok(out)
    }
}

/// `window 1`, counting from 1 as a reader of the file does.
fn window_label(index: usize) -> String {
    format!("window {}", index + 1)
}

impl Grant {
    /// Checks the subject key against the role's `key_types` and
    /// `min_rsa_bits`. The service calls this with the bot's key before
    /// minting.
    pub fn admit_key(&self, key: &KeyFacts) -> Result<(), Denial> {
        self.admit_key_traced(key, &mut Trace::off())
    }

    pub(crate) fn admit_key_traced(&self, key: &KeyFacts, t: &mut Trace) -> Result<(), Denial> {
        let deny = |t: &mut Trace, rule: &str, message: String| {
            t.step(Verdict::Fail, rule, || message.clone());
            Denial {
                code: DenialCode::KeyTypeNotAllowed,
                rule: format!("{}.toml {rule}", self.role),
                message,
            }
        };
        let Some(kt) = KeyType::parse(&key.algorithm).filter(|k| self.key_types.contains(k)) else {
            let allowed: Vec<&str> = self.key_types.iter().map(|k| k.as_str()).collect();
            return Err(deny(
                t,
                "key_types",
                format!(
                    "public_key type {} is not accepted by this role; use one of {allowed:?}",
                    short(&key.algorithm)
                ),
            ));
        };
        t.step(Verdict::Pass, "key_types", || {
            format!("{kt} is one of the role's key types")
        });
        if kt == KeyType::Rsa {
            match key.rsa_bits {
                Some(b) if b >= self.min_rsa_bits => {
                    t.step(Verdict::Pass, "min_rsa_bits", || {
                        format!("{b} bits, at least {}", self.min_rsa_bits)
                    });
                }
                got => {
                    return Err(deny(
                        t,
                        "min_rsa_bits",
                        format!(
                            "RSA public_key has {} bits; this role requires at least {}",
                            got.map_or("an unknown number of".to_string(), |b| b.to_string()),
                            self.min_rsa_bits
                        ),
                    ))
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn unknown_role(role: &str) -> Denial {
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
    /// Every `ca_group` named by a role.
    pub fn ca_groups(&self) -> std::collections::BTreeSet<String> {
        self.roles
            .values()
            .filter_map(|r| r.ca_group.clone())
            .collect()
    }

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

    /// Looks up `role` and evaluates the request against it at `now`
    /// (unix seconds).
    pub fn evaluate(
        &self,
        role: &str,
        issuer: &str,
        claims: &Map<String, Value>,
        req: &CertRequest,
        now: u64,
    ) -> Result<Grant, Denial> {
        match self.roles.get(role) {
            Some(r) => r.evaluate(issuer, claims, req, now),
            None => Err(unknown_role(role)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// 2026-11-24T12:00:00Z, a Tuesday.
    const NOW: u64 = 1_795_521_600;

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
            .evaluate("gh", &claims(), &CertRequest::default(), NOW)
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
            .evaluate("gh", &c, &CertRequest::default(), NOW)
            .unwrap_err();
        assert_eq!(d.code, DenialCode::ClaimMismatch);
        assert_eq!(d.rule, "deploy.toml claims.sub");
    }

    #[test]
    fn missing_claim_never_matches() {
        let mut c = claims();
        c.remove("repository");
        let d = role()
            .evaluate("gh", &c, &CertRequest::default(), NOW)
            .unwrap_err();
        assert!(d.message.contains("no claim"));
    }

    #[test]
    fn array_claims_match_if_any_element_matches() {
        let mut c = claims();
        c.insert("repository".into(), json!(["zzz", "other/x"]));
        assert!(role()
            .evaluate("gh", &c, &CertRequest::default(), NOW)
            .is_ok());
    }

    #[test]
    fn other_issuer_is_denied() {
        let d = role()
            .evaluate("gitlab", &claims(), &CertRequest::default(), NOW)
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
            r.evaluate("gh", &claims(), &req, NOW).unwrap_err().code,
            DenialCode::TtlExceedsMax
        );
        let req = CertRequest {
            ttl: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        assert_eq!(
            r.evaluate("gh", &claims(), &req, NOW).unwrap().ttl,
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
            r.evaluate("gh", &claims(), &req, NOW)
                .unwrap()
                .principals
                .len(),
            1
        );
        let req = CertRequest {
            principals: Some(vec!["root".into()]),
            ..Default::default()
        };
        assert_eq!(
            r.evaluate("gh", &claims(), &req, NOW).unwrap_err().code,
            DenialCode::PrincipalNotAllowed
        );
    }

    #[test]
    fn injected_template_values_are_refused() {
        let r = role();
        for evil in ["a,root", "*", "acme\nroot", "аcme", "", "a b", "x\u{0}"] {
            let mut c = claims();
            c.insert("repository_owner".into(), json!(evil));
            let d = r
                .evaluate("gh", &c, &CertRequest::default(), NOW)
                .unwrap_err();
            assert_eq!(d.code, DenialCode::PrincipalInvalid, "{evil:?}");
        }
        let mut c = claims();
        c.insert("repository_owner".into(), json!(["acme"]));
        assert!(r.evaluate("gh", &c, &CertRequest::default(), NOW).is_err());
        // A claim-only template must not yield an option-looking principal.
        let mut bare = r.clone();
        bare.principals = vec![load::parse_template_for_test("{repository_owner}")];
        let mut c = claims();
        c.insert("repository_owner".into(), json!("-oProxyCommand=x"));
        let d = bare
            .evaluate("gh", &c, &CertRequest::default(), NOW)
            .unwrap_err();
        assert_eq!(d.code, DenialCode::PrincipalInvalid);
    }

    #[test]
    fn unknown_role_is_denied() {
        let p = Policy::default();
        let d = p
            .evaluate("nope", "gh", &claims(), &CertRequest::default(), NOW)
            .unwrap_err();
        assert_eq!(d.code, DenialCode::UnknownRole);
    }

    fn windowed(extra: &str) -> Role {
        load::parse_role(
            "nightly",
            std::path::Path::new("nightly.toml"),
            &format!(
                r#"description = "d"
owner = "o@example.com"
issuer = "gh"
principals = ["migrate"]
max_ttl = "30m"
default_ttl = "20m"
{extra}
[claims]
sub = "repo:acme/db:ref:refs/heads/main"

[[window]]
days = ["mon-fri"]
start = "01:00"
end = "03:00"
timezone = "Europe/Berlin"

[[window]]
days = ["sat"]
start = "23:00"
end = "01:00"
timezone = "Europe/Berlin"
"#
            ),
        )
        .unwrap()
    }

    fn at(s: &str) -> u64 {
        window::unix_from_timestamp(window::parse_instant(s).unwrap())
    }

    fn db_claims() -> Map<String, Value> {
        json!({"sub": "repo:acme/db:ref:refs/heads/main", "client_ip": "10.1.2.3"})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn inside_a_window_the_ttl_is_clipped_to_the_window_end() {
        let r = windowed("");
        // Tuesday 02:50 CET: 10 minutes left of a 20 minute default.
        let now = at("2026-11-24T02:50:00+01:00");
        let g = r
            .evaluate("gh", &db_claims(), &CertRequest::default(), now)
            .unwrap();
        assert_eq!(g.window_end, Some(at("2026-11-24T03:00:00+01:00")));
        assert_eq!(g.ttl, Duration::from_secs(600));
        // Early in the window the role's TTL applies unchanged.
        let now = at("2026-11-24T01:05:00+01:00");
        let g = r
            .evaluate("gh", &db_claims(), &CertRequest::default(), now)
            .unwrap();
        assert_eq!(g.ttl, Duration::from_secs(1200));
        assert!(now + g.ttl.as_secs() <= g.window_end.unwrap());
        // Asking above max_ttl is still refused as such, even when the window would clip it.
        let req = CertRequest {
            ttl: Some(Duration::from_secs(3600)),
            ..Default::default()
        };
        assert_eq!(
            r.evaluate("gh", &db_claims(), &req, now).unwrap_err().code,
            DenialCode::TtlExceedsMax
        );
    }

    #[test]
    fn outside_every_window_is_denied_naming_the_next_opening() {
        let r = windowed("");
        let d = r
            .evaluate(
                "gh",
                &db_claims(),
                &CertRequest::default(),
                at("2026-11-24T12:00:00+01:00"),
            )
            .unwrap_err();
        assert_eq!(d.code, DenialCode::OutsideWindow);
        assert_eq!(d.code.as_str(), "outside_window");
        assert_eq!(d.rule, "nightly.toml window");
        assert!(
            d.message
                .ends_with("next window opens 2026-11-25T01:00:00+01:00 (Europe/Berlin)"),
            "{}",
            d.message
        );
        // Friday afternoon: the Saturday late window comes first.
        let d = r
            .evaluate(
                "gh",
                &db_claims(),
                &CertRequest::default(),
                at("2026-11-27T15:00:00+01:00"),
            )
            .unwrap_err();
        assert!(
            d.message
                .ends_with("next window opens 2026-11-28T23:00:00+01:00 (Europe/Berlin)"),
            "{}",
            d.message
        );
        // Sunday 00:30 is inside Saturday's window, which spans midnight.
        let g = r
            .evaluate(
                "gh",
                &db_claims(),
                &CertRequest::default(),
                at("2026-11-29T00:30:00+01:00"),
            )
            .unwrap();
        assert_eq!(g.ttl, Duration::from_secs(1200));
        assert_eq!(g.window_end, Some(at("2026-11-29T01:00:00+01:00")));
    }

    #[test]
    fn a_window_about_to_close_counts_as_closed() {
        let r = windowed("");
        let d = r
            .evaluate(
                "gh",
                &db_claims(),
                &CertRequest::default(),
                at("2026-11-24T02:59:55+01:00"),
            )
            .unwrap_err();
        assert_eq!(d.code, DenialCode::OutsideWindow);
        assert!(d.message.contains("in 5s"), "{}", d.message);
        assert!(d
            .message
            .ends_with("2026-11-25T01:00:00+01:00 (Europe/Berlin)"));
    }

    #[test]
    fn dst_nights_shorten_and_lengthen_the_window() {
        // Both DST changes in Europe/Berlin fall on Sunday nights.
        let mut sunday = windowed("");
        sunday.windows = vec![Window::new(
            window::Days::parse(&["sun"]).unwrap(),
            window::parse_hhmm("01:00").unwrap(),
            window::parse_hhmm("03:00").unwrap(),
            "Europe/Berlin",
        )
        .unwrap()];
        // Spring forward: the clocks jump from 02:00 CET to 03:00 CEST, so
        // at 01:45 CET only a quarter of an hour is left.
        let g = sunday
            .evaluate(
                "gh",
                &db_claims(),
                &CertRequest::default(),
                at("2026-03-29T01:45:00+01:00"),
            )
            .unwrap();
        assert_eq!(g.window_end, Some(at("2026-03-29T03:00:00+02:00")));
        assert_eq!(g.ttl, Duration::from_secs(900));
        // Fall back: at 02:30 CEST, 01:30 real hours are left (02:30 CEST ->
        // 02:00 CET -> 03:00 CET); the role's 20 minute default applies.
        let g = sunday
            .evaluate(
                "gh",
                &db_claims(),
                &CertRequest::default(),
                at("2026-10-25T02:30:00+02:00"),
            )
            .unwrap();
        assert_eq!(g.window_end, Some(at("2026-10-25T03:00:00+01:00")));
        assert_eq!(g.ttl, Duration::from_secs(1200));
        // ... and during the repeated hour, 02:45 CET still has 15 minutes.
        let g = sunday
            .evaluate(
                "gh",
                &db_claims(),
                &CertRequest::default(),
                at("2026-10-25T02:45:00+01:00"),
            )
            .unwrap();
        assert_eq!(g.ttl, Duration::from_secs(900));
    }

    #[test]
    fn key_types_and_rsa_size_are_checked_against_the_grant() {
        let r = windowed("key_types = [\"ssh-ed25519\", \"ssh-rsa\"]\nmin_rsa_bits = 4096");
        let g = r
            .evaluate(
                "gh",
                &db_claims(),
                &CertRequest::default(),
                at("2026-11-24T01:30:00+01:00"),
            )
            .unwrap();
        assert!(g
            .admit_key(&KeyFacts::from_openssh(limits::tests::ED25519).unwrap())
            .is_ok());
        assert!(g
            .admit_key(&KeyFacts::from_openssh(limits::tests::RSA_4096).unwrap())
            .is_ok());
        let d = g
            .admit_key(&KeyFacts::from_openssh(limits::tests::RSA_3072).unwrap())
            .unwrap_err();
        assert_eq!(d.code, DenialCode::KeyTypeNotAllowed);
        assert_eq!(d.rule, "nightly.toml min_rsa_bits");
        assert!(d.message.contains("3072 bits"), "{}", d.message);
        let d = g
            .admit_key(&KeyFacts::from_openssh(limits::tests::ECDSA_P256).unwrap())
            .unwrap_err();
        assert_eq!(d.rule, "nightly.toml key_types");
        assert!(d.message.contains("ecdsa-sha2-nistp256"), "{}", d.message);
        // RSA of unknown size is refused.
        assert!(g.admit_key(&KeyFacts::declared("ssh-rsa", None)).is_err());
        // Default: every accepted type, RSA from 3072 bits.
        let g = role()
            .evaluate("gh", &claims(), &CertRequest::default(), NOW)
            .unwrap();
        for k in [
            limits::tests::ED25519,
            limits::tests::ECDSA_P256,
            limits::tests::RSA_3072,
        ] {
            assert!(
                g.admit_key(&KeyFacts::from_openssh(k).unwrap()).is_ok(),
                "{k}"
            );
        }
    }

    #[test]
    fn source_address_comes_from_a_claim_only_if_it_is_an_address() {
        let mut r = role();
        r.source_address_claim = Some("client_ip".into());
        let mut c = claims();
        for (v, want) in [
            (json!("10.1.2.3"), vec!["10.1.2.3/32"]),
            (json!("2001:db8::/64"), vec!["2001:db8::/64"]),
            (
                json!(["10.0.0.0/8", "192.0.2.1", "10.0.0.0/8"]),
                vec!["10.0.0.0/8", "192.0.2.1/32"],
            ),
        ] {
            c.insert("client_ip".into(), v);
            let g = r.evaluate("gh", &c, &CertRequest::default(), NOW).unwrap();
            let got: Vec<String> = g.source_address.iter().map(|a| a.to_string()).collect();
            assert_eq!(got, want);
        }
        for evil in [
            json!("10.0.0.1,0.0.0.0/0"),
            json!("0.0.0.0/0"),
            json!("::/0"),
            json!("host.example.com"),
            json!(""),
            json!([]),
            json!(167772161),
            json!({"ip": "10.0.0.1"}),
            json!(" 10.0.0.1"),
        ] {
            c.insert("client_ip".into(), evil.clone());
            let d = r
                .evaluate("gh", &c, &CertRequest::default(), NOW)
                .unwrap_err();
            assert_eq!(d.code, DenialCode::SourceAddressInvalid, "{evil}");
            assert_eq!(d.code.as_str(), "source_address_invalid");
        }
        c.remove("client_ip");
        let d = r
            .evaluate("gh", &c, &CertRequest::default(), NOW)
            .unwrap_err();
        assert!(
            d.message.contains("no claim \"client_ip\""),
            "{}",
            d.message
        );
        // With a static source_address, the claim may only narrow it.
        r.source_address = vec!["10.0.0.0/8".parse().unwrap()];
        c.insert("client_ip".into(), json!("10.9.9.9"));
        assert!(r.evaluate("gh", &c, &CertRequest::default(), NOW).is_ok());
        c.insert("client_ip".into(), json!("192.0.2.1"));
        let d = r
            .evaluate("gh", &c, &CertRequest::default(), NOW)
            .unwrap_err();
        assert!(
            d.message.contains("outside source_address"),
            "{}",
            d.message
        );
    }

    #[test]
    fn denial_codes_round_trip() {
        for c in DenialCode::ALL {
            assert_eq!(DenialCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(DenialCode::parse("nope"), None);
    }

    #[test]
    fn all_lists_every_denial_code() {
        // Exhaustive, so a new variant stops this compiling: give it the next
        // number here and add it to `DenialCode::ALL` (and `as_str`).
        fn ordinal(c: DenialCode) -> usize {
            match c {
                DenialCode::UnknownRole => 0,
                DenialCode::IssuerMismatch => 1,
                DenialCode::ClaimMismatch => 2,
                DenialCode::PrincipalNotAllowed => 3,
                DenialCode::PrincipalInvalid => 4,
                DenialCode::TtlExceedsMax => 5,
                DenialCode::WrongCertType => 6,
                DenialCode::Disabled => 7,
                DenialCode::NotAdmin => 8,
                DenialCode::TooManyActiveCerts => 9,
                DenialCode::OutsideWindow => 10,
                DenialCode::KeyTypeNotAllowed => 11,
                DenialCode::SourceAddressInvalid => 12,
                DenialCode::ApprovalExceeded => 13,
                DenialCode::RenewedCertRevoked => 14,
            }
        }
        let mut seen = vec![false; DenialCode::ALL.len()];
        for c in DenialCode::ALL {
            seen[ordinal(c)] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn explain_agrees_with_evaluate_and_shows_each_step() {
        let mut p = Policy::default();
        p.roles.insert("deploy".into(), role());
        p.roles.insert("nightly".into(), windowed(""));
        let mut bad = claims();
        bad.insert("sub".into(), json!("repo:acme/api:ref:refs/heads/dev"));
        bad.remove("repository");
        for (role, c, now) in [
            ("deploy", claims(), NOW),
            ("deploy", bad.clone(), NOW),
            ("nightly", db_claims(), at("2026-11-24T02:50:00+01:00")),
            ("nightly", db_claims(), at("2026-11-24T12:00:00+01:00")),
            ("nope", claims(), NOW),
        ] {
            let e = explain::explain(&p, role, "gh", &c, &CertRequest::default(), now, None);
            assert_eq!(
                e.decision,
                p.evaluate(role, "gh", &c, &CertRequest::default(), now)
            );
        }
        // Every claim rule is shown, though the first failure decides.
        let e = explain::explain(&p, "deploy", "gh", &bad, &CertRequest::default(), NOW, None);
        let checks: Vec<(&str, &str)> = e
            .steps
            .iter()
            .map(|s| (s.verdict.as_str(), s.check.as_str()))
            .collect();
        assert_eq!(
            checks,
            [
                ("pass", "role"),
                ("pass", "issuer"),
                ("FAIL", "claims.repository"),
                ("FAIL", "claims.sub")
            ]
        );
        assert_eq!(
            e.decision.unwrap_err().rule,
            "deploy.toml claims.repository"
        );
    }

    proptest::proptest! {
        /// Whatever the time, a grant never outlives its window and an
        /// outside-window denial always names a later opening.
        #[test]
        fn grants_never_outlive_their_window(secs in 1_780_000_000u64..1_830_000_000) {
            let r = windowed("");
            match r.evaluate("gh", &db_claims(), &CertRequest::default(), secs) {
                Ok(g) => {
                    let end = g.window_end.unwrap();
                    proptest::prop_assert!(secs + g.ttl.as_secs() <= end);
                    proptest::prop_assert!(g.ttl >= load::MIN_TTL);
                }
                Err(d) => {
                    proptest::prop_assert_eq!(d.code, DenialCode::OutsideWindow);
                    proptest::prop_assert!(d.message.contains("next window opens"), "{}", d.message);
                }
            }
        }

        /// Whatever the request asks for, a grant has at least one
        /// principal, each non-empty and one the role grants, and a
        /// lifetime within the role's max_ttl; asking for more than
        /// max_ttl is denied, never clipped.
        #[test]
        fn grants_have_principals_and_never_exceed_max_ttl(
            asked in proptest::option::of(proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("deploy".to_string()),
                    proptest::strategy::Just("gh-acme".to_string()),
                    "[a-z-]{0,8}",
                ],
                0..4,
            )),
            ttl in proptest::option::of(0u64..100_000),
        ) {
            let r = role();
            let req = CertRequest {
                principals: asked.clone(),
                ttl: ttl.map(Duration::from_secs),
            };
            if let Ok(g) = r.evaluate("gh", &claims(), &req, NOW) {
                proptest::prop_assert!(!g.principals.is_empty());
                proptest::prop_assert!(g.principals.iter().all(|p| !p.as_str().is_empty()));
                proptest::prop_assert!(g.principals.iter().all(|p| ["deploy", "gh-acme"].contains(&p.as_str())));
                proptest::prop_assert!(g.ttl <= r.max_ttl);
                proptest::prop_assert!(g.ttl >= load::MIN_TTL);
            }
            if let Some(t) = ttl {
                if Duration::from_secs(t) > r.max_ttl {
                    proptest::prop_assert!(r.evaluate("gh", &claims(), &req, NOW).is_err());
                }
            }
        }

        /// Deny beats allow: with several claim rules, one failing rule
        /// denies however many others match, and the denial names it.
        #[test]
        fn one_failing_claim_rule_denies_whatever_else_matches(
            sub_ok in proptest::bool::ANY,
            repo_ok in proptest::bool::ANY,
            repo_as_list in proptest::bool::ANY,
        ) {
            let mut c = claims();
            if !sub_ok {
                c.insert("sub".into(), json!("repo:acme/api:ref:refs/heads/dev"));
            }
            let repo = if repo_ok { "acme/api" } else { "mallory/api" };
            c.insert(
                "repository".into(),
                if repo_as_list { json!([repo, "mallory/x"]) } else { json!(repo) },
            );
            let got = role().evaluate("gh", &c, &CertRequest::default(), NOW);
            if sub_ok && repo_ok {
                proptest::prop_assert!(got.is_ok(), "{:?}", got);
            } else {
                let d = got.unwrap_err();
                proptest::prop_assert_eq!(d.code, DenialCode::ClaimMismatch);
                // It names a rule that failed, never one that matched.
                let named_sub = d.rule.ends_with("claims.sub");
                let named_repo = d.rule.ends_with("claims.repository");
                proptest::prop_assert!(
                    (named_sub && !sub_ok) || (named_repo && !repo_ok),
                    "{}",
                    d.rule
                );
            }
        }
    }
}
