//! Durable storage behind one interface. Only this module writes SQL.
//!
//! Writes go through a single writer thread that commits whatever audit
//! records arrived while the previous commit was in flight as one
//! transaction (group commit): each request still waits until *its* record
//! is durable, but concurrent requests share one fsync instead of queueing
//! for their own. Administrative changes (revocations, deactivations) run on
//! the same thread, each in its own transaction together with its audit
//! record. Reads use a separate connection.

pub mod approvals;
pub mod reports;
pub mod sqlite;
mod target;

use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use serde::Serialize;

use crate::audit::AuditRecord;
pub use target::{DisableTarget, DisableTargetError};

/// Most records committed in one transaction.
const MAX_BATCH: usize = 512;

/// A store failure. The message is for logs; clients only see "store unavailable".
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("store: {0}")]
    Backend(String),
    /// The writer thread is gone (shutdown or crash).
    #[error("store writer is not running")]
    WriterGone,
}

/// An issued certificate as recorded in the audit log.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IssuedCert {
    /// Serial.
    pub serial: u64,
    /// Key id.
    pub key_id: String,
    /// `user` or `host`.
    pub cert_type: String,
    /// Role.
    pub role: String,
    /// Issuer name.
    pub issuer: String,
    /// Token subject.
    pub subject: String,
    /// Unix seconds.
    pub valid_before: u64,
    /// OpenSSH line of the CA key that signed it.
    pub ca_key: String,
}

/// Which issued certificates an operation is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertFilter {
    /// One serial.
    Serial(u64),
    /// One key id.
    KeyId(String),
    /// Every certificate of a role.
    Role(String),
    /// Every certificate of one identity (optionally only for one role).
    Identity {
        /// Issuer name.
        issuer: String,
        /// Token subject.
        subject: String,
        /// Only this role, if set.
        role: Option<String>,
    },
}

/// A revocation to record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Revocation {
    /// OpenSSH line of the CA key whose certificate is revoked.
    pub ca_key: String,
    /// Revoked serial (the KRL's serial section).
    pub serial: Option<u64>,
    /// Revoked key id (the KRL's key-id section).
    pub key_id: Option<String>,
    /// When the certificate expires anyway; the KRL drops it after this.
    pub expires_at: u64,
    /// Why.
    pub reason: String,
    /// Who.
    pub actor: String,
}

/// A disabled entry with its reason.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DisabledEntry {
    /// What is disabled.
    #[serde(flatten)]
    pub key: DisableTarget,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// Why.
    pub reason: String,
    /// Who.
    pub actor: String,
}

/// Revision of the revocation/deactivation state; bumps on every change so
/// readers (the KRL cache, other processes) notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateVersion {
    /// Monotonic counter.
    pub version: u64,
    /// Unix seconds of the last change.
    pub changed_at: u64,
}

/// Conditions that must still hold when an issuance record commits. They
/// are checked inside the transaction that writes the record, on the one
/// writer, so nothing can change between the check and the record: a
/// concurrent `identity disable` either commits first (and this issuance is
/// refused) or after (and its revocation sweep sees this certificate); two
/// redemptions of one approval cannot both succeed; two parallel requests
/// cannot both take the last `max_active_certs` slot.
#[derive(Debug, Clone)]
pub struct IssueGuard {
    /// Issuer name of the identity.
    pub issuer: String,
    /// Subject of the identity.
    pub subject: String,
    /// Role of the certificate.
    pub role: String,
    /// Refuse when this many unexpired, unrevoked certificates of the
    /// identity in the role exist already.
    pub max_active: Option<u32>,
    /// An approval this issuance redeems: it must still be approved, and is
    /// marked used in the same transaction.
    pub redeem: Option<Redemption>,
}

/// An approval redeemed together with an issuance.
#[derive(Debug, Clone)]
pub struct Redemption {
    /// Approval request id.
    pub id: String,
    /// Fingerprint of the key being certified (must be the approved key).
    pub key_fingerprint: String,
    /// The `approval_used` audit record, written just before the issuance.
    pub record: AuditRecord,
}

/// Why a guarded issuance was refused at commit time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardRefusal {
    /// The identity or role is disabled.
    #[error("disabled: {0:?}")]
    Disabled(DisableTarget),
    /// The identity holds `live` valid certificates in the role already.
    #[error("{live} certificate(s) still valid, the role allows {max}")]
    TooManyActive {
        /// Valid certificates now.
        live: u64,
        /// The role's `max_active_certs`.
        max: u32,
    },
    /// The approval is no longer redeemable (used, expired, another key...).
    #[error(transparent)]
    Approval(#[from] crate::approval::ApprovalError),
}

/// One record to append, with the conditions its commit depends on.
pub type GuardedRecord = (AuditRecord, Option<IssueGuard>);

