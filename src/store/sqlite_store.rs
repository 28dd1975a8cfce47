//! The SQLite backend behind the store traits: the group-commit writer
//! thread for every write, reader threads for the request path, one
//! report thread (apart, so a slow report never holds up a certificate)
//! and one gauge thread for `/metrics` scrapes and replica status (which
//! never builds an index). The issuance counters live in process memory
//! ([`MemoryCounters`]): one server owns a SQLite database. CA keys are
//! files beside the database ([`KeyFiles`], in `data_dir`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::import::{ImportRefusal, ImportedState, RevocationRow, StoreCounts, UnfinishedImport};
use super::key_files::KeyFiles;
use super::memory::MemoryCounters;
use super::reports::{
    AuditSpan, DailyIssuance, IdentityRoleUsage, LastDenialRow, PrincipalUse, RoleAllTime,
    RoleWindowUsage, ScrapeGauges,
};
use super::sqlite::{Backend, Sqlite};
use super::traits::{
    AccessStore, AfterCommit, ApprovalStore, AuditLog, Cancel, CheckpointPage, CheckpointSigner,
    ImportStore, IssuanceCounters, IssuanceStore, KeyChange, KeyStore, ReplicaStore, ReportStore,
    Revoker, StoreFuture, Vote,
};
use super::version_probe::VersionProbe;
use super::writer::{Hooks, Opener, Readers, Writer};
use super::{
    CertFilter, DisableTarget, DisabledEntry, GuardRefusal, IssueGuard, IssuedCert, OpenMode,
    Revocation, StateVersion, StoreError,
};
use crate::approval::{ApprovalError, ApprovalRequest, ApprovalStatus};
use crate::audit::chain::{BadRow, ChainMeta, Hash, StoredRecord};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::search::AuditQuery;
use crate::audit::AuditRecord;
use crate::ca::keys::{NewKey, StoredKey};
use crate::ca::rotation::{CaKeys, RotationError};
use crate::policy::limits::RateLimit;
use crate::replica::Heartbeat;

/// Reader threads on the request path.
const READERS: usize = 2;
/// Least busy timeout of the report and gauge connections.
const REPORT_BUSY: Duration = Duration::from_secs(5);
/// Busy timeout of the scrape-time gauge connection.
const GAUGE_BUSY: Duration = Duration::from_secs(2);

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Option<Writer>,
    readers: Readers<Sqlite>,
    /// Answers the state version on the request path ([`VersionProbe`]).
    probe: VersionProbe,
    reports: Readers<Sqlite>,
    gauges: Readers<Sqlite>,
    hooks: Hooks,
    counters: MemoryCounters,
    key_files: KeyFiles,
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("starting a store thread: {e}"))
}

