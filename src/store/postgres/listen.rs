//! Noticing other replicas' changes: a dedicated connection that `LISTEN`s
//! on `mayfly_state` ([`super::access::CHANNEL`]), which every state bump
//! notifies at COMMIT, and a poll of the state version once a second as the
//! fallback (a lost connection, a notification dropped during a failover).
//! Either way, a version this process has not seen calls the `on_commit`
//! hooks, as a local commit does.
//!
//! Requests do not depend on this: each certificate request names the
//! state version it acted on, and its group commit, under the chain lock
//! that every state change takes too, reads the deactivations and refuses
//! it if the CA keys changed at a later version
//! ([`crate::store::IssueGuard::acted_on`]); the request is then decided
//! again on the current keys. So a change that returned on one replica is
//! honoured by the next request on any replica.
//! This is for what is cached between requests (the KRL, the audit
//! stream's wake-up).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::access::{state_version, CHANNEL};
use super::connect::Connector;
use super::db::Db;
use crate::store::writer::Hooks;

/// How often the state version is polled, notification or not.
const POLL: Duration = Duration::from_secs(1);
/// Least wait before the listening connection is opened again.
const RECONNECT_MIN: Duration = Duration::from_millis(250);
/// Most wait between attempts to open the listening connection.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// The highest state version this process has seen (its own commits
/// included, so their notifications do not call the hooks a second time).
#[derive(Default)]
pub struct Seen(AtomicU64);

impl Seen {
    /// Records `v`; true if it is newer than anything seen before.
    pub fn observe(&self, v: u64) -> bool {
        self.0.fetch_max(v, Ordering::AcqRel) < v
    }
}

/// Starts the listener on the current runtime; it runs until aborted.
pub fn start(
    connector: Connector,
    pool: Pool,
    hooks: Hooks,
    seen: Arc<Seen>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(connector, pool, hooks, seen))
}

async fn run(connector: Connector, pool: Pool, hooks: Hooks, seen: Arc<Seen>) {
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = RECONNECT_MIN;
    loop {
        let mut listening = match listen(&connector).await {
            Ok(l) => {
                backoff = RECONNECT_MIN;
                Some(l)
            }
            Err(e) => {
                tracing::warn!(error = %e, database = %connector.display,
                    "store: cannot listen for other replicas' changes; polling every second");
                None
            }
        };
        let retry_at = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                msg = async {
                    match listening.as_mut() {
                        Some((_, rx)) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => match msg {
                    Some(payload) => {
                        if payload.parse::<u64>().is_ok_and(|v| seen.observe(v)) {
                            super::call_hooks(&hooks);
                        }
                    }
                    None => {
                        tracing::warn!(database = %connector.display,
                            "store: the listening connection closed; opening it again");
                        break;
                    }
                },
                _ = poll.tick() => {
                    check(&pool, &hooks, &seen).await;
                    if listening.is_none() && tokio::time::Instant::now() >= retry_at {
                        backoff = (backoff * 2).min(RECONNECT_MAX);
                        break;
                    }
                }
            }
        }
    }
}

/// Polls the state version once.
async fn check(pool: &Pool, hooks: &Hooks, seen: &Seen) {
    let Ok(client) = pool.get().await else {
        return;
    };
    if let Ok(v) = state_version(Db::Client(&client)).await {
        if seen.observe(v.version) {
            super::call_hooks(hooks);
        }
    }
}

/// Opens a connection that listens on the state channel. The client is
/// returned with the receiver, since dropping it closes the connection.
async fn listen(
    c: &Connector,
) -> Result<(tokio_postgres::Client, mpsc::UnboundedReceiver<String>), String> {
    let (client, mut connection) = c
        .config
        .connect(c.tls.clone())
        .await
        .map_err(|e| super::connect::explain_connect(&c.display, &e))?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "store: listening connection failed");
                    break;
                }
                None => break,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| super::db::describe(&e))?;
    Ok((client, rx))
}
