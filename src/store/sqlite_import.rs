//! The SQLite side of `mayfly store migrate`: the reads that give a
//! source's whole state page by page, and the writes of
//! [`super::ImportStore`] on the writer thread, one transaction per page.
//!
//! The import mark is a `meta` row (`import_in_progress`, JSON
//! [`UnfinishedImport`]), written in the transaction that found the
//! database empty and deleted by the last step. Every write step checks it
//! inside its own transaction, so nothing is imported into a database that
//! was not claimed for it. Rows keep their ids (`audit.seq`, checkpoint
//! and revocation ids), and SQLite's AUTOINCREMENT counters follow
//! explicit ids, so the verifier's "deleted from the end" checks hold on
//! the copy as on the source.

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::import::{ImportRefusal, ImportedState, RevocationRow, StoreCounts, UnfinishedImport};
use super::sqlite::{
    chain_head, table_exists, Sqlite, AUDIT_COLUMNS, META_LEGACY_THROUGH, META_MIGRATED_AT,
    META_STREAM_CURSOR,
};
use super::{DisabledEntry, StoreError};
use crate::approval::ApprovalRequest;
use crate::audit::chain::{self, StoredRecord};
use crate::audit::checkpoint::Checkpoint;

/// `meta` key of the import mark.
const META_IMPORT: &str = "import_in_progress";
/// `meta` key of the imported serial floor.
const META_SERIAL_FLOOR: &str = "serial_floor";

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The write steps of an import, run on the writer thread
/// ([`super::ImportStore`] says what each guarantees).
pub trait ImportBackend {
    /// Claims the empty database; `Ok(Err(_))`: refused, nothing written.
    fn import_begin(
        &mut self,
        from: &str,
        now_ms: i64,
    ) -> Result<Result<(), ImportRefusal>, StoreError>;
    /// Appends audit rows verbatim, continuing the stored chain.
    fn import_audit(&mut self, rows: &[StoredRecord]) -> Result<(), StoreError>;
    /// Stores checkpoints with their ids.
    fn import_checkpoints(&mut self, checkpoints: &[Checkpoint]) -> Result<(), StoreError>;
    /// Stores revocations with their ids and times.
    fn import_revocations(&mut self, rows: &[RevocationRow]) -> Result<(), StoreError>;
    /// Stores disabled entries.
    fn import_disabled(&mut self, entries: &[DisabledEntry]) -> Result<(), StoreError>;
    /// Stores approval requests.
    fn import_approvals(&mut self, requests: &[ApprovalRequest]) -> Result<(), StoreError>;
    /// Sets the serial floor, state version, stream cursor and chain facts.
    fn import_state(&mut self, state: &ImportedState) -> Result<(), StoreError>;
    /// Clears the import mark.
    fn import_finish(&mut self) -> Result<(), StoreError>;
}

/// The imported serial floor (0 when none was imported).
pub(crate) fn serial_floor(conn: &Connection) -> Result<u64, StoreError> {
    let v: Option<String> = conn
        .query_row(
            "SELECT v FROM meta WHERE k = ?1",
            [META_SERIAL_FLOOR],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)?;
    match v {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| {
            StoreError::Backend(format!("meta {META_SERIAL_FLOOR} is not a number: {v:?}"))
        }),
    }
}

fn unfinished_on(conn: &Connection) -> Result<Option<UnfinishedImport>, StoreError> {
    let v: Option<String> = conn
        .query_row("SELECT v FROM meta WHERE k = ?1", [META_IMPORT], |r| {
            r.get(0)
        })
        .optional()
        .map_err(err)?;
    v.map(|v| {
        // A mark that cannot be read still marks the import as unfinished.
        Ok(serde_json::from_str(&v).unwrap_or(UnfinishedImport {
            from: format!("an unreadable mark ({v:?})"),
            started_ms: 0,
        }))
    })
    .transpose()
}

