//! The PostgreSQL backend behind the store traits: any number of replicas
//! share one database, and everything they must agree on lives in it
//! (see [`schema`] for the tables).
//!
//! # Shape
//!
//! * Every method runs as a task on the store's runtime and talks to the
//!   database through a pool of connections ([`connect`]); no call blocks
//!   an async worker. The runtime is the caller's when the store is opened
//!   inside a multi-threaded one (the server), else a small one of its own
//!   (CLI commands, which drive the store from short-lived runtimes).
//! * Issuance and plain audit appends go through one group-commit writer
//!   per process ([`writer`]). Administrative changes run as their own
//!   transactions. Both take the chain lock first ([`chain`]), which orders
//!   every append of every replica into one hash chain and makes the guards
//!   of an issuance, and the read-then-write of a vote, exact across
//!   replicas.
//! * The issuance counters are rows ([`issuance`]): serials reserved in
//!   small blocks from a counter that only moves up, used tokens claimed
//!   with `INSERT ... ON CONFLICT`, rate-limit buckets updated in one
//!   statement on the database's clock.
//! * Other replicas' state changes reach this one through `LISTEN`/`NOTIFY`
//!   with a once-a-second poll as the fallback ([`listen`]).

pub mod access;
pub mod approvals;
pub mod chain;
pub mod connect;
pub mod db;
pub mod hosts;
pub mod import;
pub mod issuance;
pub mod keys;
pub mod listen;
pub mod replicas;
pub mod reports;
pub mod schema;
pub mod sessions;
pub mod tls;
pub mod url;
pub mod version_reads;
pub mod writer;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::runtime::{Handle, Runtime, RuntimeFlavor};
use tokio::sync::{mpsc, oneshot};

use self::db::{Db, PgError, PgResult};
use self::listen::Seen;
use super::import::{ImportRefusal, ImportedState, RevocationRow, StoreCounts, UnfinishedImport};
use super::reports::{
    AuditSpan, DailyIssuance, IdentityRoleUsage, LastDenialRow, PrincipalUse, RoleAllTime,
    RoleWindowUsage, ScrapeGauges,
};
use super::traits::{
    AccessStore, AfterCommit, ApprovalStore, AuditLog, Cancel, CheckpointPage, CheckpointSigner,
    ImportStore, IssuanceCounters, IssuanceStore, KeyChange, KeyStore, ReplicaStore, ReportStore,
    Revoker, StoreFuture, Vote,
};
use super::writer::Hooks;
use super::{
    CertFilter, DisableTarget, DisabledEntry, GuardRefusal, IssueGuard, IssuedCert, OpenMode,
    Revocation, StateVersion, StoreConfig, StoreError,
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

/// Connections of the group-commit writer (one in use; a second when a
/// failed transaction's connection is being closed).
const WRITER_POOL: usize = 2;

/// How often expired used-token rows and full rate buckets are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Calls every hook (after a commit, or when another replica changed state).
pub(crate) fn call_hooks(hooks: &Hooks) {
    let mut g = hooks.lock().unwrap_or_else(|p| p.into_inner());
    for hook in g.iter_mut() {
        hook();
    }
}

/// A pool error, with what to fix when the server said.
pub(crate) fn pool_error(display: &str, e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => StoreError::Backend(format!(
            "postgres: {}",
            connect::explain_connect(display, &e)
        )),
        other => db::pool_err(other),
    }
}

/// Where the store's tasks run.
struct Exec {
    handle: Handle,
    /// The store's own runtime, when it was not opened inside a
    /// multi-threaded one; shut down (in the background) on drop.
    own: Option<Runtime>,
}

