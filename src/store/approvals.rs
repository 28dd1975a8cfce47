//! SQLite storage of approval requests (just-in-time access). A request is
//! stored as JSON with its status and expiry in columns for listing; every
//! change is written together with its audit record in one transaction.

use rusqlite::{params, OptionalExtension};

use super::sqlite::Sqlite;
use super::StoreError;
use crate::approval::{ApprovalRequest, ApprovalStatus};
use crate::audit::AuditRecord;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS approvals (
    id          TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    role        TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals(status, expires_at);";

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl Sqlite {
    pub(crate) fn approvals_schema(&self) -> Result<(), StoreError> {
        self.conn.execute_batch(SCHEMA).map_err(err)
    }

    /// Inserts or replaces `req`, with `audit`, in one transaction.
    pub(crate) fn approval_put_impl(
        &mut self,
        req: &ApprovalRequest,
        audit: &[AuditRecord],
    ) -> Result<(), StoreError> {
        self.approvals_schema()?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        approval_write_on(&tx, req)?;
        super::sqlite::insert_audit(&tx, audit)?;
        tx.commit().map_err(err)
    }

    /// One request by id.
    pub(crate) fn approval_get_impl(
        &mut self,
        id: &str,
    ) -> Result<Option<ApprovalRequest>, StoreError> {
        self.approvals_schema()?;
        approval_get_on(&self.conn, id)
    }

    /// Requests in `status` (all if `None`), newest first, at most 500.
    pub(crate) fn approval_list_impl(
        &mut self,
        status: Option<ApprovalStatus>,
    ) -> Result<Vec<ApprovalRequest>, StoreError> {
        self.approvals_schema()?;
        let mut st = self
            .conn
            .prepare(
                "SELECT body FROM approvals WHERE (?1 IS NULL OR status = ?1)
                 ORDER BY expires_at DESC LIMIT 500",
            )
            .map_err(err)?;
        let rows = st
            .query_map([status.map(|s| s.as_str())], |r| r.get::<_, String>(0))
            .map_err(err)?;
        let mut out = Vec::new();
        for b in rows {
            out.push(serde_json::from_str(&b.map_err(err)?).map_err(err)?);
        }
        Ok(out)
    }
}

/// Inserts or replaces `req` (inside the caller's transaction).
pub(crate) fn approval_write_on(
    conn: &rusqlite::Connection,
    req: &ApprovalRequest,
) -> Result<(), StoreError> {
    let body = serde_json::to_string(req).map_err(err)?;
    conn.execute(
        "INSERT INTO approvals (id, status, role, expires_at, body) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(id) DO UPDATE SET status = excluded.status, expires_at = excluded.expires_at, body = excluded.body",
        params![req.id, req.status.as_str(), req.role, req.expires_at.get() as i64, body],
    )
    .map_err(err)?;
    Ok(())
}

/// One request by id (inside the caller's transaction, or a plain read).
pub(crate) fn approval_get_on(
    conn: &rusqlite::Connection,
    id: &str,
) -> Result<Option<ApprovalRequest>, StoreError> {
    let body: Option<String> = conn
        .query_row("SELECT body FROM approvals WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()
        .map_err(err)?;
    body.map(|b| serde_json::from_str(&b).map_err(err))
        .transpose()
}