/// Fails unless an import was begun (inside the step's transaction).
fn claimed(tx: &Transaction<'_>) -> Result<(), StoreError> {
    match unfinished_on(tx)? {
        Some(_) => Ok(()),
        None => Err(StoreError::Backend(
            "import: no import was begun on this database (begin_import claims an empty one)"
                .into(),
        )),
    }
}

fn count(conn: &Connection, table: &str) -> Result<u64, StoreError> {
    if !table_exists(conn, table)? {
        return Ok(0);
    }
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n.max(0) as u64)
    .map_err(err)
}

/// The highest id an AUTOINCREMENT table ever used (rows deleted since
/// included).
fn counter(conn: &Connection, table: &str) -> Result<u64, StoreError> {
    conn.query_row(
        "SELECT seq FROM sqlite_sequence WHERE name = ?1",
        [table],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|v| v.unwrap_or(0).max(0) as u64)
    .map_err(err)
}

fn counts_on(conn: &Connection) -> Result<StoreCounts, StoreError> {
    Ok(StoreCounts {
        audit_records: count(conn, "audit")?,
        checkpoints: count(conn, "audit_checkpoints")?,
        revocations: count(conn, "revocations")?,
        disabled: count(conn, "disabled")?,
        approvals: count(conn, "approvals")?,
    })
}

fn set_meta(tx: &Transaction<'_>, k: &str, v: &str) -> Result<(), StoreError> {
    tx.execute(
        "INSERT OR REPLACE INTO meta (k, v) VALUES (?1, ?2)",
        params![k, v],
    )
    .map(|_| ())
    .map_err(err)
}

/// The reads that give a source's whole state (any open mode, read-only
/// included: a missing table is empty).
impl Sqlite {
    /// How many rows of each kind the database holds.
    pub(crate) fn counts(&self) -> Result<StoreCounts, StoreError> {
        counts_on(&self.conn)
    }

    /// The import begun on this database and not finished, if any.
    pub(crate) fn unfinished_import(&self) -> Result<Option<UnfinishedImport>, StoreError> {
        unfinished_on(&self.conn)
    }

    /// Revocations with an id above `after_id`, by id, at most `limit`.
    pub(crate) fn revocation_history(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<RevocationRow>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, time_ms, ca_key, serial, key_id, expires_at, reason, actor
                 FROM revocations WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(err)?;
        let rows = st
            .query_map(
                params![after_id, limit.min(i64::MAX as usize) as i64],
                |r| {
                    Ok(RevocationRow {
                        id: r.get(0)?,
                        time_ms: r.get::<_, i64>(1)? as u64,
                        revocation: super::sqlite::revocation_at(r, 2)?,
                    })
                },
            )
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    /// Approval requests with an id above `after_id`, by id, at most `limit`.
    pub(crate) fn approvals_after(
        &self,
        after_id: &str,
        limit: usize,
    ) -> Result<Vec<ApprovalRequest>, StoreError> {
        if !table_exists(&self.conn, "approvals")? {
            return Ok(Vec::new());
        }
        let mut st = self
            .conn
            .prepare_cached("SELECT id, body FROM approvals WHERE id > ?1 ORDER BY id LIMIT ?2")
            .map_err(err)?;
        let rows = st
            .query_map(
                params![after_id, limit.min(i64::MAX as usize) as i64],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .map_err(err)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row.map_err(err)?;
            out.push(serde_json::from_str(&body).map_err(|e| {
                StoreError::Backend(format!("approval request {id} cannot be read: {e}"))
            })?);
        }
        Ok(out)
    }
}

impl Sqlite {
    fn import_tx(&mut self) -> Result<Transaction<'_>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        claimed(&tx)?;
        Ok(tx)
    }
}

