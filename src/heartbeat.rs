//! This replica's heartbeats, and the status of all replicas as the store
//! has them.
//!
//! `mayfly serve` sends a heartbeat ([`crate::replica::Heartbeat`]) once
//! before it starts serving, then every `heartbeat_interval`, and at once
//! after a policy reload took effect (so a new policy digest shows in
//! `mayfly status` without waiting for the interval). A heartbeat that
//! cannot be stored is logged as a warning and tried again at the next
//! interval: it never stops the server, which only shows as stale until a
//! heartbeat gets through. Sending runs on its own task, one heartbeat at a
//! time, each bounded by a timeout, so a slow database delays heartbeats
//! and nothing else.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::Config;
use crate::replica::{Heartbeat, ReplicaId, StatusReport};
use crate::service::Service;
use crate::store::{OpenMode, Store, StoreConfig, StoreError};
use crate::time::UnixSecs;

/// How long one heartbeat write may take before it counts as failed: the
/// interval, but at least 5 s and at most 30 s (the first heartbeat holds up
/// the start of serving for at most that long).
const WRITE_TIMEOUT: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(30));

/// What this replica says about itself besides the policy in force.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This replica's id (`data_dir/replica_id`).
    pub replica: ReplicaId,
    /// The address it listens on, as bound.
    pub listen: String,
    /// How often it sends a heartbeat (whole seconds, at least 1).
    pub interval: Duration,
    /// The policy directory, for the git commit of the policy.
    pub policy_dir: PathBuf,
}

/// The running heartbeat task of this replica. Dropping the handle does
/// not stop it; it ends with the process.
#[derive(Clone)]
pub struct Heartbeats {
    wake: Arc<Notify>,
}

impl Heartbeats {
    /// Sends the first heartbeat (a failure is logged, the server starts
    /// anyway), then sends one every interval on a task of its own.
    pub async fn start(service: Arc<Service>, settings: Settings) -> Heartbeats {
        let wake = Arc::new(Notify::new());
        let started_at = UnixSecs::of(service.clock().now());
        let mut beater = Beater {
            service,
            settings,
            started_at,
            git_commit: None,
            failing: false,
            shared_id_warned: false,
        };
        beater.read_git_commit().await;
        beater.send().await;
        let w = wake.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(beater.settings.interval) => {}
                    // A reload took effect: its commit may be new too.
                    _ = w.notified() => beater.read_git_commit().await,
                }
                beater.send().await;
            }
        });
        Heartbeats { wake }
    }

    /// Sends a heartbeat now (after a policy reload). A request made while
    /// one is being sent is kept and sent right after it.
    pub fn beat_now(&self) {
        self.wake.notify_one();
    }
}

struct Beater {
    service: Arc<Service>,
    settings: Settings,
    started_at: UnixSecs,
    git_commit: Option<String>,
    failing: bool,
    shared_id_warned: bool,
}

impl Beater {
    async fn read_git_commit(&mut self) {
        let dir = self.settings.policy_dir.clone();
        // `git rev-parse` is a process: not on an async worker.
        self.git_commit = tokio::task::spawn_blocking(move || crate::reload::git_commit(&dir))
            .await
            .unwrap_or(None);
    }

    fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            replica: self.settings.replica.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            policy_digest: self.service.policy().digest.clone(),
            git_commit: self.git_commit.clone(),
            listen: self.settings.listen.clone(),
            started_at: self.started_at,
            last_seen: UnixSecs::of(self.service.clock().now()),
            interval_secs: self.settings.interval.as_secs().max(1),
        }
    }

    async fn send(&mut self) {
        let beat = self.heartbeat();
        let timeout = self
            .settings
            .interval
            .clamp(WRITE_TIMEOUT.0, WRITE_TIMEOUT.1);
        let store = self.service.store().replicas();
        let outcome = match tokio::time::timeout(timeout, store.heartbeat(beat.clone())).await {
            Ok(Ok(previous)) => Ok(previous),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer from the store within {timeout:?}")),
        };
        match outcome {
            Ok(previous) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!(replica = %beat.replica, "heartbeat stored again");
                }
                if let Some(p) = previous.filter(|p| beat.id_shared_with(p)) {
                    if !std::mem::replace(&mut self.shared_id_warned, true) {
                        tracing::warn!(
                            replica = %beat.replica, other_listen = %p.listen,
                            "another mayfly process sends heartbeats with this replica id \
                             (a copied data directory?); give each replica its own data_dir, or \
                             delete data_dir/replica_id on one of them and restart it"
                        );
                    }
                }
            }
            Err(e) => {
                self.failing = true;
                tracing::warn!(
                    replica = %beat.replica, error = %e,
                    "heartbeat not stored; serving goes on, and `mayfly status` shows this \
                     replica as stale until one is"
                );
            }
        }
    }
}

/// The replicas the store knows, as of `now`.
pub async fn status(store: &Store, now: UnixSecs) -> Result<StatusReport, StoreError> {
    Ok(StatusReport::new(store.replicas().replicas().await?, now))
}

/// The replicas of the CA configured by `cfg`, as of `now`, read without
/// writing anything (for `mayfly status`; safe while the servers run).
/// Synchronous, for commands outside an async runtime.
pub fn load_status(cfg: &Config, now: UnixSecs) -> Result<StatusReport, StoreError> {
    let store = crate::store::open(&StoreConfig::from_config(cfg, OpenMode::ReadOnly))?;
    crate::store::block_on(status(&store, now))?
}
