//! `mayfly policy explain`: the decision for one request, step by step.
//!
//! The steps are recorded by the same code that decides requests
//! ([`Role::evaluate`](super::Role::evaluate) runs with tracing off), so an
//! explanation can never disagree with the CA.

use std::fmt;

use serde_json::{Map, Value};

use super::window::timestamp_from_unix;
use super::{CertKind, CertRequest, Denial, DenialCode, Grant, HostCertRequest, KeyFacts, Policy};

/// How one step came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The check passed.
    Pass,
    /// The check failed; the request is denied here.
    Fail,
    /// Not a check: what the grant will contain.
    Info,
}

impl Verdict {
    /// `pass`, `FAIL` or `info`, as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Info => "info",
        }
    }
}

/// One step of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// How it came out.
    pub verdict: Verdict,
    /// What was checked, named like the policy key (`issuer`, `claims.sub`, `window`).
    pub check: String,
    /// What was seen and why it passed or failed.
    pub detail: String,
}

/// Collects steps while a decision is made; does nothing when off, so the
/// request path pays no formatting.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    steps: Option<Vec<Step>>,
}

impl Trace {
    /// A trace that records nothing (the request path).
    pub(crate) fn off() -> Trace {
        Trace { steps: None }
    }

    /// A trace that records every step.
    pub(crate) fn on() -> Trace {
        Trace {
            steps: Some(Vec::new()),
        }
    }

    /// Whether steps are recorded.
    pub(crate) fn is_on(&self) -> bool {
        self.steps.is_some()
    }

    /// Records a step; `detail` is only called when recording.
    pub(crate) fn step(&mut self, verdict: Verdict, check: &str, detail: impl FnOnce() -> String) {
        if let Some(s) = &mut self.steps {
            s.push(Step {
                verdict,
                check: check.to_string(),
                detail: detail(),
            });
        }
    }

    fn into_steps(self) -> Vec<Step> {
        self.steps.unwrap_or_default()
    }
}

/// A decision with the steps that led to it.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The role asked for.
    pub role: String,
    /// The policy file of the role, if it exists.
    pub file: Option<String>,
    /// The instant evaluated, as RFC 3339 UTC.
    pub at: String,
    /// The steps, in evaluation order; evaluation stops at the first failure
    /// (except that every claim rule is shown).
    pub steps: Vec<Step>,
    /// What the CA would answer.
    pub decision: Result<Grant, Denial>,
    /// With an allowing decision: the role needs approval, so the CA
    /// answers "pending" (202) and issues the grant once approved. Says who
    /// must approve.
    pub pending: Option<String>,
}

impl Explanation {
    /// The explanation as JSON (`mayfly policy explain --json`): the role,
    /// its file, the instant, each step (`pass`, `fail` or `info`, the
    /// check and the detail) and the decision as `policy test --json`
    /// gives it.
    pub fn to_json(&self) -> serde_json::Value {
        let steps: Vec<serde_json::Value> = self
            .steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "verdict": s.verdict.as_str().to_ascii_lowercase(),
                    "check": s.check,
                    "detail": s.detail,
                })
            })
            .collect();
        serde_json::json!({
            "role": self.role,
            "file": self.file,
            "at": self.at,
            "steps": steps,
            "result": super::cases::decision_json(&self.decision, self.pending.as_deref()),
        })
    }
}

/// Whether a deactivation blocks an identity in a role: `(issuer,
/// subject, role)` to the refusal's message, if any.
pub type DisabledCheck<'a> = &'a dyn Fn(&str, &str, &str) -> Option<String>;

/// What the CA knows beyond the policy files, for an explanation that
/// gives the server's answer.
#[derive(Default, Clone, Copy)]
pub struct Context<'a> {
    /// Host names asked for, for host roles (`None`: the role's exact names).
    pub hostnames: Option<&'a [String]>,
    /// The CA's deactivations (from `--config`); `None`: not known.
    pub disabled: Option<DisabledCheck<'a>>,
}