impl SqliteStore {
    /// Opens the database at `path` as `mode` says and starts its threads.
    pub fn open(
        path: &Path,
        busy_timeout: Duration,
        mode: OpenMode,
    ) -> Result<SqliteStore, StoreError> {
        if mode != OpenMode::Create && !path.exists() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        let read_only = mode == OpenMode::ReadOnly;
        let open_rw = {
            let path = path.to_path_buf();
            move |busy: Duration| -> Result<Sqlite, StoreError> {
                if read_only {
                    Sqlite::open_read_only(&path, busy)
                } else {
                    Sqlite::open(&path, busy)
                }
            }
        };
        let hooks: Hooks = Arc::new(Mutex::new(Vec::new()));
        let writer = if read_only {
            None
        } else {
            Some(Writer::start(open_rw(busy_timeout)?, hooks.clone()).map_err(io)?)
        };
        let mut conns = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            conns.push(Some(open_rw(busy_timeout)?));
        }
        let reader_open: Opener<Sqlite> = {
            let open_rw = open_rw.clone();
            Arc::new(move || open_rw(busy_timeout))
        };
        let readers = Readers::start("mayfly-store-reader", conns, reader_open).map_err(io)?;
        // No busy timeout: the probe answers at once or not at all. If it
        // cannot be opened, the readers answer instead.
        let probe = VersionProbe::new(Sqlite::open_read_only(path, Duration::ZERO).ok());
        let report_open: Opener<Sqlite> = {
            let open_rw = open_rw.clone();
            let path = path.to_path_buf();
            Arc::new(move || {
                if !path.exists() {
                    return Err(StoreError::Missing(path.display().to_string()));
                }
                let db = open_rw(busy_timeout.max(REPORT_BUSY))?;
                if !read_only {
                    db.ensure_report_indexes()?;
                }
                Ok(db)
            })
        };
        let reports =
            Readers::start("mayfly-store-reports", vec![None], report_open).map_err(io)?;
        let gauge_open: Opener<Sqlite> = {
            let path = path.to_path_buf();
            Arc::new(move || {
                if !path.exists() {
                    return Err(StoreError::Missing(path.display().to_string()));
                }
                open_rw(GAUGE_BUSY)
            })
        };
        let gauges = Readers::start("mayfly-store-gauges", vec![None], gauge_open).map_err(io)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer,
            readers,
            probe,
            reports,
            gauges,
            hooks,
            counters: MemoryCounters::new(),
            key_files: KeyFiles::new(path.parent().unwrap_or(Path::new("."))),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn writer(&self) -> Result<&Writer, StoreError> {
        self.writer.as_ref().ok_or_else(|| {
            StoreError::Backend(format!("{} is open read-only", self.path.display()))
        })
    }

    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Backend) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        Box::pin(async move { self.writer()?.write(f).await })
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Sqlite) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        Box::pin(self.readers.read(f))
    }

    fn report<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Sqlite) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        Box::pin(self.reports.read(f))
    }
}

impl KeyStore for SqliteStore {
    fn shared(&self) -> bool {
        false
    }

    fn cas(&self) -> StoreFuture<'_, Vec<String>> {
        Box::pin(self.key_files.cas())
    }

    fn ca_keys(&self, base: &str) -> StoreFuture<'_, Result<CaKeys, RotationError>> {
        let base = base.to_string();
        Box::pin(async move { self.key_files.ca_keys(&base).await })
    }

    fn create_active_if_absent(
        &self,
        base: &str,
        key: NewKey,
    ) -> StoreFuture<'_, Result<(StoredKey, bool), RotationError>> {
        let base = base.to_string();
        Box::pin(async move {
            // A read-only store refuses before any file changes.
            self.writer()?;
            self.key_files.create_active(&base, key).await
        })
    }

    fn rotate(&self, change: KeyChange) -> StoreFuture<'_, Result<StateVersion, RotationError>> {
        Box::pin(async move {
            self.writer()?;
            self.key_files.rotate(self, self, change).await
        })
    }

    fn import_keys(&self, base: &str, keys: CaKeys) -> StoreFuture<'_, Result<(), RotationError>> {
        let base = base.to_string();
        Box::pin(async move {
            self.writer()?;
            self.key_files.import_keys(&base, keys).await
        })
    }
}

impl IssuanceStore for SqliteStore {
    fn issue(
        &self,
        record: AuditRecord,
        guard: Option<IssueGuard>,
    ) -> StoreFuture<'_, Result<(), GuardRefusal>> {
        Box::pin(async move { self.writer()?.append_guarded(record, guard).await })
    }

    fn max_serial(&self) -> StoreFuture<'_, u64> {
        self.read(|db| db.max_serial())
    }

    fn used_tokens(&self, now: u64) -> StoreFuture<'_, Vec<(String, u64)>> {
        self.read(move |db| db.used_tokens(now))
    }

    fn live_certs(&self, filter: &CertFilter, now: u64) -> StoreFuture<'_, Vec<IssuedCert>> {
        let filter = filter.clone();
        self.read(move |db| db.live_certs(&filter, now))
    }

    fn active_certs(
        &self,
        issuer: &str,
        subject: &str,
        role: &str,
        now: u64,
    ) -> StoreFuture<'_, u64> {
        let filter = CertFilter::Identity {
            issuer: issuer.to_string(),
            subject: subject.to_string(),
            role: Some(role.to_string()),
        };
        self.read(move |db| db.live_certs(&filter, now).map(|v| v.len() as u64))
    }

    fn last_expiry_by_ca(&self, ca_key: &str) -> StoreFuture<'_, u64> {
        let ca_key = ca_key.to_string();
        self.read(move |db| db.last_expiry_by_ca(&ca_key))
    }
}

