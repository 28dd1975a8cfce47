//! `mayfly identity disable | enable | list | disabled`: the identities and
//! roles the CA knows, and switching them off and on again.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use mayfly::clock::now_secs;
use mayfly::config::LogFormat;
use mayfly::inventory::{self, DEFAULT_STALE_DAYS};
use mayfly::revocation::{self, DisableOutcome};
use mayfly::store::{DisableTarget, DisabledEntry};

use mayfly::client::operator;

use super::remote::{RemoteArgs, Target};
use super::{env, init_logging, load_config, quiet, runtime};

/// `mayfly identity ...`.
#[derive(Subcommand)]
pub enum IdentityCmd {
    /// Stop all future issuance and revoke live certificates.
    Disable(IdentityTarget),
    /// Allow issuance again (revoked certificates stay revoked).
    Enable(IdentityTarget),
    /// Inventory: every identity seen, its roles, owners, first/last use, status (active/disabled/stale).
    List {
        /// The CA's mayfly.toml (on the CA host; or --server).
        #[arg(long, required_unless_present = "server")]
        config: Option<PathBuf>,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Days without issuance after which an identity counts as stale.
        #[arg(long)]
        stale_days: Option<u64>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List disabled identities and roles.
    Disabled {
        /// The CA's mayfly.toml (on the CA host; or --server).
        #[arg(long, required_unless_present = "server")]
        config: Option<PathBuf>,
        #[command(flatten)]
        remote: RemoteArgs,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

// What `identity disable|enable` acts on.
#[derive(Args)]
pub struct IdentityTarget {
    /// The CA's mayfly.toml (on the CA host; or --server).
    #[arg(long, required_unless_present = "server")]
    config: Option<PathBuf>,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Issuer name of the identity.
    #[arg(long, requires = "subject")]
    issuer: Option<String>,
    /// Token subject of the identity.
    #[arg(long, requires = "issuer")]
    subject: Option<String>,
    /// A role: alone, the whole role; with --issuer/--subject, that identity in this role only.
    #[arg(long)]
    role: Option<String>,
    /// Why (recorded in the audit log).
    #[arg(long, default_value = "")]
    reason: String,
    /// Print the outcome as one JSON object (as the admin API answers).
    #[arg(long)]
    json: bool,
}

/// Runs one `mayfly identity` command.
pub fn run(cmd: IdentityCmd, verbose: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        IdentityCmd::Disable(t) => set_disabled(t, false, verbose),
        IdentityCmd::Enable(t) => set_disabled(t, true, verbose),
        IdentityCmd::List {
            config,
            remote,
            stale_days,
            json,
        } => list(remote.target(config)?, stale_days, json),
        IdentityCmd::Disabled {
            config,
            remote,
            json,
        } => disabled(remote.target(config)?, json),
    }
}

/// `identity list`: the inventory as a table (or JSON) on stdout.
fn list(target: Target, stale_days: Option<u64>, json: bool) -> anyhow::Result<ExitCode> {
    let inv = match target {
        Target::Local(config) => {
            let cfg = load_config(&config)?;
            inventory::load(&cfg, stale_days.unwrap_or(DEFAULT_STALE_DAYS), now_secs())?
        }
        Target::Remote(opts) => runtime()?.block_on(operator::identities(&opts, stale_days))?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&inv)?);
    } else {
        print!("{}", inventory::render_table(&inv));
    }
    Ok(ExitCode::SUCCESS)
}

/// `identity disabled`: what is disabled, as a table (or JSON) on stdout.
fn disabled(target: Target, json: bool) -> anyhow::Result<ExitCode> {
    let list = match target {
        Target::Local(config) => {
            let cfg = load_config(&config)?;
            runtime()?.block_on(async {
                let store = revocation::open_store(&cfg)?;
                anyhow::Ok(store.access().disabled().await?)
            })?
        }
        Target::Remote(opts) => runtime()?.block_on(operator::disabled(&opts))?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", disabled_table(&list));
    }
    Ok(ExitCode::SUCCESS)
}

/// The `identity disabled` table; `*` for "every" (a part the target does not name).
fn disabled_table(list: &[DisabledEntry]) -> String {
    if list.is_empty() {
        return "nothing is disabled\n".into();
    }
    let mut out = format!(
        "{:<10} {:<12} {:<40} {:<16} REASON (BY)\n",
        "STATUS", "ISSUER", "SUBJECT", "ROLE"
    );
    for d in list {
        out.push_str(&format!(
            "{:<10} {:<12} {:<40} {:<16} {} ({})\n",
            "disabled",
            d.key.issuer().unwrap_or("*"),
            d.key.subject().unwrap_or("*"),
            d.key.role().unwrap_or("*"),
            d.reason,
            d.actor
        ));
    }
    out
}

/// `identity disable|enable`: says what changed and lists the
/// certificates revoked with it.
fn set_disabled(t: IdentityTarget, enable: bool, verbose: bool) -> anyhow::Result<ExitCode> {
    init_logging(quiet(verbose), LogFormat::Text);
    let config = match t.remote.target(t.config.clone())? {
        Target::Local(c) => c,
        Target::Remote(opts) => {
            let target = DisableTarget::from_parts(t.issuer, t.subject, t.role)
                .map_err(revocation::RevokeError::from)?;
            let o =
                runtime()?.block_on(operator::set_disabled(&opts, &target, enable, &t.reason))?;
            return print_outcome(&o, enable, t.json);
        }
    };
    let cfg = load_config(&config)?;
    if let Some(why) = t
        .issuer
        .as_deref()
        .and_then(|i| super::unknown_issuer(&cfg, i))
    {
        // Disabling a name no token can carry protects nothing: refuse the
        // typo. Enabling stays possible, for an entry left from an issuer
        // that was removed since.
        if !enable {
            anyhow::bail!("{why}");
        }
        eprintln!("warning: {why}");
    }
    let target = DisableTarget::from_parts(t.issuer, t.subject, t.role)
        .map_err(revocation::RevokeError::from)?;
    let actor = revocation::cli_actor(&env);
    let o = runtime()?.block_on(async {
        let store = revocation::open_store(&cfg)?;
        revocation::set_disabled(&store, target, enable, &t.reason, &actor, now_secs()).await
    })?;
    print_outcome(&o, enable, t.json)
}

/// The outcome on stdout: text, or one JSON object (as the admin API answers).
fn print_outcome(o: &DisableOutcome, enable: bool, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string(o)?);
    } else {
        print!("{}", outcome_text(o, enable));
    }
    Ok(ExitCode::SUCCESS)
}

fn outcome_text(o: &DisableOutcome, enable: bool) -> String {
    let what = o.target.to_string();
    let state = if enable { "enabled" } else { "disabled" };
    let mut out = if o.changed {
        format!("{what} {state}\n")
    } else {
        format!("{what} was already {state}\n")
    };
    for c in &o.revoked {
        out.push_str(&format!(
            "revoked serial {} key_id {}\n",
            c.serial, c.key_id
        ));
    }
    out
}
