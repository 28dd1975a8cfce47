//! The threads behind a blocking backend: one writer that group-commits,
//! and a few readers, so no blocking database call runs on an async worker.
//!
//! Writes go through a single writer thread that commits whatever audit
//! records arrived while the previous commit was in flight as one
//! transaction (group commit): each request still waits until *its* record
//! is durable, but concurrent requests share one fsync instead of queueing
//! for their own. Administrative changes (revocations, deactivations) run on
//! the same thread, each in its own transaction together with its audit
//! record. Reads run on reader threads with their own connections; callers
//! await a oneshot answer, so the async executor never blocks on a lock or
//! a query, and any executor (a CLI's current-thread runtime included) can
//! drive them.

use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use super::traits::AfterCommit;
use super::{GuardRefusal, GuardedRecord, IssueGuard, StoreError};
use crate::audit::AuditRecord;

pub use super::sqlite::Backend;

/// Most records committed in one transaction.
const MAX_BATCH: usize = 512;

type Reply<T> = tokio::sync::oneshot::Sender<Result<T, StoreError>>;
type Task = Box<dyn FnOnce(&mut dyn Backend) + Send>;

enum Job {
    Append(Box<GuardedRecord>, Reply<Result<(), GuardRefusal>>),
    Run(Task),
}

/// Hooks called on the writer thread after each write job.
pub(crate) type Hooks = Arc<Mutex<Vec<AfterCommit>>>;

/// Handle to the writer thread. Cheap to clone; the thread ends when the
/// last handle is dropped.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread over `backend`, calling every hook in
    /// `hooks` after every write job (a group commit or an admin change),
    /// once the waiting requests have their answers.
    pub(crate) fn start<B: Backend>(backend: B, hooks: Hooks) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<Job>();
        let mut backend: Box<dyn Backend> = Box::new(backend);
        let after_commit = move || {
            let mut g = hooks.lock().unwrap_or_else(|p| p.into_inner());
            for hook in g.iter_mut() {
                hook();
            }
        };
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
                            after_commit();
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
                            after_commit();
                        }
                    }
                }
            })?;
        Ok(Writer { tx })
    }

    /// Appends one record if its guard still holds at commit, in the same
    /// group commit as other records. `Ok(Err(_))`: the guard failed and
    /// nothing was written.
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

/// Opens a connection for a reader thread (again after a failure).
pub(crate) type Opener<C> = Arc<dyn Fn() -> Result<C, StoreError> + Send + Sync>;

type ReadTask<C> = Box<dyn FnOnce(Result<&mut C, StoreError>) -> bool + Send>;

/// Reader threads, each with its own connection, taking jobs from one
/// queue. A connection is opened on first use when none was given, and
/// dropped after a failed job so the next job opens a fresh one.
pub(crate) struct Readers<C> {
    tx: mpsc::Sender<ReadTask<C>>,
}

impl<C: Send + 'static> Readers<C> {
    /// Starts one thread per entry of `conns` (`None`: opened on first use).
    pub(crate) fn start(
        name: &str,
        conns: Vec<Option<C>>,
        open: Opener<C>,
    ) -> std::io::Result<Readers<C>> {
        let (tx, rx) = mpsc::channel::<ReadTask<C>>();
        let rx = Arc::new(Mutex::new(rx));
        for conn in conns {
            let rx = rx.clone();
            let open = open.clone();
            thread::Builder::new()
                .name(name.to_string())
                .spawn(move || {
                    let mut conn = conn;
                    loop {
                        let job = {
                            let g = rx.lock().unwrap_or_else(|p| p.into_inner());
                            match g.recv() {
                                Ok(j) => j,
                                Err(_) => break,
                            }
                        };
                        let c = match conn.as_mut() {
                            Some(c) => Ok(c),
                            None => match open() {
                                Ok(c) => Ok(conn.insert(c)),
                                Err(e) => Err(e),
                            },
                        };
                        if !job(c) {
                            conn = None;
                        }
                    }
                })?;
        }
        Ok(Readers { tx })
    }

    /// Runs `f` on a reader thread and returns its result.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut C) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, wait) = tokio::sync::oneshot::channel::<Result<T, StoreError>>();
        let task: ReadTask<C> = Box::new(move |c| {
            let res = c.and_then(f);
            let ok = res.is_ok();
            let _ = reply.send(res);
            ok
        });
        self.tx
            .send(task)
            .map_err(|_| StoreError::Backend("store readers are not running".into()))?;
        wait.await
            .map_err(|_| StoreError::Backend("store reader stopped".into()))?
    }
}