impl IssuanceCounters for SqliteStore {
    fn start(&self, now: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let (unfinished, max, used) = self
                .readers
                .read(move |db| {
                    Ok((
                        db.unfinished_import()?,
                        db.max_serial()?,
                        db.used_tokens(now)?,
                    ))
                })
                .await?;
            if let Some(u) = unfinished {
                return Err(StoreError::Backend(u.refusal()));
            }
            self.counters.start(max, &used, now);
            Ok(())
        })
    }

    fn next_serial(&self) -> StoreFuture<'_, u64> {
        let next = self.counters.next_serial().ok_or_else(|| {
            StoreError::Backend("serials requested before the store's counters were started".into())
        });
        Box::pin(std::future::ready(next))
    }

    fn claim_token(&self, id: &str, expires_at: u64, now: u64) -> StoreFuture<'_, bool> {
        Box::pin(std::future::ready(Ok(self
            .counters
            .claim_token(id, expires_at, now))))
    }

    fn take_rate(
        &self,
        key: &str,
        rate: RateLimit,
        now: f64,
    ) -> StoreFuture<'_, Result<(), Duration>> {
        Box::pin(std::future::ready(Ok(self
            .counters
            .take_rate(key, rate, now))))
    }
}

impl AuditLog for SqliteStore {
    fn append(&self, record: AuditRecord) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.writer()?
                .append_guarded(record, None)
                .await?
                .map_err(|r| StoreError::Backend(format!("unguarded record refused: {r}")))
        })
    }

    fn record_change(&self, record: AuditRecord, now: u64) -> StoreFuture<'_, StateVersion> {
        self.write(move |b| b.record_change(&record, now))
    }

    fn scan(
        &self,
        from_seq: u64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Result<StoredRecord, BadRow>>> {
        self.read(move |db| {
            let mut rows = Vec::with_capacity(limit.min(10_000));
            db.scan_audit(from_seq, Some(limit), &mut |r| {
                rows.push(r);
                true
            })?;
            Ok(rows)
        })
    }

    fn record(&self, seq: u64) -> StoreFuture<'_, Option<Result<StoredRecord, BadRow>>> {
        self.read(move |db| db.audit_record(seq))
    }

    fn head(&self) -> StoreFuture<'_, Option<(u64, Option<Hash>)>> {
        self.read(|db| db.audit_head())
    }

    fn first_seq_since(&self, time_ms: i64) -> StoreFuture<'_, Option<u64>> {
        self.read(move |db| db.first_seq_since(time_ms))
    }

    fn chain_meta(&self) -> StoreFuture<'_, ChainMeta> {
        self.read(|db| db.chain_meta())
    }

    fn checkpoints(&self, after_id: i64, limit: usize) -> StoreFuture<'_, CheckpointPage> {
        self.read(move |db| db.checkpoints_page(after_id, limit))
    }

    fn last_checkpoint(&self) -> StoreFuture<'_, Option<(u64, Hash)>> {
        self.read(|db| db.checkpoints_last())
    }

    fn last_checkpoint_at(&self) -> StoreFuture<'_, Option<(u64, i64)>> {
        self.read(|db| db.checkpoints_last_at())
    }

    fn write_checkpoint(
        &self,
        key_fingerprint: &str,
        time_ms: i64,
        sign: CheckpointSigner,
    ) -> StoreFuture<'_, Option<Checkpoint>> {
        let fp = key_fingerprint.to_string();
        self.write(move |b| b.write_checkpoint(&fp, time_ms, sign))
    }

    fn stream_cursor(&self) -> StoreFuture<'_, Option<u64>> {
        self.read(|db| db.stream_cursor())
    }

    fn set_stream_cursor(&self, seq: u64) -> StoreFuture<'_, ()> {
        self.write(move |b| b.set_stream_cursor(seq))
    }

    fn search(&self, q: &AuditQuery) -> StoreFuture<'_, Vec<Result<StoredRecord, BadRow>>> {
        let q = q.clone();
        self.read(move |db| db.search_audit(&q))
    }

    fn on_commit(&self, hook: AfterCommit) {
        self.hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(hook);
    }
}