impl Exec {
    fn new() -> Result<Exec, StoreError> {
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => Ok(Exec {
                handle: h,
                own: None,
            }),
            _ => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("mayfly-store-pg")
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        StoreError::Backend(format!("starting the store's runtime: {e}"))
                    })?;
                Ok(Exec {
                    handle: rt.handle().clone(),
                    own: Some(rt),
                })
            }
        }
    }

    /// Runs `f` to completion from synchronous code (opening the store),
    /// without blocking an async worker.
    fn block<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        match Handle::try_current() {
            Ok(_) if self.own.is_none() => tokio::task::block_in_place(|| self.handle.block_on(f)),
            Ok(_) => {
                // Inside another runtime (a current-thread one): its thread
                // cannot block on ours, a helper thread can.
                let handle = self.handle.clone();
                std::thread::scope(|s| match s.spawn(move || handle.block_on(f)).join() {
                    Ok(v) => v,
                    Err(p) => std::panic::resume_unwind(p),
                })
            }
            Err(_) => self.handle.block_on(f),
        }
    }

    /// Runs `f` as a task of the store and returns its result.
    fn spawn<T: Send + 'static>(
        &self,
        f: impl Future<Output = PgResult<T>> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        let task = self.handle.spawn(f);
        Box::pin(async move {
            match task.await {
                Ok(r) => r.map_err(StoreError::from),
                Err(e) => Err(StoreError::Backend(format!("store task ended: {e}"))),
            }
        })
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        if let Some(rt) = self.own.take() {
            rt.shutdown_background();
        }
    }
}

/// What the store's tasks share.
struct Inner {
    pool: Pool,
    /// Connections whose commits do not wait for their WAL flush, for
    /// token claims and rate takes only ([`ASYNC_COMMIT`] says why that
    /// is safe for them and only them).
    claims: Pool,
    display: String,
    mode: OpenMode,
    hooks: Hooks,
    seen: Arc<Seen>,
    /// The floor serials start above, set by `IssuanceCounters::start`.
    serial_floor: OnceLock<u64>,
    /// The serials reserved and not yet handed out: `(next, end)`.
    serials: tokio::sync::Mutex<(u64, u64)>,
}

impl Inner {
    async fn client(&self) -> PgResult<deadpool_postgres::Client> {
        self.pool
            .get()
            .await
            .map_err(|e| PgError::Other(pool_error(&self.display, e)))
    }

    async fn claims_client(&self) -> PgResult<deadpool_postgres::Client> {
        self.claims
            .get()
            .await
            .map_err(|e| PgError::Other(pool_error(&self.display, e)))
    }

    fn writable(&self) -> PgResult<()> {
        if self.mode == OpenMode::ReadOnly {
            return Err(PgError::msg(format!("{} is open read-only", self.display)));
        }
        Ok(())
    }

    /// After an administrative change committed: the hooks, and the version
    /// it made, so its own notification does not call them twice.
    fn committed(&self, version: Option<StateVersion>) {
        if let Some(v) = version {
            self.seen.observe(v.version);
        }
        call_hooks(&self.hooks);
    }
}

/// The PostgreSQL store of one process.
pub struct PgStore {
    inner: Arc<Inner>,
    versions: version_reads::VersionReads,
    writer: Option<mpsc::UnboundedSender<writer::Pending>>,
    background: Vec<tokio::task::AbortHandle>,
    // Last: its runtime (if its own) shuts down after the tasks are told to end.
    exec: Exec,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.writer.take();
        for t in &self.background {
            t.abort();
        }
    }
}

/// Runs `$body` with `$db` a pooled connection, as a task of the store.
macro_rules! read {
    ($self:ident, |$db:ident| $body:expr) => {{
        let inner = $self.inner.clone();
        $self.exec.spawn(async move {
            let client = inner.client().await?;
            let $db = Db::Client(&client);
            $body.await
        })
    }};
}

/// Runs `$body` with `$db` a transaction, committed when `$body` returns
/// `Ok` (refusals included: nothing was written then). `$version` maps the
/// result to the state version it made, if any.
macro_rules! write {
    ($self:ident, |$db:ident| $body:expr, $version:expr) => {{
        let inner = $self.inner.clone();
        $self.exec.spawn(async move {
            inner.writable()?;
            let mut client = inner.client().await?;
            let tx = client.transaction().await?;
            let out = {
                let $db = Db::Tx(&tx);
                $body.await?
            };
            tx.commit().await?;
            #[allow(clippy::redundant_closure_call)]
            inner.committed(($version)(&out));
            Ok(out)
        })
    }};
}

