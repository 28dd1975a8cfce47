//! `mayfly audit verify` over a store: reads the checkpoints and records
//! page by page and hands them to the pure verifiers of
//! [`crate::audit::verify`].

use std::io::BufRead;

use crate::audit::chain::GENESIS;
use crate::audit::checkpoint::AuditPublicKey;
use crate::audit::export::record_from_line;
use crate::audit::verify::{ExportVerifier, LogVerifier, VerifyReport};
use crate::store::{AuditLog, StoreError};

/// Verifies the whole log in `log`: every record against the chain, every
/// checkpoint's signature (when `key` is given) and position, and the
/// tail against the checkpoints and the store's seq counter.
pub async fn verify_db(
    log: &dyn AuditLog,
    key: Option<&AuditPublicKey>,
    subject: &str,
) -> Result<VerifyReport, StoreError> {
    let meta = log.chain_meta().await?;
    let mut v = LogVerifier::new(subject, key, meta);
    let mut after = 0i64;
    loop {
        let page = log.checkpoints(after, super::PAGE).await?;
        let n = page.len();
        for (id, cp) in page {
            after = id;
            v.checkpoint(cp);
        }
        if n < super::PAGE {
            break;
        }
    }
    v.checkpoints_done();
    let mut next = 1u64;
    loop {
        let rows = log.scan(next, super::PAGE).await?;
        let n = rows.len();
        for row in rows {
            next = match &row {
                Ok(r) => r.seq,
                Err(b) => b.seq,
            }
            .saturating_add(1);
            v.record(row);
        }
        if n < super::PAGE {
            break;
        }
    }
    Ok(v.finish())
}

/// Why an export could not be verified at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyExportError {
    /// Reading the file failed.
    #[error("reading the export: {0}")]
    Io(#[from] std::io::Error),
    /// Reading the database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Verifies an exported JSON Lines file: each line's hash and its link to
/// the line before. The first line's `prev_hash` is taken on trust unless
/// `log` is given, in which case every exported record must also be in the
/// log with the same hash (the export anchors the database: a database
/// rolled back or rewritten after the export fails here).
pub async fn verify_export(
    input: impl BufRead,
    subject: &str,
    log: Option<&dyn AuditLog>,
) -> Result<VerifyReport, VerifyExportError> {
    let mut v = ExportVerifier::new(subject, log.is_some());
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let line_no = i + 1;
        let r = match record_from_line(&line) {
            Ok(r) => r,
            Err(e) => {
                v.bad_line(line_no, &e);
                continue;
            }
        };
        let Some(log) = log else {
            v.record(line_no, r, None);
            continue;
        };
        if v.at_first_record() && r.prev_hash.is_some() {
            let anchor = if r.seq <= 1 {
                Some(GENESIS)
            } else {
                match log.record(r.seq - 1).await? {
                    Some(Ok(p)) => p.hash,
                    _ => None,
                }
            };
            v.anchor(&r, anchor);
        }
        let stored = log.record(r.seq).await?;
        v.record(line_no, r, Some(stored));
    }
    Ok(v.finish())
}
