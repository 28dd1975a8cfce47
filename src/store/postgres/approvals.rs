//! Approval requests in PostgreSQL: requested on one replica, voted on a
//! second, redeemed on a third. Every change takes the chain lock first
//! (it writes audit records, and redemption happens inside the issuance
//! commit under the same lock), so a vote's read-then-write and a
//! redemption never interleave, whichever replicas they run on.

use super::chain;
use super::db::{Db, PgResult};
use super::issuance::{approval_get, approval_write};
use crate::approval::{ApprovalError, ApprovalRequest, ApprovalStatus};
use crate::audit::AuditRecord;
use crate::store::{Cancel, Vote};

/// Inserts or replaces `req` with its audit records.
pub async fn put(tx: Db<'_>, req: &ApprovalRequest, audit: &[AuditRecord]) -> PgResult<()> {
    chain::append(tx, audit).await?;
    approval_write(tx, req).await
}

/// One approver's vote: read, decide ([`crate::approval::apply_vote`]),
/// write, with its audit record, after the chain lock.
pub async fn vote(
    tx: Db<'_>,
    id: &str,
    vote: &Vote,
    audit: AuditRecord,
) -> PgResult<Result<ApprovalRequest, ApprovalError>> {
    change(tx, id, audit, |r| {
        crate::approval::apply_vote(r, &vote.approver, vote.approve, &vote.reason, vote.now)
    })
    .await
}

/// Withdraws request `id`: read, decide ([`crate::approval::apply_cancel`]),
/// write, with its audit record, after the chain lock.
pub async fn cancel(
    tx: Db<'_>,
    id: &str,
    cancel: &Cancel,
    audit: AuditRecord,
) -> PgResult<Result<ApprovalRequest, ApprovalError>> {
    change(tx, id, audit, |r| {
        crate::approval::apply_cancel(r, &cancel.by, &cancel.reason, cancel.now)
    })
    .await
}

/// One decided change of request `id` under the chain lock and the row's
/// lock: nothing else changes it between the read and the write.
async fn change(
    tx: Db<'_>,
    id: &str,
    audit: AuditRecord,
    decide: impl FnOnce(ApprovalRequest) -> Result<ApprovalRequest, ApprovalError>,
) -> PgResult<Result<ApprovalRequest, ApprovalError>> {
    let mut head = chain::lock_head(tx).await?;
    let Some(r) = approval_get(tx, id, true).await? else {
        return Ok(Err(ApprovalError::NotFound(id.to_string())));
    };
    match decide(r) {
        Ok(r) => {
            approval_write(tx, &r).await?;
            let rows = chain::chain_records(&mut head, std::slice::from_ref(&audit));
            chain::insert_rows(tx, &rows).await?;
            chain::save_head(tx, &head).await?;
            Ok(Ok(r))
        }
        Err(e) => Ok(Err(e)),
    }
}

/// Requests in `status` (all if `None`), newest first, at most 500.
pub async fn list(db: Db<'_>, status: Option<ApprovalStatus>) -> PgResult<Vec<ApprovalRequest>> {
    let status = status.map(|s| s.as_str());
    let rows = db
        .query(
            "SELECT id, body FROM approvals WHERE ($1::text IS NULL OR status = $1)
             ORDER BY expires_at DESC, id LIMIT 500",
            &[&status],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get(0)?;
            let body: String = r.try_get(1)?;
            serde_json::from_str(&body).map_err(|e| {
                super::db::PgError::msg(format!("postgres: approval {id} is damaged: {e}"))
            })
        })
        .collect()
}
