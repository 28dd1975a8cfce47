//! Durable storage behind one interface. Only this module writes SQL.
//!
//! Writes go through a single writer thread that commits whatever records
//! arrived while the previous commit was in flight as one transaction
//! (group commit): each request still waits until *its* record is durable,
//! but concurrent requests share one fsync instead of queueing for their own.

pub mod sqlite;

use std::sync::mpsc;
use std::thread;

use crate::audit::AuditRecord;

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

/// A storage backend, driven from the writer thread (blocking is fine here).
pub trait Backend: Send + 'static {
    /// Appends records in one durable transaction: all or none.
    fn append_batch(&mut self, records: &[AuditRecord]) -> Result<(), StoreError>;
    /// Highest certificate serial ever recorded (0 if none).
    fn max_serial(&mut self) -> Result<u64, StoreError>;
    /// Replay ids of tokens that minted a certificate and expire after `now`.
    fn used_tokens(&mut self, now: u64) -> Result<Vec<(String, u64)>, StoreError>;
}

type Reply = tokio::sync::oneshot::Sender<Result<(), StoreError>>;

enum Job {
    Append(Box<AuditRecord>, Reply),
}

/// Handle for appending audit records durably; cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Job>,
}

impl Store {
    /// Starts the writer thread over `backend`.
    pub fn start<B: Backend>(mut backend: B) -> std::io::Result<Store> {
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("mayfly-store-writer".into())
            .spawn(move || {
                let mut records = Vec::with_capacity(MAX_BATCH);
                let mut replies = Vec::with_capacity(MAX_BATCH);
                while let Ok(job) = rx.recv() {
                    let Job::Append(r, reply) = job;
                    records.push(*r);
                    replies.push(reply);
                    while records.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(Job::Append(r, reply)) => {
                                records.push(*r);
                                replies.push(reply);
                            }
                            Err(_) => break,
                        }
                    }
                    let results = commit(&mut backend, &records);
                    for (reply, res) in replies.drain(..).zip(results) {
                        let _ = reply.send(res);
                    }
                    records.clear();
                }
            })?;
        Ok(Store { tx })
    }

    /// Appends one record and returns once it is durable.
    pub async fn append(&self, record: AuditRecord) -> Result<(), StoreError> {
        let (reply, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job::Append(Box::new(record), reply))
            .map_err(|_| StoreError::WriterGone)?;
        wait.await.map_err(|_| StoreError::WriterGone)?
    }
}

/// Commits a batch; if the batch fails, retries record by record so one bad
/// record (e.g. a duplicate serial) does not fail its neighbours.
fn commit<B: Backend>(backend: &mut B, records: &[AuditRecord]) -> Vec<Result<(), StoreError>> {
    match backend.append_batch(records) {
        Ok(()) => vec![Ok(()); records.len()],
        Err(e) if records.len() == 1 => vec![Err(e)],
        Err(_) => records
            .iter()
            .map(|r| backend.append_batch(std::slice::from_ref(r)))
            .collect(),
    }
}
