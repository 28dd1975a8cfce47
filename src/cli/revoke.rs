//! `mayfly revoke`: revoke certificates, on the CA host (`--config`) or
//! through the admin API (`--server`); the next `/v1/krl` includes them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use mayfly::clock::now_secs;
use mayfly::config::LogFormat;
use mayfly::revocation::{self, RevokeOutcome};
use mayfly::store::CertFilter;
use mayfly::time::rfc3339;

use mayfly::client::operator::{self, OperatorOptions};

use super::exit::{fail, Exit};
use super::remote::Target;
use super::{env, init_logging, load_config, quiet, runtime};

// Arguments of `mayfly revoke`.
#[derive(Args)]
pub struct RevokeArgs {
    /// The CA's mayfly.toml (on the CA host; or --server).
    #[arg(long, required_unless_present = "server")]
    config: Option<PathBuf>,
    #[command(flatten)]
    remote: super::remote::RemoteArgs,
    /// Revoke this serial.
    #[arg(long, conflicts_with_all = ["key_id", "subject"])]
    serial: Option<u64>,
    /// Revoke the certificate with this key id (as sshd logs it).
    #[arg(long, conflicts_with_all = ["serial", "subject", "role"])]
    key_id: Option<String>,
    /// Revoke every unexpired certificate of this role (or, with --subject, of that identity in this role).
    #[arg(long)]
    role: Option<String>,
    /// Revoke every unexpired certificate of this identity (needs --issuer).
    #[arg(long, requires = "issuer")]
    subject: Option<String>,
    /// Issuer name of --subject.
    #[arg(long, requires = "subject")]
    issuer: Option<String>,
    /// Why (recorded in the audit log).
    #[arg(long, default_value = "")]
    reason: String,
    /// Print the outcome as one JSON object on stdout (as `POST /v1/admin/revoke` answers).
    #[arg(long)]
    json: bool,
    /// Then wait until every known, non-stale host reports a KRL with this
    /// revocation (`mayfly host sync` reports after each run).
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long (exit code 9).
    #[arg(long, default_value = "10m", requires = "wait")]
    wait_timeout: String,
}

/// Exit code of `--wait` when some host did not report the KRL in time:
/// the fleet drifted from the CA.
const EXIT_WAIT_TIMEOUT: Exit = Exit::Drift;