/// A storage backend (blocking; driven from the writer thread or a reader).
pub trait Backend: Send + 'static {
    /// Appends records in one durable transaction: all or none.
    fn append_batch(&mut self, records: &[AuditRecord]) -> Result<(), StoreError>;
    /// Appends records in one durable transaction, checking each record's
    /// guard in order inside it (so a guard sees the records before it).
    /// A record whose guard fails is not written and gets its refusal; the
    /// others commit. `Err` means nothing was written.
    fn append_guarded(
        &mut self,
        records: &[GuardedRecord],
    ) -> Result<Vec<Result<(), GuardRefusal>>, StoreError>;
    /// Highest certificate serial ever recorded (0 if none).
    fn max_serial(&mut self) -> Result<u64, StoreError>;
    /// Replay ids of tokens that minted a certificate and expire after `now`.
    fn used_tokens(&mut self, now: u64) -> Result<Vec<(String, u64)>, StoreError>;
    /// Issued certificates matching `filter` that are still valid at `now`
    /// and not revoked.
    fn live_certs(&mut self, filter: &CertFilter, now: u64) -> Result<Vec<IssuedCert>, StoreError>;
    /// Records revocations and their audit records in one transaction,
    /// bumping the state version. Already-revoked serials are kept once.
    fn revoke(
        &mut self,
        revocations: &[Revocation],
        audit: &[AuditRecord],
        now: u64,
    ) -> Result<StateVersion, StoreError>;
    /// Revocations whose certificates are still valid at `now`.
    fn live_revocations(&mut self, now: u64) -> Result<Vec<Revocation>, StoreError>;
    /// Revokes every live certificate matching `filter` in one transaction:
    /// the certificates are read, `revoke` turns each into its revocation
    /// and audit record, and the state version is bumped. Returns the
    /// revoked certificates (none: nothing written) and the new version.
    fn revoke_matching(
        &mut self,
        filter: &CertFilter,
        now: u64,
        revoke: &dyn Fn(&IssuedCert) -> (Revocation, AuditRecord),
    ) -> Result<(Vec<IssuedCert>, StateVersion), StoreError>;
    /// Disables `key` and revokes the live certificates matching `filter`
    /// in one transaction, so no certificate issued before the flag is set
    /// escapes the sweep. Returns whether the flag changed and what was
    /// revoked.
    fn disable_and_revoke(
        &mut self,
        key: &DisableTarget,
        entry: &DisabledEntry,
        audit: &AuditRecord,
        filter: &CertFilter,
        now: u64,
        revoke: &dyn Fn(&IssuedCert) -> (Revocation, AuditRecord),
    ) -> Result<(bool, Vec<IssuedCert>), StoreError>;
    /// Disables (`Some(entry)`) or re-enables (`None`) `key`, with its audit
    /// record, in one transaction. Returns whether anything changed.
    fn set_disabled(
        &mut self,
        key: &DisableTarget,
        entry: Option<&DisabledEntry>,
        audit: &AuditRecord,
        now: u64,
    ) -> Result<bool, StoreError>;
    /// Every disabled entry.
    fn disabled(&mut self) -> Result<Vec<DisabledEntry>, StoreError>;
    /// The current state version.
    fn state_version(&mut self) -> Result<StateVersion, StoreError>;
    /// Latest `valid_before` of any certificate signed by `ca_key` (0 if none).
    fn last_expiry_by_ca(&mut self, ca_key: &str) -> Result<u64, StoreError>;
    /// Appends `audit` and bumps the state version in one transaction (for
    /// changes other processes must notice, such as CA key rotation).
    fn record_change(&mut self, audit: &AuditRecord, now: u64) -> Result<StateVersion, StoreError>;
    /// Inserts or replaces an approval request, with its audit records, in one transaction.
    fn approval_put(
        &mut self,
        req: &crate::approval::ApprovalRequest,
        audit: &[AuditRecord],
    ) -> Result<(), StoreError>;
    /// One approval request.
    fn approval_get(
        &mut self,
        id: &str,
    ) -> Result<Option<crate::approval::ApprovalRequest>, StoreError>;
    /// Approval requests in a state (all if `None`).
    fn approval_list(
        &mut self,
        status: Option<crate::approval::ApprovalStatus>,
    ) -> Result<Vec<crate::approval::ApprovalRequest>, StoreError>;
}

/// Called on the writer thread after each write job; must not block.
pub type AfterCommit = Box<dyn FnMut() + Send>;

type Reply<T> = tokio::sync::oneshot::Sender<Result<T, StoreError>>;
type Task = Box<dyn FnOnce(&mut dyn Backend) + Send>;

enum Job {
    Append(Box<GuardedRecord>, Reply<Result<(), GuardRefusal>>),
    Run(Task),
}

