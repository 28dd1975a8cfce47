//! SQLite backend: WAL journal, `synchronous=FULL` (a commit is on disk
//! when it returns), a unique index on serials so a reused serial can never
//! be recorded (and so never issued).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

use super::{
    Backend, CertFilter, DisabledEntry, DisabledKey, IssuedCert, Revocation, StateVersion,
    StoreError,
};
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
INSERT OR IGNORE INTO meta (k, v) VALUES ('schema_version', '2');
INSERT OR IGNORE INTO meta (k, v) VALUES ('state_version', '0');
INSERT OR IGNORE INTO meta (k, v) VALUES ('state_changed_at', '0');
CREATE TABLE IF NOT EXISTS revocations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms     INTEGER NOT NULL,
    ca_key      TEXT NOT NULL,
    serial      INTEGER,
    key_id      TEXT,
    expires_at  INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    actor       TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS revocations_serial ON revocations(ca_key, serial) WHERE serial IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS revocations_key_id ON revocations(ca_key, key_id) WHERE key_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS revocations_expiry ON revocations(expires_at);
CREATE TABLE IF NOT EXISTS disabled (
    issuer   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    role     TEXT NOT NULL,
    time_ms  INTEGER NOT NULL,
    reason   TEXT NOT NULL,
    actor    TEXT NOT NULL,
    PRIMARY KEY (issuer, subject, role)
);
"#;

/// Columns added after schema version 1, added to older databases on open.
const ADDED_AUDIT_COLUMNS: [(&str, &str); 3] =
    [("cert_type", "TEXT"), ("ca_key", "TEXT"), ("actor", "TEXT")];

fn err(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The SQLite store.
pub struct Sqlite {
    /// The connection; report queries in sibling modules use it read-only.
    pub(crate) conn: Connection,
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
        migrate(&conn)?;
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

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let mut st = conn
        .prepare("SELECT name FROM pragma_table_info('audit')")
        .map_err(err)?;
    let have: Vec<String> = st
        .query_map([], |r| r.get(0))
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)?;
    for (col, ty) in ADDED_AUDIT_COLUMNS {
        if !have.iter().any(|h| h == col) {
            conn.execute_batch(&format!("ALTER TABLE audit ADD COLUMN {col} {ty}"))
                .map_err(err)?;
        }
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS audit_live ON audit(valid_before) WHERE event = 'cert_issued';
         UPDATE meta SET v = '2' WHERE k = 'schema_version';",
    )
    .map_err(err)
}

fn insert_audit(tx: &rusqlite::Transaction<'_>, records: &[AuditRecord]) -> Result<(), StoreError> {
    let mut st = tx
        .prepare_cached(
            "INSERT INTO audit (time_ms, event, request_id, client_addr, issuer, subject, role,
                reason_code, reason, serial, key_id, principals, valid_after, valid_before,
                key_fingerprint, token_id, token_exp, policy_digest, cert_type, ca_key, actor)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
        )
        .map_err(err)?;
    for r in records {
        let principals = serde_json::to_string(&r.principals).unwrap_or_else(|_| "[]".into());
        // Only issuance records claim the serial: a revocation record
        // mentions the serial it revoked, which the unique index must allow.
        let serial = match r.event {
            crate::audit::EventKind::CertIssued => opt_i64(r.serial),
            _ => None,
        };
        let reason = match (r.event, r.serial) {
            (crate::audit::EventKind::CertRevoked, Some(s)) => Some(format!(
                "serial {s}: {}",
                r.reason.as_deref().unwrap_or_default()
            )),
            _ => r.reason.clone(),
        };
        st.execute(params![
            r.time_ms as i64,
            r.event.as_str(),
            r.request_id,
            r.client_addr,
            r.issuer,
            r.subject,
            r.role,
            r.reason_code,
            reason,
            serial,
            r.key_id,
            principals,
            opt_i64(r.valid_after),
            opt_i64(r.valid_before),
            r.key_fingerprint,
            r.token_id,
            opt_i64(r.token_exp),
            r.policy_digest,
            r.cert_type,
            r.ca_key,
            r.actor,
        ])
        .map_err(err)?;
    }
    Ok(())
}

fn bump_version(tx: &rusqlite::Transaction<'_>, now: u64) -> Result<StateVersion, StoreError> {
    tx.execute(
        "UPDATE meta SET v = CAST(CAST(v AS INTEGER) + 1 AS TEXT) WHERE k = 'state_version'",
        [],
    )
    .map_err(err)?;
    // changed_at never goes backwards, even if the clock does.
    tx.execute(
        "UPDATE meta SET v = CAST(MAX(CAST(v AS INTEGER), ?1) AS TEXT) WHERE k = 'state_changed_at'",
        [now as i64],
    )
    .map_err(err)?;
    read_version(tx)
}

