//! `mayfly ca rotate | status`: CA keys.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use mayfly::ca::rotation::KeyStatus;
use mayfly::clock::now_secs;
use mayfly::config::LogFormat;
use mayfly::revocation::cli_actor;
use mayfly::rotation::{self, Step, Which};

use super::{env, init_logging, load_config, quiet, runtime};

/// `mayfly ca ...`.
#[derive(Subcommand)]
pub enum CaCmd {
    /// Rotate a CA key without downtime: --stage, wait for hosts to sync, --activate, wait for old certs to expire, --retire.
    Rotate {
        /// The CA's mayfly.toml.
        #[arg(long)]
        config: PathBuf,
        /// Create and publish the next key.
        #[arg(long, group = "step")]
        stage: bool,
        /// Switch signing to the staged key.
        #[arg(long, group = "step")]
        activate: bool,
        /// Drop the previous key (refused while certificates it signed are valid).
        #[arg(long, group = "step")]
        retire: bool,
        /// With --activate or --retire: go ahead although known hosts do
        /// not trust the key that signs next (audited); with --retire also
        /// although certificates the retired key signed are still valid.
        #[arg(long)]
        force: bool,
        /// Rotate the host CA instead of the user CA.
        #[arg(long, conflicts_with = "group")]
        host: bool,
        /// Rotate the user CA key of this ca_group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Show CA keys: slot, fingerprint, age, which one signs.
    Status {
        /// The CA's mayfly.toml (on the CA host; or --server).
        #[arg(long, required_unless_present = "server")]
        config: Option<PathBuf>,
        #[command(flatten)]
        remote: super::remote::RemoteArgs,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `mayfly ca` command.
pub fn run(cmd: CaCmd, verbose: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        CaCmd::Rotate {
            config,
            stage,
            activate,
            retire,
            force,
            host,
            group,
        } => {
            init_logging(quiet(verbose), LogFormat::Text);
            let cfg = load_config(&config)?;
            anyhow::ensure!(!force || !stage, "--force goes with --activate or --retire");
            let step = match (stage, activate, retire) {
                (true, false, false) => Step::Stage,
                (false, true, false) => Step::Activate,
                (false, false, true) => Step::Retire { force },
                _ => anyhow::bail!("name one step: --stage, --activate or --retire"),
            };
            let which = match (host, group) {
                (true, _) => Which::Host,
                (false, Some(g)) => Which::Group(g),
                (false, None) => Which::User,
            };
            if cfg.store.backend == mayfly::config::StoreBackend::SQLite {
                super::as_data_dir_owner(&cfg.data_dir, "ca rotate")?;
            }
            let actor = cli_actor(&env);
            let summary = runtime()?.block_on(rotation::rotate(
                &cfg,
                which,
                step,
                force,
                &actor,
                now_secs(),
            ))?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        CaCmd::Status {
            config,
            remote,
            json,
        } => {
            let keys = match remote.target(config)? {
                super::remote::Target::Local(config) => {
                    let cfg = load_config(&config)?;
                    runtime()?.block_on(rotation::status(&cfg, now_secs()))?
                }
                super::remote::Target::Remote(opts) => {
                    runtime()?.block_on(mayfly::client::operator::ca_status(&opts))?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                print!("{}", status_table(&keys));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The `ca status` table.
fn status_table(keys: &[KeyStatus]) -> String {
    let mut out = format!(
        "{:<5} {:<9} {:<6} {:<52} {:>10}  LOCATION\n",
        "CA", "SLOT", "SIGNS", "FINGERPRINT", "AGE"
    );
    for k in keys {
        let age = k
            .age_seconds
            .map(|s| humantime::format_duration(Duration::from_secs(s)).to_string())
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<5} {:<9} {:<6} {:<52} {:>10}  {}\n",
            k.ca,
            k.slot.as_str(),
            if k.signs { "yes" } else { "no" },
            k.fingerprint,
            age,
            k.location
        ));
    }
    out
}
