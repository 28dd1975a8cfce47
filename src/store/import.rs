//! What moves between stores when a CA changes store (`mayfly store
//! migrate`): the facts read out of the source and handed, page by page, to
//! the target's [`super::ImportStore`]. Backend-neutral; each backend turns
//! them into its own rows.
//!
//! An import runs against an EMPTY store that it first claims
//! ([`super::ImportStore::begin_import`]: emptiness is checked and an
//! "import in progress" mark is written in one transaction), and the mark
//! is cleared only by [`super::ImportStore::finish_import`] once the copy
//! has been verified. A run that fails in between leaves the mark: the
//! next import refuses the store ([`ImportRefusal::Unfinished`]) and so
//! does a server starting on it ([`super::IssuanceCounters::start`]), so
//! half a CA is never served and two CAs' logs are never merged.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Revocation, StateVersion, StoreConfig};
use crate::config::StoreBackend;

/// How many rows of each kind a store holds: what an import requires to
/// be all zero on the target, and what it compares after the copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreCounts {
    /// Audit records.
    pub audit_records: u64,
    /// Signed audit checkpoints.
    pub checkpoints: u64,
    /// Revocations, expired ones included.
    pub revocations: u64,
    /// Disabled identities and roles.
    pub disabled: u64,
    /// Approval requests, in every state.
    pub approvals: u64,
}

impl StoreCounts {
    /// True when the store holds none of them.
    pub fn is_empty(&self) -> bool {
        *self == StoreCounts::default()
    }
}

/// `3 audit records, 1 checkpoint, ...` (the kinds that are not zero,
/// or `nothing`).
impl fmt::Display for StoreCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds = [
            (self.audit_records, "audit record"),
            (self.checkpoints, "checkpoint"),
            (self.revocations, "revocation"),
            (self.disabled, "deactivation"),
            (self.approvals, "approval request"),
        ];
        let parts: Vec<String> = kinds
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}{}", if *n == 1 { "" } else { "s" }))
            .collect();
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// A revocation as recorded: its row id (the order revocations were
/// made, which the KRL keeps) and when it was recorded (the reports count
/// revocations by time), expired ones included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevocationRow {
    /// Row id, increasing.
    pub id: i64,
    /// When it was recorded (unix ms).
    pub time_ms: u64,
    /// What was revoked.
    #[serde(flatten)]
    pub revocation: Revocation,
}

/// The state carried over besides rows, set once after the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImportedState {
    /// The source's highest serial: the target never hands out a serial
    /// at or below it, whatever its clock says.
    pub serial_floor: u64,
    /// The source's revocation state version: the KRL version served by
    /// the target continues from it (hosts refuse a KRL whose version goes
    /// back).
    pub state_version: StateVersion,
    /// Where live streaming to the audit sinks got to, so the target sends
    /// what the source had not sent yet, and nothing twice.
    pub stream_cursor: Option<u64>,
    /// Records up to this seq were written before the hash chain existed
    /// (the verifier's note about them stays true on the target).
    pub legacy_through: Option<u64>,
    /// When those records were chained (unix ms).
    pub migrated_at_ms: Option<i64>,
}

/// An import begun and not finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct UnfinishedImport {
    /// Where it came from (the source's location).
    pub from: String,
    /// When it began (unix ms).
    pub started_ms: i64,
}

/// How to empty a store that an import refuses (SQLite and PostgreSQL).
pub const RECREATE_HINT: &str = "recreate it empty (SQLite: stop everything using it and delete \
     the database file with its -wal and -shm files; PostgreSQL: DROP DATABASE and CREATE \
     DATABASE) and run the migration again";

/// Why a store does not take an import.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportRefusal {
    /// It holds data already.
    #[error("it is not empty (it holds {0}); a migration only fills an empty store and never merges two CAs' state")]
    NotEmpty(StoreCounts),
    /// Nothing is in it, but records or checkpoints were written to it and
    /// deleted: their ids are used, and copied ones would look like a log
    /// with its tail cut off.
    #[error("records were written to it and deleted (its audit seq counter is at {seq_counter}, its checkpoint counter at {checkpoint_counter}); {RECREATE_HINT}")]
    UsedBefore {
        /// Highest audit seq ever used.
        seq_counter: u64,
        /// Highest checkpoint id ever used.
        checkpoint_counter: u64,
    },
    /// An earlier import began and did not finish.
    #[error("it holds an unfinished import from {} (started at unix ms {}); {RECREATE_HINT}", .0.from, .0.started_ms)]
    Unfinished(UnfinishedImport),
}

impl UnfinishedImport {
    /// The message a server refusing to start on such a store gives.
    pub fn refusal(&self) -> String {
        format!(
            "the database holds an unfinished import from {} (`mayfly store migrate` started at \
             unix ms {} and did not finish), so it holds part of a CA at most; {RECREATE_HINT}",
            self.from, self.started_ms
        )
    }
}

/// Whether two store configs name one database (a store is never
/// imported into itself).
pub fn same_database(a: &StoreConfig, b: &StoreConfig) -> bool {
    match (a.backend, b.backend) {
        (StoreBackend::SQLite, StoreBackend::SQLite) => {
            resolved(&a.sqlite_path) == resolved(&b.sqlite_path)
        }
        // `host:port,...` and the database name, as the URL gives them.
        (StoreBackend::Postgres, StoreBackend::Postgres) => a.location() == b.location(),
        (StoreBackend::SQLite, StoreBackend::Postgres)
        | (StoreBackend::Postgres, StoreBackend::SQLite) => false,
    }
}

/// `path` with its directory resolved (symlinks, `..`) when it exists:
/// the file itself may not exist yet.
fn resolved(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
        .map(|d| d.join(name))
        .unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_name_only_what_is_there() {
        assert_eq!(StoreCounts::default().to_string(), "nothing");
        assert!(StoreCounts::default().is_empty());
        let c = StoreCounts {
            audit_records: 3,
            disabled: 1,
            ..StoreCounts::default()
        };
        assert!(!c.is_empty());
        assert_eq!(c.to_string(), "3 audit records, 1 deactivation");
    }
}
