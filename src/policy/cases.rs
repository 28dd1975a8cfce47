//! Table-driven policy tests: a `cases.toml` next to the roles says, for
//! given claims, which requests must be allowed (with which principals) and
//! which denied (with which code). `mayfly policy test DIR --cases FILE`
//! runs them; a policy repository's CI runs that on every change.
//!
//! ```toml
//! [[case]]
//! name = "main branch may deploy"
//! role = "deploy"
//! issuer = "github"
//! claims = { sub = "repo:acme/api:ref:refs/heads/main", repository = "acme/api" }
//! expect = "allow"
//! expect_principals = ["deploy"]
//!
//! [[case]]
//! name = "outside the maintenance window"
//! role = "nightly-migrate"
//! issuer = "github"
//! claims = { sub = "repo:acme/db:ref:refs/heads/main" }
//! at = "2026-11-24T12:00:00+01:00"
//! expect = "deny"
//! expect_code = "outside_window"
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use toml::Spanned;

use super::explain::{explain_with, grant_summary, Context, DisabledCheck};
use super::window::{parse_instant, unix_from_timestamp};
use super::{CertRequest, Denial, DenialCode, Grant, KeyFacts, Policy, PolicyError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCases {
    #[serde(default)]
    case: Vec<Spanned<RawCase>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: Spanned<String>,
    role: String,
    issuer: String,
    #[serde(default)]
    claims: toml::Table,
    principals: Option<Vec<String>>,
    ttl: Option<Spanned<String>>,
    at: Option<Spanned<toml::Value>>,
    key_type: Option<String>,
    rsa_bits: Option<Spanned<u32>>,
    hostnames: Option<Vec<String>>,
    expect: Spanned<String>,
    expect_principals: Option<Spanned<Vec<String>>>,
    expect_code: Option<Spanned<String>>,
    expect_ttl: Option<Spanned<String>>,
}

/// What a case expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expectation {
    /// A grant; optionally exactly these principals and this TTL.
    Allow {
        /// Exact principals, in order.
        principals: Option<Vec<String>>,
        /// Exact TTL (after any clipping to a window end).
        ttl: Option<Duration>,
    },
    /// The policy allows, but the role needs approval: the CA answers
    /// "pending"; optionally, once approved, exactly these principals and TTL.
    Pending {
        /// Exact principals, in order.
        principals: Option<Vec<String>>,
        /// Exact TTL.
        ttl: Option<Duration>,
    },
    /// A denial; optionally with this code.
    Deny {
        /// Expected denial code.
        code: Option<DenialCode>,
    },
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expectation::Allow { .. } => f.write_str("allow"),
            Expectation::Pending { .. } => f.write_str("pending"),
            Expectation::Deny { code: None } => f.write_str("deny"),
            Expectation::Deny { code: Some(c) } => write!(f, "deny {}", c.as_str()),
        }
    }
}

/// One test case.
#[derive(Debug, Clone)]
pub struct Case {
    /// Its name, unique in the file.
    pub name: String,
    /// 1-based line of its `name`.
    pub line: usize,
    /// Role requested.
    pub role: String,
    /// Issuer name the claims come from.
    pub issuer: String,
    /// The token's claims.
    pub claims: Map<String, Value>,
    /// What the bot asks for.
    pub request: CertRequest,
    /// When (unix seconds); `None`: when the test runs.
    pub at: Option<u64>,
    /// The bot's key, if the case names one.
    pub key: Option<KeyFacts>,
    /// Host names asked for (host roles).
    pub hostnames: Option<Vec<String>>,
    /// What must come out.
    pub expect: Expectation,
}

fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map(|t| t.bytes().filter(|b| *b == b'\n').count() + 1)
        .unwrap_or(1)
}