impl PgStore {
    /// Connects as `cfg` says, brings the schema up to date (`Create`) or
    /// checks it (`Existing`, `ReadOnly`), and starts the writer, the
    /// listener and the pruning task (the server only).
    pub fn open(cfg: &StoreConfig) -> Result<PgStore, StoreError> {
        let pg = cfg.postgres.as_ref().ok_or_else(|| {
            StoreError::Backend(
                "[store] backend = \"postgres\" needs url (and a password source)".into(),
            )
        })?;
        let env = |k: &str| std::env::var(k).ok();
        let connector = connect::connector(pg, cfg.mode, cfg.busy_timeout, &env)?;
        let exec = Exec::new()?;
        let pool = exec.block({
            let connector = connector.clone();
            let size = pg.pool_size;
            let wait = cfg.busy_timeout;
            let mode = cfg.mode;
            async move {
                // Built inside the runtime: connections spawn their drivers on it.
                let pool = connect::pool(&connector, size, wait)?;
                let mut client = pool
                    .get()
                    .await
                    .map_err(|e| pool_error(&connector.display, e))?;
                schema::prepare(&mut client, mode, &connector.display).await?;
                let mut claims = connector.clone();
                let options = format!(
                    "{} {ASYNC_COMMIT}",
                    claims.config.get_options().unwrap_or("")
                );
                claims.config.options(options.trim().to_string());
                let claims = connect::pool(&claims, claims_pool_size(size), wait)?;
                Ok::<_, StoreError>((pool, claims))
            }
        })?;
        let (pool, claims) = pool;
        if cfg.mode == OpenMode::Create && connector.unverified_remote() {
            tracing::warn!(
                database = %connector.display,
                sslmode = connector.ssl.as_str(),
                "store: the connection to PostgreSQL does not verify the server; set \
                 sslmode=verify-full (with sslrootcert) in store.url"
            );
        }
        let hooks: Hooks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::new(Seen::default());
        let inner = Arc::new(Inner {
            pool: pool.clone(),
            claims,
            display: connector.display.clone(),
            mode: cfg.mode,
            hooks: hooks.clone(),
            seen: seen.clone(),
            serial_floor: OnceLock::new(),
            serials: tokio::sync::Mutex::new((0, 0)),
        });
        let mut background = Vec::new();
        let versions = {
            let _guard = exec.handle.enter();
            version_reads::VersionReads::start(pool.clone(), connector.display.clone())
        };
        // The writer is not aborted on drop: it ends when its sender is
        // dropped, after answering what it has.
        let writer_tx = if cfg.mode == OpenMode::ReadOnly {
            None
        } else {
            let own = connect::pool(&connector, WRITER_POOL, cfg.busy_timeout)?;
            Some(
                writer::start(own, hooks.clone(), connector.display.clone()).map_err(|e| {
                    StoreError::Backend(format!("starting the store's writer thread: {e}"))
                })?,
            )
        };
        if cfg.mode == OpenMode::Create {
            let _guard = exec.handle.enter();
            let l = listen::start(connector.clone(), pool.clone(), hooks, seen);
            background.push(l.abort_handle());
            let p = tokio::spawn(prune_loop(pool));
            background.push(p.abort_handle());
            tracing::info!(database = %connector.display, sslmode = connector.ssl.as_str(),
                pool_size = pg.pool_size, "store: PostgreSQL");
        }
        Ok(PgStore {
            inner,
            versions,
            writer: writer_tx,
            background,
            exec,
        })
    }

    /// Where the database is (`postgres://host:port/db`), for messages.
    pub fn location(&self) -> &str {
        &self.inner.display
    }

    fn append_guarded(
        &self,
        record: AuditRecord,
        guard: Option<IssueGuard>,
    ) -> StoreFuture<'_, Result<(), GuardRefusal>> {
        let sender = self.writer.clone();
        let display = self.inner.display.clone();
        Box::pin(async move {
            let Some(sender) = sender else {
                return Err(StoreError::Backend(format!("{display} is open read-only")));
            };
            let (reply, wait) = oneshot::channel();
            sender
                .send(writer::Pending {
                    record: (record, guard),
                    reply,
                })
                .map_err(|_| StoreError::WriterGone)?;
            wait.await.map_err(|_| StoreError::WriterGone)?
        })
    }
}