/// Explains the decision for a user certificate request. With `key`, the
/// role's key checks run too (the CA always runs them on the bot's key).
pub fn explain(
    policy: &Policy,
    role: &str,
    issuer: &str,
    claims: &Map<String, Value>,
    req: &CertRequest,
    now: u64,
    key: Option<&KeyFacts>,
) -> Explanation {
    explain_with(
        policy,
        role,
        issuer,
        claims,
        req,
        now,
        key,
        Context::default(),
    )
}

/// [`explain`] with what the CA knows beyond the policy files: host names
/// for host roles and the deactivations in its store. The checks run in
/// the server's order: policy (user or host, by the role's `cert_type`),
/// the key, deactivations, then limits and approval.
#[allow(clippy::too_many_arguments)]
pub fn explain_with(
    policy: &Policy,
    role: &str,
    issuer: &str,
    claims: &Map<String, Value>,
    req: &CertRequest,
    now: u64,
    key: Option<&KeyFacts>,
    ctx: Context<'_>,
) -> Explanation {
    let mut trace = Trace::on();
    let mut pending = None;
    let (file, decision) = match policy.roles.get(role) {
        None => {
            let d = super::unknown_role(role);
            trace.step(Verdict::Fail, "role", || d.message.clone());
            (None, Err(d))
        }
        Some(r) => {
            trace.step(Verdict::Pass, "role", || {
                format!("{} ({}), owner {}", r.name, r.description, r.owner)
            });
            let mut decision = match r.cert_type {
                CertKind::User => r.decide(issuer, claims, req, now, &mut trace),
                CertKind::Host => {
                    trace.step(Verdict::Info, "cert_type", || {
                        "host role: evaluated as a host certificate request (POST /v1/certs/host)"
                            .into()
                    });
                    let host_req = HostCertRequest {
                        hostnames: ctx.hostnames.map(<[String]>::to_vec),
                        ttl: req.ttl,
                    };
                    let d = r.evaluate_host(issuer, claims, &host_req);
                    match &d {
                        Ok(g) => trace.step(Verdict::Pass, "hostnames", || {
                            let names: Vec<&str> =
                                g.principals.iter().map(|p| p.as_str()).collect();
                            format!("{names:?}")
                        }),
                        Err(d) => trace.step(Verdict::Fail, &d.rule, || d.message.clone()),
                    }
                    d
                }
            };
            if let Ok(g) = &decision {
                match key {
                    Some(k) => {
                        if let Err(d) = g.admit_key_traced(k, &mut trace) {
                            decision = Err(d);
                        }
                    }
                    None => trace.step(Verdict::Info, "key_types", || {
                        format!(
                            "no key given (--key-type); the CA also requires the bot's key to be one of {}{}",
                            g.key_types.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", "),
                            if g.key_types.contains(&super::KeyType::Rsa) {
                                format!(" (RSA of at least {} bits)", g.min_rsa_bits)
                            } else {
                                String::new()
                            }
                        )
                    }),
                }
            }
            if decision.is_ok() {
                if let Some(d) = after_policy(r, issuer, claims, ctx, &mut trace, &mut pending) {
                    decision = Err(d);
                }
            }
            (Some(r.file.display().to_string()), decision)
        }
    };
    Explanation {
        role: role.to_string(),
        file,
        at: timestamp_from_unix(now).to_string(),
        steps: trace.into_steps(),
        decision,
        pending,
    }
}

