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
        Ok(match self {
            Db::Client(c) => c.query_one(&st, params).await,
            Db::Tx(t) => t.query_one(&st, params).await,
        }?)
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
        Ok(match self {
            Db::Client(c) => c.execute(&st, params).await,
            Db::Tx(t) => t.execute(&st, params).await,
        }?)
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
