//! `mayfly revoke`: revoke certificates on the CA host; the next `/v1/krl`
//! includes them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use mayfly::clock::now_secs;
use mayfly::config::LogFormat;
use mayfly::revocation::{self, RevokeOutcome};
use mayfly::store::CertFilter;
use mayfly::time::rfc3339;

use super::exit::{fail, Exit};
use super::{env, init_logging, load_config, quiet, runtime};

// Arguments of `mayfly revoke`.
#[derive(Args)]
pub struct RevokeArgs {
    /// The CA's mayfly.toml.
    #[arg(long)]
    config: PathBuf,
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
}

/// Revokes what the arguments name: one line per certificate on stdout,
/// the count and KRL version on stderr.
pub fn run(a: RevokeArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    init_logging(quiet(verbose), LogFormat::Text);
    let cfg = load_config(&a.config)?;
    // Still run: certificates of an issuer removed from the config may be
    // live, and revoking them must stay possible.
    if let Some(why) = a
        .issuer
        .as_deref()
        .and_then(|i| super::unknown_issuer(&cfg, i))
    {
        eprintln!("warning: {why}");
    }
    let filter =
        match (a.serial, a.key_id, a.role, a.issuer, a.subject) {
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
        };
    let actor = revocation::cli_actor(&env);
    let outcome = runtime()?.block_on(async {
        let store = revocation::open_store(&cfg)?;
        revocation::revoke(&store, filter, &a.reason, &actor, now_secs()).await
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        print!("{}", outcome_lines(&outcome));
    }
    eprintln!(
        "{} certificate(s) revoked; KRL version {}",
        outcome.revoked.len(),
        outcome.krl_version
    );
    Ok(ExitCode::SUCCESS)
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
