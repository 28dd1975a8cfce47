//! SQLite backend: WAL journal, `synchronous=FULL` (a commit is on disk
//! when it returns), a unique index on serials so a reused serial can never
//! be recorded (and so never issued).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

use super::{Backend, StoreError};
use crate::audit::AuditRecord;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS audit (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms         INTEGER NOT NULL,
    event           TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    client_addr     TEXT,
    issuer          TEXT,
    subject         TEXT,
    role            TEXT,
    reason_code     TEXT,
    reason          TEXT,
    serial          INTEGER,
    key_id          TEXT,
    principals      TEXT NOT NULL DEFAULT '[]',
    valid_after     INTEGER,
    valid_before    INTEGER,
    key_fingerprint TEXT,
    token_id        TEXT,
    token_exp       INTEGER,
    policy_digest   TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS audit_serial ON audit(serial) WHERE serial IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_token ON audit(token_exp) WHERE token_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_subject ON audit(issuer, subject);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
INSERT OR IGNORE INTO meta (k, v) VALUES ('schema_version', '1');
"#;

fn err(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The SQLite store.
pub struct Sqlite {
    conn: Connection,
}

impl Sqlite {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<Sqlite, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(busy_timeout).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(Sqlite { conn })
    }
}

impl Sqlite {
    /// Number of audit records of `event` (e.g. `cert_issued`).
    pub fn count_events(&self, event: &str) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM audit WHERE event = ?1",
                [event],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(err)
    }
}

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|x| x as i64)
}

impl Backend for Sqlite {
    fn append_batch(&mut self, records: &[AuditRecord]) -> Result<(), StoreError> {
        // IMMEDIATE takes the write lock up front, so a locked database fails
        // here (after busy_timeout) rather than half-way through.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO audit (time_ms, event, request_id, client_addr, issuer, subject, role,
                        reason_code, reason, serial, key_id, principals, valid_after, valid_before,
                        key_fingerprint, token_id, token_exp, policy_digest)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
                )
                .map_err(err)?;
            for r in records {
                let principals =
                    serde_json::to_string(&r.principals).unwrap_or_else(|_| "[]".into());
                st.execute(params![
                    r.time_ms as i64,
                    r.event.as_str(),
                    r.request_id,
                    r.client_addr,
                    r.issuer,
                    r.subject,
                    r.role,
                    r.reason_code,
                    r.reason,
                    opt_i64(r.serial),
                    r.key_id,
                    principals,
                    opt_i64(r.valid_after),
                    opt_i64(r.valid_before),
                    r.key_fingerprint,
                    r.token_id,
                    opt_i64(r.token_exp),
                    r.policy_digest,
                ])
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    fn max_serial(&mut self) -> Result<u64, StoreError> {
        let v: Option<i64> = self
            .conn
            .query_row("SELECT MAX(serial) FROM audit", [], |r| r.get(0))
            .map_err(err)?;
        Ok(v.unwrap_or(0) as u64)
    }

    fn used_tokens(&mut self, now: u64) -> Result<Vec<(String, u64)>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT token_id, token_exp FROM audit
                 WHERE token_id IS NOT NULL AND event = 'cert_issued' AND token_exp > ?1",
            )
            .map_err(err)?;
        let rows = st
            .query_map([now as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::EventKind;
    use crate::store::Store;

    fn rec(serial: u64) -> AuditRecord {
        let mut r = AuditRecord::new(EventKind::CertIssued, 1, "req");
        r.serial = Some(serial);
        r.token_id = Some(format!("gh:jti:{serial}"));
        r.token_exp = Some(1000);
        r
    }

    #[test]
    fn records_survive_reopen_and_serials_are_unique() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.db");
        let mut s = Sqlite::open(&p, Duration::from_millis(100)).unwrap();
        s.append_batch(&[rec(5), rec(9)]).unwrap();
        assert!(
            s.append_batch(&[rec(9)]).is_err(),
            "duplicate serial accepted"
        );
        drop(s);
        let mut s = Sqlite::open(&p, Duration::from_millis(100)).unwrap();
        assert_eq!(s.max_serial().unwrap(), 9);
        assert_eq!(s.used_tokens(999).unwrap().len(), 2);
        assert_eq!(s.used_tokens(1000).unwrap().len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_all_commit_and_a_bad_one_fails_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.db");
        let store = Store::start(Sqlite::open(&p, Duration::from_millis(100)).unwrap()).unwrap();
        let mut tasks = Vec::new();
        for i in 1..=200u64 {
            let s = store.clone();
            // serial 7 twice: exactly one of them must fail.
            let serial = if i == 200 { 7 } else { i };
            tasks.push(tokio::spawn(async move { s.append(rec(serial)).await }));
        }
        let mut failed = 0;
        for t in tasks {
            if t.await.unwrap().is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 1);
        let mut s = Sqlite::open(&p, Duration::from_millis(100)).unwrap();
        let n: i64 = s
            .conn
            .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 199);
        assert_eq!(s.max_serial().unwrap(), 199);
    }

    #[test]
    fn locked_database_fails_instead_of_hanging() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.db");
        let mut s = Sqlite::open(&p, Duration::from_millis(50)).unwrap();
        let other = Connection::open(&p).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        assert!(s.append_batch(&[rec(1)]).is_err());
        other.execute_batch("COMMIT").unwrap();
        s.append_batch(&[rec(1)]).unwrap();
    }
}