/// Parses a cases file; every problem is reported with its line.
pub fn parse_cases(file: &Path, text: &str) -> Result<Vec<Case>, Vec<PolicyError>> {
    let err = |span: std::ops::Range<usize>, message: String| PolicyError {
        file: file.to_path_buf(),
        line: line_of(text, span.start),
        message,
    };
    let raw: RawCases = toml::from_str(text).map_err(|e| {
        vec![err(
            e.span().unwrap_or(0..0),
            e.message().trim().to_string(),
        )]
    })?;
    let mut errors = Vec::new();
    let mut cases = Vec::new();
    let mut names = BTreeSet::new();
    if raw.case.is_empty() {
        errors.push(err(0..0, "no [[case]] in the file".into()));
    }
    for c in raw.case {
        let c = c.into_inner();
        let name = c.name.get_ref().clone();
        if name.trim().is_empty() {
            errors.push(err(c.name.span(), "case name must not be empty".into()));
        }
        if !names.insert(name.clone()) {
            errors.push(err(c.name.span(), format!("two cases are named {name:?}")));
        }
        let ttl = match &c.ttl {
            None => None,
            Some(t) => match humantime::parse_duration(t.get_ref()) {
                Ok(d) => Some(d),
                Err(_) => {
                    errors.push(err(
                        t.span(),
                        format!("ttl = {:?} is not a duration like \"5m\"", t.get_ref()),
                    ));
                    None
                }
            },
        };
        let at = match &c.at {
            None => None,
            Some(a) => {
                let text = match a.get_ref() {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Datetime(d) => d.to_string(),
                    other => other.to_string(),
                };
                match parse_instant(&text) {
                    Ok(t) => Some(unix_from_timestamp(t)),
                    Err(m) => {
                        errors.push(err(a.span(), format!("at: {m}")));
                        None
                    }
                }
            }
        };
        let key = match (&c.key_type, &c.rsa_bits) {
            (None, None) => None,
            (Some(k), bits) => {
                if bits.is_some() && k != "ssh-rsa" {
                    errors.push(err(
                        c.name.span(),
                        "rsa_bits only goes with key_type = \"ssh-rsa\"".into(),
                    ));
                }
                Some(KeyFacts::declared(k, bits.as_ref().map(|b| *b.get_ref())))
            }
            (None, Some(b)) => {
                errors.push(err(
                    b.span(),
                    "rsa_bits needs key_type = \"ssh-rsa\"".into(),
                ));
                None
            }
        };
        let expect = match c.expect.get_ref().as_str() {
            which @ ("allow" | "pending") => {
                if let Some(code) = &c.expect_code {
                    errors.push(err(
                        code.span(),
                        "expect_code goes with expect = \"deny\"".into(),
                    ));
                }
                let ttl = match &c.expect_ttl {
                    None => None,
                    Some(t) => match humantime::parse_duration(t.get_ref()) {
                        Ok(d) => Some(d),
                        Err(_) => {
                            errors.push(err(
                                t.span(),
                                format!(
                                    "expect_ttl = {:?} is not a duration like \"5m\"",
                                    t.get_ref()
                                ),
                            ));
                            None
                        }
                    },
                };
                let principals = c.expect_principals.as_ref().map(|p| p.get_ref().clone());
                if which == "allow" {
                    Expectation::Allow { principals, ttl }
                } else {
                    Expectation::Pending { principals, ttl }
                }
            }
            "deny" => {
                for (key, span) in [
                    (
                        "expect_principals",
                        c.expect_principals.as_ref().map(|p| p.span()),
                    ),
                    ("expect_ttl", c.expect_ttl.as_ref().map(|p| p.span())),
                ] {
                    if let Some(span) = span {
                        errors.push(err(
                            span,
                            format!("{key} goes with expect = \"allow\" or \"pending\""),
                        ));
                    }
                }
                let code = match &c.expect_code {
                    None => None,
                    Some(code) => match DenialCode::parse(code.get_ref()) {
                        Some(d) => Some(d),
                        None => {
                            let known: Vec<&str> =
                                DenialCode::ALL.iter().map(|c| c.as_str()).collect();
                            errors.push(err(
                                code.span(),
                                format!(
                                    "expect_code = {:?} is not a denial code; known: {known:?}",
                                    code.get_ref()
                                ),
                            ));
                            None
                        }
                    },
                };
                Expectation::Deny { code }
            }
            other => {
                errors.push(err(
                    c.expect.span(),
                    format!("expect = {other:?}; write \"allow\", \"pending\" or \"deny\""),
                ));
                continue;
            }
        };
        let claims = match toml_to_json(&toml::Value::Table(c.claims)) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        cases.push(Case {
            name,
            line: line_of(text, c.name.span().start),
            role: c.role,
            issuer: c.issuer,
            claims,
            request: CertRequest {
                principals: c.principals,
                ttl,
            },
            at,
            key,
            hostnames: c.hostnames,
            expect,
        });
    }
    if errors.is_empty() {
        Ok(cases)
    } else {
        errors.sort_by_key(|e| e.line);
        Err(errors)
    }
}

/// Reads and parses a cases file.
pub fn load_cases(file: &Path) -> Result<Vec<Case>, Vec<PolicyError>> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        vec![PolicyError {
            file: file.to_path_buf(),
            line: 1,
            message: format!("cannot read: {e}"),
        }]
    })?;
    parse_cases(file, &text)
}