async fn prune_loop(pool: Pool) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Ok(client) = pool.get().await else {
            continue;
        };
        let now = crate::clock::unix_secs(std::time::SystemTime::now());
        match issuance::prune(Db::Client(&client), now).await {
            Ok((tokens, buckets)) if tokens + buckets > 0 => {
                tracing::debug!(
                    tokens,
                    buckets,
                    "store: pruned expired used tokens and full buckets"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %StoreError::from(e), "store: pruning failed"),
        }
    }
}

impl IssuanceStore for PgStore {
    fn issue(
        &self,
        record: AuditRecord,
        guard: Option<IssueGuard>,
    ) -> StoreFuture<'_, Result<(), GuardRefusal>> {
        self.append_guarded(record, guard)
    }

    fn max_serial(&self) -> StoreFuture<'_, u64> {
        read!(self, |db| issuance::max_serial(db))
    }

    fn used_tokens(&self, now: u64) -> StoreFuture<'_, Vec<(String, u64)>> {
        read!(self, |db| issuance::used_tokens(db, now))
    }

    fn live_certs(&self, filter: &CertFilter, now: u64) -> StoreFuture<'_, Vec<IssuedCert>> {
        let filter = filter.clone();
        read!(self, |db| issuance::live_certs(db, &filter, now))
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
        read!(self, |db| issuance::count_live(db, &filter, now))
    }

    fn last_expiry_by_ca(&self, ca_key: &str) -> StoreFuture<'_, u64> {
        let ca_key = ca_key.to_string();
        read!(self, |db| issuance::last_expiry_by_ca(db, &ca_key))
    }
}

impl IssuanceCounters for PgStore {
    fn start(&self, now: u64) -> StoreFuture<'_, ()> {
        let inner = self.inner.clone();
        self.exec.spawn(async move {
            let client = inner.client().await?;
            if let Some(u) = import::unfinished(Db::Client(&client)).await? {
                return Err(PgError::msg(u.refusal()));
            }
            let max = issuance::max_serial(Db::Client(&client)).await?;
            // As in memory: above every recorded serial and above a clock
            // floor, so a database restored from an old backup does not
            // hand out a serial again either.
            let floor = max.max(now << 24);
            let _ = inner.serial_floor.set(floor);
            Ok(())
        })
    }

    fn next_serial(&self) -> StoreFuture<'_, u64> {
        let inner = self.inner.clone();
        self.exec.spawn(async move {
            let Some(floor) = inner.serial_floor.get().copied() else {
                return Err(PgError::msg(
                    "serials requested before the store's counters were started",
                ));
            };
            let mut block = inner.serials.lock().await;
            if block.0 >= block.1 {
                inner.writable()?;
                let client = inner.client().await?;
                let start = issuance::reserve_serials(Db::Client(&client), floor).await?;
                *block = (start, start.saturating_add(issuance::SERIAL_BLOCK));
            }
            let serial = block.0;
            block.0 += 1;
            Ok(serial)
        })
    }

    fn claim_token(&self, id: &str, expires_at: u64, now: u64) -> StoreFuture<'_, bool> {
        let id = id.to_string();
        let inner = self.inner.clone();
        self.exec.spawn(async move {
            inner.writable()?;
            let client = inner.claims_client().await?;
            issuance::claim_token(Db::Client(&client), &id, expires_at, now).await
        })
    }

    fn claims_at_commit(&self) -> bool {
        true
    }

    fn take_rate(
        &self,
        key: &str,
        rate: RateLimit,
        _now: f64,
    ) -> StoreFuture<'_, Result<(), Duration>> {
        let key = key.to_string();
        let inner = self.inner.clone();
        self.exec.spawn(async move {
            inner.writable()?;
            let client = inner.claims_client().await?;
            issuance::take_rate(Db::Client(&client), &key, rate).await
        })
    }
}

