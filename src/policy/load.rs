//! Reading and validating role files. Every error carries file, line and a
//! reason; loading refuses the whole directory if any file is invalid.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::limits::{KeyType, RateLimit, RSA_CEILING_BITS, RSA_FLOOR_BITS};
use super::window::{parse_hhmm, Days, Window};
use super::{ClaimRule, Pattern, Policy, PrincipalTemplate, Role, Segment};
use crate::ca::{
    CertKind, Extension, Principal, MAX_HOST_CERT_TTL, MAX_PRINCIPALS, MAX_USER_CERT_TTL,
};

/// Shortest lifetime a role may grant; below this clock skew eats the cert.
pub const MIN_TTL: Duration = Duration::from_secs(10);

/// File names in the policy directory that are not roles.
pub const NOT_ROLES: [&str; 1] = ["cases.toml"];

/// Most `[[window]]`s one role may have.
pub const MAX_WINDOWS: usize = 32;

/// Most unexpired certificates `max_active_certs` may allow.
pub const MAX_ACTIVE_CERTS_CEILING: u32 = 1000;

/// One problem in one policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (1 if the whole file is at fault).
    pub line: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

impl std::error::Error for PolicyError {}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    description: Spanned<String>,
    owner: Spanned<String>,
    issuer: Spanned<String>,
    #[serde(default)]
    cert_type: Option<Spanned<String>>,
    #[serde(default)]
    principals: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    hostnames: Option<Spanned<Vec<Spanned<String>>>>,
    max_ttl: Spanned<String>,
    default_ttl: Option<Spanned<String>>,
    #[serde(default)]
    extensions: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    source_address: Option<Spanned<Vec<Spanned<String>>>>,
    force_command: Option<Spanned<String>>,
    claims: Option<Spanned<BTreeMap<Spanned<String>, Spanned<OneOrMany>>>>,
    #[serde(default)]
    approval: Option<Spanned<RawApproval>>,
    #[serde(default)]
    ca_group: Option<Spanned<String>>,
    #[serde(default)]
    window: Option<Spanned<Vec<Spanned<RawWindow>>>>,
    #[serde(default)]
    key_types: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    min_rsa_bits: Option<Spanned<i64>>,
    #[serde(default)]
    source_address_claim: Option<Spanned<String>>,
    #[serde(default)]
    rate_limit: Option<Spanned<String>>,
    #[serde(default)]
    identity_rate_limit: Option<Spanned<String>>,
    #[serde(default)]
    max_active_certs: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    #[serde(default)]
    days: Option<Spanned<Vec<Spanned<String>>>>,
    start: Spanned<String>,
    end: Spanned<String>,
    timezone: Spanned<String>,
}

/// Whether `name` can be a claim name (as in `{claim}` templates).
fn valid_claim_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    required: u32,
    issuer: String,
    approvers: Vec<String>,
    expires: Option<String>,
    #[serde(default)]
    distinct: Vec<String>,
    webhook: Option<String>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map(|t| t.bytes().filter(|b| *b == b'\n').count() + 1)
        .unwrap_or(1)
}

/// Whether `name` is a valid role name (also the file stem).
pub fn valid_role_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn split_template(s: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        match rest.find('{') {
            Some(0) => {
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("principal {s:?}: '{{' without '}}'"))?;
                let name = &rest[1..end];
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
                {
                    return Err(format!(
                        "principal {s:?}: bad claim name {name:?} in template"
                    ));
                }
                segments.push(Segment::Claim(name.to_string()));
                rest = &rest[end + 1..];
            }
            Some(i) => {
                segments.push(Segment::Literal(rest[..i].to_string()));
                rest = &rest[i..];
            }
            None => {
                segments.push(Segment::Literal(rest.to_string()));
                rest = "";
            }
        }
    }
    for seg in &segments {
        if let Segment::Literal(l) = seg {
            if l.contains('}') {
                return Err(format!("principal {s:?}: '}}' without '{{'"));
            }
        }
    }
    Ok(segments)
}

fn probe(segments: &[Segment]) -> String {
    segments
        .iter()
        .map(|seg| match seg {
            Segment::Literal(l) => l.as_str(),
            Segment::Claim(_) => "x",
        })
        .collect()
}

fn parse_template(s: &str) -> Result<PrincipalTemplate, String> {
    let segments = split_template(s)?;
    // Literal parts must already be grammar-clean; a claim-only principal
    // is checked at issuance time.
    Principal::parse(&probe(&segments)).map_err(|e| format!("principal {s:?}: {e}"))?;
    Ok(PrincipalTemplate {
        source: s.to_string(),
        segments,
    })
}

