//! `mayfly revoke`: revoke certificates on the CA host; the next `/v1/krl`
//! includes them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use mayfly::clock::now_secs;
use mayfly::config::LogFormat;
use mayfly::revocation;
use mayfly::store::CertFilter;

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
    let filter = match (a.serial, a.key_id, a.role, a.issuer, a.subject) {
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
        _ => anyhow::bail!(
            "name what to revoke: --serial N, --key-id ID, --role R, or --subject S --issuer I"
        ),
    };
    let actor = revocation::cli_actor(&env);
    let outcome = runtime()?.block_on(async {
        let store = revocation::open_store(&cfg)?;
        revocation::revoke(&store, filter, &a.reason, &actor, now_secs()).await
    })?;
    for c in &outcome.revoked {
        println!(
            "revoked serial {} key_id {} (valid until {})",
            c.serial,
            c.key_id,
            mayfly::time::rfc3339(c.valid_before)
        );
    }
    eprintln!(
        "{} certificate(s) revoked; KRL version {}",
        outcome.revoked.len(),
        outcome.krl_version
    );
    Ok(ExitCode::SUCCESS)
}