/// The session setting of the [`Inner::claims`] connections: a token claim
/// and a rate-limit take commit without waiting for their WAL flush. Both are visible to every other session the moment they
/// commit, so the races they decide (one token at two replicas, the last
/// unit of a bucket) are decided exactly as with a synchronous commit.
/// What waits is durability, and it is not needed here: the certificate
/// the claim is for is returned only after its own `cert_issued` commit,
/// which is synchronous and comes later in the WAL, and flushing (or
/// replicating to a synchronous standby) a WAL position flushes everything
/// before it. So a claim whose certificate reached a client is durable;
/// one lost in a database crash belonged to a request that got no
/// certificate, and the token may then be used once more. A rate take
/// lost that way lets one more request through after the crash. This
/// saves one WAL flush per certificate.
const ASYNC_COMMIT: &str = "-c synchronous_commit=off";

/// Connections in the claims pool: enough for a burst of claims, which
/// each hold one for a single statement.
fn claims_pool_size(pool_size: usize) -> usize {
    (pool_size / 2).max(2)
}

impl AuditLog for PgStore {
    fn append(&self, record: AuditRecord) -> StoreFuture<'_, ()> {
        let fut = self.append_guarded(record, None);
        Box::pin(async move {
            fut.await?
                .map_err(|r| StoreError::Backend(format!("unguarded record refused: {r}")))
        })
    }

    fn record_change(&self, record: AuditRecord, now: u64) -> StoreFuture<'_, StateVersion> {
        write!(
            self,
            |db| async move {
                chain::append(db, std::slice::from_ref(&record)).await?;
                access::bump_keys_version(db, now).await
            },
            |v: &StateVersion| Some(*v)
        )
    }

    fn scan(
        &self,
        from_seq: u64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Result<StoredRecord, BadRow>>> {
        read!(self, |db| chain::scan(db, from_seq, limit))
    }

    fn record(&self, seq: u64) -> StoreFuture<'_, Option<Result<StoredRecord, BadRow>>> {
        read!(self, |db| chain::record(db, seq))
    }

    fn head(&self) -> StoreFuture<'_, Option<(u64, Option<Hash>)>> {
        read!(self, |db| chain::head(db))
    }

    fn first_seq_since(&self, time_ms: i64) -> StoreFuture<'_, Option<u64>> {
        read!(self, |db| chain::first_seq_since(db, time_ms))
    }

    fn chain_meta(&self) -> StoreFuture<'_, ChainMeta> {
        read!(self, |db| chain::chain_meta(db))
    }

    fn checkpoints(&self, after_id: i64, limit: usize) -> StoreFuture<'_, CheckpointPage> {
        read!(self, |db| chain::checkpoints(db, after_id, limit))
    }

    fn last_checkpoint(&self) -> StoreFuture<'_, Option<(u64, Hash)>> {
        read!(self, |db| chain::last_checkpoint(db))
    }

    fn last_checkpoint_at(&self) -> StoreFuture<'_, Option<(u64, i64)>> {
        read!(self, |db| chain::last_checkpoint_at(db))
    }

    fn write_checkpoint(
        &self,
        key_fingerprint: &str,
        time_ms: i64,
        sign: CheckpointSigner,
    ) -> StoreFuture<'_, Option<Checkpoint>> {
        let fp = key_fingerprint.to_string();
        write!(
            self,
            |db| chain::write_checkpoint(db, &fp, time_ms, sign),
            |_: &Option<Checkpoint>| None
        )
    }

    fn stream_cursor(&self) -> StoreFuture<'_, Option<u64>> {
        read!(self, |db| chain::stream_cursor(db))
    }

    fn set_stream_cursor(&self, seq: u64) -> StoreFuture<'_, ()> {
        let inner = self.inner.clone();
        self.exec.spawn(async move {
            inner.writable()?;
            let client = inner.client().await?;
            chain::set_stream_cursor(Db::Client(&client), seq).await
        })
    }

    fn search(&self, q: &AuditQuery) -> StoreFuture<'_, Vec<Result<StoredRecord, BadRow>>> {
        let q = q.clone();
        read!(self, |db| chain::search(db, &q))
    }

    fn on_commit(&self, hook: AfterCommit) {
        self.inner
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(hook);
    }
}

