//! `mayfly hosts`: the hosts that report after `mayfly host sync`, their
//! lag behind the CA's KRL, those that stopped reporting, and, given the
//! list of hosts the CA should hear from (`--expect`, `[hosts]
//! expected_file`), those that never reported.
//!
//! Exit codes: 0 when every known host is current; 9 (drift) when a host
//! lags, is stale or never reported; 1 for errors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use mayfly::fleet::FleetView;
use mayfly::store::hosts::Fleet;
use mayfly::store::{OpenMode, StoreConfig};

use super::load_config;

/// `mayfly hosts`.
#[derive(Args)]
pub struct HostsArgs {
    /// The CA's mayfly.toml (on the CA host; or --server).
    #[arg(long, required_unless_present = "server")]
    config: Option<PathBuf>,
    #[command(flatten)]
    remote: super::remote::RemoteArgs,
    /// JSON output.
    #[arg(long)]
    json: bool,
    /// Call a host stale after this many sync intervals without a report
    /// (default: `[hosts] stale_intervals`, 3). With --config only: with
    /// --server the CA's own `[hosts]` applies.
    #[arg(long, conflicts_with = "server")]
    stale_intervals: Option<u64>,
    /// The hosts that should report, one name per line (`#` comments);
    /// those that never did are listed as never_reported (default:
    /// `[hosts] expected_file`). With --config only.
    #[arg(long, value_name = "FILE", conflicts_with = "server")]
    expect: Option<PathBuf>,
}

/// Exit code when a host lags or is stale: the fleet drifted from the CA.
const EXIT_LAGGING: super::exit::Exit = super::exit::Exit::Drift;

/// Runs `mayfly hosts`.
pub fn run(a: HostsArgs) -> anyhow::Result<ExitCode> {
    let config = match a.remote.target(a.config.clone())? {
        super::remote::Target::Local(c) => c,
        super::remote::Target::Remote(opts) => {
            let view = super::runtime()?.block_on(mayfly::client::operator::hosts(&opts))?;
            return print_view(&view, a.json);
        }
    };
    if a.stale_intervals == Some(0) {
        return Err(super::exit::fail(
            super::exit::Exit::Usage,
            "--stale-intervals must be at least 1",
        ));
    }
    let cfg = load_config(&config)?;
    let store = mayfly::store::open(&StoreConfig::from_config(&cfg, OpenMode::ReadOnly))?;
    let mut fleet = Fleet::new(store, &cfg.hosts);
    if let Some(n) = a.stale_intervals {
        fleet = fleet.stale_after_intervals(n);
    }
    if let Some(p) = a.expect {
        fleet = fleet.expected_from(p);
    }
    let view = mayfly::store::block_on(fleet.view(super::unix_now()))??;
    print_view(&view, a.json)
}

/// The view on stdout (table or JSON); exit 9 while a host needs a look.
fn print_view(view: &FleetView, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(view)?);
    } else {
        print!("{}", render(view));
    }
    Ok(if view.attention() > 0 {
        EXIT_LAGGING.into()
    } else {
        ExitCode::SUCCESS
    })
}

fn render(v: &FleetView) -> String {
    let mut out = String::new();
    if v.hosts.is_empty() && v.never_reported_hosts.is_empty() {
        out.push_str(
            "no host has reported yet (`mayfly host sync` reports with the host certificate from \
             `mayfly host cert`)\n",
        );
        return out;
    }
    let width = v
        .hosts
        .iter()
        .map(|h| h.host.chars().count())
        .chain(v.never_reported_hosts.iter().map(|h| h.chars().count()))
        .max()
        .unwrap_or(4)
        .max(4);
    const STATE: usize = "never_reported".len();
    out.push_str(&format!(
        "{:<width$}  {:<STATE$}  {:>11}  {:>10}  {:<20}  LAST ERROR\n",
        "HOST", "STATE", "KRL", "BEHIND", "LAST REPORT"
    ));
    for h in &v.hosts {
        let state = if h.stale {
            "stale"
        } else if h.lagging {
            "lagging"
        } else {
            "current"
        };
        let age = humantime::format_duration(Duration::from_secs(h.age_secs));
        out.push_str(&format!(
            "{:<width$}  {:<STATE$}  {:>11}  {:>10}  {:<20}  {}\n",
            h.host,
            state,
            h.krl_version,
            h.krl_behind,
            format!("{age} ago"),
            h.last_error.as_deref().unwrap_or("-")
        ));
    }
    for h in &v.never_reported_hosts {
        out.push_str(&format!(
            "{:<width$}  {:<STATE$}  {:>11}  {:>10}  {:<20}  {}\n",
            h, "never_reported", "-", "-", "never", "-"
        ));
    }
    let never = if v.expected > 0 {
        format!(
            ", {} of {} expected never reported",
            v.never_reported, v.expected
        )
    } else {
        String::new()
    };
    out.push_str(&format!(
        "{} host(s): {} lagging, {} stale (no report for {}){never}; CA KRL version {}\n",
        v.total,
        v.lagging,
        v.stale,
        humantime::format_duration(Duration::from_secs(v.stale_after_secs)),
        v.ca_krl_version
    ));
    out
}
