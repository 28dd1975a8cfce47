//! Read-only report queries over the SQLite audit log: the identity
//! inventory, the access review, compliance evidence and the gauges that
//! `/metrics` reads on every scrape.
//!
//! Nothing here changes a record. The only writes are two indexes that the
//! report queries need, created once (`CREATE INDEX IF NOT EXISTS`) by
//! [`Sqlite::ensure_report_indexes`] when the store's report connection
//! opens: building them on an existing large database holds the write lock
//! for as long as the build takes, once. The scrape-time gauges use a
//! connection of their own that never builds them
//! ([`super::sqlite_store::SqliteStore`]).

use rusqlite::params;
use serde::Serialize;

use super::sqlite::Sqlite;
use super::StoreError;

/// Indexes for the report queries. `(event, time_ms, role)` covers the
/// windowed counts per role and per day; `(issuer, subject, role, event,
/// time_ms)` covers the per-identity aggregation of the inventory.
const REPORT_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS audit_report_event ON audit(event, time_ms, role);
CREATE INDEX IF NOT EXISTS audit_report_identity ON audit(issuer, subject, role, event, time_ms);
";

fn err(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// SQLite integers are signed; negative values (never written by mayfly)
/// read as 0 rather than wrapping.
fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One identity's use of one role, over the whole audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdentityRoleUsage {
    /// Issuer name.
    pub issuer: String,
    /// Token subject.
    pub subject: String,
    /// Role requested ("" if the record had none).
    pub role: String,
    /// Certificates issued.
    pub issued: u64,
    /// Requests refused after the token was verified.
    pub denied: u64,
    /// First request (unix ms).
    pub first_ms: u64,
    /// Last request (unix ms).
    pub last_ms: u64,
    /// Last issuance (unix ms), if any.
    pub last_issued_ms: Option<u64>,
}

/// The latest refusal of one identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastDenialRow {
    /// Issuer name.
    pub issuer: String,
    /// Token subject.
    pub subject: String,
    /// When (unix ms).
    pub time_ms: u64,
    /// Stable reason code (e.g. `claim_mismatch`).
    pub reason_code: String,
    /// The role it asked for.
    pub role: String,
}

/// Issuance of one role inside a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleWindowUsage {
    /// Role.
    pub role: String,
    /// Certificates issued in the window.
    pub issued: u64,
    /// Distinct identities that got one.
    pub identities: u64,
    /// Longest lifetime granted (seconds from the request to `valid_before`).
    pub max_ttl_used: u64,
    /// Last issuance in the window (unix ms).
    pub last_ms: u64,
}

/// Issuance of one role over the whole log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleAllTime {
    /// Role.
    pub role: String,
    /// Certificates ever issued.
    pub issued: u64,
    /// First issuance (unix ms).
    pub first_ms: u64,
    /// Last issuance (unix ms).
    pub last_ms: u64,
}

/// How often a principal was granted in a role inside a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrincipalUse {
    /// Role.
    pub role: String,
    /// Principal as written in the certificate.
    pub principal: String,
    /// Certificates that carried it.
    pub count: u64,
}

/// Certificates issued for a role on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DailyIssuance {
    /// Role.
    pub role: String,
    /// Days since 1970-01-01 (UTC).
    pub day: u64,
    /// Certificates issued that day.
    pub count: u64,
}

/// Size and time span of the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct AuditSpan {
    /// Records in the log.
    pub records: u64,
    /// Highest sequence number (equals `records` while none was deleted).
    pub max_seq: u64,
    /// Oldest record (unix ms), if any.
    pub first_ms: Option<u64>,
    /// Newest record (unix ms), if any.
    pub last_ms: Option<u64>,
}

/// The store-backed numbers `/metrics` shows on every scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ScrapeGauges {
    /// Highest audit sequence number: the number of audit records, since
    /// records are never deleted.
    pub audit_records: u64,
    /// Revocations of certificates that have not expired yet (the KRL's size).
    pub live_revocations: u64,
    /// Disabled identities (in every role).
    pub disabled_identities: u64,
    /// Identities disabled for one role.
    pub disabled_identity_roles: u64,
    /// Disabled roles.
    pub disabled_roles: u64,
}

impl Sqlite {
    /// Creates the indexes the report queries need (once; a no-op after).
    pub fn ensure_report_indexes(&self) -> Result<(), StoreError> {
        self.conn.execute_batch(REPORT_INDEXES).map_err(err)
    }

