//! The state version of a SQLite store, read on the request path without
//! a trip to a reader thread.
//!
//! The KRL, the CA key endpoints and `/healthz` ask for the state version
//! on every call, so that a revocation, deactivation or key rotation
//! committed by anyone (this server's admin API, or `mayfly revoke`/
//! `identity`/`ca rotate` in another process) shows at once. (Certificate
//! requests no longer ask: their commit reads the deactivations and checks
//! that the CA keys did not change after the version they acted on, see
//! [`super::IssueGuard::acted_on`].) Asking a reader thread for it
//! cost two thread wake-ups and two queries per call.
//!
//! The probe holds its own connection and asks it SQLite's
//! `PRAGMA data_version`, which changes exactly when another connection
//! (the writer thread's included, in this process or another) has
//! committed since this connection last looked. While it is unchanged,
//! nothing was committed, so the version read last is still the current
//! one; when it moved, the version is read again on the same connection.
//! The version is read after the `data_version` it is filed under, so a
//! commit between the two only makes the next call read it once more.
//!
//! The connection answers in a few microseconds from the WAL index in
//! shared memory; it has no busy timeout, so it never sleeps on a lock
//! on the async worker that calls it. If it cannot answer at once (busy,
//! or any error), the caller asks a reader thread as before.

use std::sync::Mutex;

use super::sqlite::{Backend, Sqlite};
use super::StateVersion;

/// A connection kept for reading the state version, with what it last saw.
pub(crate) struct VersionProbe {
    inner: Mutex<Probe>,
}

struct Probe {
    db: Option<Sqlite>,
    /// `data_version` and the state version read after it.
    seen: Option<(i64, StateVersion)>,
}

impl VersionProbe {
    /// A probe over `db` (`None`: every call answers `None`).
    pub(crate) fn new(db: Option<Sqlite>) -> VersionProbe {
        VersionProbe {
            inner: Mutex::new(Probe { db, seen: None }),
        }
    }

    /// The current state version, or `None` when the probe cannot tell
    /// without waiting (ask a reader thread then).
    pub(crate) fn state_version(&self) -> Option<StateVersion> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Probe { db, seen } = &mut *g;
        let db = db.as_mut()?;
        let answer = (|| {
            let dv = db.data_version()?;
            if let Some((d, v)) = *seen {
                if d == dv {
                    return Ok(v);
                }
            }
            let v = db.state_version()?;
            *seen = Some((dv, v));
            Ok::<_, super::StoreError>(v)
        })();
        match answer {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!(error = %e, "state version probe could not answer; asking a reader");
                *seen = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;
    use crate::audit::{AuditRecord, EventKind};

    /// A database with the schema, and a probe on its own connection.
    fn setup(dir: &std::path::Path) -> (Sqlite, VersionProbe) {
        let path = dir.join("m.db");
        let writer = Sqlite::open(&path, Duration::from_secs(1)).unwrap();
        let probe = VersionProbe::new(Some(Sqlite::open_read_only(&path, Duration::ZERO).unwrap()));
        (writer, probe)
    }

    #[test]
    fn a_change_committed_on_another_connection_is_seen_by_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let (mut other, probe) = setup(dir.path());
        let v0 = probe.state_version().expect("the probe answers");
        assert_eq!(probe.state_version(), Some(v0), "nothing changed");
        for _ in 0..3 {
            let before = probe.state_version().unwrap();
            // As `mayfly ca rotate` or `identity enable` in another process.
            let v = other
                .record_change(&AuditRecord::new(EventKind::Disabled, 1, "cli"), 7)
                .unwrap();
            assert!(v.version > before.version);
            assert_eq!(probe.state_version(), Some(v), "the very next call");
        }
    }

    #[test]
    fn commits_that_leave_the_version_alone_keep_answering_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut other, probe) = setup(dir.path());
        let v0 = probe.state_version().unwrap();
        // A group commit of audit records moves data_version, not the state.
        other
            .append_batch(&[AuditRecord::new(EventKind::CertDenied, 1, "r")])
            .unwrap();
        assert_eq!(probe.state_version(), Some(v0));
        let v1 = other
            .record_change(&AuditRecord::new(EventKind::Disabled, 2, "cli"), 8)
            .unwrap();
        other
            .append_batch(&[AuditRecord::new(EventKind::CertDenied, 3, "r")])
            .unwrap();
        assert_eq!(probe.state_version(), Some(v1));
    }

    #[test]
    fn without_a_connection_the_probe_defers_to_the_readers() {
        assert_eq!(VersionProbe::new(None).state_version(), None);
    }
}