/// One difference between what a case expected and what came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// What differs: `decision`, `principals`, `ttl`.
    pub what: &'static str,
    /// As expected.
    pub expected: String,
    /// As decided.
    pub got: String,
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case.
    pub case: Case,
    /// What policy decided.
    pub decision: Result<Grant, Denial>,
    /// With an allowing decision: who must approve first (the CA answers
    /// "pending").
    pub pending: Option<String>,
    /// Empty when the case passed.
    pub mismatches: Vec<Mismatch>,
}

impl CaseResult {
    /// Whether the decision matched the expectation.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// The results of a cases file.
#[derive(Debug, Clone)]
pub struct Report {
    /// The cases file.
    pub file: PathBuf,
    /// One per case, in file order.
    pub results: Vec<CaseResult>,
    /// Remarks that do not fail the run (e.g. a windowed role tested without `at`).
    pub notes: Vec<String>,
}

impl Report {
    /// How many cases failed.
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| !r.passed()).count()
    }
}

fn decision_text(d: &Result<Grant, Denial>, pending: Option<&str>) -> String {
    match (d, pending) {
        (Ok(g), Some(p)) => format!(
            "pending approval ({p}); once approved: {}",
            grant_summary(g)
        ),
        (Ok(g), None) => grant_summary(g),
        (Err(d), _) => format!("deny {} ({}): {}", d.code.as_str(), d.rule, d.message),
    }
}

/// Runs every case; cases without `at` are evaluated at `now` (unix seconds).
pub fn run(policy: &Policy, file: &Path, cases: Vec<Case>, now: u64) -> Report {
    run_with(policy, file, cases, now, None)
}

/// [`run`], with the CA's deactivations (`policy test --config`).
pub fn run_with(
    policy: &Policy,
    file: &Path,
    cases: Vec<Case>,
    now: u64,
    disabled: Option<DisabledCheck<'_>>,
) -> Report {
    let mut notes = Vec::new();
    let results = cases
        .into_iter()
        .map(|case| {
            if case.at.is_none()
                && policy
                    .roles
                    .get(&case.role)
                    .is_some_and(|r| !r.windows.is_empty())
            {
                notes.push(format!(
                    "{}:{}: case {:?} has no `at`, but role {} has time windows: the result depends on when it runs",
                    file.display(),
                    case.line,
                    case.name,
                    case.role
                ));
            }
            let e = explain_with(
                policy,
                &case.role,
                &case.issuer,
                &case.claims,
                &case.request,
                case.at.unwrap_or(now),
                case.key.as_ref(),
                Context {
                    hostnames: case.hostnames.as_deref(),
                    disabled,
                },
            );
            let mismatches = compare(&case.expect, &e.decision, e.pending.as_deref());
            CaseResult {
                case,
                decision: e.decision,
                pending: e.pending,
                mismatches,
            }
        })
        .collect();
    Report {
        file: file.to_path_buf(),
        results,
        notes,
    }
}

fn compare(
    expect: &Expectation,
    got: &Result<Grant, Denial>,
    pending: Option<&str>,
) -> Vec<Mismatch> {
    let mut out = Vec::new();
    match (expect, got) {
        (Expectation::Allow { principals, ttl }, Ok(g))
        | (Expectation::Pending { principals, ttl }, Ok(g))
            if matches!(expect, Expectation::Pending { .. }) == pending.is_some() =>
        {
            let got_p: Vec<String> = g.principals.iter().map(|p| p.to_string()).collect();
            if let Some(p) = principals {
                if *p != got_p {
                    out.push(Mismatch {
                        what: "principals",
                        expected: format!("{p:?}"),
                        got: format!("{got_p:?}"),
                    });
                }
            }
            if let Some(t) = ttl {
                if *t != g.ttl {
                    out.push(Mismatch {
                        what: "ttl",
                        expected: humantime::format_duration(*t).to_string(),
                        got: humantime::format_duration(g.ttl).to_string(),
                    });
                }
            }
        }
        (Expectation::Deny { code: Some(c) }, Err(d)) if *c != d.code => out.push(Mismatch {
            what: "decision",
            expected: expect.to_string(),
            got: decision_text(got, pending),
        }),
        (Expectation::Deny { .. }, Err(_)) => {}
        _ => out.push(Mismatch {
            what: "decision",
            expected: expect.to_string(),
            got: decision_text(got, pending),
        }),
    }
    out
}