    /// Per identity and role: issued and denied counts, first and last
    /// request, last issuance. Records without issuer or subject (tokens
    /// that failed verification) belong to no identity and are left out.
    pub fn identity_usage(&self) -> Result<Vec<IdentityRoleUsage>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT issuer, subject, COALESCE(role, ''),
                        SUM(event = 'cert_issued'), SUM(event = 'cert_denied'),
                        MIN(time_ms), MAX(time_ms),
                        MAX(CASE WHEN event = 'cert_issued' THEN time_ms END)
                 FROM audit
                 WHERE event IN ('cert_issued', 'cert_denied')
                   AND issuer IS NOT NULL AND subject IS NOT NULL
                 GROUP BY issuer, subject, role
                 ORDER BY issuer, subject, role",
            )
            .map_err(err)?;
        let rows = st
            .query_map([], |r| {
                Ok(IdentityRoleUsage {
                    issuer: r.get(0)?,
                    subject: r.get(1)?,
                    role: r.get(2)?,
                    issued: u(r.get(3)?),
                    denied: u(r.get(4)?),
                    first_ms: u(r.get(5)?),
                    last_ms: u(r.get(6)?),
                    last_issued_ms: r.get::<_, Option<i64>>(7)?.map(u),
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    /// The latest refusal of each identity, with its reason code.
    pub fn last_denials(&self) -> Result<Vec<LastDenialRow>, StoreError> {
        // With one MAX() aggregate, SQLite takes the bare columns from the
        // row that holds the maximum.
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT issuer, subject, MAX(time_ms), COALESCE(reason_code, ''), COALESCE(role, '')
                 FROM audit
                 WHERE event = 'cert_denied' AND issuer IS NOT NULL AND subject IS NOT NULL
                 GROUP BY issuer, subject",
            )
            .map_err(err)?;
        let rows = st
            .query_map([], |r| {
                Ok(LastDenialRow {
                    issuer: r.get(0)?,
                    subject: r.get(1)?,
                    time_ms: u(r.get(2)?),
                    reason_code: r.get(3)?,
                    role: r.get(4)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    /// Issuance per role since `since_ms`: count, distinct identities, the
    /// longest lifetime actually granted.
    pub fn role_window_usage(&self, since_ms: u64) -> Result<Vec<RoleWindowUsage>, StoreError> {
        // time_ms is taken when the request arrives and valid_before is that
        // second plus the granted TTL, so their difference is the TTL.
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(role, ''), COUNT(*),
                        COUNT(DISTINCT COALESCE(issuer, '') || char(10) || COALESCE(subject, '')),
                        MAX(COALESCE(valid_before, 0) - time_ms / 1000), MAX(time_ms)
                 FROM audit
                 WHERE event = 'cert_issued' AND time_ms >= ?1
                 GROUP BY role ORDER BY role",
            )
            .map_err(err)?;
        let rows = st
            .query_map([i(since_ms)], |r| {
                Ok(RoleWindowUsage {
                    role: r.get(0)?,
                    issued: u(r.get(1)?),
                    identities: u(r.get(2)?),
                    max_ttl_used: u(r.get(3)?),
                    last_ms: u(r.get(4)?),
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    /// Issuance per role over the whole log.
    pub fn role_all_time(&self) -> Result<Vec<RoleAllTime>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(role, ''), COUNT(*), MIN(time_ms), MAX(time_ms)
                 FROM audit WHERE event = 'cert_issued'
                 GROUP BY role ORDER BY role",
            )
            .map_err(err)?;
        let rows = st
            .query_map([], |r| {
                Ok(RoleAllTime {
                    role: r.get(0)?,
                    issued: u(r.get(1)?),
                    first_ms: u(r.get(2)?),
                    last_ms: u(r.get(3)?),
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    /// Which principals each role's certificates carried since `since_ms`.
    pub fn principals_granted(&self, since_ms: u64) -> Result<Vec<PrincipalUse>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(a.role, ''), CAST(j.value AS TEXT), COUNT(*)
                 FROM audit a, json_each(a.principals) j
                 WHERE a.event = 'cert_issued' AND a.time_ms >= ?1 AND json_valid(a.principals)
                 GROUP BY 1, 2 ORDER BY 1, 2",
            )
            .map_err(err)?;
        let rows = st
            .query_map([i(since_ms)], |r| {
                Ok(PrincipalUse {
                    role: r.get(0)?,
                    principal: r.get(1)?,
                    count: u(r.get(2)?),
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    /// Certificates issued per role and UTC day since `since_ms`.
    pub fn daily_issuance(&self, since_ms: u64) -> Result<Vec<DailyIssuance>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(role, ''), time_ms / 86400000, COUNT(*)
                 FROM audit WHERE event = 'cert_issued' AND time_ms >= ?1
                 GROUP BY 1, 2 ORDER BY 1, 2",
            )
            .map_err(err)?;
        let rows = st
            .query_map([i(since_ms)], |r| {
                Ok(DailyIssuance {
                    role: r.get(0)?,
                    day: u(r.get(1)?),
                    count: u(r.get(2)?),
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    /// Refusals by reason code since `since_ms`, most frequent first.
    pub fn denials_by_reason(&self, since_ms: u64) -> Result<Vec<(String, u64)>, StoreError> {
        self.pairs(
            "SELECT COALESCE(reason_code, ''), COUNT(*) FROM audit
             WHERE event = 'cert_denied' AND time_ms >= ?1
             GROUP BY 1 ORDER BY 2 DESC, 1",
            since_ms,
        )
    }

    /// Audit records by event since `since_ms`.
    pub fn event_counts(&self, since_ms: u64) -> Result<Vec<(String, u64)>, StoreError> {
        self.pairs(
            "SELECT event, COUNT(*) FROM audit WHERE time_ms >= ?1 GROUP BY event ORDER BY event",
            since_ms,
        )
    }

    fn pairs(&self, sql: &str, since_ms: u64) -> Result<Vec<(String, u64)>, StoreError> {
        let mut st = self.conn.prepare_cached(sql).map_err(err)?;
        let rows = st
            .query_map([i(since_ms)], |r| {
                Ok((r.get::<_, String>(0)?, u(r.get(1)?)))
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    /// Issuance records since `since_ms` that lack a field an audit record
    /// of an issuance must have (who, what, which key, which policy).
    pub fn incomplete_issuance_records(&self, since_ms: u64) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM audit
                 WHERE event = 'cert_issued' AND time_ms >= ?1
                   AND (issuer IS NULL OR subject IS NULL OR role IS NULL OR serial IS NULL
                        OR key_id IS NULL OR valid_after IS NULL OR valid_before IS NULL
                        OR key_fingerprint IS NULL OR policy_digest IS NULL OR request_id = ''
                        OR principals = '[]')",
                [i(since_ms)],
                |r| r.get::<_, i64>(0),
            )
            .map(u)
            .map_err(err)
    }

    /// Size and time span of the audit log.
    pub fn audit_span(&self) -> Result<AuditSpan, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*), COALESCE(MAX(seq), 0), MIN(time_ms), MAX(time_ms) FROM audit",
                [],
                |r| {
                    Ok(AuditSpan {
                        records: u(r.get(0)?),
                        max_seq: u(r.get(1)?),
                        first_ms: r.get::<_, Option<i64>>(2)?.map(u),
                        last_ms: r.get::<_, Option<i64>>(3)?.map(u),
                    })
                },
            )
            .map_err(err)
    }

    /// Revocations recorded since `since_ms`.
    pub fn revocations_since(&self, since_ms: u64) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM revocations WHERE time_ms >= ?1",
                [i(since_ms)],
                |r| r.get::<_, i64>(0),
            )
            .map(u)
            .map_err(err)
    }

    /// The gauges of one `/metrics` scrape; each query is an index lookup
    /// or a scan of a small table.
    pub fn scrape_gauges(&self, now: u64) -> Result<ScrapeGauges, StoreError> {
        let audit_records: i64 = self
            .conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM audit", [], |r| r.get(0))
            .map_err(err)?;
        let live: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM revocations WHERE expires_at > ?1",
                params![i(now)],
                |r| r.get(0),
            )
            .map_err(err)?;
        let (ids, id_roles, roles): (i64, i64, i64) = self
            .conn
            .query_row(
                "SELECT COALESCE(SUM(subject != '' AND role = ''), 0),
                        COALESCE(SUM(subject != '' AND role != ''), 0),
                        COALESCE(SUM(subject = '' AND role != ''), 0)
                 FROM disabled",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(err)?;
        Ok(ScrapeGauges {
            audit_records: u(audit_records),
            live_revocations: u(live),
            disabled_identities: u(ids),
            disabled_identity_roles: u(id_roles),
            disabled_roles: u(roles),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audit::{AuditRecord, EventKind};
    use crate::store::{Backend, DisableTarget, DisabledEntry};
    use std::time::Duration;

    fn issued(serial: u64, t_ms: u64, sub: &str, role: &str, ttl: u64) -> AuditRecord {
        let mut r = AuditRecord::new(EventKind::CertIssued, t_ms, "req");
        r.serial = Some(serial);
        r.issuer = Some("ci".into());
        r.subject = Some(sub.into());
        r.role = Some(role.into());
        r.principals = vec!["deploy".into()];
        r.key_id = Some(format!("k{serial}"));
        r.valid_after = Some(t_ms / 1000 - 60);
        r.valid_before = Some(t_ms / 1000 + ttl);
        r.key_fingerprint = Some("SHA256:x".into());
        r.policy_digest = Some("d".into());
        r
    }

    fn denied(t_ms: u64, sub: &str, role: &str, code: &str) -> AuditRecord {
        let mut r = AuditRecord::new(EventKind::CertDenied, t_ms, "req");
        r.issuer = Some("ci".into());
        r.subject = Some(sub.into());
        r.role = Some(role.into());
        r.reason_code = Some(code.into());
        r
    }

    #[test]
    fn usage_denials_windows_and_gauges_come_from_the_log() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Sqlite::open(&d.path().join("m.db"), Duration::from_millis(100)).unwrap();
        s.ensure_report_indexes().unwrap();
        s.ensure_report_indexes().unwrap();
        let day = 86_400_000;
        s.append_batch(&[
            issued(1, 10 * day, "a", "deploy", 300),
            issued(2, 11 * day, "a", "deploy", 600),
            denied(11 * day + 5, "a", "deploy", "ttl_exceeds_max"),
            denied(12 * day, "a", "other", "unknown_role"),
            issued(3, 12 * day + 1, "b", "deploy", 60),
            AuditRecord::new(EventKind::CertDenied, 12 * day, "anon"),
        ])
        .unwrap();
        let u = s.identity_usage().unwrap();
        assert_eq!(u.len(), 3);
        assert_eq!(
            u[0],
            IdentityRoleUsage {
                issuer: "ci".into(),
                subject: "a".into(),
                role: "deploy".into(),
                issued: 2,
                denied: 1,
                first_ms: 10 * day,
                last_ms: 11 * day + 5,
                last_issued_ms: Some(11 * day),
            }
        );
        assert_eq!(u[1].role, "other");
        assert_eq!(u[1].last_issued_ms, None);
        let ld = s.last_denials().unwrap();
        assert_eq!(ld.len(), 1);
        assert_eq!(ld[0].reason_code, "unknown_role");
        assert_eq!(ld[0].time_ms, 12 * day);

        let w = s.role_window_usage(11 * day).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(
            (w[0].issued, w[0].identities, w[0].max_ttl_used),
            (2, 2, 600)
        );
        let all = s.role_all_time().unwrap();
        assert_eq!((all[0].issued, all[0].first_ms), (3, 10 * day));
        let p = s.principals_granted(0).unwrap();
        assert_eq!(p[0].principal, "deploy");
        assert_eq!(p[0].count, 3);
        let daily = s.daily_issuance(0).unwrap();
        assert_eq!(
            daily.iter().map(|d| (d.day, d.count)).collect::<Vec<_>>(),
            vec![(10, 1), (11, 1), (12, 1)]
        );
        let reasons = s.denials_by_reason(0).unwrap();
        assert_eq!(reasons.len(), 3);
        assert_eq!(s.incomplete_issuance_records(0).unwrap(), 0);
        let span = s.audit_span().unwrap();
        assert_eq!((span.records, span.max_seq), (6, 6));

        let rec = AuditRecord::new(EventKind::Disabled, 1, "admin");
        for (sub, role) in [("a", ""), ("b", "deploy"), ("", "deploy")] {
            let issuer = if sub.is_empty() { "" } else { "ci" };
            let key = DisableTarget::from_columns(issuer.into(), sub.into(), role.into())
                .expect("a target");
            let e = DisabledEntry {
                key: key.clone(),
                time_ms: 1,
                reason: "r".into(),
                actor: "t".into(),
            };
            s.set_disabled(&key, Some(&e), &rec, 1).unwrap();
        }
        let g = s.scrape_gauges(0).unwrap();
        assert_eq!(g.audit_records, 9);
        assert_eq!(
            (
                g.disabled_identities,
                g.disabled_identity_roles,
                g.disabled_roles
            ),
            (1, 1, 1)
        );
        assert_eq!(g.live_revocations, 0);
    }

    fn has_report_index(p: &std::path::Path) -> i64 {
        let c = rusqlite::Connection::open(p).unwrap();
        c.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'audit_report_event'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn only_the_report_connection_builds_the_report_indexes() {
        use crate::store::{open, OpenMode, StoreConfig};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.db");
        drop(Sqlite::open(&p, Duration::from_millis(100)).unwrap());
        let store = open(&StoreConfig {
            backend: crate::config::StoreBackend::SQLite,
            sqlite_path: p.clone(),
            busy_timeout: Duration::from_millis(100),
            mode: OpenMode::Existing,
            postgres: None,
        })
        .unwrap();
        store.reports().scrape_gauges(0).await.unwrap();
        assert_eq!(has_report_index(&p), 0, "a scrape built an index");
        store.reports().audit_span().await.unwrap();
        assert_eq!(has_report_index(&p), 1);
    }

    #[tokio::test]
    async fn reports_do_not_create_a_missing_database() {
        use crate::store::{open, OpenMode, StoreConfig, StoreError};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("none.db");
        let cfg = StoreConfig {
            backend: crate::config::StoreBackend::SQLite,
            sqlite_path: p.clone(),
            busy_timeout: Duration::from_millis(100),
            mode: OpenMode::Existing,
            postgres: None,
        };
        assert!(matches!(open(&cfg), Err(StoreError::Missing(_))));
        assert!(!p.exists());
    }
}
