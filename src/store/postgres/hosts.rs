//! Host sync reports in PostgreSQL (migration 4): one row per host name,
//! replaced by each newer report of that host. Not audit records, so they
//! never take the chain lock.

use super::db::{Db, PgResult};
use crate::fleet::HostRow;

const COLUMNS: &str =
    "host, reported_at, krl_version, ca_fingerprints, last_error, cert_serial, client_addr";

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn read_row(r: &tokio_postgres::Row) -> PgResult<HostRow> {
    let fps: String = r.try_get(3)?;
    Ok(HostRow {
        host: r.try_get(0)?,
        reported_at: u(r.try_get(1)?),
        krl_version: u(r.try_get(2)?),
        ca_fingerprints: serde_json::from_str(&fps).unwrap_or_default(),
        last_error: r.try_get(4)?,
        cert_serial: u(r.try_get(5)?),
        client_addr: r.try_get(6)?,
    })
}

/// Stores `row` unless the host's stored report is later; then returns
/// that report's time (run in one transaction).
pub async fn put(tx: Db<'_>, row: &HostRow) -> PgResult<Option<u64>> {
    let last = tx
        .opt(
            "SELECT reported_at FROM host_reports WHERE host = $1 FOR UPDATE",
            &[&row.host],
        )
        .await?
        .map(|r| r.try_get::<_, i64>(0))
        .transpose()?
        .map(u);
    if let Some(last) = last.filter(|l| *l > row.reported_at) {
        return Ok(Some(last));
    }
    let fps = serde_json::to_string(&row.ca_fingerprints).unwrap_or_else(|_| "[]".into());
    tx.execute(
        &format!(
            "INSERT INTO host_reports ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (host) DO UPDATE SET reported_at = EXCLUDED.reported_at,
                 krl_version = EXCLUDED.krl_version, ca_fingerprints = EXCLUDED.ca_fingerprints,
                 last_error = EXCLUDED.last_error, cert_serial = EXCLUDED.cert_serial,
                 client_addr = EXCLUDED.client_addr"
        ),
        &[
            &row.host,
            &i(row.reported_at),
            &i(row.krl_version),
            &fps,
            &row.last_error,
            &i(row.cert_serial),
            &row.client_addr,
        ],
    )
    .await?;
    Ok(None)
}

/// Every host's last report, by name.
pub async fn list(db: Db<'_>) -> PgResult<Vec<HostRow>> {
    db.query(
        &format!("SELECT {COLUMNS} FROM host_reports ORDER BY host"),
        &[],
    )
    .await?
    .iter()
    .map(read_row)
    .collect()
}
