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
//!   -> document::compliance    sections, tables, facts (one model)
//!   -> markdown | html          markup only; json serialises the report
//! ```

pub mod chart;
pub mod compliance;
pub mod document;
#[cfg(test)]
mod fixture;
pub mod html;
pub mod markdown;
pub mod review;

use std::path::{Path, PathBuf};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    /// Markdown (GitHub-flavoured tables, sparkline chart).
    Md,
    /// One self-contained HTML page with an SVG chart.
    Html,
    /// The evidence and controls as JSON.
    Json,
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
    let appeared = crate::policy::history::appeared(&cfg.policy_dir, &policy);
    let r = crate::store::block_on(async {
        let inv = inventory::collect(&store, &policy, days, now).await?;
        let reports = store.reports();
        Ok::<_, crate::store::StoreError>(review::build(
            &policy,
            &inv,
            &reports.role_window_usage(since).await?,
            &reports.role_all_time().await?,
            &reports.principals_granted(since).await?,
            &appeared,
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
