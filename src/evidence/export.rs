//! `mayfly audit export`: every record from a position to the head, as
//! JSON Lines in the schema of [`crate::audit::export`].

use std::io::Write;

use crate::audit::chain::BadRow;
use crate::audit::export::to_line;
use crate::store::{AuditLog, StoreError};

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the output failed.
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Lines written.
    pub records: u64,
    /// First and last seq written.
    pub range: Option<(u64, u64)>,
    /// Rows that could not be read as records (not exported; `audit
    /// verify` names them).
    pub unreadable: Vec<BadRow>,
}

/// Writes every record from `from_seq` to the head as JSON Lines.
pub async fn export_jsonl(
    log: &dyn AuditLog,
    from_seq: u64,
    out: &mut dyn Write,
) -> Result<ExportSummary, ExportError> {
    let mut sum = ExportSummary::default();
    let mut next = from_seq;
    loop {
        let rows = log.scan(next, super::PAGE).await?;
        let n = rows.len();
        for row in rows {
            match row {
                Ok(r) => {
                    serde_json::to_writer(&mut *out, &to_line(&r)).map_err(std::io::Error::from)?;
                    out.write_all(b"\n")?;
                    sum.records += 1;
                    sum.range = Some((sum.range.map(|(a, _)| a).unwrap_or(r.seq), r.seq));
                    next = r.seq.saturating_add(1);
                }
                Err(bad) => {
                    next = bad.seq.saturating_add(1);
                    sum.unreadable.push(bad);
                }
            }
        }
        if n < super::PAGE {
            break;
        }
    }
    out.flush()?;
    Ok(sum)
}