/// The server's checks after the policy allowed: deactivations (when the
/// context knows them), then the limits the server applies to live counts,
/// then approval. Returns the denial, if any; sets `pending` when the role
/// needs approval.
fn after_policy(
    r: &super::Role,
    issuer: &str,
    claims: &Map<String, Value>,
    ctx: Context<'_>,
    t: &mut Trace,
    pending: &mut Option<String>,
) -> Option<Denial> {
    let subject = claims.get("sub").and_then(Value::as_str).unwrap_or("");
    match ctx.disabled {
        Some(check) => {
            if let Some(message) = check(issuer, subject, &r.name) {
                t.step(Verdict::Fail, "deactivation", || message.clone());
                return Some(Denial {
                    code: DenialCode::Disabled,
                    rule: "deactivation".into(),
                    message,
                });
            }
            t.step(Verdict::Pass, "deactivation", || {
                format!("neither {issuer}/{subject} nor role {} is disabled", r.name)
            });
        }
        None => t.step(Verdict::Info, "deactivation", || {
            "not checked: give --config to check the CA's deactivations".into()
        }),
    }
    let mut limits = Vec::new();
    if let Some(l) = &r.rate_limit {
        limits.push(format!("rate_limit {l} for the role"));
    }
    if let Some(l) = &r.identity_rate_limit {
        limits.push(format!("identity_rate_limit {l} per identity"));
    }
    if let Some(n) = r.max_active_certs {
        limits.push(format!("max_active_certs {n} valid at once per identity"));
    }
    if !limits.is_empty() {
        t.step(Verdict::Info, "limits", || {
            format!(
                "{}; the CA counts these live (429 rate_limited, 403 too_many_active_certs)",
                limits.join(", ")
            )
        });
    }
    if let Some(ap) = &r.approval {
        let who: Vec<String> = ap
            .approvers
            .iter()
            .map(|c| {
                let p: Vec<&str> = c.patterns.iter().map(|p| p.as_str()).collect();
                format!("{}:{}", c.claim, p.join("|"))
            })
            .collect();
        let text = format!(
            "{} approval(s) from issuer {:?} by {}, within {}",
            ap.required,
            ap.issuer,
            who.join(" or "),
            humantime::format_duration(ap.expires)
        );
        t.step(Verdict::Info, "approval", || {
            format!("{text}; the CA answers 202 pending until then")
        });
        *pending = Some(text);
    }
    None
}

/// One line summary of a grant: `allow principals=[..] ttl=300s ...`.
pub fn grant_summary(g: &Grant) -> String {
    let p: Vec<&str> = g.principals.iter().map(|p| p.as_str()).collect();
    let e: Vec<&str> = g.extensions.iter().map(|e| e.as_str()).collect();
    let mut s = format!(
        "allow principals={p:?} ttl={}s extensions={e:?}",
        g.ttl.as_secs()
    );
    if let Some(fc) = &g.force_command {
        s.push_str(&format!(" force_command={fc:?}"));
    }
    if !g.source_address.is_empty() {
        let a: Vec<String> = g.source_address.iter().map(|a| a.to_string()).collect();
        s.push_str(&format!(" source_address={a:?}"));
    }
    if let Some(end) = g.window_end {
        s.push_str(&format!(" window_end={}", timestamp_from_unix(end)));
    }
    s
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => writeln!(f, "role {} ({file}) at {}", self.role, self.at)?,
            None => writeln!(f, "role {} at {}", self.role, self.at)?,
        }
        let width = self
            .steps
            .iter()
            .map(|s| s.check.chars().count())
            .max()
            .unwrap_or(0);
        for s in &self.steps {
            writeln!(
                f,
                "  {}  {:<width$}  {}",
                s.verdict.as_str(),
                s.check,
                s.detail
            )?;
        }
        match (&self.decision, &self.pending) {
            (Ok(g), Some(p)) => write!(
                f,
                "decision: pending approval ({p}); once approved: {}",
                grant_summary(g)
            ),
            (Ok(g), None) => write!(f, "decision: {}", grant_summary(g)),
            (Err(d), _) => write!(
                f,
                "decision: deny {} ({}): {}",
                d.code.as_str(),
                d.rule,
                d.message
            ),
        }
    }
}

/// Reads a JSON file of token claims (for `policy test` and `explain`).
pub fn read_claims_file(path: &std::path::Path) -> Result<Map<String, Value>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{} must hold a JSON object of claims ({e})", path.display()))
}
