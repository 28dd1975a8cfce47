//! Shared plumbing of the PostgreSQL backend: one way to run a cached
//! statement on a pooled connection or inside a transaction, error
//! mapping, and integer conversions (PostgreSQL integers are signed).

use deadpool_postgres::{Client, Transaction};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::store::StoreError;

/// A failure inside the backend: a client error (whose SQLSTATE tells a
/// refused record from an unreachable database) or a store error already.
/// Converted to [`StoreError`] at the trait boundary.
#[derive(Debug)]
pub enum PgError {
    /// The client or the server failed.
    Db(tokio_postgres::Error),
    /// Anything else.
    Other(StoreError),
}

/// The result of a backend step.
pub type PgResult<T> = Result<T, PgError>;

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Db(e)
    }
}

impl From<StoreError> for PgError {
    fn from(e: StoreError) -> Self {
        PgError::Other(e)
    }
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Db(e) => pg_err(e),
            PgError::Other(e) => e,
        }
    }
}

impl PgError {
    /// A failure described by `msg`.
    pub fn msg(msg: impl Into<String>) -> PgError {
        PgError::Other(StoreError::Backend(msg.into()))
    }

    /// Whether the database refused the data (a constraint, a bad value)
    /// rather than being unreachable: such a batch is retried record by
    /// record, since the rest of it may be fine.
    pub fn is_data_error(&self) -> bool {
        match self {
            PgError::Db(e) => e.code().is_some_and(|c| {
                let code = c.code();
                code.starts_with("23") || code.starts_with("22")
            }),
            PgError::Other(_) => false,
        }
    }
}

/// Parameters of one statement.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A pooled connection or a transaction on one: where a statement runs.
/// Statements are prepared once per connection and cached, so each later
/// run is one round trip.
#[derive(Clone, Copy)]
pub enum Db<'a> {
    /// Outside a transaction (autocommit).
    Client(&'a Client),
    /// Inside a transaction.
    Tx(&'a Transaction<'a>),
}

impl Db<'_> {
    /// `sql` prepared on this connection (cached). A statement prepared
    /// beforehand is sent on the first poll of the future that runs it
    /// ([`Db::one_prepared`]), which is what makes the order of statements
    /// sent together (pipelined) the order in which they were polled.
    pub async fn statement(&self, sql: &str) -> PgResult<tokio_postgres::Statement> {
        Ok(match self {
            Db::Client(c) => c.prepare_cached(sql).await,
            Db::Tx(t) => t.prepare_cached(sql).await,
        }?)
    }

    /// Every row `sql` returns.
    pub async fn query(&self, sql: &str, params: Params<'_>) -> PgResult<Vec<Row>> {
        let st = self.statement(sql).await?;
        Ok(match self {
            Db::Client(c) => c.query(&st, params).await,
            Db::Tx(t) => t.query(&st, params).await,
        }?)
    }

    /// The one row `sql` returns.
    pub async fn one(&self, sql: &str, params: Params<'_>) -> PgResult<Row> {
        let st = self.statement(sql).await?;
        self.one_prepared(&st, params).await
    }

    /// The one row prepared statement `st` returns. Its message is sent
    /// on the first poll, before the future waits for anything.
    pub async fn one_prepared(
        &self,
        st: &tokio_postgres::Statement,
        params: Params<'_>,
    ) -> PgResult<Row> {
        Ok(match self {
            Db::Client(c) => c.query_one(st, params).await,
            Db::Tx(t) => t.query_one(st, params).await,
        }?)
    }

    /// Runs prepared statement `st`; returns the number of rows it changed.
    /// Its message is sent on the first poll.
    pub async fn execute_prepared(
        &self,
        st: &tokio_postgres::Statement,
        params: Params<'_>,
    ) -> PgResult<u64> {
        Ok(match self {
            Db::Client(c) => c.execute(st, params).await,
            Db::Tx(t) => t.execute(st, params).await,
        }?)
    }

    /// The row `sql` returns, if any.
    pub async fn opt(&self, sql: &str, params: Params<'_>) -> PgResult<Option<Row>> {
        let st = self.statement(sql).await?;
        Ok(match self {
            Db::Client(c) => c.query_opt(&st, params).await,
            Db::Tx(t) => t.query_opt(&st, params).await,
        }?)
    }

    /// Runs `sql`; returns the number of rows it changed.
    pub async fn execute(&self, sql: &str, params: Params<'_>) -> PgResult<u64> {
        let st = self.statement(sql).await?;
        self.execute_prepared(&st, params).await
    }
}

