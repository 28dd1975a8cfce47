//! The state version for every caller, with one query for all the
//! callers that ask at once.
//!
//! The KRL, the CA key endpoints and `/healthz` read the state version
//! from the database, so that a revocation, deactivation or key rotation
//! that returned on any replica shows at once on every replica (see
//! [`super::listen`] for why notifications alone cannot promise that).
//! Certificate requests do not read it: their group commit reads the
//! deactivations and compares the version they acted on with the version
//! of the CA keys' last change ([`crate::store::IssueGuard::acted_on`]).
//!
//! Here callers queue for a read. One task takes everyone queued, runs one
//! `SELECT`, and answers them all; whoever queues while that query runs
//! waits for the next one. So the value a caller gets was always read
//! *after* it asked, never by a query already on its way: the guarantee
//! of a read per request, with one query per round trip instead of one
//! per request. A failed read fails the callers it would have answered;
//! the next caller starts a new one.

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::access::state_version;
use super::db::Db;
use super::pool_error;
use crate::store::{StateVersion, StoreError};

type Answer = oneshot::Sender<Result<StateVersion, StoreError>>;

/// Where callers queue for a state-version read.
#[derive(Clone)]
pub struct VersionReads {
    tx: mpsc::UnboundedSender<Answer>,
}

impl VersionReads {
    /// Starts the reading task on the current runtime; it ends when the
    /// last `VersionReads` is dropped.
    pub fn start(pool: Pool, display: String) -> VersionReads {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, display, rx));
        VersionReads { tx }
    }

    /// The state version, read after this call began.
    pub async fn read(&self) -> Result<StateVersion, StoreError> {
        let (answer, wait) = oneshot::channel();
        self.tx
            .send(answer)
            .map_err(|_| StoreError::Backend("the state version reader stopped".into()))?;
        wait.await
            .map_err(|_| StoreError::Backend("the state version reader stopped".into()))?
    }
}

async fn run(pool: Pool, display: String, mut rx: mpsc::UnboundedReceiver<Answer>) {
    let mut waiting = Vec::new();
    while let Some(first) = rx.recv().await {
        waiting.push(first);
        // Everyone who asked before the query is sent.
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let read = async {
            let client = pool.get().await.map_err(|e| pool_error(&display, e))?;
            state_version(Db::Client(&client))
                .await
                .map_err(StoreError::from)
        }
        .await;
        for answer in waiting.drain(..) {
            let _ = answer.send(read.clone());
        }
    }
}
