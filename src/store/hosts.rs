//! SQLite storage of host sync reports: one row per host name, replaced by
//! each newer report of that host (on the writer thread).

use rusqlite::{params, Connection, OptionalExtension};

use super::sqlite::Sqlite;
use super::StoreError;
use crate::fleet::{FleetView, HostRow, Staleness};

/// Reads the hosts' last reports and the CA's KRL version from `store`:
/// the fleet as `mayfly hosts`, `revoke --wait` and `/metrics` show it
/// (through [`Fleet`]).
async fn fleet_view(
    store: &super::Store,
    s: Staleness,
    now: u64,
    expected: &[String],
) -> Result<FleetView, StoreError> {
    let rows = store.hosts().hosts().await?;
    let ca = store.access().state_version().await?.version;
    Ok(crate::fleet::view_of(&rows, ca, s, now, expected))
}

/// The fleet of a running CA as `[hosts]` defines it: the store, when a
/// host is stale, and the expected-hosts file. One value, shared by the
/// admin API and `/metrics`, so both judge the hosts alike.
#[derive(Clone)]
pub struct Fleet {
    store: super::Store,
    staleness: Staleness,
    expected_file: Option<std::path::PathBuf>,
}

/// Why the fleet cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum FleetViewError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The `[hosts] expected_file` cannot be read.
    #[error("{0}")]
    ExpectedHosts(String),
}

impl Fleet {
    /// The fleet in `store` as `[hosts]` (`hosts`) defines it.
    pub fn new(store: super::Store, hosts: &crate::config::HostsConfig) -> Fleet {
        Fleet {
            store,
            staleness: Staleness::of(hosts),
            expected_file: hosts.expected_file.clone(),
        }
    }

    /// Calls a host stale after `n` sync intervals without a report
    /// instead of `[hosts] stale_intervals` (`mayfly hosts
    /// --stale-intervals`).
    pub fn stale_after_intervals(mut self, n: u64) -> Fleet {
        self.staleness.intervals = n;
        self
    }

    /// Reads the expected hosts from `path` instead of `[hosts]
    /// expected_file` (`mayfly hosts --expect`).
    pub fn expected_from(mut self, path: std::path::PathBuf) -> Fleet {
        self.expected_file = Some(path);
        self
    }

    /// The hosts the expected-hosts file lists (none without one), read
    /// again on each call so editing it needs no restart.
    pub fn expected(&self) -> Result<Vec<String>, FleetViewError> {
        match &self.expected_file {
            Some(p) => crate::config::read_expected_hosts(p).map_err(FleetViewError::ExpectedHosts),
            None => Ok(Vec::new()),
        }
    }

    /// The fleet as of `now` (unix seconds), against the `expected` hosts.
    pub async fn view_with(&self, now: u64, expected: &[String]) -> Result<FleetView, StoreError> {
        fleet_view(&self.store, self.staleness, now, expected).await
    }

    /// The fleet as of `now`, against the expected-hosts file.
    pub async fn view(&self, now: u64) -> Result<FleetView, FleetViewError> {
        let expected = self.expected()?;
        Ok(self.view_with(now, &expected).await?)
    }
}

/// The host reports table, added to databases of older versions when they
/// are opened for writing (a read-only open of an older one sees no hosts).
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS host_reports (
    host            TEXT PRIMARY KEY,
    reported_at     INTEGER NOT NULL,
    krl_version     INTEGER NOT NULL,
    ca_fingerprints TEXT NOT NULL,
    last_error      TEXT,
    cert_serial     INTEGER NOT NULL,
    client_addr     TEXT
);";

const COLUMNS: &str =
    "host, reported_at, krl_version, ca_fingerprints, last_error, cert_serial, client_addr";

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Creates the table if it is missing.
pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(SCHEMA).map_err(err)
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<HostRow> {
    let fps: String = r.get(3)?;
    Ok(HostRow {
        host: r.get(0)?,
        reported_at: u(r.get(1)?),
        krl_version: u(r.get(2)?),
        ca_fingerprints: serde_json::from_str(&fps).unwrap_or_default(),
        last_error: r.get(4)?,
        cert_serial: u(r.get(5)?),
        client_addr: r.get(6)?,
    })
}

impl Sqlite {
    /// Stores `row` unless the host's stored report is later; then returns
    /// that report's time.
    pub(crate) fn host_report_impl(&mut self, row: &HostRow) -> Result<Option<u64>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let last: Option<i64> = tx
            .query_row(
                "SELECT reported_at FROM host_reports WHERE host = ?1",
                [&row.host],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?;
        if let Some(last) = last.map(u).filter(|l| *l > row.reported_at) {
            return Ok(Some(last));
        }
        tx.execute(
            &format!("INSERT OR REPLACE INTO host_reports ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![
                row.host,
                i(row.reported_at),
                i(row.krl_version),
                serde_json::to_string(&row.ca_fingerprints).map_err(err)?,
                row.last_error,
                i(row.cert_serial),
                row.client_addr,
            ],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(None)
    }

    /// Every host's last report, by name.
    pub fn hosts(&self) -> Result<Vec<HostRow>, StoreError> {
        if !super::sqlite::table_exists(&self.conn, "host_reports")? {
            return Ok(Vec::new());
        }
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM host_reports ORDER BY host"))
            .map_err(err)?;
        let rows = st
            .query_map([], read_row)
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        Ok(rows)
    }
}