impl ApprovalStore for SqliteStore {
    fn put(&self, req: ApprovalRequest, audit: Vec<AuditRecord>) -> StoreFuture<'_, ()> {
        self.write(move |b| b.approval_put(&req, &audit))
    }

    fn get(&self, id: &str) -> StoreFuture<'_, Option<ApprovalRequest>> {
        let id = id.to_string();
        self.read(move |db| db.approval_get(&id))
    }

    fn list(&self, status: Option<ApprovalStatus>) -> StoreFuture<'_, Vec<ApprovalRequest>> {
        self.read(move |db| db.approval_list(status))
    }

    fn list_after(&self, after_id: &str, limit: usize) -> StoreFuture<'_, Vec<ApprovalRequest>> {
        let after_id = after_id.to_string();
        self.read(move |db| db.approvals_after(&after_id, limit))
    }

    fn vote(
        &self,
        id: &str,
        vote: Vote,
        audit: AuditRecord,
    ) -> StoreFuture<'_, Result<ApprovalRequest, ApprovalError>> {
        let id = id.to_string();
        // On the one writer: nothing else writes between the read and the put.
        self.write(move |b| {
            let Some(r) = b.approval_get(&id)? else {
                return Ok(Err(ApprovalError::NotFound(id)));
            };
            match crate::approval::apply_vote(
                r,
                &vote.approver,
                vote.approve,
                &vote.reason,
                vote.now,
            ) {
                Ok(r) => {
                    b.approval_put(&r, &[audit])?;
                    Ok(Ok(r))
                }
                Err(e) => Ok(Err(e)),
            }
        })
    }

    fn cancel(
        &self,
        id: &str,
        cancel: Cancel,
        audit: AuditRecord,
    ) -> StoreFuture<'_, Result<ApprovalRequest, ApprovalError>> {
        let id = id.to_string();
        // On the one writer, like a vote: the decision sees the stored row.
        self.write(move |b| {
            let Some(r) = b.approval_get(&id)? else {
                return Ok(Err(ApprovalError::NotFound(id)));
            };
            match crate::approval::apply_cancel(r, &cancel.by, &cancel.reason, cancel.now) {
                Ok(r) => {
                    b.approval_put(&r, &[audit])?;
                    Ok(Ok(r))
                }
                Err(e) => Ok(Err(e)),
            }
        })
    }
}

impl AccessStore for SqliteStore {
    fn revoke(
        &self,
        revocations: Vec<Revocation>,
        audit: Vec<AuditRecord>,
        now: u64,
    ) -> StoreFuture<'_, StateVersion> {
        self.write(move |b| b.revoke(&revocations, &audit, now))
    }

    fn revoke_matching(
        &self,
        filter: CertFilter,
        now: u64,
        revoke: Revoker,
    ) -> StoreFuture<'_, (Vec<IssuedCert>, StateVersion)> {
        self.write(move |b| b.revoke_matching(&filter, now, &*revoke))
    }

    fn disable_and_revoke(
        &self,
        entry: DisabledEntry,
        audit: AuditRecord,
        filter: CertFilter,
        now: u64,
        revoke: Revoker,
    ) -> StoreFuture<'_, (bool, Vec<IssuedCert>)> {
        self.write(move |b| {
            b.disable_and_revoke(&entry.key, &entry, &audit, &filter, now, &*revoke)
        })
    }

    fn set_disabled(
        &self,
        key: DisableTarget,
        entry: Option<DisabledEntry>,
        audit: AuditRecord,
        now: u64,
    ) -> StoreFuture<'_, bool> {
        self.write(move |b| b.set_disabled(&key, entry.as_ref(), &audit, now))
    }

    fn live_revocations(&self, now: u64) -> StoreFuture<'_, Vec<Revocation>> {
        self.read(move |db| db.live_revocations(now))
    }

    fn revocation_history(
        &self,
        after_id: i64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<RevocationRow>> {
        self.read(move |db| db.revocation_history(after_id, limit))
    }

    fn disabled(&self) -> StoreFuture<'_, Vec<DisabledEntry>> {
        self.read(|db| db.disabled())
    }

    fn state_version(&self) -> StoreFuture<'_, StateVersion> {
        Box::pin(async move {
            match self.probe.state_version() {
                Some(v) => Ok(v),
                None => self.readers.read(|db| db.state_version()).await,
            }
        })
    }
}