/// Handle to the store: durable appends and admin changes through the
/// writer thread, reads through a reader connection. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Job>,
    reader: Arc<Mutex<Box<dyn Backend>>>,
}

impl Store {
    /// Starts the writer thread over `writer`; `reader` serves reads.
    pub fn start<B: Backend, R: Backend>(writer: B, reader: R) -> std::io::Result<Store> {
        Store::start_with_hook(writer, reader, None)
    }

    /// As [`Store::start`], calling `after_commit` on the writer thread
    /// after every write job (a group commit or an admin change), once the
    /// waiting requests have their answers. The hook must not block: the
    /// audit stream uses it to wake its own thread.
    pub fn start_with_hook<B: Backend, R: Backend>(
        writer: B,
        reader: R,
        mut after_commit: Option<AfterCommit>,
    ) -> std::io::Result<Store> {
        let (tx, rx) = mpsc::channel::<Job>();
        let mut backend: Box<dyn Backend> = Box::new(writer);
        thread::Builder::new()
            .name("mayfly-store-writer".into())
            .spawn(move || {
                let mut records = Vec::with_capacity(MAX_BATCH);
                let mut replies = Vec::with_capacity(MAX_BATCH);
                let mut pending: Option<Job> = None;
                loop {
                    let job = match pending.take() {
                        Some(j) => j,
                        None => match rx.recv() {
                            Ok(j) => j,
                            Err(_) => break,
                        },
                    };
                    match job {
                        Job::Run(task) => {
                            task(backend.as_mut());
                            if let Some(hook) = after_commit.as_mut() {
                                hook();
                            }
                        }
                        Job::Append(r, reply) => {
                            records.push(*r);
                            replies.push(reply);
                            while records.len() < MAX_BATCH {
                                match rx.try_recv() {
                                    Ok(Job::Append(r, reply)) => {
                                        records.push(*r);
                                        replies.push(reply);
                                    }
                                    Ok(other) => {
                                        pending = Some(other);
                                        break;
                                    }
                                    Err(_) => break,
                                }
                            }
                            let results = commit(backend.as_mut(), &records);
                            for (reply, res) in replies.drain(..).zip(results) {
                                let _ = reply.send(res);
                            }
                            records.clear();
                            if let Some(hook) = after_commit.as_mut() {
                                hook();
                            }
                        }
                    }
                }
            })?;
        Ok(Store {
            tx,
            reader: Arc::new(Mutex::new(Box::new(reader))),
        })
    }

    /// Appends one record and returns once it is durable.
    pub async fn append(&self, record: AuditRecord) -> Result<(), StoreError> {
        self.append_guarded(record, None)
            .await?
            .map_err(|r| StoreError::Backend(format!("unguarded record refused: {r}")))
    }

    /// Appends one issuance record if its guard still holds at commit, in
    /// the same group commit as other records. `Ok(Err(_))`: the guard
    /// failed and nothing was written.
    pub async fn append_guarded(
        &self,
        record: AuditRecord,
        guard: Option<IssueGuard>,
    ) -> Result<Result<(), GuardRefusal>, StoreError> {
        let (reply, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job::Append(Box::new((record, guard)), reply))
            .map_err(|_| StoreError::WriterGone)?;
        wait.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Runs a write on the writer thread and returns its result once committed.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Backend) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, wait) = tokio::sync::oneshot::channel::<Result<T, StoreError>>();
        let task: Task = Box::new(move |b| {
            let _ = reply.send(f(b));
        });
        self.tx
            .send(Job::Run(task))
            .map_err(|_| StoreError::WriterGone)?;
        wait.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Runs a read on the reader connection (blocking; short queries only).
    pub fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn Backend) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut g = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        f(g.as_mut())
    }
}

type Outcome = Result<Result<(), GuardRefusal>, StoreError>;

/// Commits a batch; if the batch fails, retries record by record so one bad
/// record (e.g. a duplicate serial) does not fail its neighbours.
fn commit(backend: &mut dyn Backend, records: &[GuardedRecord]) -> Vec<Outcome> {
    match backend.append_guarded(records) {
        Ok(results) if results.len() == records.len() => results.into_iter().map(Ok).collect(),
        Ok(_) => vec![
            Err(StoreError::Backend(
                "store answered for a different number of records".into()
            ));
            records.len()
        ],
        Err(e) if records.len() == 1 => vec![Err(e)],
        Err(_) => records
            .iter()
            .map(|r| {
                backend
                    .append_guarded(std::slice::from_ref(r))
                    .and_then(|mut v| {
                        v.pop().ok_or_else(|| {
                            StoreError::Backend("store answered for no record".into())
                        })
                    })
            })
            .collect(),
    }
}
