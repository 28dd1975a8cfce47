//! SQLite storage of replica heartbeats: one row per replica id, replaced
//! by each heartbeat of that replica (on the writer thread). With SQLite
//! one server owns the database, so there is normally one live row; rows
//! of earlier ids (a data directory that was replaced) stay until they are
//! [`crate::replica::RETENTION_SECS`] old.

use rusqlite::{params, Connection, OptionalExtension};

use super::sqlite::Sqlite;
use super::StoreError;
use crate::replica::{Heartbeat, ReplicaId, RETENTION_SECS};
use crate::time::UnixSecs;

/// The replicas table, added by this version to databases of older ones
/// when they are opened for writing (a read-only open of an older database
/// sees no replicas).
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS replicas (
    id             TEXT PRIMARY KEY,
    version        TEXT NOT NULL,
    policy_digest  TEXT NOT NULL,
    git_commit     TEXT,
    listen         TEXT NOT NULL,
    started_at     INTEGER NOT NULL,
    last_seen      INTEGER NOT NULL,
    interval_secs  INTEGER NOT NULL
);";

const COLUMNS: &str =
    "id, version, policy_digest, git_commit, listen, started_at, last_seen, interval_secs";

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Creates the replicas table if it is missing (run when a database is
/// opened for writing, with the other migrations).
pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(SCHEMA).map_err(err)
}

/// Seconds as SQLite's signed integer (saturating: no instant is that late).
fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Heartbeat, StoreError>> {
    let id: String = r.get(0)?;
    let replica = match ReplicaId::parse(&id) {
        Ok(id) => id,
        Err(e) => return Ok(Err(err(format!("replicas table: {e}")))),
    };
    Ok(Ok(Heartbeat {
        replica,
        version: r.get(1)?,
        policy_digest: r.get(2)?,
        git_commit: r.get(3)?,
        listen: r.get(4)?,
        started_at: UnixSecs(u(r.get(5)?)),
        last_seen: UnixSecs(u(r.get(6)?)),
        interval_secs: u(r.get(7)?),
    }))
}

impl Sqlite {
    /// Replaces the row of `beat.replica`, drops rows older than the
    /// retention, and returns the replaced row: one transaction.
    pub(crate) fn replica_heartbeat_impl(
        &mut self,
        beat: &Heartbeat,
    ) -> Result<Option<Heartbeat>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let previous = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM replicas WHERE id = ?1"),
                [beat.replica.as_str()],
                read_row,
            )
            .optional()
            .map_err(err)?
            .transpose()?;
        tx.execute(
            &format!(
                "INSERT OR REPLACE INTO replicas ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                beat.replica.as_str(),
                beat.version,
                beat.policy_digest,
                beat.git_commit,
                beat.listen,
                i(beat.started_at.get()),
                i(beat.last_seen.get()),
                i(beat.interval_secs),
            ],
        )
        .map_err(err)?;
        tx.execute(
            "DELETE FROM replicas WHERE last_seen < ?1",
            [i(beat.last_seen.get().saturating_sub(RETENTION_SECS))],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(previous)
    }

    /// Every replica row. A database no server of this version has written
    /// (opened read-only) has no table yet, hence no replicas.
    pub fn replicas(&self) -> Result<Vec<Heartbeat>, StoreError> {
        if !super::sqlite::table_exists(&self.conn, "replicas")? {
            return Ok(Vec::new());
        }
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM replicas ORDER BY id"))
            .map_err(err)?;
        let rows = st
            .query_map([], read_row)
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        rows.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn beat(id: &str, digest: &str, last_seen: u64) -> Heartbeat {
        Heartbeat {
            replica: ReplicaId::parse(id).unwrap(),
            version: "0.1.0".into(),
            policy_digest: digest.into(),
            git_commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            listen: "127.0.0.1:8400".into(),
            started_at: UnixSecs(1_000),
            last_seen: UnixSecs(last_seen),
            interval_secs: 10,
        }
    }

    #[test]
    fn a_heartbeat_replaces_its_own_row_and_returns_the_old_one() {
        let d = tempfile::tempdir().unwrap();
        let mut db = Sqlite::open(&d.path().join("m.db"), Duration::from_secs(1)).unwrap();
        assert_eq!(db.replicas().unwrap(), []);
        assert_eq!(
            db.replica_heartbeat_impl(&beat("b", "d1", 1_010)).unwrap(),
            None
        );
        assert_eq!(
            db.replica_heartbeat_impl(&beat("a", "d1", 1_010)).unwrap(),
            None
        );
        let mut next = beat("b", "d2", 1_020);
        next.git_commit = None;
        assert_eq!(
            db.replica_heartbeat_impl(&next).unwrap(),
            Some(beat("b", "d1", 1_010))
        );
        assert_eq!(db.replicas().unwrap(), [beat("a", "d1", 1_010), next]);
    }

    #[test]
    fn rows_past_the_retention_are_dropped_by_the_next_heartbeat() {
        let d = tempfile::tempdir().unwrap();
        let mut db = Sqlite::open(&d.path().join("m.db"), Duration::from_secs(1)).unwrap();
        db.replica_heartbeat_impl(&beat("old", "d", 1_000)).unwrap();
        db.replica_heartbeat_impl(&beat("recent", "d", 2_000))
            .unwrap();
        let now = 1_000 + RETENTION_SECS + 1;
        db.replica_heartbeat_impl(&beat("me", "d", now)).unwrap();
        let ids: Vec<String> = db
            .replicas()
            .unwrap()
            .into_iter()
            .map(|b| b.replica.to_string())
            .collect();
        assert_eq!(ids, ["me", "recent"]);
    }

    #[test]
    fn a_database_from_before_replicas_reads_as_none_and_gets_the_table_on_open() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("m.db");
        drop(Sqlite::open(&path, Duration::from_secs(1)).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("DROP TABLE replicas").unwrap();
        drop(conn);
        let ro = Sqlite::open_read_only(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(ro.replicas().unwrap(), []);
        drop(ro);
        let mut db = Sqlite::open(&path, Duration::from_secs(1)).unwrap();
        db.replica_heartbeat_impl(&beat("a", "d", 5)).unwrap();
        assert_eq!(db.replicas().unwrap().len(), 1);
    }

    #[test]
    fn a_row_with_an_id_that_is_not_one_is_an_error_not_a_label() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("m.db");
        let db = Sqlite::open(&path, Duration::from_secs(1)).unwrap();
        db.conn
            .execute(
                &format!("INSERT INTO replicas ({COLUMNS}) VALUES ('a\"b', 'v', 'd', NULL, 'l', 1, 2, 10)"),
                [],
            )
            .unwrap();
        let e = db.replicas().unwrap_err().to_string();
        assert!(
            e.contains("replicas table") && e.contains("not a replica id"),
            "{e}"
        );
    }
}