impl ReportStore for SqliteStore {
    fn identity_usage(&self) -> StoreFuture<'_, Vec<IdentityRoleUsage>> {
        self.report(|db| db.identity_usage())
    }

    fn last_denials(&self) -> StoreFuture<'_, Vec<LastDenialRow>> {
        self.report(|db| db.last_denials())
    }

    fn role_window_usage(&self, since_ms: u64) -> StoreFuture<'_, Vec<RoleWindowUsage>> {
        self.report(move |db| db.role_window_usage(since_ms))
    }

    fn role_all_time(&self) -> StoreFuture<'_, Vec<RoleAllTime>> {
        self.report(|db| db.role_all_time())
    }

    fn principals_granted(&self, since_ms: u64) -> StoreFuture<'_, Vec<PrincipalUse>> {
        self.report(move |db| db.principals_granted(since_ms))
    }

    fn daily_issuance(&self, since_ms: u64) -> StoreFuture<'_, Vec<DailyIssuance>> {
        self.report(move |db| db.daily_issuance(since_ms))
    }

    fn denials_by_reason(&self, since_ms: u64) -> StoreFuture<'_, Vec<(String, u64)>> {
        self.report(move |db| db.denials_by_reason(since_ms))
    }

    fn event_counts(&self, since_ms: u64) -> StoreFuture<'_, Vec<(String, u64)>> {
        self.report(move |db| db.event_counts(since_ms))
    }

    fn incomplete_issuance_records(&self, since_ms: u64) -> StoreFuture<'_, u64> {
        self.report(move |db| db.incomplete_issuance_records(since_ms))
    }

    fn audit_span(&self) -> StoreFuture<'_, AuditSpan> {
        self.report(|db| db.audit_span())
    }

    fn revocations_since(&self, since_ms: u64) -> StoreFuture<'_, u64> {
        self.report(move |db| db.revocations_since(since_ms))
    }

    fn scrape_gauges(&self, now: u64) -> StoreFuture<'_, ScrapeGauges> {
        Box::pin(self.gauges.read(move |db| db.scrape_gauges(now)))
    }

    fn count_events(&self, event: &str) -> StoreFuture<'_, u64> {
        let event = event.to_string();
        self.report(move |db| db.count_events(&event))
    }
}

impl ReplicaStore for SqliteStore {
    fn heartbeat(&self, beat: Heartbeat) -> StoreFuture<'_, Option<Heartbeat>> {
        self.write(move |b| b.replica_heartbeat(&beat))
    }

    fn replicas(&self) -> StoreFuture<'_, Vec<Heartbeat>> {
        // A handful of rows, read beside the scrape-time gauges, off the
        // request path's readers.
        Box::pin(self.gauges.read(|db| db.replicas()))
    }
}

impl super::HostStore for SqliteStore {
    fn host_report(&self, row: crate::fleet::HostRow) -> StoreFuture<'_, Option<u64>> {
        self.write(move |b| b.host_report(&row))
    }

    fn hosts(&self) -> StoreFuture<'_, Vec<crate::fleet::HostRow>> {
        Box::pin(self.gauges.read(|db| db.hosts()))
    }
}

impl super::SessionStore for SqliteStore {
    fn put_session(
        &self,
        key: super::SessionKey,
        row: super::SessionRow,
        now: u64,
    ) -> StoreFuture<'_, ()> {
        self.write(move |b| b.session_put(&key, &row, now))
    }

    fn session(
        &self,
        key: super::SessionKey,
        now: u64,
    ) -> StoreFuture<'_, Option<super::SessionRow>> {
        self.read(move |db| db.session(&key, now))
    }

    fn delete_session(&self, key: super::SessionKey) -> StoreFuture<'_, ()> {
        self.write(move |b| b.session_delete(&key))
    }
}