impl ReplicaStore for PgStore {
    fn heartbeat(&self, beat: Heartbeat) -> StoreFuture<'_, Option<Heartbeat>> {
        write!(self, |db| replicas::heartbeat(db, &beat), |_: &Option<
            Heartbeat,
        >| None)
    }

    fn replicas(&self) -> StoreFuture<'_, Vec<Heartbeat>> {
        read!(self, |db| replicas::list(db))
    }
}

impl crate::store::HostStore for PgStore {
    fn host_report(&self, row: crate::fleet::HostRow) -> StoreFuture<'_, Option<u64>> {
        write!(self, |db| hosts::put(db, &row), |_: &Option<u64>| None)
    }

    fn hosts(&self) -> StoreFuture<'_, Vec<crate::fleet::HostRow>> {
        read!(self, |db| hosts::list(db))
    }
}

impl crate::store::SessionStore for PgStore {
    fn put_session(
        &self,
        key: crate::store::SessionKey,
        row: crate::store::SessionRow,
        now: u64,
    ) -> StoreFuture<'_, ()> {
        write!(self, |db| sessions::put(db, &key, &row, now), |_: &()| None)
    }

    fn session(
        &self,
        key: crate::store::SessionKey,
        now: u64,
    ) -> StoreFuture<'_, Option<crate::store::SessionRow>> {
        read!(self, |db| sessions::get(db, &key, now))
    }

    fn delete_session(&self, key: crate::store::SessionKey) -> StoreFuture<'_, ()> {
        write!(self, |db| sessions::delete(db, &key), |_: &()| None)
    }
}

impl ApprovalStore for PgStore {
    fn put(&self, req: ApprovalRequest, audit: Vec<AuditRecord>) -> StoreFuture<'_, ()> {
        write!(self, |db| approvals::put(db, &req, &audit), |_: &()| None)
    }

    fn get(&self, id: &str) -> StoreFuture<'_, Option<ApprovalRequest>> {
        let id = id.to_string();
        read!(self, |db| issuance::approval_get(db, &id, false))
    }

    fn list(&self, status: Option<ApprovalStatus>) -> StoreFuture<'_, Vec<ApprovalRequest>> {
        read!(self, |db| approvals::list(db, status))
    }

    fn list_after(&self, after_id: &str, limit: usize) -> StoreFuture<'_, Vec<ApprovalRequest>> {
        let after_id = after_id.to_string();
        read!(self, |db| import::approvals_after(db, &after_id, limit))
    }

    fn vote(
        &self,
        id: &str,
        vote: Vote,
        audit: AuditRecord,
    ) -> StoreFuture<'_, Result<ApprovalRequest, ApprovalError>> {
        let id = id.to_string();
        write!(
            self,
            |db| approvals::vote(db, &id, &vote, audit),
            |_: &Result<ApprovalRequest, ApprovalError>| None
        )
    }

    fn cancel(
        &self,
        id: &str,
        cancel: Cancel,
        audit: AuditRecord,
    ) -> StoreFuture<'_, Result<ApprovalRequest, ApprovalError>> {
        let id = id.to_string();
        write!(
            self,
            |db| approvals::cancel(db, &id, &cancel, audit),
            |_: &Result<ApprovalRequest, ApprovalError>| None
        )
    }
}

