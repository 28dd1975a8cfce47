//! Replica heartbeats in PostgreSQL: one row per replica id, replaced by
//! each heartbeat of that replica. With many replicas on one database the
//! rows are the fleet (`mayfly status`, `/metrics`, the admin endpoint).
//! Heartbeats are not audit records, so they never take the chain lock.

use super::db::{Db, PgError, PgResult};
use crate::replica::{Heartbeat, ReplicaId, RETENTION_SECS};
use crate::time::UnixSecs;

/// The replicas table (migration 2).
pub const SCHEMA: &str = r#"
CREATE TABLE replicas (
    id             TEXT PRIMARY KEY,
    version        TEXT NOT NULL,
    policy_digest  TEXT NOT NULL,
    git_commit     TEXT,
    listen         TEXT NOT NULL,
    started_at     BIGINT NOT NULL,
    last_seen      BIGINT NOT NULL,
    interval_secs  BIGINT NOT NULL
);
"#;

const COLUMNS: &str =
    "id, version, policy_digest, git_commit, listen, started_at, last_seen, interval_secs";

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn read_row(r: &tokio_postgres::Row) -> PgResult<Heartbeat> {
    let id: String = r.try_get(0)?;
    let replica = ReplicaId::parse(&id)
        .map_err(|e| PgError::msg(format!("postgres: replicas table: {e}")))?;
    Ok(Heartbeat {
        replica,
        version: r.try_get(1)?,
        policy_digest: r.try_get(2)?,
        git_commit: r.try_get(3)?,
        listen: r.try_get(4)?,
        started_at: UnixSecs(u(r.try_get(5)?)),
        last_seen: UnixSecs(u(r.try_get(6)?)),
        interval_secs: u(r.try_get(7)?),
    })
}

/// Replaces the row of `beat.replica`, drops rows older than the
/// retention, and returns the replaced row (run in one transaction).
pub async fn heartbeat(tx: Db<'_>, beat: &Heartbeat) -> PgResult<Option<Heartbeat>> {
    let id = beat.replica.as_str().to_string();
    let previous = tx
        .opt(
            &format!("SELECT {COLUMNS} FROM replicas WHERE id = $1 FOR UPDATE"),
            &[&id],
        )
        .await?
        .map(|r| read_row(&r))
        .transpose()?;
    tx.execute(
        "INSERT INTO replicas (id, version, policy_digest, git_commit, listen, started_at,
             last_seen, interval_secs)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version,
             policy_digest = EXCLUDED.policy_digest, git_commit = EXCLUDED.git_commit,
             listen = EXCLUDED.listen, started_at = EXCLUDED.started_at,
             last_seen = EXCLUDED.last_seen, interval_secs = EXCLUDED.interval_secs",
        &[
            &id,
            &beat.version,
            &beat.policy_digest,
            &beat.git_commit,
            &beat.listen,
            &i(beat.started_at.0),
            &i(beat.last_seen.0),
            &i(beat.interval_secs),
        ],
    )
    .await?;
    let horizon = i(beat.last_seen.0.saturating_sub(RETENTION_SECS));
    tx.execute("DELETE FROM replicas WHERE last_seen < $1", &[&horizon])
        .await?;
    Ok(previous)
}

/// Every replica row.
pub async fn list(db: Db<'_>) -> PgResult<Vec<Heartbeat>> {
    let rows = db
        .query(&format!("SELECT {COLUMNS} FROM replicas"), &[])
        .await?;
    rows.iter().map(read_row).collect()
}
