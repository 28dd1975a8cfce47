//! Console sessions in PostgreSQL (migration 5): one row per logged-in
//! person, keyed by the SHA-256 of the session cookie's value, shared by
//! every replica, so a person logged in through one replica is logged in
//! on all and a logout on any ends it everywhere. Not audit records: no
//! chain lock.

use super::db::{Db, PgResult};
use crate::store::{SessionKey, SessionRow};

/// The table (migration 5).
pub const SCHEMA: &str = r#"
CREATE TABLE console_sessions (
    key        BYTEA PRIMARY KEY,
    person     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
"#;

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Stores a session, dropping the sessions expired at `now` (one
/// transaction).
pub async fn put(tx: Db<'_>, key: &SessionKey, row: &SessionRow, now: u64) -> PgResult<()> {
    tx.execute(
        "DELETE FROM console_sessions WHERE expires_at <= $1",
        &[&i(now)],
    )
    .await?;
    tx.execute(
        "INSERT INTO console_sessions (key, person, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT (key) DO UPDATE SET person = EXCLUDED.person, expires_at = EXCLUDED.expires_at",
        &[&key.as_slice(), &row.person, &i(row.expires_at)],
    )
    .await?;
    Ok(())
}

/// The session of `key` if it is live at `now`.
pub async fn get(db: Db<'_>, key: &SessionKey, now: u64) -> PgResult<Option<SessionRow>> {
    let row = db
        .opt(
            "SELECT person, expires_at FROM console_sessions WHERE key = $1 AND expires_at > $2",
            &[&key.as_slice(), &i(now)],
        )
        .await?;
    row.map(|r| {
        Ok(SessionRow {
            person: r.try_get(0)?,
            expires_at: u64::try_from(r.try_get::<_, i64>(1)?).unwrap_or(0),
        })
    })
    .transpose()
}

/// Ends the session of `key`.
pub async fn delete(tx: Db<'_>, key: &SessionKey) -> PgResult<()> {
    tx.execute(
        "DELETE FROM console_sessions WHERE key = $1",
        &[&key.as_slice()],
    )
    .await?;
    Ok(())
}
