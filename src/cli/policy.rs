//! `mayfly policy check | test | explain`: validate policy files and try
//! requests against them, without a running CA.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use mayfly::clock::now_secs;
use mayfly::config::Config;
use mayfly::policy::{self, CertRequest, KeyFacts, Policy};

use mayfly::policy::explain::{Context, DisabledCheck};
use mayfly::store::DisableTarget;

use super::exit::Exit;
use super::parse_ttl;

/// `mayfly policy ...`.
#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Check every role file in DIR; exit 1 with file:line: reason on errors.
    /// Risky grants are printed as warnings (exit 0 unless --deny-warnings).
    Check {
        /// Policy directory.
        #[arg(default_value = "ca-policy")]
        dir: PathBuf,
        /// Also check roles against the issuers in this config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Exit 1 on warnings too.
        #[arg(long)]
        deny_warnings: bool,
        /// One JSON object on stdout: ok, roles, digest, warnings, errors.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a claims JSON file against a role and print the decision, or
    /// run a table of cases (--cases); exit 1 on any case that does not come
    /// out as expected.
    Test {
        /// Policy directory (or --dir; default ca-policy).
        #[arg(value_name = "DIR", conflicts_with = "dir")]
        dir_arg: Option<PathBuf>,
        /// Policy directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// A cases file ([[case]] tables) to run instead of one request.
        #[arg(long, conflicts_with_all = ["role", "issuer", "claims", "principals", "ttl"])]
        cases: Option<PathBuf>,
        /// Role to evaluate.
        #[arg(long, required_unless_present = "cases")]
        role: Option<String>,
        /// Issuer name the claims come from.
        #[arg(long, required_unless_present = "cases")]
        issuer: Option<String>,
        /// JSON file with the token's claims.
        #[arg(long, required_unless_present = "cases")]
        claims: Option<PathBuf>,
        /// Requested principals.
        #[arg(long = "principal")]
        principals: Vec<String>,
        /// Requested TTL, e.g. 5m.
        #[arg(long)]
        ttl: Option<String>,
        /// Evaluate at this time (RFC 3339) instead of now; with --cases,
        /// for cases without their own `at`.
        #[arg(long)]
        at: Option<String>,
        /// Host names to ask for (host roles; default: the role's exact names).
        #[arg(long = "hostname", conflicts_with = "cases")]
        hostnames: Vec<String>,
        /// The CA's mayfly.toml: also apply its deactivations, as the server does.
        #[arg(long)]
        config: Option<PathBuf>,
        /// JSON on stdout: the decision (allow, pending, deny with code,
        /// rule and message), or with --cases every case's result.
        #[arg(long)]
        json: bool,
    },
    /// Show, step by step, how policy decides one request.
    Explain {
        /// Policy directory.
        #[arg(long, default_value = "ca-policy")]
        dir: PathBuf,
        /// Role to evaluate.
        #[arg(long)]
        role: String,
        /// Issuer name the claims come from.
        #[arg(long)]
        issuer: String,
        /// JSON file with the token's claims.
        #[arg(long)]
        claims: PathBuf,
        /// Requested principals.
        #[arg(long = "principal")]
        principals: Vec<String>,
        /// Requested TTL, e.g. 5m.
        #[arg(long)]
        ttl: Option<String>,
        /// Evaluate at this time (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<String>,
        /// The bot's key type, e.g. ssh-ed25519, to check key_types too.
        #[arg(long)]
        key_type: Option<String>,
        /// With --key-type ssh-rsa: the key size in bits.
        #[arg(long, requires = "key_type")]
        rsa_bits: Option<u32>,
        /// Host names to ask for (host roles; default: the role's exact names).
        #[arg(long = "hostname")]
        hostnames: Vec<String>,
        /// The CA's mayfly.toml: also apply its deactivations, as the server does.
        #[arg(long)]
        config: Option<PathBuf>,
        /// One JSON object on stdout: the steps and the decision.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `mayfly policy` command.
pub fn run(cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCmd::Check {
            dir,
            config,
            deny_warnings,
            json,
        } => check(&dir, config.as_deref(), deny_warnings, json),
        PolicyCmd::Test {
            dir_arg,
            dir,
            cases,
            role,
            issuer,
            claims,
            principals,
            ttl,
            at,
            hostnames,
            config,
            json,
        } => {
            let disabled = config.as_deref().map(deactivations).transpose()?;
            let check = disabled.as_ref().map(|d| d.check());
            let dir = dir_arg
                .or(dir)
                .unwrap_or_else(|| PathBuf::from("ca-policy"));
            let policy = load(&dir)?;
            let now = eval_time(at.as_deref())?;
            if let Some(file) = cases {
                return run_cases(
                    &policy,
                    &file,
                    now,
                    check.as_ref().map(|c| c as DisabledCheck<'_>),
                    json,
                );
            }
            let (Some(role), Some(issuer), Some(claims)) = (role, issuer, claims) else {
                anyhow::bail!("name --role, --issuer and --claims, or --cases FILE");
            };
            let claims = policy::explain::read_claims_file(&claims).map_err(anyhow::Error::msg)?;
            let req = CertRequest {
                principals: (!principals.is_empty()).then_some(principals),
                ttl: parse_ttl(&ttl)?,
            };
            let e = policy::explain::explain_with(
                &policy,
                &role,
                &issuer,
                &claims,
                &req,
                now,
                None,
                Context {
                    hostnames: (!hostnames.is_empty()).then_some(hostnames.as_slice()),
                    disabled: check.as_ref().map(|c| c as DisabledCheck<'_>),
                },
            );
            if json {
                let v = policy::cases::decision_json(&e.decision, e.pending.as_deref());
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(if e.decision.is_ok() {
                    ExitCode::SUCCESS
                } else {
                    Exit::Refused.into()
                });
            }
            match (&e.decision, &e.pending) {
                (Ok(g), pending) => {
                    let p: Vec<&str> = g.principals.iter().map(|p| p.as_str()).collect();
                    let x: Vec<&str> = g.extensions.iter().map(|e| e.as_str()).collect();
                    let allow = format!(
                        "allow role={role} principals={p:?} ttl={}s extensions={x:?}",
                        g.ttl.as_secs()
                    );
                    match pending {
                        Some(who) => println!("pending approval ({who}); once approved: {allow}"),
                        None => println!("{allow}"),
                    }
                    Ok(ExitCode::SUCCESS)
                }
                (Err(d), _) => {
                    println!("deny {}: {d}", d.code.as_str());
                    Ok(Exit::Refused.into())
                }
            }
        }
        PolicyCmd::Explain {
            dir,
            role,
            issuer,
            claims,
            principals,
            ttl,
            at,
            key_type,
            rsa_bits,
            hostnames,
            config,
            json,
        } => {
            let disabled = config.as_deref().map(deactivations).transpose()?;
            let check = disabled.as_ref().map(|d| d.check());
            let policy = load(&dir)?;
            let now = eval_time(at.as_deref())?;
            let claims = policy::explain::read_claims_file(&claims).map_err(anyhow::Error::msg)?;
            let req = CertRequest {
                principals: (!principals.is_empty()).then_some(principals),
                ttl: parse_ttl(&ttl)?,
            };
            let key = key_type.map(|k| KeyFacts::declared(&k, rsa_bits));
            let e = policy::explain::explain_with(
                &policy,
                &role,
                &issuer,
                &claims,
                &req,
                now,
                key.as_ref(),
                Context {
                    hostnames: (!hostnames.is_empty()).then_some(hostnames.as_slice()),
                    disabled: check.as_ref().map(|c| c as DisabledCheck<'_>),
                },
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&e.to_json())?);
            } else {
                println!("{e}");
            }
            Ok(if e.decision.is_ok() {
                ExitCode::SUCCESS
            } else {
                Exit::Refused.into()
            })
        }
    }
}

/// `mayfly policy check`: errors and warnings on stderr, a summary on stdout.
fn check(
    dir: &Path,
    config: Option<&Path>,
    deny_warnings: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // With --json the one object on stdout says everything; errors and
    // warnings are still also on stderr, for people reading CI logs.
    let report = |ok: bool, policy: Option<&Policy>, errors: &[String], warnings: &[String]| {
        if json {
            let v = serde_json::json!({
                "ok": ok,
                "dir": dir.display().to_string(),
                "roles": policy.map(|p| p.roles.keys().cloned().collect::<Vec<_>>()).unwrap_or_default(),
                "digest": policy.map(|p| p.digest.clone()),
                "errors": errors,
                "warnings": warnings,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
    };
    let texts =
        |v: &[policy::PolicyError]| -> Vec<String> { v.iter().map(|e| e.to_string()).collect() };
    let policy = match policy::load_dir(dir) {
        Ok(p) => p,
        Err(errs) => {
            for e in &errs {
                eprintln!("{e}");
            }
            eprintln!("{} error(s) in {}", errs.len(), dir.display());
            report(false, None, &texts(&errs), &[]);
            return Ok(ExitCode::from(1));
        }
    };
    if let Some(c) = config {
        // The issuer names only: no MAYFLY_* overrides, no secrets read.
        let cfg = Config::load(Some(c), &|_| None)?;
        if let Err(errs) = policy::load::check_issuers(&policy, &cfg.issuer_names()) {
            for e in &errs {
                eprintln!("{e}");
            }
            eprintln!(
                "{} error(s) in {} against {}",
                errs.len(),
                dir.display(),
                c.display()
            );
            report(false, Some(&policy), &texts(&errs), &[]);
            return Ok(ExitCode::from(1));
        }
    }
    let warnings = policy::lint::lint(&policy);
    for w in &warnings {
        eprintln!("{w}");
    }
    let warning_texts: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    if deny_warnings && !warnings.is_empty() {
        eprintln!(
            "{} warning(s) in {} (--deny-warnings)",
            warnings.len(),
            dir.display()
        );
        report(false, Some(&policy), &[], &warning_texts);
        return Ok(ExitCode::from(1));
    }
    if json {
        report(true, Some(&policy), &[], &warning_texts);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: {} role(s) OK ({})",
        dir.display(),
        policy.roles.len(),
        policy.roles.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    // What a server loading this directory reports as
    // `mayfly_policy_info{digest}` and in `mayfly status`: a policy
    // repository's CI can compare the two.
    println!("digest {}", policy.digest);
    if !warnings.is_empty() {
        eprintln!("{} warning(s)", warnings.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// `mayfly policy test --cases FILE`: exit 1 unless every case comes out
/// as expected.
fn run_cases(
    policy: &Policy,
    file: &Path,
    now: u64,
    disabled: Option<DisabledCheck<'_>>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let list = match policy::cases::load_cases(file) {
        Ok(c) => c,
        Err(errs) => {
            for e in &errs {
                eprintln!("{e}");
            }
            eprintln!("{} error(s) in {}", errs.len(), file.display());
            return Ok(ExitCode::from(1));
        }
    };
    let report = policy::cases::run_with(policy, file, list, now, disabled);
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        println!("{report}");
    }
    Ok(if report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Loads the policy directory; every error, one per line.
fn load(dir: &Path) -> anyhow::Result<Policy> {
    policy::load_dir(dir).map_err(|errs| {
        anyhow::anyhow!(errs
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n"))
    })
}

/// `--at` (RFC 3339) as unix seconds, or now.
fn eval_time(at: Option<&str>) -> anyhow::Result<u64> {
    Ok(match at {
        Some(t) => policy::window::unix_from_timestamp(
            policy::window::parse_instant(t).map_err(|e| anyhow::anyhow!("--at {e}"))?,
        ),
        None => now_secs(),
    })
}

/// The deactivations in the CA's store (`--config`), for answers that
/// match the server's.
struct Deactivations(std::collections::HashSet<DisableTarget>);

impl Deactivations {
    /// The check [`policy::explain::Context`] takes.
    fn check(&self) -> impl Fn(&str, &str, &str) -> Option<String> + '_ {
        move |issuer, subject, role| {
            DisableTarget::blocking(issuer, subject, role)
                .into_iter()
                .find(|k| self.0.contains(k))
                .map(|k| k.refusal_message())
        }
    }
}

/// Reads the deactivations of the CA whose config is `path` (read only;
/// safe while it runs).
fn deactivations(path: &Path) -> anyhow::Result<Deactivations> {
    let cfg = super::load_config(path)?;
    let list = super::runtime()?.block_on(async {
        let store = mayfly::revocation::open_store(&cfg)?;
        anyhow::Ok(store.access().disabled().await?)
    })?;
    Ok(Deactivations(list.into_iter().map(|d| d.key).collect()))
}