impl AccessStore for PgStore {
    fn revoke(
        &self,
        revocations: Vec<Revocation>,
        audit: Vec<AuditRecord>,
        now: u64,
    ) -> StoreFuture<'_, StateVersion> {
        write!(
            self,
            |db| access::revoke(db, &revocations, &audit, now),
            |v: &StateVersion| Some(*v)
        )
    }

    fn revoke_matching(
        &self,
        filter: CertFilter,
        now: u64,
        revoke: Revoker,
    ) -> StoreFuture<'_, (Vec<IssuedCert>, StateVersion)> {
        let inner = self.inner.clone();
        let fut = write!(
            self,
            |db| access::revoke_matching(db, &filter, now, &revoke),
            |out: &(Vec<IssuedCert>, Option<StateVersion>)| out.1
        );
        Box::pin(async move {
            let (certs, v) = fut.await?;
            let v = match v {
                Some(v) => v,
                None => {
                    let client = inner.client().await?;
                    access::state_version(Db::Client(&client)).await?
                }
            };
            Ok((certs, v))
        })
    }

    fn disable_and_revoke(
        &self,
        entry: DisabledEntry,
        audit: AuditRecord,
        filter: CertFilter,
        now: u64,
        revoke: Revoker,
    ) -> StoreFuture<'_, (bool, Vec<IssuedCert>)> {
        write!(
            self,
            |db| access::disable_and_revoke(db, &entry, &audit, &filter, now, &revoke),
            |_: &(bool, Vec<IssuedCert>)| None
        )
    }

    fn set_disabled(
        &self,
        key: DisableTarget,
        entry: Option<DisabledEntry>,
        audit: AuditRecord,
        now: u64,
    ) -> StoreFuture<'_, bool> {
        write!(
            self,
            |db| access::set_disabled(db, &key, entry.as_ref(), &audit, now),
            |_: &bool| None
        )
    }

    fn live_revocations(&self, now: u64) -> StoreFuture<'_, Vec<Revocation>> {
        read!(self, |db| access::live_revocations(db, now))
    }

    fn revocation_history(
        &self,
        after_id: i64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<RevocationRow>> {
        read!(self, |db| import::revocation_history(db, after_id, limit))
    }

    fn disabled(&self) -> StoreFuture<'_, Vec<DisabledEntry>> {
        read!(self, |db| access::disabled(db))
    }

    fn state_version(&self) -> StoreFuture<'_, StateVersion> {
        // One query for every request asking at once (see version_reads).
        let versions = self.versions.clone();
        Box::pin(async move { versions.read().await })
    }
}

impl ReportStore for PgStore {
    fn identity_usage(&self) -> StoreFuture<'_, Vec<IdentityRoleUsage>> {
        read!(self, |db| reports::identity_usage(db))
    }

    fn last_denials(&self) -> StoreFuture<'_, Vec<LastDenialRow>> {
        read!(self, |db| reports::last_denials(db))
    }

    fn role_window_usage(&self, since_ms: u64) -> StoreFuture<'_, Vec<RoleWindowUsage>> {
        read!(self, |db| reports::role_window_usage(db, since_ms))
    }

    fn role_all_time(&self) -> StoreFuture<'_, Vec<RoleAllTime>> {
        read!(self, |db| reports::role_all_time(db))
    }

    fn principals_granted(&self, since_ms: u64) -> StoreFuture<'_, Vec<PrincipalUse>> {
        read!(self, |db| reports::principals_granted(db, since_ms))
    }

    fn daily_issuance(&self, since_ms: u64) -> StoreFuture<'_, Vec<DailyIssuance>> {
        read!(self, |db| reports::daily_issuance(db, since_ms))
    }

    fn denials_by_reason(&self, since_ms: u64) -> StoreFuture<'_, Vec<(String, u64)>> {
        read!(self, |db| reports::denials_by_reason(db, since_ms))
    }

    fn event_counts(&self, since_ms: u64) -> StoreFuture<'_, Vec<(String, u64)>> {
        read!(self, |db| reports::event_counts(db, since_ms))
    }

    fn incomplete_issuance_records(&self, since_ms: u64) -> StoreFuture<'_, u64> {
        read!(self, |db| reports::incomplete_issuance_records(
            db, since_ms
        ))
    }

    fn audit_span(&self) -> StoreFuture<'_, AuditSpan> {
        read!(self, |db| reports::audit_span(db))
    }

    fn revocations_since(&self, since_ms: u64) -> StoreFuture<'_, u64> {
        read!(self, |db| reports::revocations_since(db, since_ms))
    }

    fn scrape_gauges(&self, now: u64) -> StoreFuture<'_, ScrapeGauges> {
        read!(self, |db| reports::scrape_gauges(db, now))
    }

    fn count_events(&self, event: &str) -> StoreFuture<'_, u64> {
        let event = event.to_string();
        read!(self, |db| reports::count_events(db, &event))
    }
}