/// A host-name pattern: host-name characters, `*` globs, `{claim}` templates.
fn parse_hostname_pattern(s: &str) -> Result<PrincipalTemplate, String> {
    let segments = split_template(s).map_err(|e| e.replace("principal", "hostname"))?;
    let p = probe(&segments).replace('*', "x");
    if !super::valid_hostname(&p) {
        return Err(format!(
            "hostname {s:?} is not a host-name pattern (labels of a-z 0-9 -, '*' globs, {{claim}} templates)"
        ));
    }
    Ok(PrincipalTemplate {
        source: s.to_string(),
        segments,
    })
}

#[cfg(test)]
pub(crate) fn parse_template_for_test(s: &str) -> PrincipalTemplate {
    parse_template(s).expect("valid template")
}

fn parse_ttl(s: &str, field: &str, ceiling: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{field} = {s:?} is not a duration ({e}); write e.g. \"5m\""))?;
    if d < MIN_TTL {
        return Err(format!("{field} = {s:?} is below the minimum of 10s"));
    }
    if d > ceiling {
        return Err(format!(
            "{field} = {s:?} is above the ceiling of {}",
            humantime::format_duration(ceiling)
        ));
    }
    Ok(d)
}

/// Parses one role file's text. `name` is the role name (file stem).
pub fn parse_role(name: &str, file: &Path, text: &str) -> Result<Role, Vec<PolicyError>> {
    let err = |span: std::ops::Range<usize>, message: String| PolicyError {
        file: file.to_path_buf(),
        line: line_of(text, span.start),
        message,
    };
    if !valid_role_name(name) {
        return Err(vec![PolicyError {
            file: file.to_path_buf(),
            line: 1,
            message: format!(
                "role name {name:?} (the file name) must be 1-64 characters of a-z 0-9 - _, starting with a letter or digit"
            ),
        }]);
    }
    let raw: RawRole = toml::from_str(text).map_err(|e| {
        vec![err(
            e.span().unwrap_or(0..0),
            e.message().trim().to_string(),
        )]
    })?;
    let mut errors = Vec::new();
    for (field, v) in [("description", &raw.description), ("owner", &raw.owner)] {
        if v.get_ref().trim().is_empty() {
            errors.push(err(v.span(), format!("{field} must not be empty")));
        }
    }
    if raw.issuer.get_ref().is_empty() {
        errors.push(err(
            raw.issuer.span(),
            "issuer must name an [[issuer]]".into(),
        ));
    }
    let cert_type = match raw.cert_type.as_ref().map(|c| c.get_ref().as_str()) {
        None | Some("user") => CertKind::User,
        Some("host") => CertKind::Host,
        Some(other) => {
            errors.push(err(
                raw.cert_type.as_ref().map(|c| c.span()).unwrap_or(0..0),
                format!("cert_type = {other:?}; use \"user\" or \"host\""),
            ));
            CertKind::User
        }
    };
    let mut principals = Vec::new();
    let mut hostnames = Vec::new();
    match (cert_type, &raw.principals, &raw.hostnames) {
        (CertKind::User, None, _) => errors.push(PolicyError {
            file: file.to_path_buf(),
            line: 1,
            message: "principals is required: the login names this role may use".into(),
        }),
        (CertKind::User, _, Some(h)) => errors.push(err(
            h.span(),
            "hostnames is only for host roles (cert_type = \"host\")".into(),
        )),
        (CertKind::Host, Some(p), _) => errors.push(err(
            p.span(),
            "principals is only for user roles; host roles list hostnames".into(),
        )),
        (CertKind::Host, None, None) => errors.push(PolicyError {
            file: file.to_path_buf(),
            line: 1,
            message: "hostnames is required for a host role".into(),
        }),
        _ => {}
    }
    if let Some(ps) = &raw.principals {
        if ps.get_ref().is_empty() {
            errors.push(err(
                ps.span(),
                "principals must list at least one principal".into(),
            ));
        }
        if ps.get_ref().len() > MAX_PRINCIPALS {
            errors.push(err(
                ps.span(),
                format!("at most {MAX_PRINCIPALS} principals"),
            ));
        }
        for p in ps.get_ref() {
            match parse_template(p.get_ref()) {
                Ok(t) => principals.push(t),
                Err(m) => errors.push(err(p.span(), m)),
            }
        }
    }
    if let Some(hs) = &raw.hostnames {
        if hs.get_ref().is_empty() || hs.get_ref().len() > MAX_PRINCIPALS {
            errors.push(err(
                hs.span(),
                format!("hostnames must list 1 to {MAX_PRINCIPALS} names or patterns"),
            ));
        }
        for h in hs.get_ref() {
            match parse_hostname_pattern(h.get_ref()) {
                Ok(t) => hostnames.push(t),
                Err(m) => errors.push(err(h.span(), m)),
            }
        }
    }
    if cert_type == CertKind::Host {
        let forbidden = [
            (
                "extensions",
                raw.extensions
                    .as_ref()
                    .filter(|e| !e.get_ref().is_empty())
                    .map(|e| e.span()),
            ),
            (
                "source_address",
                raw.source_address.as_ref().map(|e| e.span()),
            ),
            (
                "force_command",
                raw.force_command.as_ref().map(|e| e.span()),
            ),
        ];
        for (name, span) in forbidden {
            if let Some(span) = span {
                errors.push(err(
                    span,
                    format!("{name} does not apply to host certificates"),
                ));
            }
        }
    }
    let ceiling = match cert_type {
        CertKind::User => MAX_USER_CERT_TTL,
        CertKind::Host => MAX_HOST_CERT_TTL,
    };
    let max_ttl = parse_ttl(raw.max_ttl.get_ref(), "max_ttl", ceiling)
        .map_err(|m| errors.push(err(raw.max_ttl.span(), m)))
        .ok();
    let default_ttl = match &raw.default_ttl {
        Some(d) => parse_ttl(d.get_ref(), "default_ttl", ceiling)
            .map_err(|m| errors.push(err(d.span(), m)))
            .ok(),
        None => max_ttl,
    };
    if let (Some(m), Some(d), Some(ds)) = (max_ttl, default_ttl, &raw.default_ttl) {
        if d > m {
            errors.push(err(
                ds.span(),
                format!(
                    "default_ttl {} is above max_ttl {}",
                    ds.get_ref(),
                    raw.max_ttl.get_ref()
                ),
            ));
        }
    }
    let mut extensions = Vec::new();
    if let Some(exts) = &raw.extensions {
        for e in exts.get_ref() {
            match Extension::parse(e.get_ref()) {
                Some(x) if !extensions.contains(&x) => extensions.push(x),
                Some(_) => {}
                None => {
                    let names: Vec<&str> = Extension::ALL.iter().map(|x| x.as_str()).collect();
                    errors.push(err(
                        e.span(),
                        format!("unknown extension {:?}; known: {names:?}", e.get_ref()),
                    ))
                }
            }
        }
    }
    let mut source_address = Vec::new();
    if let Some(addrs) = &raw.source_address {
        for a in addrs.get_ref() {
            let s = a.get_ref();
            let parsed = s.parse::<ipnet::IpNet>().or_else(|_| {
                s.parse::<std::net::IpAddr>()
                    .map(ipnet::IpNet::from)
                    .map_err(|_| ())
            });
            match parsed {
                Ok(n) => source_address.push(n),
                Err(_) => errors.push(err(
                    a.span(),
                    format!(
                        "source_address {s:?} is not an IP address or CIDR like \"10.0.0.0/8\""
                    ),
                )),
            }
        }
        if addrs.get_ref().is_empty() {
            errors.push(err(
                addrs.span(),
                "source_address is empty; remove it to allow any source".into(),
            ));
        }
    }
    if let Some(fc) = &raw.force_command {
        let c = fc.get_ref();
        if c.trim().is_empty() || c.chars().any(|ch| ch.is_control()) {
            errors.push(err(
                fc.span(),
                "force_command must be a non-empty single line".into(),
            ));
        }
    }
    let mut claims = Vec::new();
    match &raw.claims {
        None => errors.push(PolicyError {
            file: file.to_path_buf(),
            line: 1,
            message: "a [claims] table is required: without it any token from the issuer could use this role".into(),
        }),
        Some(c) if c.get_ref().is_empty() => errors.push(err(
            c.span(),
            "[claims] must constrain at least one claim (e.g. sub)".into(),
        )),
        Some(c) => {
            for (k, v) in c.get_ref() {
                let patterns: Vec<Pattern> = match v.get_ref() {
                    OneOrMany::One(s) => vec![Pattern::new(s)],
                    OneOrMany::Many(list) => list.iter().map(|s| Pattern::new(s)).collect(),
                };
                if patterns.is_empty() {
                    errors.push(err(
                        v.span(),
                        format!("claim {:?} lists no accepted values", k.get_ref()),
                    ));
                }
                claims.push(ClaimRule {
                    claim: k.get_ref().clone(),
                    patterns,
                });
            }
        }
    }
    let approval = match &raw.approval {
        None => None,
        Some(a) => {
            let span = a.span();
            if cert_type == CertKind::Host {
                // `POST /v1/certs/host` carries no approval_request, so every
                // host request would open a new approval that nothing redeems.
                errors.push(err(
                    span.clone(),
                    "[approval] is only for user roles; a host certificate request \
                     cannot redeem an approval, so this role could never issue: \
                     remove [approval] or make it a user role"
                        .into(),
                ));
            }
            let a = a.get_ref();
            let expires = match &a.expires {
                None => Some(std::time::Duration::from_secs(15 * 60)),
                Some(e) => {
                    match humantime::parse_duration(e) {
                        Ok(d)
                            if d >= Duration::from_secs(60)
                                && d <= crate::policy::approval::MAX_APPROVAL_EXPIRY =>
                        {
                            Some(d)
                        }
                        _ => {
                            errors.push(err(span.clone(), format!("approval.expires = {e:?} must be a duration between 1m and 24h")));
                            None
                        }
                    }
                }
            };
            if a.required == 0 || a.required > 10 {
                errors.push(err(
                    span.clone(),
                    "approval.required must be 1 to 10".into(),
                ));
            }
            if a.approvers.is_empty() {
                errors.push(err(
                    span.clone(),
                    "approval.approvers must name who may approve, e.g. [\"groups:sre\"]".into(),
                ));
            }
            let distinct =
                match crate::policy::approval::ApprovalPolicy::parse_distinct(&a.distinct) {
                    Ok(d) => d,
                    Err(m) => {
                        errors.push(err(span.clone(), m));
                        Vec::new()
                    }
                };
            let webhook = match a
                .webhook
                .as_deref()
                .map(crate::policy::approval::ApprovalPolicy::parse_webhook)
            {
                None => None,
                Some(Ok(u)) => Some(u),
                Some(Err(m)) => {
                    errors.push(err(span.clone(), format!("approval.{m}")));
                    None
                }
            };
            match (
                crate::policy::approval::ApprovalPolicy::parse_approvers(&a.approvers),
                expires,
            ) {
                (Ok(approvers), Some(expires)) => Some(crate::policy::approval::ApprovalPolicy {
                    required: a.required,
                    issuer: a.issuer.clone(),
                    approvers,
                    expires,
                    distinct,
                    webhook,
                }),
                (Err(m), _) => {
                    errors.push(err(span, m));
                    None
                }
                _ => None,
            }
        }
    };
    let mut lines = BTreeMap::new();
    {
        let mut at = |key: &str, span: std::ops::Range<usize>| {
            lines.insert(key.to_string(), line_of(text, span.start));
        };
        at("description", raw.description.span());
        at("owner", raw.owner.span());
        at("issuer", raw.issuer.span());
        at("max_ttl", raw.max_ttl.span());
        let optional = [
            ("cert_type", raw.cert_type.as_ref().map(|v| v.span())),
            ("principals", raw.principals.as_ref().map(|v| v.span())),
            ("hostnames", raw.hostnames.as_ref().map(|v| v.span())),
            ("default_ttl", raw.default_ttl.as_ref().map(|v| v.span())),
            ("extensions", raw.extensions.as_ref().map(|v| v.span())),
            (
                "source_address",
                raw.source_address.as_ref().map(|v| v.span()),
            ),
            (
                "force_command",
                raw.force_command.as_ref().map(|v| v.span()),
            ),
            ("claims", raw.claims.as_ref().map(|v| v.span())),
            ("key_types", raw.key_types.as_ref().map(|v| v.span())),
            ("min_rsa_bits", raw.min_rsa_bits.as_ref().map(|v| v.span())),
            (
                "source_address_claim",
                raw.source_address_claim.as_ref().map(|v| v.span()),
            ),
            ("rate_limit", raw.rate_limit.as_ref().map(|v| v.span())),
            (
                "identity_rate_limit",
                raw.identity_rate_limit.as_ref().map(|v| v.span()),
            ),
            (
                "max_active_certs",
                raw.max_active_certs.as_ref().map(|v| v.span()),
            ),
        ];
        for (key, span) in optional {
            if let Some(span) = span {
                at(key, span);
            }
        }
        if let Some(c) = &raw.claims {
            for k in c.get_ref().keys() {
                at(&format!("claims.{}", k.get_ref()), k.span());
            }
        }
        if let Some(ws) = &raw.window {
            for (i, w) in ws.get_ref().iter().enumerate() {
                at(&format!("window.{i}"), w.get_ref().start.span());
            }
        }
        if let Some(ps) = &raw.principals {
            for (i, p) in ps.get_ref().iter().enumerate() {
                at(&format!("principals.{i}"), p.span());
            }
        }
        if let Some(es) = &raw.extensions {
            for e in es.get_ref() {
                at(&format!("extensions.{}", e.get_ref()), e.span());
            }
        }
    }
    let mut windows = Vec::new();
    if let Some(ws) = &raw.window {
        if cert_type == CertKind::Host {
            errors.push(err(
                ws.span(),
                "[[window]] is only for user roles; host certificates are not time-boxed by windows".into(),
            ));
        }
        if ws.get_ref().len() > MAX_WINDOWS {
            errors.push(err(
                ws.span(),
                format!("at most {MAX_WINDOWS} [[window]]s per role"),
            ));
        }
        for w in ws.get_ref() {
            let w = w.get_ref();
            let days = match &w.days {
                None => Some(Days::ALL),
                Some(d) => {
                    let names: Vec<&str> =
                        d.get_ref().iter().map(|x| x.get_ref().as_str()).collect();
                    Days::parse(&names)
                        .map_err(|m| {
                            let span = d
                                .get_ref()
                                .iter()
                                .find(|x| Days::parse(&[x.get_ref()]).is_err())
                                .map_or(d.span(), |x| x.span());
                            errors.push(err(span, format!("window {m}")))
                        })
                        .ok()
                }
            };
            let start = parse_hhmm(w.start.get_ref())
                .map_err(|m| errors.push(err(w.start.span(), format!("window start {m}"))))
                .ok();
            let end = parse_hhmm(w.end.get_ref())
                .map_err(|m| errors.push(err(w.end.span(), format!("window end {m}"))))
                .ok();
            let zone = super::window::lookup_tz(w.timezone.get_ref())
                .map_err(|m| errors.push(err(w.timezone.span(), format!("window {m}"))))
                .ok();
            if let (Some(days), Some(start), Some(end), Some(_)) = (days, start, end, zone) {
                match Window::new(days, start, end, w.timezone.get_ref()) {
                    Ok(win) => windows.push(win),
                    Err(m) => errors.push(err(w.timezone.span(), m)),
                }
            }
        }
        if ws.get_ref().is_empty() {
            errors.push(err(ws.span(), "window is empty".into()));
        }
    }
    let mut key_types = Vec::new();
    match &raw.key_types {
        None => key_types.extend(KeyType::ALL),
        Some(ks) => {
            if ks.get_ref().is_empty() {
                errors.push(err(
                    ks.span(),
                    "key_types is empty, so no key could be certified; list types or remove it to accept all".into(),
                ));
            }
            for k in ks.get_ref() {
                match KeyType::parse(k.get_ref()) {
                    Some(t) if !key_types.contains(&t) => key_types.push(t),
                    Some(_) => {}
                    None => {
                        let known: Vec<&str> = KeyType::ALL.iter().map(|t| t.as_str()).collect();
                        errors.push(err(
                            k.span(),
                            format!(
                                "unknown key type {:?}; mayfly accepts {known:?}",
                                k.get_ref()
                            ),
                        ))
                    }
                }
            }
        }
    }
    let min_rsa_bits = match &raw.min_rsa_bits {
        None => RSA_FLOOR_BITS,
        Some(b) => {
            let v = *b.get_ref();
            if v < i64::from(RSA_FLOOR_BITS) || v > i64::from(RSA_CEILING_BITS) {
                errors.push(err(
                    b.span(),
                    format!("min_rsa_bits = {v} must be between {RSA_FLOOR_BITS} and {RSA_CEILING_BITS}"),
                ));
                RSA_FLOOR_BITS
            } else {
                u32::try_from(v).unwrap_or(RSA_FLOOR_BITS)
            }
        }
    };
    if let Some(c) = &raw.source_address_claim {
        if cert_type == CertKind::Host {
            errors.push(err(
                c.span(),
                "source_address_claim does not apply to host certificates".into(),
            ));
        } else if !valid_claim_name(c.get_ref()) {
            errors.push(err(
                c.span(),
                format!(
                    "source_address_claim = {:?} is not a claim name",
                    c.get_ref()
                ),
            ));
        }
    }
    let mut rate = |v: &Option<Spanned<String>>, field: &str| -> Option<RateLimit> {
        let v = v.as_ref()?;
        v.get_ref()
            .parse::<RateLimit>()
            .map_err(|m| errors.push(err(v.span(), format!("{field}: {m}"))))
            .ok()
    };
    let rate_limit = rate(&raw.rate_limit, "rate_limit");
    let identity_rate_limit = rate(&raw.identity_rate_limit, "identity_rate_limit");
    let max_active_certs = match &raw.max_active_certs {
        None => None,
        Some(m) => {
            let v = *m.get_ref();
            match u32::try_from(v) {
                Ok(n) if (1..=MAX_ACTIVE_CERTS_CEILING).contains(&n) => Some(n),
                _ => {
                    errors.push(err(
                        m.span(),
                        format!("max_active_certs = {v} must be between 1 and {MAX_ACTIVE_CERTS_CEILING}"),
                    ));
                    None
                }
            }
        }
    };
    let ca_group = match &raw.ca_group {
        None => None,
        Some(g) => {
            let v = g.get_ref();
            let ok = !v.is_empty()
                && v.len() <= 32
                && v != "default"
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                errors.push(err(
                    g.span(),
                    format!(
                        "ca_group {v:?} must be 1-32 characters of a-z 0-9 - (and not \"default\")"
                    ),
                ));
            }
            if cert_type == CertKind::Host {
                errors.push(err(
                    g.span(),
                    "ca_group applies to user roles; host certificates come from the host CA"
                        .into(),
                ));
            }
            Some(v.clone())
        }
    };
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.line);
        return Err(errors);
    }
    let (Some(max_ttl), Some(default_ttl)) = (max_ttl, default_ttl) else {
        return Err(errors);
    };
    let issuer_line = line_of(text, raw.issuer.span().start);
    Ok(Role {
        name: name.to_string(),
        file: file.to_path_buf(),
        description: raw.description.into_inner(),
        owner: raw.owner.into_inner(),
        issuer: raw.issuer.into_inner(),
        issuer_line,
        principals,
        max_ttl,
        default_ttl,
        extensions,
        source_address,
        force_command: raw.force_command.map(|f| f.into_inner()),
        claims,
        cert_type,
        hostnames,
        approval,
        ca_group,
        windows,
        key_types,
        min_rsa_bits,
        source_address_claim: raw.source_address_claim.map(|c| c.into_inner()),
        rate_limit,
        identity_rate_limit,
        max_active_certs,
        lines,
    })
}

