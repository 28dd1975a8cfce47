//! Reports for the people who answer for the CA: the compliance evidence
//! report (`mayfly report compliance`) and the access review
//! (`mayfly report access-review`). Both read the CA's config, policy and
//! database on the CA host and change nothing.
//!
//! ```text
//! config + policy dir + mayfly.db
//!   -> inventory::collect      identities, statuses
//!   -> review::build           unused identities/roles, grants beyond use
//!   -> compliance::gather      evidence; compliance::controls maps it
//!   -> markdown | html | json
//! ```

pub mod chart;
pub mod compliance;
pub mod html;
pub mod markdown;
pub mod review;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Config;
use crate::inventory::{self, InventoryError};

/// Default report window in days.
pub const DEFAULT_DAYS: u64 = 30;

/// Why a report could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Config, policy or database trouble.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The output file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl From<crate::store::StoreError> for ReportError {
    fn from(e: crate::store::StoreError) -> Self {
        ReportError::Inventory(InventoryError::Store(e))
    }
}

/// Output format of the compliance report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Markdown (GitHub-flavoured tables, sparkline chart).
    Md,
    /// One self-contained HTML page with an SVG chart.
    Html,
    /// The evidence and controls as JSON.
    Json,
}

/// `mayfly report ...` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ReportCmd {
    /// Map NIST 800-53, ISO 27001 and PCI DSS controls to live evidence from this CA.
    Compliance {
        /// The CA's mayfly.toml.
        #[arg(long)]
        config: PathBuf,
        /// md, html or json.
        #[arg(long, value_enum, default_value = "md")]
        format: ReportFormat,
        /// Write here (atomically) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Window in days: activity counts, stale identities and unused roles.
        #[arg(long, default_value_t = DEFAULT_DAYS)]
        days: u64,
    },
    /// Identities and roles unused for N days, grants beyond what is used.
    AccessReview {
        /// The CA's mayfly.toml.
        #[arg(long)]
        config: PathBuf,
        /// Window in days.
        #[arg(long, default_value_t = DEFAULT_DAYS)]
        days: u64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() && c != '\n' => o.push('?'),
            c => o.push(c),
        }
    }
    o
}

/// The compliance report of the CA configured by `cfg` over the last
/// `days` days, as of `now` (unix seconds).
pub fn compliance_report(
    cfg: &Config,
    days: u64,
    now: u64,
) -> Result<compliance::ComplianceReport, ReportError> {
    let policy = inventory::load_policy(cfg)?;
    let store = inventory::open_db(cfg)?;
    let evidence = crate::store::block_on(compliance::gather(cfg, &policy, &store, days, now))??;
    Ok(compliance::build(evidence))
}

/// The access review of the CA configured by `cfg`.
pub fn access_review(
    cfg: &Config,
    days: u64,
    now: u64,
) -> Result<review::AccessReview, ReportError> {
    let policy = inventory::load_policy(cfg)?;
    let store = inventory::open_db(cfg)?;
    let since = inventory::window_start_ms(now, days);
    let r = crate::store::block_on(async {
        let inv = inventory::collect(&store, &policy, days, now).await?;
        let reports = store.reports();
        Ok::<_, crate::store::StoreError>(review::build(
            &policy,
            &inv,
            &reports.role_window_usage(since).await?,
            &reports.role_all_time().await?,
            &reports.principals_granted(since).await?,
            days,
            now,
        ))
    })??;
    Ok(r)
}

/// Renders a compliance report.
pub fn render(r: &compliance::ComplianceReport, format: ReportFormat) -> String {
    match format {
        ReportFormat::Md => markdown::render(r),
        ReportFormat::Html => html::render(r),
        ReportFormat::Json => {
            let mut s = serde_json::to_string_pretty(r)
                .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()));
            s.push('\n');
            s
        }
    }
}

/// Writes `text` to `path` atomically (temp file, fsync, rename), mode 0644.
pub fn write_report(path: &Path, text: &str) -> Result<(), ReportError> {
    crate::ca::keys::write_atomic(path, text.as_bytes(), 0o644).map_err(|source| {
        ReportError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

use crate::clock::now_secs as unix_now;

/// Runs `mayfly report ...`: the report goes to stdout or `--out`.
pub fn run_report(cmd: ReportCmd) -> anyhow::Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok();
    match cmd {
        ReportCmd::Compliance {
            config,
            format,
            out,
            days,
        } => {
            let cfg = Config::load(Some(&config), &env)?;
            let report = compliance_report(&cfg, days, unix_now())?;
            let text = render(&report, format);
            match out {
                Some(path) => {
                    write_report(&path, &text)?;
                    let attention = report
                        .controls
                        .iter()
                        .filter(|c| c.status == compliance::ControlStatus::Attention)
                        .count();
                    eprintln!(
                        "wrote {}: {} controls, {attention} need attention",
                        path.display(),
                        report.controls.len()
                    );
                }
                None => print!("{text}"),
            }
        }
        ReportCmd::AccessReview { config, days, json } => {
            let cfg = Config::load(Some(&config), &env)?;
            let r = access_review(&cfg, days, unix_now())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", review::render_text(&r));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