/// A decision as JSON (`mayfly policy test --json`): `allow`, `pending`
/// (allowed once approved by `approval`) or `deny` with the code, the rule
/// and the message the bot would get.
pub fn decision_json(decision: &Result<Grant, Denial>, pending: Option<&str>) -> Value {
    match decision {
        Ok(g) => serde_json::json!({
            "decision": if pending.is_some() { "pending" } else { "allow" },
            "role": g.role.as_str(),
            "principals": g.principals.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            "ttl_seconds": g.ttl.as_secs(),
            "extensions": g.extensions.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
            "force_command": g.force_command,
            "source_address": g.source_address.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "approval": pending,
        }),
        Err(d) => serde_json::json!({
            "decision": "deny",
            "code": d.code.as_str(),
            "rule": d.rule,
            "message": d.message,
        }),
    }
}

impl Report {
    /// The results as JSON (`mayfly policy test --cases F --json`).
    pub fn to_json(&self) -> Value {
        let cases: Vec<Value> = self
            .results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.case.name,
                    "line": r.case.line,
                    "role": r.case.role,
                    "issuer": r.case.issuer,
                    "passed": r.passed(),
                    "result": decision_json(&r.decision, r.pending.as_deref()),
                    "mismatches": r.mismatches.iter().map(|m| serde_json::json!({
                        "what": m.what, "expected": m.expected, "got": m.got,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "file": self.file.display().to_string(),
            "total": self.results.len(),
            "failed": self.failed(),
            "cases": cases,
            "notes": self.notes,
        })
    }
}

impl fmt::Display for Report {
    /// `ok name` per passing case; per failing case its place and a
    /// `-` expected / `+` got diff; then a summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.results {
            if r.passed() {
                writeln!(f, "ok   {}", r.case.name)?;
                continue;
            }
            writeln!(
                f,
                "FAIL {} ({}:{})",
                r.case.name,
                self.file.display(),
                r.case.line
            )?;
            writeln!(f, "     role {}, issuer {}", r.case.role, r.case.issuer)?;
            for m in &r.mismatches {
                let (e, g) = if m.what == "decision" {
                    ("expected:".to_string(), "got:".to_string())
                } else {
                    (format!("expected {}:", m.what), format!("got {}:", m.what))
                };
                let w = e.len().max(g.len());
                writeln!(f, "     - {e:<w$} {}", m.expected)?;
                writeln!(f, "     + {g:<w$} {}", m.got)?;
            }
            if let (Ok(g), true) = (
                &r.decision,
                r.mismatches.iter().all(|m| m.what != "decision"),
            ) {
                writeln!(f, "       (decision: {})", grant_summary(g))?;
            }
        }
        let total = self.results.len();
        let failed = self.failed();
        if failed == 0 {
            write!(f, "all {total} cases passed")
        } else {
            write!(f, "{failed} of {total} cases failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load::parse_role;

    fn policy() -> Policy {
        let deploy = parse_role(
            "deploy",
            Path::new("deploy.toml"),
            r#"description = "d"
owner = "o"
issuer = "github"
principals = ["deploy"]
max_ttl = "10m"
default_ttl = "5m"
[claims]
sub = "repo:acme/api:ref:refs/heads/main"
"#,
        )
        .unwrap();
        let nightly = parse_role(
            "nightly",
            Path::new("nightly.toml"),
            r#"description = "d"
owner = "o"
issuer = "github"
principals = ["migrate"]
max_ttl = "30m"
key_types = ["ssh-ed25519"]
[claims]
sub = "repo:acme/db:ref:refs/heads/main"
[[window]]
days = ["mon-fri"]
start = "01:00"
end = "03:00"
timezone = "Europe/Berlin"
"#,
        )
        .unwrap();
        let mut p = Policy::default();
        p.roles.insert("deploy".into(), deploy);
        p.roles.insert("nightly".into(), nightly);
        p
    }

    const CASES: &str = r#"
[[case]]
name = "main deploys"
role = "deploy"
issuer = "github"
claims = { sub = "repo:acme/api:ref:refs/heads/main" }
expect = "allow"
expect_principals = ["deploy"]
expect_ttl = "5m"

[[case]]
name = "dev is refused"
role = "deploy"
issuer = "github"
claims = { sub = "repo:acme/api:ref:refs/heads/dev" }
expect = "deny"
expect_code = "claim_mismatch"

[[case]]
name = "inside the window, clipped"
role = "nightly"
issuer = "github"
claims = { sub = "repo:acme/db:ref:refs/heads/main" }
at = 2026-11-24T02:50:00+01:00
key_type = "ssh-ed25519"
expect = "allow"
expect_ttl = "10m"

[[case]]
name = "rsa key refused"
role = "nightly"
issuer = "github"
claims = { sub = "repo:acme/db:ref:refs/heads/main" }
at = "2026-11-24T01:10:00+01:00"
key_type = "ssh-rsa"
rsa_bits = 4096
expect = "deny"
expect_code = "key_type_not_allowed"

[[case]]
name = "outside the window"
role = "nightly"
issuer = "github"
claims = { sub = "repo:acme/db:ref:refs/heads/main" }
at = "2026-11-24T12:00:00+01:00"
expect = "deny"
expect_code = "outside_window"
"#;

    #[test]
    fn passing_cases_pass() {
        let cases = parse_cases(Path::new("cases.toml"), CASES).unwrap();
        assert_eq!(cases[0].line, 3);
        let r = run(&policy(), Path::new("cases.toml"), cases, 0);
        assert_eq!(r.failed(), 0, "{r}");
        assert!(r.notes.is_empty());
        assert!(r.to_string().ends_with("all 5 cases passed"), "{r}");
    }

    #[test]
    fn mismatches_are_shown_as_a_diff() {
        let text = CASES
            .replace(
                "expect_principals = [\"deploy\"]",
                "expect_principals = [\"deploy\", \"root\"]",
            )
            .replace(
                "expect_code = \"claim_mismatch\"",
                "expect_code = \"outside_window\"",
            );
        let cases = parse_cases(Path::new("cases.toml"), &text).unwrap();
        let r = run(&policy(), Path::new("cases.toml"), cases, 0);
        assert_eq!(r.failed(), 2);
        let out = r.to_string();
        assert!(out.contains("FAIL main deploys (cases.toml:3)\n     role deploy, issuer github\n     - expected principals: [\"deploy\", \"root\"]\n     + got principals:      [\"deploy\"]\n"), "{out}");
        assert!(out.contains("     - expected: deny outside_window\n     + got:      deny claim_mismatch (deploy.toml claims.sub)"), "{out}");
        assert!(out.ends_with("2 of 5 cases failed"), "{out}");
    }

    #[test]
    fn windowed_role_without_at_gets_a_note() {
        let text = "[[case]]\nname = \"n\"\nrole = \"nightly\"\nissuer = \"github\"\nclaims = { sub = \"repo:acme/db:ref:refs/heads/main\" }\nexpect = \"deny\"\n";
        let cases = parse_cases(Path::new("c.toml"), text).unwrap();
        // 2026-11-24T12:00:00Z, closed.
        let r = run(&policy(), Path::new("c.toml"), cases, 1_795_521_600);
        assert_eq!(r.failed(), 0);
        assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
        assert!(r.notes[0].starts_with("c.toml:2: case \"n\" has no `at`"));
    }

    #[test]
    fn bad_case_files_name_the_line() {
        let bad = CASES.replace("expect_code = \"claim_mismatch\"", "expect_code = \"nope\"");
        let e = parse_cases(Path::new("c.toml"), &bad).unwrap_err();
        assert_eq!(e[0].line, 17, "{e:?}");
        assert!(e[0].message.contains("not a denial code"));
        let bad = CASES.replace(
            "expect = \"allow\"\nexpect_principals",
            "expect = \"maybe\"\nexpect_principals",
        );
        let e = parse_cases(Path::new("c.toml"), &bad).unwrap_err();
        assert_eq!(e[0].line, 7, "{e:?}");
        let bad = CASES.replace("at = \"2026-11-24T12:00:00+01:00\"", "at = \"noon\"");
        let e = parse_cases(Path::new("c.toml"), &bad).unwrap_err();
        assert!(e[0].message.starts_with("at: "), "{e:?}");
        let bad = CASES.replace("role = \"deploy\"\nissuer = \"github\"\nclaims = { sub = \"repo:acme/api:ref:refs/heads/main\" }", "role = \"deploy\"\nisuer = \"github\"");
        let e = parse_cases(Path::new("c.toml"), &bad).unwrap_err();
        assert!(e[0].message.contains("isuer"), "{e:?}");
        let dup = CASES.replace("name = \"dev is refused\"", "name = \"main deploys\"");
        let e = parse_cases(Path::new("c.toml"), &dup).unwrap_err();
        assert!(e[0].message.contains("two cases"), "{e:?}");
        assert!(parse_cases(Path::new("c.toml"), "").is_err());
    }
}
