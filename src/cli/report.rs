//! `mayfly report compliance | access-review`: evidence and reviews from
//! the CA's live data, rendered by the library, written here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};

use mayfly::clock::now_secs;
use mayfly::report::{self, compliance::ControlStatus, review, ReportFormat, DEFAULT_DAYS};

use super::load_config;

/// `--format` of `report compliance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Markdown (GitHub-flavoured tables, sparkline chart).
    Md,
    /// One self-contained HTML page with an SVG chart.
    Html,
    /// The evidence and controls as JSON.
    Json,
}

impl From<FormatArg> for ReportFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Md => ReportFormat::Md,
            FormatArg::Html => ReportFormat::Html,
            FormatArg::Json => ReportFormat::Json,
        }
    }
}

/// `mayfly report ...`.
#[derive(Subcommand)]
pub enum ReportCmd {
    /// Map NIST 800-53, ISO 27001 and PCI DSS controls to live evidence from this CA.
    Compliance {
        /// The CA's mayfly.toml.
        #[arg(long)]
        config: PathBuf,
        /// md, html or json.
        #[arg(long, value_enum, default_value = "md")]
        format: FormatArg,
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

/// Runs one `mayfly report` command: the report goes to stdout or `--out`.
pub fn run(cmd: ReportCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ReportCmd::Compliance {
            config,
            format,
            out,
            days,
        } => {
            let cfg = load_config(&config)?;
            let r = report::compliance_report(&cfg, days, now_secs())?;
            let text = report::render(&r, format.into());
            match out {
                Some(path) => {
                    report::write_report(&path, &text)?;
                    let attention = r
                        .controls
                        .iter()
                        .filter(|c| c.status == ControlStatus::Attention)
                        .count();
                    eprintln!(
                        "wrote {}: {} controls, {attention} need attention",
                        path.display(),
                        r.controls.len()
                    );
                }
                None => print!("{text}"),
            }
        }
        ReportCmd::AccessReview { config, days, json } => {
            let cfg = load_config(&config)?;
            let r = report::access_review(&cfg, days, now_secs())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", review::render_text(&r));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