fn read_version(conn: &Connection) -> Result<StateVersion, StoreError> {
    let get = |k: &str| -> Result<u64, StoreError> {
        conn.query_row(
            "SELECT CAST(v AS INTEGER) FROM meta WHERE k = ?1",
            [k],
            |r| r.get::<_, i64>(0),
        )
        .map(|v| v as u64)
        .map_err(err)
    };
    Ok(StateVersion {
        version: get("state_version")?,
        changed_at: get("state_changed_at")?,
    })
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
        insert_audit(&tx, records)?;
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

    fn live_certs(&mut self, filter: &CertFilter, now: u64) -> Result<Vec<IssuedCert>, StoreError> {
        let base = "SELECT serial, COALESCE(key_id, ''), COALESCE(cert_type, 'user'), COALESCE(role, ''),
                    COALESCE(issuer, ''), COALESCE(subject, ''), valid_before, COALESCE(ca_key, '')
                    FROM audit a WHERE event = 'cert_issued' AND valid_before > ?1 AND serial IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM revocations r
                        WHERE r.ca_key = a.ca_key AND (r.serial = a.serial OR r.key_id = a.key_id))";
        let now = now as i64;
        let (sql, args): (String, Vec<rusqlite::types::Value>) = match filter {
            CertFilter::Serial(n) => (
                format!("{base} AND serial = ?2"),
                vec![now.into(), (*n as i64).into()],
            ),
            CertFilter::KeyId(k) => (
                format!("{base} AND key_id = ?2"),
                vec![now.into(), k.clone().into()],
            ),
            CertFilter::Role(r) => (
                format!("{base} AND role = ?2"),
                vec![now.into(), r.clone().into()],
            ),
            CertFilter::Identity {
                issuer,
                subject,
                role: None,
            } => (
                format!("{base} AND issuer = ?2 AND subject = ?3"),
                vec![now.into(), issuer.clone().into(), subject.clone().into()],
            ),
            CertFilter::Identity {
                issuer,
                subject,
                role: Some(role),
            } => (
                format!("{base} AND issuer = ?2 AND subject = ?3 AND role = ?4"),
                vec![
                    now.into(),
                    issuer.clone().into(),
                    subject.clone().into(),
                    role.clone().into(),
                ],
            ),
        };
        let mut st = self.conn.prepare_cached(&sql).map_err(err)?;
        let rows = st
            .query_map(rusqlite::params_from_iter(args), |r| {
                Ok(IssuedCert {
                    serial: r.get::<_, i64>(0)? as u64,
                    key_id: r.get(1)?,
                    cert_type: r.get(2)?,
                    role: r.get(3)?,
                    issuer: r.get(4)?,
                    subject: r.get(5)?,
                    valid_before: r.get::<_, i64>(6)? as u64,
                    ca_key: r.get(7)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    fn revoke(
        &mut self,
        revocations: &[Revocation],
        audit: &[AuditRecord],
        now: u64,
    ) -> Result<StateVersion, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO revocations (time_ms, ca_key, serial, key_id, expires_at, reason, actor)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(err)?;
            for r in revocations {
                st.execute(params![
                    (now as i64) * 1000,
                    r.ca_key,
                    opt_i64(r.serial),
                    r.key_id,
                    r.expires_at as i64,
                    r.reason,
                    r.actor
                ])
                .map_err(err)?;
            }
        }
        insert_audit(&tx, audit)?;
        let v = bump_version(&tx, now)?;
        tx.commit().map_err(err)?;
        Ok(v)
    }

    fn live_revocations(&mut self, now: u64) -> Result<Vec<Revocation>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT ca_key, serial, key_id, expires_at, reason, actor FROM revocations
                 WHERE expires_at > ?1 ORDER BY id",
            )
            .map_err(err)?;
        let rows = st
            .query_map([now as i64], |r| {
                Ok(Revocation {
                    ca_key: r.get(0)?,
                    serial: r.get::<_, Option<i64>>(1)?.map(|s| s as u64),
                    key_id: r.get(2)?,
                    expires_at: r.get::<_, i64>(3)? as u64,
                    reason: r.get(4)?,
                    actor: r.get(5)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    fn set_disabled(
        &mut self,
        key: &DisabledKey,
        entry: Option<&DisabledEntry>,
        audit: &AuditRecord,
        now: u64,
    ) -> Result<bool, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let changed = match entry {
            Some(e) => tx
                .execute(
                    "INSERT OR IGNORE INTO disabled (issuer, subject, role, time_ms, reason, actor)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        key.issuer,
                        key.subject,
                        key.role,
                        e.time_ms as i64,
                        e.reason,
                        e.actor
                    ],
                )
                .map_err(err)?,
            None => tx
                .execute(
                    "DELETE FROM disabled WHERE issuer = ?1 AND subject = ?2 AND role = ?3",
                    params![key.issuer, key.subject, key.role],
                )
                .map_err(err)?,
        };
        insert_audit(&tx, std::slice::from_ref(audit))?;
        bump_version(&tx, now)?;
        tx.commit().map_err(err)?;
        Ok(changed > 0)
    }

    fn disabled(&mut self) -> Result<Vec<DisabledEntry>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT issuer, subject, role, time_ms, reason, actor FROM disabled ORDER BY issuer, subject, role",
            )
            .map_err(err)?;
        let rows = st
            .query_map([], |r| {
                Ok(DisabledEntry {
                    key: DisabledKey {
                        issuer: r.get(0)?,
                        subject: r.get(1)?,
                        role: r.get(2)?,
                    },
                    time_ms: r.get::<_, i64>(3)? as u64,
                    reason: r.get(4)?,
                    actor: r.get(5)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    fn state_version(&mut self) -> Result<StateVersion, StoreError> {
        read_version(&self.conn)
    }

    fn last_expiry_by_ca(&mut self, ca_key: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = self
            .conn
            .query_row(
                "SELECT MAX(valid_before) FROM audit WHERE event = 'cert_issued' AND ca_key = ?1",
                [ca_key],
                |r| r.get(0),
            )
            .map_err(err)?;
        Ok(v.unwrap_or(0) as u64)
    }

    fn record_change(&mut self, audit: &AuditRecord, now: u64) -> Result<StateVersion, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        insert_audit(&tx, std::slice::from_ref(audit))?;
        let v = bump_version(&tx, now)?;
        tx.commit().map_err(err)?;
        Ok(v)
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
        let store = Store::start(
            Sqlite::open(&p, Duration::from_millis(100)).unwrap(),
            Sqlite::open(&p, Duration::from_millis(100)).unwrap(),
        )
        .unwrap();
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
