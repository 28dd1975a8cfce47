//! Console sessions in SQLite: one row per logged-in person, keyed by the
//! SHA-256 of the session cookie's value (the value itself is never
//! stored), with the session's end. Written on the writer thread; expired
//! rows go with the next login.

use rusqlite::{params, Connection, OptionalExtension};

use super::sqlite::Sqlite;
use super::StoreError;

/// One console session as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Who is logged in: the console's own JSON of the verified ID token's
    /// issuer name and claims (no token).
    pub person: String,
    /// Unix seconds after which the session is gone.
    pub expires_at: u64,
}

impl std::fmt::Debug for SessionRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRow")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The key of a session: SHA-256 of its cookie value.
pub type SessionKey = [u8; 32];

/// The sessions table, added to databases of older versions when they are
/// opened for writing.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS console_sessions (
    key        BLOB PRIMARY KEY,
    person     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);";

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Creates the table if it is missing.
pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(SCHEMA).map_err(err)
}

impl Sqlite {
    /// Stores a session, dropping the sessions expired at `now` in the
    /// same transaction.
    pub(crate) fn session_put_impl(
        &mut self,
        key: &SessionKey,
        row: &SessionRow,
        now: u64,
    ) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        tx.execute(
            "DELETE FROM console_sessions WHERE expires_at <= ?1",
            [i(now)],
        )
        .map_err(err)?;
        tx.execute(
            "INSERT OR REPLACE INTO console_sessions (key, person, expires_at) VALUES (?1, ?2, ?3)",
            params![key.as_slice(), row.person, i(row.expires_at)],
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Ends the session of `key`.
    pub(crate) fn session_delete_impl(&mut self, key: &SessionKey) -> Result<(), StoreError> {
        self.conn
            .execute(
                "DELETE FROM console_sessions WHERE key = ?1",
                [key.as_slice()],
            )
            .map(|_| ())
            .map_err(err)
    }

    /// The session of `key` if it is live at `now`.
    pub fn session(&self, key: &SessionKey, now: u64) -> Result<Option<SessionRow>, StoreError> {
        self.conn
            .query_row(
                "SELECT person, expires_at FROM console_sessions WHERE key = ?1 AND expires_at > ?2",
                params![key.as_slice(), i(now)],
                |r| {
                    Ok(SessionRow {
                        person: r.get(0)?,
                        expires_at: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                    })
                },
            )
            .optional()
            .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(person: &str, expires_at: u64) -> SessionRow {
        SessionRow {
            person: person.into(),
            expires_at,
        }
    }

    #[test]
    fn a_session_lives_until_it_expires_or_is_deleted() {
        let d = tempfile::tempdir().unwrap();
        let mut db =
            Sqlite::open(&d.path().join("s.db"), std::time::Duration::from_secs(1)).unwrap();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        db.session_put_impl(&a, &row("alice", 200), 100).unwrap();
        db.session_put_impl(&b, &row("bob", 300), 100).unwrap();
        assert_eq!(db.session(&a, 199).unwrap(), Some(row("alice", 200)));
        assert_eq!(db.session(&a, 200).unwrap(), None, "expired");
        assert_eq!(db.session(&[3u8; 32], 100).unwrap(), None, "unknown key");
        db.session_delete_impl(&b).unwrap();
        assert_eq!(db.session(&b, 100).unwrap(), None, "deleted");
        // The next login drops expired rows.
        db.session_put_impl(&b, &row("bob", 900), 250).unwrap();
        let n: i64 = db
            .conn
            .query_row("SELECT COUNT(*) FROM console_sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }
}