/// The error text of a client error: the server's message (and detail)
/// for database errors, the client's otherwise. Neither carries the
/// password.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({}; SQLSTATE {})", db.message(), d, db.code().code()),
            None => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        },
        None => e.to_string(),
    }
}

/// A client error as a store error.
pub fn pg_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(format!("postgres: {}", describe(&e)))
}

/// A pool error as a store error.
pub fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => {
            StoreError::Backend(format!("postgres: cannot connect: {}", describe(&e)))
        }
        PoolError::Timeout(_) => StoreError::Backend(
            "postgres: no database connection available in time (pool exhausted or the \
             database unreachable)"
                .into(),
        ),
        other => StoreError::Backend(format!("postgres: {other}")),
    }
}

/// A `u64` as PostgreSQL's `BIGINT` (saturating; mayfly's values are far
/// below 2^63).
pub fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A `BIGINT` as `u64` (negative values, never written by mayfly, read as 0).
pub fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A transaction whose BEGIN and COMMIT travel in pipelines with its other
/// statements (BEGIN with the first reads, COMMIT with the last writes),
/// two round trips fewer than a [`Transaction`]: the group commit holds
/// the chain lock for one round trip less.
///
/// The connection stays in `slot`. A transaction that did not end (an
/// error left it open, or its future was dropped) never goes back to the
/// pool: it is rolled back, or, if that fails or cannot be awaited (drop),
/// the connection is taken out of the pool and closed, which makes the
/// server roll back and release the locks.
pub struct PipelinedTx<'a> {
    slot: &'a mut Option<Client>,
    open: std::sync::atomic::AtomicBool,
}

impl<'a> PipelinedTx<'a> {
    /// A transaction on the connection in `slot` (an error if there is
    /// none). Nothing is sent yet: [`PipelinedTx::begin`] is the first
    /// statement of the first pipeline.
    pub fn new(slot: &'a mut Option<Client>) -> PgResult<Self> {
        if slot.is_none() {
            return Err(PgError::msg("postgres: no connection for the transaction"));
        }
        Ok(PipelinedTx {
            slot,
            open: std::sync::atomic::AtomicBool::new(true),
        })
    }

    fn client(&self) -> &Client {
        self.slot
            .as_ref()
            .expect("a PipelinedTx always holds its connection")
    }

    /// Where the transaction's statements run.
    pub fn db(&self) -> Db<'_> {
        Db::Client(self.client())
    }

    /// Sends BEGIN (on the first poll); to be polled before the statements
    /// that belong to the transaction.
    pub async fn begin(&self) -> PgResult<()> {
        Ok(self.client().batch_execute("BEGIN").await?)
    }

    /// Sends COMMIT (on the first poll). The server runs it after what was
    /// sent before it. If a statement before it failed, the transaction
    /// was aborted and this COMMIT rolls it back without an error: the
    /// caller counts the transaction as committed only if every statement
    /// of it succeeded, and then calls [`PipelinedTx::ended`].
    pub async fn commit(&self) -> PgResult<()> {
        Ok(self.client().batch_execute("COMMIT").await?)
    }

    /// Records that a COMMIT returned: the transaction is over, committed
    /// or (after a failed statement) rolled back.
    pub fn ended(&self) {
        self.open.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ends the transaction with ROLLBACK, unless it ended already. If the
    /// ROLLBACK fails, the connection is closed instead.
    pub async fn rollback(&mut self) {
        if !self.open.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if self.client().batch_execute("ROLLBACK").await.is_ok() {
            self.open.store(false, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.discard();
        }
    }

    fn discard(&mut self) {
        if let Some(c) = self.slot.take() {
            drop(deadpool_postgres::Object::take(c));
        }
        self.open.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for PipelinedTx<'_> {
    fn drop(&mut self) {
        if self.open.load(std::sync::atomic::Ordering::Relaxed) {
            self.discard();
        }
    }
}