impl ImportStore for SqliteStore {
    fn counts(&self) -> StoreFuture<'_, StoreCounts> {
        self.read(|db| db.counts())
    }

    fn unfinished_import(&self) -> StoreFuture<'_, Option<UnfinishedImport>> {
        self.read(|db| db.unfinished_import())
    }

    fn begin_import(&self, from: &str, now_ms: i64) -> StoreFuture<'_, Result<(), ImportRefusal>> {
        let from = from.to_string();
        self.write(move |b| b.import_begin(&from, now_ms))
    }

    fn import_audit(&self, rows: Vec<StoredRecord>) -> StoreFuture<'_, ()> {
        self.write(move |b| b.import_audit(&rows))
    }

    fn import_checkpoints(&self, checkpoints: Vec<Checkpoint>) -> StoreFuture<'_, ()> {
        self.write(move |b| b.import_checkpoints(&checkpoints))
    }

    fn import_revocations(&self, rows: Vec<RevocationRow>) -> StoreFuture<'_, ()> {
        self.write(move |b| b.import_revocations(&rows))
    }

    fn import_disabled(&self, entries: Vec<DisabledEntry>) -> StoreFuture<'_, ()> {
        self.write(move |b| b.import_disabled(&entries))
    }

    fn import_approvals(&self, requests: Vec<ApprovalRequest>) -> StoreFuture<'_, ()> {
        self.write(move |b| b.import_approvals(&requests))
    }

    fn import_state(&self, state: ImportedState) -> StoreFuture<'_, ()> {
        self.write(move |b| b.import_state(&state))
    }

    fn finish_import(&self) -> StoreFuture<'_, ()> {
        self.write(|b| b.import_finish())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audit::chain::{self, stored_form};
    use crate::audit::EventKind;
    use crate::config::StoreBackend;
    use crate::store::{open, Store, StoreConfig};

    fn store(dir: &Path, mode: OpenMode) -> Result<Store, StoreError> {
        open(&StoreConfig {
            backend: StoreBackend::SQLite,
            sqlite_path: dir.join("m.db"),
            busy_timeout: Duration::from_secs(1),
            mode,
            postgres: None,
        })
    }

    #[tokio::test]
    async fn the_request_path_reads_the_state_version_through_the_probe() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), OpenMode::Create).unwrap();
        let v0 = s.access().state_version().await.unwrap();
        // Another process's connection (`mayfly ca rotate`, `identity ...`).
        let mut cli = Sqlite::open(&dir.path().join("m.db"), Duration::from_secs(1)).unwrap();
        let v1 = cli
            .record_change(&AuditRecord::new(EventKind::Disabled, 1, "cli"), 9)
            .unwrap();
        assert!(v1.version > v0.version);
        assert_eq!(s.access().state_version().await.unwrap(), v1);
    }

    fn issued(serial: u64, subject: &str) -> AuditRecord {
        let mut r = AuditRecord::new(EventKind::CertIssued, 1_000_000 + serial, "req");
        r.serial = Some(serial);
        r.issuer = Some("ci".into());
        r.subject = Some(subject.into());
        r.role = Some("deploy".into());
        r.key_id = Some(format!("k{serial}"));
        r.ca_key = Some("ssh-ed25519 AAAA ca".into());
        r.valid_before = Some(2_000);
        r.token_id = Some(format!("ci:jti-{serial}"));
        r.token_exp = Some(5_000);
        r.principals = vec!["deploy".into()];
        r
    }

    fn revoked(serial: u64) -> AuditRecord {
        let mut r = AuditRecord::new(EventKind::CertRevoked, 1_500_000, "admin");
        r.serial = Some(serial);
        r.key_id = Some(format!("k{serial}"));
        r.reason = Some("leaked".into());
        r
    }

    #[tokio::test(flavor = "current_thread")]
    async fn rows_are_the_audit_layers_stored_form_chained() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), OpenMode::Create).unwrap();
        let records = [issued(7, "bot"), revoked(7)];
        for r in &records {
            s.audit().append(r.clone()).await.unwrap();
        }
        let rows: Vec<StoredRecord> = s
            .audit()
            .scan(1, 10)
            .await
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let mut want: Vec<StoredRecord> = records
            .iter()
            .enumerate()
            .map(|(i, r)| stored_form(r, i as u64 + 1))
            .collect();
        chain::chain(&mut want, chain::GENESIS);
        assert_eq!(rows, want);
        assert_eq!(
            rows[1].serial, None,
            "a revocation does not claim the serial"
        );
        assert_eq!(rows[1].reason.as_deref(), Some("serial 7: leaked"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn search_gives_exactly_the_audit_layers_matches() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), OpenMode::Create).unwrap();
        for r in [issued(1, "a"), issued(2, "b"), issued(3, "a"), revoked(1)] {
            s.audit().append(r).await.unwrap();
        }
        let mut odd = revoked(3);
        odd.serial = None;
        odd.reason = Some("SERIAL 3: by hand".into());
        s.audit().append(odd).await.unwrap();
        let all: Vec<StoredRecord> = s
            .audit()
            .scan(1, 100)
            .await
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let queries = [
            AuditQuery::default(),
            AuditQuery {
                serial: Some(1),
                ..AuditQuery::default()
            },
            AuditQuery {
                serial: Some(3),
                ..AuditQuery::default()
            },
            AuditQuery {
                subject: Some("a".into()),
                limit: 1,
                ..AuditQuery::default()
            },
            AuditQuery {
                key_id: Some("k2".into()),
                event: Some("cert_issued".into()),
                ..AuditQuery::default()
            },
            AuditQuery {
                since_ms: Some(1_000_003),
                ..AuditQuery::default()
            },
        ];
        for q in queries {
            let got: Vec<u64> = s
                .audit()
                .search(&q)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.unwrap().seq)
                .collect();
            let want: Vec<u64> = all
                .iter()
                .rev()
                .filter(|r| q.matches(r))
                .take(q.limit.max(1))
                .map(|r| r.seq)
                .collect();
            assert_eq!(got, want, "{q:?}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn counters_start_from_the_log_and_serials_wait_for_it() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), OpenMode::Create).unwrap();
        assert!(
            s.counters().next_serial().await.is_err(),
            "a serial before start could repeat a recorded one"
        );
        s.issuance()
            .issue(issued(41, "bot"), None)
            .await
            .unwrap()
            .unwrap();
        drop(s);
        let s = store(d.path(), OpenMode::Create).unwrap();
        s.counters().start(0).await.unwrap();
        assert_eq!(s.counters().next_serial().await.unwrap(), 42);
        assert!(
            !s.counters()
                .claim_token("ci:jti-41", 5_000, 10)
                .await
                .unwrap(),
            "a token that minted a certificate before the restart was accepted again"
        );
        assert!(s
            .counters()
            .claim_token("ci:jti-42", 5_000, 10)
            .await
            .unwrap());
        let rate: RateLimit = "1/m".parse().unwrap();
        assert!(s
            .counters()
            .take_rate("k", rate, 0.0)
            .await
            .unwrap()
            .is_ok());
        assert!(s
            .counters()
            .take_rate("k", rate, 1.0)
            .await
            .unwrap()
            .is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn guarded_issue_disable_sweep_and_active_count_through_the_traits() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), OpenMode::Create).unwrap();
        let guard = |max| IssueGuard {
            issuer: "ci".into(),
            subject: "bot".into(),
            role: "deploy".into(),
            max_active: max,
            redeem: None,
            renews: None,
            acted_on: None,
            claims: Vec::new(),
        };
        s.issuance()
            .issue(issued(1, "bot"), Some(guard(Some(1))))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            s.issuance()
                .issue(issued(2, "bot"), Some(guard(Some(1))))
                .await
                .unwrap(),
            Err(GuardRefusal::TooManyActive { live: 1, max: 1 })
        );
        assert_eq!(
            s.issuance()
                .active_certs("ci", "bot", "deploy", 1_000)
                .await
                .unwrap(),
            1
        );
        let key = DisableTarget::Identity {
            issuer: "ci".into(),
            subject: "bot".into(),
            role: None,
        };
        let entry = DisabledEntry {
            key: key.clone(),
            time_ms: 1,
            reason: "r".into(),
            actor: "a".into(),
        };
        let revoke: Revoker = Box::new(|c: &IssuedCert| {
            (
                Revocation {
                    ca_key: c.ca_key.clone(),
                    serial: Some(c.serial),
                    key_id: None,
                    expires_at: c.valid_before,
                    reason: "r".into(),
                    actor: "a".into(),
                },
                AuditRecord::new(EventKind::CertRevoked, 1, "admin"),
            )
        });
        let before = s.access().state_version().await.unwrap();
        let (changed, swept) = s
            .access()
            .disable_and_revoke(
                entry,
                AuditRecord::new(EventKind::Disabled, 1, "admin"),
                CertFilter::Identity {
                    issuer: "ci".into(),
                    subject: "bot".into(),
                    role: None,
                },
                1_000,
                revoke,
            )
            .await
            .unwrap();
        assert!(changed);
        assert_eq!(swept.len(), 1);
        assert!(s.access().state_version().await.unwrap().version > before.version);
        assert_eq!(s.access().live_revocations(1_000).await.unwrap().len(), 1);
        assert_eq!(
            s.issuance()
                .issue(issued(3, "bot"), Some(guard(None)))
                .await
                .unwrap(),
            Err(GuardRefusal::Disabled(key))
        );
        assert_eq!(
            s.issuance()
                .active_certs("ci", "bot", "deploy", 1_000)
                .await
                .unwrap(),
            0
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn read_only_and_existing_modes_never_create_or_write() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            store(d.path(), OpenMode::Existing),
            Err(StoreError::Missing(_))
        ));
        assert!(matches!(
            store(d.path(), OpenMode::ReadOnly),
            Err(StoreError::Missing(_))
        ));
        assert!(!d.path().join("m.db").exists());
        let s = store(d.path(), OpenMode::Create).unwrap();
        s.audit().append(issued(1, "bot")).await.unwrap();
        drop(s);
        let ro = store(d.path(), OpenMode::ReadOnly).unwrap();
        assert_eq!(ro.audit().head().await.unwrap().map(|(s, _)| s), Some(1));
        let err = ro.audit().append(issued(2, "bot")).await.unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn commit_hooks_run_after_each_commit() {
        // The writer calls the hooks after it has answered the waiting
        // requests, so an append can return before its hook has run: wait
        // for each call rather than count right after the append.
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), OpenMode::Create).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let tx = Mutex::new(tx);
        s.audit().on_commit(Box::new(move || {
            let _ = tx.lock().unwrap().send(());
        }));
        let wait = std::time::Duration::from_secs(10);
        s.audit().append(issued(1, "bot")).await.unwrap();
        rx.recv_timeout(wait)
            .expect("the hook ran after the first commit");
        s.audit().append(issued(2, "bot")).await.unwrap();
        rx.recv_timeout(wait)
            .expect("the hook ran after the second commit");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn heartbeats_go_through_the_writer_and_read_only_handles_only_read() {
        use crate::replica::{Heartbeat, ReplicaId};
        use crate::time::UnixSecs;
        let d = tempfile::tempdir().unwrap();
        let beat = |last_seen| Heartbeat {
            replica: ReplicaId::parse("r1").unwrap(),
            version: "v".into(),
            policy_digest: "d".into(),
            git_commit: None,
            listen: "l".into(),
            started_at: UnixSecs(1),
            last_seen: UnixSecs(last_seen),
            interval_secs: 10,
        };
        let s = store(d.path(), OpenMode::Create).unwrap();
        assert_eq!(s.replicas().heartbeat(beat(5)).await.unwrap(), None);
        assert_eq!(
            s.replicas().heartbeat(beat(6)).await.unwrap(),
            Some(beat(5))
        );
        let ro = store(d.path(), OpenMode::ReadOnly).unwrap();
        assert_eq!(ro.replicas().replicas().await.unwrap(), [beat(6)]);
        let err = ro.replicas().heartbeat(beat(7)).await.unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
    }
}