impl ImportStore for PgStore {
    fn counts(&self) -> StoreFuture<'_, StoreCounts> {
        read!(self, |db| import::counts(db))
    }

    fn unfinished_import(&self) -> StoreFuture<'_, Option<UnfinishedImport>> {
        read!(self, |db| import::unfinished(db))
    }

    fn begin_import(&self, from: &str, now_ms: i64) -> StoreFuture<'_, Result<(), ImportRefusal>> {
        let from = from.to_string();
        write!(self, |db| import::begin(db, &from, now_ms), |_: &Result<
            (),
            ImportRefusal,
        >| None)
    }

    fn import_audit(&self, rows: Vec<StoredRecord>) -> StoreFuture<'_, ()> {
        write!(self, |db| import::audit(db, &rows), |_: &()| None)
    }

    fn import_checkpoints(&self, checkpoints: Vec<Checkpoint>) -> StoreFuture<'_, ()> {
        write!(
            self,
            |db| import::checkpoints(db, &checkpoints),
            |_: &()| None
        )
    }

    fn import_revocations(&self, rows: Vec<RevocationRow>) -> StoreFuture<'_, ()> {
        write!(self, |db| import::revocations(db, &rows), |_: &()| None)
    }

    fn import_disabled(&self, entries: Vec<DisabledEntry>) -> StoreFuture<'_, ()> {
        write!(self, |db| import::disabled(db, &entries), |_: &()| None)
    }

    fn import_approvals(&self, requests: Vec<ApprovalRequest>) -> StoreFuture<'_, ()> {
        write!(self, |db| import::approvals(db, &requests), |_: &()| None)
    }

    fn import_state(&self, state: ImportedState) -> StoreFuture<'_, ()> {
        write!(self, |db| import::state(db, &state), |_: &()| None)
    }

    fn finish_import(&self) -> StoreFuture<'_, ()> {
        write!(self, |db| import::finish(db), |_: &()| None)
    }
}

impl KeyStore for PgStore {
    fn shared(&self) -> bool {
        true
    }

    fn cas(&self) -> StoreFuture<'_, Vec<String>> {
        read!(self, |db| keys::cas(db))
    }

    fn ca_keys(&self, base: &str) -> StoreFuture<'_, Result<CaKeys, RotationError>> {
        let base = base.to_string();
        read!(self, |db| keys::ca_keys(db, &base, false))
    }

    fn create_active_if_absent(
        &self,
        base: &str,
        key: NewKey,
    ) -> StoreFuture<'_, Result<(StoredKey, bool), RotationError>> {
        let base = base.to_string();
        let now = crate::clock::unix_secs(std::time::SystemTime::now());
        write!(
            self,
            |db| keys::create_active(db, &base, &key, now),
            |_: &Result<(StoredKey, bool), RotationError>| None
        )
    }

    fn rotate(&self, change: KeyChange) -> StoreFuture<'_, Result<StateVersion, RotationError>> {
        let inner = self.inner.clone();
        self.exec.spawn(async move {
            inner.writable()?;
            let mut client = inner.client().await?;
            let tx = client.transaction().await?;
            match keys::rotate(Db::Tx(&tx), &change).await? {
                Ok(v) => {
                    tx.commit().await?;
                    inner.committed(Some(v));
                    Ok(Ok(v))
                }
                // A refusal leaves nothing, the audit row included.
                Err(e) => {
                    tx.rollback().await?;
                    Ok(Err(e))
                }
            }
        })
    }

    fn import_keys(
        &self,
        base: &str,
        stored: CaKeys,
    ) -> StoreFuture<'_, Result<(), RotationError>> {
        let base = base.to_string();
        let inner = self.inner.clone();
        self.exec.spawn(async move {
            inner.writable()?;
            let mut client = inner.client().await?;
            let tx = client.transaction().await?;
            let out = keys::import(Db::Tx(&tx), &base, &stored).await?;
            if out.is_ok() {
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            Ok(out)
        })
    }
}