impl ImportBackend for Sqlite {
    fn import_begin(
        &mut self,
        from: &str,
        now_ms: i64,
    ) -> Result<Result<(), ImportRefusal>, StoreError> {
        self.approvals_schema()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        if let Some(u) = unfinished_on(&tx)? {
            return Ok(Err(ImportRefusal::Unfinished(u)));
        }
        let counts = counts_on(&tx)?;
        if !counts.is_empty() {
            return Ok(Err(ImportRefusal::NotEmpty(counts)));
        }
        let (seq, checkpoint) = (counter(&tx, "audit")?, counter(&tx, "audit_checkpoints")?);
        if seq > 0 || checkpoint > 0 {
            return Ok(Err(ImportRefusal::UsedBefore {
                seq_counter: seq,
                checkpoint_counter: checkpoint,
            }));
        }
        let mark = serde_json::to_string(&UnfinishedImport {
            from: from.to_string(),
            started_ms: now_ms,
        })
        .map_err(err)?;
        set_meta(&tx, META_IMPORT, &mark)?;
        tx.commit().map_err(err)?;
        Ok(Ok(()))
    }

    fn import_audit(&mut self, rows: &[StoredRecord]) -> Result<(), StoreError> {
        let tx = self.import_tx()?;
        let (mut seq, mut prev) = chain_head(&tx)?;
        {
            let mut st = tx
                .prepare_cached(&format!(
                    "INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,
                        ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23,
                        ?24, ?25)"
                ))
                .map_err(err)?;
            let mut scratch = Vec::with_capacity(1024);
            for row in rows {
                let refuse = |what: &str| {
                    StoreError::Backend(format!(
                        "import: audit record {} does not continue the chain: {what}",
                        row.seq
                    ))
                };
                if row.seq != seq.saturating_add(1) {
                    return Err(refuse(&format!("the stored log ends at seq {seq}")));
                }
                if row.prev_hash != Some(prev) {
                    return Err(refuse("its prev_hash is not the stored head's hash"));
                }
                let hash = chain::record_hash_with(row, &prev, &mut scratch);
                if row.hash != Some(hash) {
                    return Err(refuse("its hash is not the chain hash of its columns"));
                }
                super::sqlite::insert_audit_row(&mut st, row, row.seq, &prev, &hash)
                    .map_err(err)?;
                seq = row.seq;
                prev = hash;
            }
        }
        tx.commit().map_err(err)
    }

    fn import_checkpoints(&mut self, checkpoints: &[Checkpoint]) -> Result<(), StoreError> {
        let tx = self.import_tx()?;
        let (head, _) = chain_head(&tx)?;
        let mut last: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(id), 0) FROM audit_checkpoints",
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO audit_checkpoints (id, seq, hash, time_ms, key_fingerprint, signature)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(err)?;
            for cp in checkpoints {
                if cp.id <= last {
                    return Err(StoreError::Backend(format!(
                        "import: checkpoint #{} does not come after the stored #{last}",
                        cp.id
                    )));
                }
                if cp.seq > head {
                    return Err(StoreError::Backend(format!(
                        "import: checkpoint #{} covers seq {}, beyond the imported log (seq {head})",
                        cp.id, cp.seq
                    )));
                }
                st.execute(params![
                    cp.id,
                    cp.seq as i64,
                    &cp.hash[..],
                    cp.time_ms,
                    cp.key_fingerprint,
                    cp.signature
                ])
                .map_err(err)?;
                last = cp.id;
            }
        }
        tx.commit().map_err(err)
    }

    fn import_revocations(&mut self, rows: &[RevocationRow]) -> Result<(), StoreError> {
        let tx = self.import_tx()?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO revocations (id, time_ms, ca_key, serial, key_id, expires_at, reason, actor)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(err)?;
            for r in rows {
                let v = &r.revocation;
                st.execute(params![
                    r.id,
                    r.time_ms as i64,
                    v.ca_key,
                    v.serial.map(|s| s as i64),
                    v.key_id,
                    v.expires_at as i64,
                    v.reason,
                    v.actor
                ])
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    fn import_disabled(&mut self, entries: &[DisabledEntry]) -> Result<(), StoreError> {
        let tx = self.import_tx()?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO disabled (issuer, subject, role, time_ms, reason, actor)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(err)?;
            for e in entries {
                let (issuer, subject, role) = e.key.columns();
                st.execute(params![
                    issuer,
                    subject,
                    role,
                    e.time_ms as i64,
                    e.reason,
                    e.actor
                ])
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    fn import_approvals(&mut self, requests: &[ApprovalRequest]) -> Result<(), StoreError> {
        self.approvals_schema()?;
        let tx = self.import_tx()?;
        for r in requests {
            super::approvals::approval_write_on(&tx, r)?;
        }
        tx.commit().map_err(err)
    }

    fn import_state(&mut self, state: &ImportedState) -> Result<(), StoreError> {
        let tx = self.import_tx()?;
        set_meta(&tx, META_SERIAL_FLOOR, &state.serial_floor.to_string())?;
        // Never backwards, even on a store that moved meanwhile.
        for (k, v) in [
            ("state_version", state.state_version.version),
            ("state_changed_at", state.state_version.changed_at),
        ] {
            tx.execute(
                "UPDATE meta SET v = CAST(MAX(CAST(v AS INTEGER), ?2) AS TEXT) WHERE k = ?1",
                params![k, v as i64],
            )
            .map_err(err)?;
        }
        if let Some(c) = state.stream_cursor {
            set_meta(&tx, META_STREAM_CURSOR, &c.to_string())?;
        }
        if let Some(t) = state.legacy_through {
            set_meta(&tx, META_LEGACY_THROUGH, &t.to_string())?;
        }
        if let Some(t) = state.migrated_at_ms {
            set_meta(&tx, META_MIGRATED_AT, &t.to_string())?;
        }
        tx.commit().map_err(err)
    }

    fn import_finish(&mut self) -> Result<(), StoreError> {
        let tx = self.import_tx()?;
        tx.execute("DELETE FROM meta WHERE k = ?1", [META_IMPORT])
            .map_err(err)?;
        tx.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::approval::ApprovalStatus;
    use crate::audit::checkpoint::AuditKey;
    use crate::audit::{AuditRecord, EventKind};
    use crate::config::StoreBackend;
    use crate::store::Revocation;
    use crate::store::{open, DisableTarget, IssuedCert, OpenMode, Revoker, Store, StoreConfig};

    fn store(path: &Path) -> Store {
        open(&StoreConfig {
            backend: StoreBackend::SQLite,
            sqlite_path: path.to_path_buf(),
            busy_timeout: Duration::from_secs(1),
            mode: OpenMode::Create,
            postgres: None,
        })
        .unwrap()
    }

    fn issued(serial: u64, subject: &str) -> AuditRecord {
        let mut r = AuditRecord::new(EventKind::CertIssued, 1_000_000 + serial, "req");
        r.serial = Some(serial);
        r.issuer = Some("ci".into());
        r.subject = Some(subject.into());
        r.role = Some("deploy".into());
        r.key_id = Some(format!("k{serial}"));
        r.ca_key = Some("ssh-ed25519 AAAA ca".into());
        r.valid_before = Some(9_000);
        r.principals = vec!["deploy".into()];
        r
    }

    fn approval(id: &str, status: ApprovalStatus) -> ApprovalRequest {
        ApprovalRequest {
            id: id.into(),
            role: "deploy".into(),
            issuer: "ci".into(),
            subject: "bot".into(),
            key_fingerprint: "SHA256:k".into(),
            principals: vec!["deploy".into()],
            ttl_seconds: 60,
            created_at: crate::time::UnixSecs(1),
            expires_at: crate::time::UnixSecs(5_000),
            required: 1,
            status,
            votes: vec![],
            requester_claims: Default::default(),
            cancelled: None,
            job_claims: Default::default(),
        }
    }

    /// A source with every kind of row: issuances, a revocation that has
    /// expired and one that has not, a deactivation (which revokes too),
    /// approvals and a signed checkpoint.
    async fn source(path: &Path, key: &std::sync::Arc<AuditKey>) -> Store {
        let s = store(path);
        for (serial, who) in [(1, "a"), (2, "b"), (3, "gone")] {
            s.issuance()
                .issue(issued(serial, who), None)
                .await
                .unwrap()
                .unwrap();
        }
        let revoke = |serial: u64, expires_at: u64| Revocation {
            ca_key: "ssh-ed25519 AAAA ca".into(),
            serial: Some(serial),
            key_id: None,
            expires_at,
            reason: "leaked".into(),
            actor: "admin".into(),
        };
        s.access()
            .revoke(
                vec![revoke(1, 9_000), revoke(77, 10)],
                vec![AuditRecord::new(EventKind::CertRevoked, 1_100_000, "adm")],
                1_100,
            )
            .await
            .unwrap();
        let sweep: Revoker = Box::new(|c: &IssuedCert| {
            (
                Revocation {
                    ca_key: c.ca_key.clone(),
                    serial: Some(c.serial),
                    key_id: Some(c.key_id.clone()),
                    expires_at: c.valid_before,
                    reason: "gone".into(),
                    actor: "admin".into(),
                },
                AuditRecord::new(EventKind::CertRevoked, 1_200_000, "adm"),
            )
        });
        let target = DisableTarget::Identity {
            issuer: "ci".into(),
            subject: "gone".into(),
            role: None,
        };
        s.access()
            .disable_and_revoke(
                DisabledEntry {
                    key: target.clone(),
                    time_ms: 1_200_000,
                    reason: "left".into(),
                    actor: "admin".into(),
                },
                AuditRecord::new(EventKind::Disabled, 1_200_000, "adm"),
                target.cert_filter(),
                1_200,
                sweep,
            )
            .await
            .unwrap();
        for (id, st) in [
            ("apr_a", ApprovalStatus::Approved),
            ("apr_b", ApprovalStatus::Pending),
        ] {
            s.approvals()
                .put(
                    approval(id, st),
                    vec![AuditRecord::new(
                        EventKind::ApprovalRequested,
                        1_300_000,
                        "r",
                    )],
                )
                .await
                .unwrap();
        }
        let signer = key.clone();
        s.audit()
            .write_checkpoint(
                &key.fingerprint(),
                1_400_000,
                Box::new(move |seq, h, t| signer.sign(seq, h, t).map_err(|e| e.to_string())),
            )
            .await
            .unwrap()
            .unwrap();
        s.issuance()
            .issue(issued(4, "a"), None)
            .await
            .unwrap()
            .unwrap();
        s
    }

    /// Every page of the source into `dst`, as `mayfly store migrate` does
    /// (pages of 2, so paging is exercised).
    async fn import_all(src: &Store, dst: &Store) {
        let imp = dst.imports();
        imp.begin_import("test source", 1).await.unwrap().unwrap();
        let mut next = 1;
        loop {
            let rows: Vec<StoredRecord> = src
                .audit()
                .scan(next, 2)
                .await
                .unwrap()
                .into_iter()
                .map(Result::unwrap)
                .collect();
            let Some(last) = rows.last() else { break };
            next = last.seq + 1;
            imp.import_audit(rows).await.unwrap();
        }
        let cps: Vec<Checkpoint> = src
            .audit()
            .checkpoints(0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, c)| c.unwrap())
            .collect();
        imp.import_checkpoints(cps).await.unwrap();
        let mut after = 0;
        loop {
            let page = src.access().revocation_history(after, 2).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.id;
            imp.import_revocations(page).await.unwrap();
        }
        imp.import_disabled(src.access().disabled().await.unwrap())
            .await
            .unwrap();
        let mut after = String::new();
        loop {
            let page = src.approvals().list_after(&after, 1).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.id.clone();
            imp.import_approvals(page).await.unwrap();
        }
        let meta = src.audit().chain_meta().await.unwrap();
        imp.import_state(ImportedState {
            serial_floor: src.issuance().max_serial().await.unwrap(),
            state_version: src.access().state_version().await.unwrap(),
            stream_cursor: Some(3),
            legacy_through: meta.legacy_through,
            migrated_at_ms: meta.migrated_at_ms,
        })
        .await
        .unwrap();
        imp.finish_import().await.unwrap();
    }

    /// `audit verify` of `s` (the pure verifier over the store's pages;
    /// the evidence layer above does the same).
    async fn verify(
        s: &Store,
        key: &crate::audit::checkpoint::AuditPublicKey,
    ) -> crate::audit::verify::VerifyReport {
        let mut v = crate::audit::verify::LogVerifier::new(
            "copy",
            Some(key),
            s.audit().chain_meta().await.unwrap(),
        );
        for (_, cp) in s.audit().checkpoints(0, 1000).await.unwrap() {
            v.checkpoint(cp);
        }
        v.checkpoints_done();
        for r in s.audit().scan(1, 1000).await.unwrap() {
            v.record(r);
        }
        v.finish()
    }

    async fn all_rows(s: &Store) -> Vec<StoredRecord> {
        s.audit()
            .scan(1, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_import_is_the_source_row_for_row_and_verifies_with_its_checkpoints() {
        let d = tempfile::tempdir().unwrap();
        let key = std::sync::Arc::new(AuditKey::ephemeral());
        let src = source(&d.path().join("src.db"), &key).await;
        let dst = store(&d.path().join("dst.db"));
        import_all(&src, &dst).await;

        assert_eq!(all_rows(&dst).await, all_rows(&src).await);
        assert_eq!(
            dst.imports().counts().await.unwrap(),
            src.imports().counts().await.unwrap()
        );
        let counts = dst.imports().counts().await.unwrap();
        assert_eq!(
            (
                counts.revocations,
                counts.disabled,
                counts.approvals,
                counts.checkpoints
            ),
            (3, 1, 2, 1),
            "{counts:?}"
        );
        let history =
            |s: Store| async move { s.access().revocation_history(0, 100).await.unwrap() };
        assert_eq!(history(dst.clone()).await, history(src.clone()).await);
        assert_eq!(
            dst.access().live_revocations(2_000).await.unwrap(),
            src.access().live_revocations(2_000).await.unwrap()
        );
        assert_eq!(
            dst.access().disabled().await.unwrap(),
            src.access().disabled().await.unwrap()
        );
        assert_eq!(
            dst.approvals().list_after("", 100).await.unwrap(),
            src.approvals().list_after("", 100).await.unwrap()
        );
        assert_eq!(
            dst.access().state_version().await.unwrap(),
            src.access().state_version().await.unwrap()
        );
        assert_eq!(dst.audit().stream_cursor().await.unwrap(), Some(3));
        assert_eq!(dst.issuance().max_serial().await.unwrap(), 4);
        assert_eq!(
            dst.reports().revocations_since(0).await.unwrap(),
            src.reports().revocations_since(0).await.unwrap()
        );

        let report = verify(&dst, &key.public()).await;
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.checkpoints_signed_ok, 1);
        assert_eq!(dst.imports().unfinished_import().await.unwrap(), None);

        // The copy goes on as the source would have: the next record links
        // to the imported head, and a disabled identity stays refused.
        dst.counters().start(0).await.unwrap();
        assert_eq!(dst.counters().next_serial().await.unwrap(), 5);
        let guard = crate::store::IssueGuard {
            issuer: "ci".into(),
            subject: "gone".into(),
            role: "deploy".into(),
            max_active: None,
            redeem: None,
            renews: None,
            acted_on: None,
            claims: Vec::new(),
        };
        assert!(matches!(
            dst.issuance()
                .issue(issued(5, "gone"), Some(guard))
                .await
                .unwrap(),
            Err(crate::store::GuardRefusal::Disabled(_))
        ));
        dst.issuance()
            .issue(issued(6, "a"), None)
            .await
            .unwrap()
            .unwrap();
        let report = verify(&dst, &key.public()).await;
        assert!(report.is_intact(), "{report}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_store_with_anything_in_it_is_refused_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let s = store(&d.path().join("m.db"));
        s.issuance()
            .issue(issued(1, "a"), None)
            .await
            .unwrap()
            .unwrap();
        let refusal = s.imports().begin_import("x", 1).await.unwrap().unwrap_err();
        assert!(
            matches!(refusal, ImportRefusal::NotEmpty(c) if c.audit_records == 1),
            "{refusal}"
        );
        assert!(refusal.to_string().contains("1 audit record"), "{refusal}");
        assert_eq!(s.imports().unfinished_import().await.unwrap(), None);
        assert!(
            s.imports().import_audit(vec![]).await.is_err(),
            "an import step ran on a store that was not claimed"
        );

        // Records written and deleted leave their ids used.
        let p = d.path().join("used.db");
        let u = store(&p);
        u.issuance()
            .issue(issued(1, "a"), None)
            .await
            .unwrap()
            .unwrap();
        drop(u);
        Connection::open(&p)
            .unwrap()
            .execute("DELETE FROM audit", [])
            .unwrap();
        let u = store(&p);
        assert!(matches!(
            u.imports().begin_import("x", 1).await.unwrap(),
            Err(ImportRefusal::UsedBefore { seq_counter: 1, .. })
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_unfinished_import_is_refused_by_the_next_import_and_by_a_server() {
        let d = tempfile::tempdir().unwrap();
        let s = store(&d.path().join("m.db"));
        s.imports()
            .begin_import("the old CA", 42)
            .await
            .unwrap()
            .unwrap();
        let again = s
            .imports()
            .begin_import("x", 43)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            again,
            ImportRefusal::Unfinished(UnfinishedImport {
                from: "the old CA".into(),
                started_ms: 42
            })
        );
        assert!(again.to_string().contains("recreate it empty"), "{again}");
        let start = s.counters().start(0).await.unwrap_err().to_string();
        assert!(
            start.contains("unfinished import from the old CA"),
            "{start}"
        );
        s.imports().finish_import().await.unwrap();
        s.counters().start(0).await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn audit_rows_that_do_not_continue_the_chain_are_refused_whole() {
        let d = tempfile::tempdir().unwrap();
        let src = store(&d.path().join("src.db"));
        for n in 1..=3 {
            src.issuance()
                .issue(issued(n, "a"), None)
                .await
                .unwrap()
                .unwrap();
        }
        let rows = all_rows(&src).await;
        let dst = store(&d.path().join("dst.db"));
        dst.imports().begin_import("src", 1).await.unwrap().unwrap();

        let mut edited = rows.clone();
        edited[1].subject = Some("mallory".into());
        let mut skipped = rows.clone();
        skipped.remove(1);
        let mut relinked = rows.clone();
        relinked[1].prev_hash = Some([7; 32]);
        for (what, page) in [
            ("a changed column", edited),
            ("a missing row", skipped),
            ("a wrong prev_hash", relinked),
            ("a page that does not start the log", rows[1..].to_vec()),
        ] {
            let e = dst.imports().import_audit(page).await.unwrap_err();
            assert!(
                e.to_string().contains("does not continue the chain"),
                "{what}: {e}"
            );
            assert_eq!(
                dst.audit().head().await.unwrap(),
                None,
                "{what}: rows written"
            );
        }
        dst.imports()
            .import_audit(rows[..1].to_vec())
            .await
            .unwrap();
        dst.imports()
            .import_audit(rows[1..].to_vec())
            .await
            .unwrap();
        assert_eq!(all_rows(&dst).await, rows);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_serial_floor_holds_without_the_records_that_set_it() {
        let d = tempfile::tempdir().unwrap();
        let s = store(&d.path().join("m.db"));
        s.imports().begin_import("src", 1).await.unwrap().unwrap();
        let floor = 1_900_000_000u64 << 24;
        s.imports()
            .import_state(ImportedState {
                serial_floor: floor,
                ..ImportedState::default()
            })
            .await
            .unwrap();
        s.imports().finish_import().await.unwrap();
        assert_eq!(s.issuance().max_serial().await.unwrap(), floor);
        s.counters().start(1_000).await.unwrap();
        assert_eq!(s.counters().next_serial().await.unwrap(), floor + 1);
    }
}