/// How often `--wait` reads the hosts' reports.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Revokes what the arguments name: one line per certificate on stdout,
/// the count and KRL version on stderr.
pub fn run(a: RevokeArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    init_logging(quiet(verbose), LogFormat::Text);
    let config = match a.remote.target(a.config.clone())? {
        Target::Local(c) => c,
        Target::Remote(opts) => return run_remote(a, &opts),
    };
    let cfg = load_config(&config)?;
    // Still run: certificates of an issuer removed from the config may be
    // live, and revoking them must stay possible.
    if let Some(why) = a
        .issuer
        .as_deref()
        .and_then(|i| super::unknown_issuer(&cfg, i))
    {
        eprintln!("warning: {why}");
    }
    let filter = filter_of(&a)?;
    let wait_timeout = wait_timeout_of(&a)?;
    let actor = revocation::cli_actor(&env);
    let outcome = runtime()?.block_on(async {
        let store = revocation::open_store(&cfg)?;
        revocation::revoke(&store, filter, &a.reason, &actor, now_secs()).await
    })?;
    print_outcome(&outcome, a.json)?;
    match wait_timeout {
        Some(t) => {
            let store = mayfly::store::open(&mayfly::store::StoreConfig::from_config(
                &cfg,
                mayfly::store::OpenMode::ReadOnly,
            ))?;
            let fleet = mayfly::store::hosts::Fleet::new(store, &cfg.hosts);
            // Every host that reports, expected or not: a host that never
            // reported cannot say it has the KRL.
            let view_now = || Ok(mayfly::store::block_on(fleet.view_with(now_secs(), &[]))??);
            wait_for_hosts(view_now, outcome.krl_version, t)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// `--wait-timeout`, when `--wait` is given.
fn wait_timeout_of(a: &RevokeArgs) -> anyhow::Result<Option<std::time::Duration>> {
    Ok(match a.wait {
        true => Some(humantime::parse_duration(&a.wait_timeout).map_err(|e| {
            anyhow::anyhow!("--wait-timeout {:?}: {e}; write e.g. 5m", a.wait_timeout)
        })?),
        false => None,
    })
}

/// What the arguments name, or a usage error.
fn filter_of(a: &RevokeArgs) -> anyhow::Result<CertFilter> {
    Ok(
        match (
            a.serial,
            a.key_id.clone(),
            a.role.clone(),
            a.issuer.clone(),
            a.subject.clone(),
        ) {
            (Some(n), None, None, None, None) => CertFilter::Serial(n),
            (None, Some(k), None, None, None) => {
                // Still run: it revokes nothing, but says why.
                if let Some(why) = mayfly::ca::key_id_problem(&k) {
                    eprintln!("warning: {why}");
                }
                CertFilter::KeyId(k)
            }
            (None, None, Some(r), None, None) => CertFilter::Role(r),
            (None, None, role, Some(issuer), Some(subject)) => CertFilter::Identity {
                issuer,
                subject,
                role,
            },
            _ => return Err(fail(
                Exit::Usage,
                "name what to revoke: --serial N, --key-id ID, --role R, or --subject S --issuer I",
            )),
        },
    )
}

/// `revoke --server`: through `POST /v1/admin/revoke`, as the token's identity.
fn run_remote(a: RevokeArgs, opts: &OperatorOptions) -> anyhow::Result<ExitCode> {
    filter_of(&a)?;
    let wait_timeout = wait_timeout_of(&a)?;
    let what = operator::RevokeRequest {
        serial: a.serial,
        key_id: a.key_id,
        role: a.role,
        issuer: a.issuer,
        subject: a.subject,
        reason: a.reason,
    };
    let rt = runtime()?;
    let outcome = rt.block_on(operator::revoke(opts, &what))?;
    print_outcome(&outcome, a.json)?;
    match wait_timeout {
        // The hosts' reports, as the CA judges them (`GET /v1/admin/hosts`).
        Some(t) => wait_for_hosts(
            || Ok(rt.block_on(operator::hosts(opts))?),
            outcome.krl_version,
            t,
        ),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// The outcome on stdout (lines, or one JSON object), the count and KRL
/// version on stderr.
fn print_outcome(outcome: &RevokeOutcome, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(outcome)?);
    } else {
        print!("{}", outcome_lines(outcome));
    }
    eprintln!(
        "{} certificate(s) revoked; KRL version {}",
        outcome.revoked.len(),
        outcome.krl_version
    );
    Ok(())
}

/// What `--wait` last said about a host.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    Behind(u64),
    Has(u64),
    Stale,
}

/// Waits until every known, non-stale host reports a KRL version of at
/// least `version`; one line on stderr per host state change (CI logs
/// read well, nothing is redrawn).
fn wait_for_hosts(
    mut view_now: impl FnMut() -> anyhow::Result<mayfly::fleet::FleetView>,
    version: u64,
    timeout: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    use std::collections::BTreeMap;
    let deadline = std::time::Instant::now() + timeout;
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    loop {
        let view = view_now()?;
        if view.hosts.is_empty() {
            eprintln!(
                "no host has reported to this CA yet (`mayfly host sync` with a host certificate \
                 reports); nothing to wait for"
            );
            return Ok(ExitCode::SUCCESS);
        }
        let mut waiting = Vec::new();
        for h in &view.hosts {
            let now_state = if h.stale {
                Seen::Stale
            } else if h.krl_version >= version {
                Seen::Has(h.krl_version)
            } else {
                Seen::Behind(h.krl_version)
            };
            if seen.get(&h.host) != Some(&now_state) {
                match now_state {
                    Seen::Has(v) => eprintln!("{}: has the revocation (KRL version {v})", h.host),
                    Seen::Behind(v) => eprintln!(
                        "{}: waiting (KRL version {v}, needs {version}; last report {} s ago)",
                        h.host, h.age_secs
                    ),
                    Seen::Stale => eprintln!(
                        "{}: stale (no report for {} s), not waited for; check it by hand",
                        h.host, h.age_secs
                    ),
                }
                seen.insert(h.host.clone(), now_state);
            }
            if let Seen::Behind(_) = now_state {
                waiting.push(h.host.clone());
            }
        }
        if waiting.is_empty() {
            eprintln!("every reporting host has KRL version {version} or later");
            return Ok(ExitCode::SUCCESS);
        }
        if std::time::Instant::now() >= deadline {
            eprintln!(
                "timed out after {}: {} host(s) do not have KRL version {version} yet: {}",
                humantime::format_duration(timeout),
                waiting.len(),
                waiting.join(", ")
            );
            return Ok(EXIT_WAIT_TIMEOUT.into());
        }
        std::thread::sleep(WAIT_POLL);
    }
}

/// One line per certificate: revoked now, revoked before (revoking twice
/// changes nothing and is not an error), or expired.
fn outcome_lines(o: &RevokeOutcome) -> String {
    let mut out = String::new();
    for c in &o.revoked {
        out.push_str(&format!(
            "revoked serial {} key_id {} (valid until {})\n",
            c.serial,
            c.key_id,
            rfc3339(c.valid_before)
        ));
    }
    for p in &o.already_revoked {
        out.push_str(&format!(
            "already revoked serial {} key_id {} (at {} by {}{})\n",
            p.serial,
            p.key_id,
            rfc3339(p.revoked_at),
            p.actor,
            if p.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", p.reason)
            }
        ));
    }
    for e in &o.expired {
        out.push_str(&format!(
            "expired serial {} key_id {} (at {}; sshd refuses it without a revocation)\n",
            e.serial,
            e.key_id,
            rfc3339(e.valid_before)
        ));
    }
    if out.is_empty() {
        out.push_str("nothing to revoke: no unexpired, unrevoked certificate matches\n");
    }
    out
}