/// A policy directory that cannot be put in force, with every problem found.
/// (What follows, refusing to start or keeping the previous policy, is the
/// caller's to say.)
#[derive(Debug, thiserror::Error)]
#[error("policy in {dir} is invalid:\n{errors}")]
pub struct InvalidPolicy {
    /// The policy directory.
    pub dir: PathBuf,
    /// One line per error.
    pub errors: String,
}

/// Loads the policy directory for a CA whose configured issuers are
/// `issuers`, or explains every problem. A role naming an issuer that is not
/// configured is only warned about: it cannot be used until it is.
pub fn load_for_issuers(dir: &Path, issuers: &[&str]) -> Result<Policy, InvalidPolicy> {
    let p = load_dir(dir).map_err(|errs| InvalidPolicy {
        dir: dir.to_path_buf(),
        errors: errs
            .iter()
            .map(|e| format!("  {e}"))
            .collect::<Vec<_>>()
            .join("\n"),
    })?;
    if let Err(errs) = check_issuers(&p, issuers) {
        for e in errs {
            tracing::warn!("{e}; this role cannot be used until the issuer is configured");
        }
    }
    Ok(p)
}

/// Loads every `*.toml` role file in `dir`. Any invalid file fails the load;
/// all errors found are returned, sorted by file and line.
pub fn load_dir(dir: &Path) -> Result<Policy, Vec<PolicyError>> {
    let fail = |message: String| {
        vec![PolicyError {
            file: dir.to_path_buf(),
            line: 1,
            message,
        }]
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| fail(format!("cannot read policy directory: {e}")))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for e in entries {
        let e = e.map_err(|e| fail(format!("cannot read policy directory: {e}")))?;
        let p = e.path();
        let fname = e.file_name().to_string_lossy().to_string();
        if fname.starts_with('.') || NOT_ROLES.contains(&fname.as_str()) {
            continue;
        }
        if p.extension().and_then(|x| x.to_str()) == Some("toml") && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    let mut hasher = Sha256::new();
    let mut roles = BTreeMap::new();
    let mut errors = Vec::new();
    for f in &files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                errors.push(PolicyError {
                    file: f.clone(),
                    line: 1,
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        let name = f
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
        match parse_role(&name, f, &text) {
            Ok(r) => {
                roles.insert(name, r);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let digest = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Policy { roles, digest })
}

/// Checks that every role names a configured issuer.
pub fn check_issuers(policy: &Policy, issuers: &[&str]) -> Result<(), Vec<PolicyError>> {
    let errors: Vec<PolicyError> = policy
        .roles
        .values()
        .filter(|r| !issuers.contains(&r.issuer.as_str()))
        .map(|r| PolicyError {
            file: r.file.clone(),
            line: r.issuer_line,
            message: format!(
                "issuer {:?} is not an [[issuer]] of the config; its issuers: {issuers:?}",
                r.issuer
            ),
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"description = "d"
owner = "o"
issuer = "gh"
principals = ["deploy"]
max_ttl = "10m"
[claims]
sub = "x"
"#;

    fn parse(text: &str) -> Result<Role, Vec<PolicyError>> {
        parse_role("r", Path::new("r.toml"), text)
    }

    #[test]
    fn good_role_parses_with_default_ttl_equal_to_max() {
        let r = parse(GOOD).unwrap();
        assert_eq!(r.default_ttl, Duration::from_secs(600));
        assert!(r.extensions.is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        let bad = GOOD.replace("principals = [\"deploy\"]", "principals = [\"a,root\"]");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e[0].line, 4, "{e:?}");
        assert!(e[0].message.contains("a,root"));
        let bad = GOOD.replace("max_ttl = \"10m\"", "max_ttl = \"10 parsecs\"");
        assert_eq!(parse(&bad).unwrap_err()[0].line, 5);
        let bad = format!("{GOOD}extensions = [\"permit-everything\"]\n");
        // extensions after [claims] is a claim (string array), so this parses
        // as a claim; put it before the table instead.
        assert!(parse(&bad).is_ok());
        let bad = GOOD.replace("[claims]", "extensions = [\"permit-all\"]\n[claims]");
        let e = parse(&bad).unwrap_err();
        assert!(e[0].message.contains("permit-all"), "{e:?}");
        assert_eq!(e[0].line, 6);
    }

    #[test]
    fn unknown_keys_and_missing_owner_are_errors() {
        let bad = GOOD.replace("owner = \"o\"\n", "");
        assert!(parse(&bad).unwrap_err()[0].message.contains("owner"));
        let bad = GOOD.replace("[claims]", "maxttl = \"1m\"\n[claims]");
        assert!(parse(&bad).unwrap_err()[0].message.contains("maxttl"));
    }

    #[test]
    fn role_without_claims_is_refused() {
        let bad = GOOD.replace("[claims]\nsub = \"x\"\n", "");
        assert!(parse(&bad).unwrap_err()[0].message.contains("[claims]"));
    }

    #[test]
    fn default_above_max_is_refused() {
        let bad = GOOD.replace(
            "max_ttl = \"10m\"",
            "max_ttl = \"10m\"\ndefault_ttl = \"11m\"",
        );
        assert!(parse(&bad).unwrap_err()[0]
            .message
            .contains("above max_ttl"));
        let bad = GOOD.replace("max_ttl = \"10m\"", "max_ttl = \"48h\"");
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn templates_parse_and_bad_templates_are_refused() {
        let t = parse_template("gh-{repository_owner}").unwrap();
        assert_eq!(t.segments.len(), 2);
        assert!(parse_template("{a").is_err());
        assert!(parse_template("a}").is_err());
        assert!(parse_template("{}").is_err());
        assert!(parse_template("-{x}").is_err());
        assert!(parse_template("a b{x}").is_err());
    }

    #[test]
    fn source_address_accepts_cidr_and_ip() {
        let r = parse(&GOOD.replace(
            "[claims]",
            "source_address = [\"10.0.0.0/8\", \"192.0.2.1\"]\n[claims]",
        ))
        .unwrap();
        assert_eq!(r.source_address.len(), 2);
        assert!(
            parse(&GOOD.replace("[claims]", "source_address = [\"10.0.0.0/33\"]\n[claims]"))
                .is_err()
        );
    }

    #[test]
    fn host_roles_list_hostnames_and_nothing_user_only() {
        let host = r#"description = "d"
owner = "o"
issuer = "k8s"
cert_type = "host"
hostnames = ["*.nodes.example.com", "{node}.example.com"]
max_ttl = "30d"
[claims]
sub = "x"
"#;
        let r = parse(host).unwrap();
        assert_eq!(r.cert_type, CertKind::Host);
        assert_eq!(r.hostnames.len(), 2);
        assert!(parse(&host.replace("max_ttl = \"30d\"", "max_ttl = \"100d\"")).is_err());
        assert!(parse(&host.replace("[claims]", "principals = [\"root\"]\n[claims]")).is_err());
        assert!(parse(&host.replace("[claims]", "force_command = \"x\"\n[claims]")).is_err());
        assert!(parse(&host.replace("*.nodes", "a,b")).is_err());
        assert!(parse(&GOOD.replace("[claims]", "hostnames = [\"a\"]\n[claims]")).is_err());
    }

    #[test]
    fn bad_role_names_are_refused() {
        assert!(parse_role("Deploy", Path::new("Deploy.toml"), GOOD).is_err());
        assert!(parse_role("-x", Path::new("-x.toml"), GOOD).is_err());
    }

    fn with(extra: &str) -> Result<Role, Vec<PolicyError>> {
        parse(&GOOD.replace("[claims]", &format!("{extra}\n[claims]")))
    }

    fn first_error(extra: &str) -> PolicyError {
        with(extra).unwrap_err().remove(0)
    }

    #[test]
    fn windows_parse_with_defaults_and_ranges() {
        let r = parse(&format!(
            "{GOOD}\n[[window]]\ndays = [\"mon-fri\", \"sun\"]\nstart = \"22:00\"\nend = \"02:00\"\ntimezone = \"europe/berlin\"\n\n[[window]]\nstart = \"12:00\"\nend = \"13:00\"\ntimezone = \"UTC\"\n"
        ))
        .unwrap();
        assert_eq!(r.windows.len(), 2);
        assert_eq!(
            r.windows[0].to_string(),
            "mon-fri,sun 22:00-02:00 (next day) Europe/Berlin"
        );
        assert_eq!(r.windows[1].to_string(), "every day 12:00-13:00 UTC");
        assert_eq!(r.line("window.0"), 11);
        assert_eq!(r.line("window.1"), 16);
    }

    #[test]
    fn bad_windows_name_the_line() {
        let win = |body: &str| parse(&format!("{GOOD}[[window]]\n{body}\n")).unwrap_err();
        let e = win(
            "days = [\"mon\", \"funday\"]\nstart = \"01:00\"\nend = \"03:00\"\ntimezone = \"UTC\"",
        );
        assert_eq!(
            (e[0].line, e[0].message.contains("funday")),
            (9, true),
            "{e:?}"
        );
        let e = win("start = \"1am\"\nend = \"03:00\"\ntimezone = \"UTC\"");
        assert_eq!(e[0].line, 9, "{e:?}");
        assert!(e[0].message.starts_with("window start"), "{e:?}");
        let e = win("start = \"01:00\"\nend = \"24:00\"\ntimezone = \"UTC\"");
        assert_eq!(e[0].line, 10, "{e:?}");
        let e = win("start = \"01:00\"\nend = \"03:00\"\ntimezone = \"Europe/Atlantis\"");
        assert_eq!(e[0].line, 11, "{e:?}");
        assert!(e[0].message.contains("Europe/Atlantis"), "{e:?}");
        let e = win("start = \"01:00\"\nend = \"03:00\"");
        assert!(e[0].message.contains("timezone"), "{e:?}");
        let e = win("start = \"01:00\"\nend = \"03:00\"\ntimezone = \"UTC\"\nzone = \"UTC\"");
        assert!(e[0].message.contains("zone"), "{e:?}");
        let host = "description = \"d\"\nowner = \"o\"\nissuer = \"k8s\"\ncert_type = \"host\"\nhostnames = [\"a.example.com\"]\nmax_ttl = \"1d\"\n[claims]\nsub = \"x\"\n[[window]]\nstart = \"01:00\"\nend = \"03:00\"\ntimezone = \"UTC\"\n";
        assert!(parse(host).unwrap_err()[0]
            .message
            .contains("only for user roles"));
    }

    #[test]
    fn approval_on_a_host_role_is_refused_with_its_line() {
        let host = "description = \"d\"\nowner = \"o\"\nissuer = \"k8s\"\ncert_type = \"host\"\n\
                    hostnames = [\"a.example.com\"]\nmax_ttl = \"1d\"\n[claims]\nsub = \"x\"\n\
                    [approval]\nrequired = 1\nissuer = \"k8s\"\napprovers = [\"groups:sre\"]\n";
        let e = parse(host).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].line, 9, "{e:?}");
        assert!(
            e[0].message.contains("[approval] is only for user roles"),
            "{e:?}"
        );
        // The same [approval] on a user role is fine.
        let user = GOOD.to_string()
            + "[approval]\nrequired = 1\nissuer = \"k8s\"\napprovers = [\"groups:sre\"]\n";
        assert!(parse(&user).expect("user role").approval.is_some());
    }

    #[test]
    fn limits_default_to_everything_mayfly_accepts() {
        let r = parse(GOOD).unwrap();
        assert_eq!(r.key_types, KeyType::ALL.to_vec());
        assert_eq!(r.min_rsa_bits, 3072);
        assert_eq!(r.source_address_claim, None);
        assert_eq!(r.rate_limit, None);
        assert_eq!(r.identity_rate_limit, None);
        assert_eq!(r.max_active_certs, None);
        assert!(r.windows.is_empty());
    }

    #[test]
    fn limits_parse() {
        let r = with(
            "key_types = [\"ssh-ed25519\", \"ecdsa-sha2-nistp256\", \"ssh-ed25519\"]\nmin_rsa_bits = 4096\nsource_address_claim = \"client_ip\"\nrate_limit = \"30/m\"\nidentity_rate_limit = \"5/m\"\nmax_active_certs = 3",
        )
        .unwrap();
        assert_eq!(r.key_types, vec![KeyType::Ed25519, KeyType::EcdsaP256]);
        assert_eq!(r.min_rsa_bits, 4096);
        assert_eq!(r.source_address_claim.as_deref(), Some("client_ip"));
        assert_eq!(r.rate_limit.unwrap().to_string(), "30/m");
        assert_eq!(r.identity_rate_limit.unwrap().count, 5);
        assert_eq!(r.max_active_certs, Some(3));
        assert_eq!(r.line("rate_limit"), 9);
    }

    #[test]
    fn bad_limits_name_the_line() {
        for (extra, needle) in [
            ("key_types = [\"ssh-dss\"]", "ssh-dss"),
            ("key_types = []", "empty"),
            ("min_rsa_bits = 2048", "between 3072"),
            ("min_rsa_bits = 99999", "between 3072"),
            ("source_address_claim = \"a b\"", "not a claim name"),
            ("rate_limit = \"fast\"", "rate_limit"),
            ("identity_rate_limit = \"0/m\"", "identity_rate_limit"),
            ("max_active_certs = 0", "max_active_certs"),
            ("max_active_certs = -3", "max_active_certs"),
        ] {
            let e = first_error(extra);
            assert_eq!(e.line, 6, "{extra}: {e:?}");
            assert!(e.message.contains(needle), "{extra}: {e:?}");
        }
        let e = first_error("min_rsa_bits = \"4096\"");
        assert_eq!(e.line, 6, "{e:?}");
        assert!(e.message.contains("expected i64"), "{e:?}");
    }
}
