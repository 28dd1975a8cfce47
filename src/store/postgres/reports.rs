//! The report queries of [`crate::store::ReportStore`] over PostgreSQL:
//! the SQLite ones ([`crate::store::reports`]) translated. Text ordering is
//! bytewise (`COLLATE "C"`), as SQLite's, so both backends list rows in the
//! same order whatever the database's locale.

use super::db::{i, u, Db, PgResult};
use crate::store::reports::{
    AuditSpan, DailyIssuance, IdentityRoleUsage, LastDenialRow, PrincipalUse, RoleAllTime,
    RoleWindowUsage, ScrapeGauges,
};

/// Per identity and role: issued and denied counts, first and last use.
pub async fn identity_usage(db: Db<'_>) -> PgResult<Vec<IdentityRoleUsage>> {
    let rows = db
        .query(
            "SELECT issuer, subject, COALESCE(role, ''),
                    SUM(CASE WHEN event = 'cert_issued' THEN 1 ELSE 0 END),
                    SUM(CASE WHEN event = 'cert_denied' THEN 1 ELSE 0 END),
                    MIN(time_ms), MAX(time_ms),
                    MAX(CASE WHEN event = 'cert_issued' THEN time_ms END)
             FROM audit
             WHERE event IN ('cert_issued', 'cert_denied')
               AND issuer IS NOT NULL AND subject IS NOT NULL
             GROUP BY issuer, subject, role
             ORDER BY issuer COLLATE \"C\", subject COLLATE \"C\", role COLLATE \"C\"",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(IdentityRoleUsage {
                issuer: r.try_get(0)?,
                subject: r.try_get(1)?,
                role: r.try_get(2)?,
                issued: u(r.try_get(3)?),
                denied: u(r.try_get(4)?),
                first_ms: u(r.try_get(5)?),
                last_ms: u(r.try_get(6)?),
                last_issued_ms: r.try_get::<_, Option<i64>>(7)?.map(u),
            })
        })
        .collect()
}

/// The latest refusal of each identity.
pub async fn last_denials(db: Db<'_>) -> PgResult<Vec<LastDenialRow>> {
    let rows = db
        .query(
            "SELECT DISTINCT ON (issuer COLLATE \"C\", subject COLLATE \"C\")
                    issuer, subject, time_ms, COALESCE(reason_code, ''), COALESCE(role, '')
             FROM audit
             WHERE event = 'cert_denied' AND issuer IS NOT NULL AND subject IS NOT NULL
             ORDER BY issuer COLLATE \"C\", subject COLLATE \"C\", time_ms DESC, seq DESC",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(LastDenialRow {
                issuer: r.try_get(0)?,
                subject: r.try_get(1)?,
                time_ms: u(r.try_get(2)?),
                reason_code: r.try_get(3)?,
                role: r.try_get(4)?,
            })
        })
        .collect()
}

/// Issuance per role since `since_ms`.
pub async fn role_window_usage(db: Db<'_>, since_ms: u64) -> PgResult<Vec<RoleWindowUsage>> {
    let rows = db
        .query(
            "SELECT COALESCE(role, ''), COUNT(*),
                    COUNT(DISTINCT COALESCE(issuer, '') || chr(10) || COALESCE(subject, '')),
                    MAX(COALESCE(valid_before, 0) - time_ms / 1000), MAX(time_ms)
             FROM audit
             WHERE event = 'cert_issued' AND time_ms >= $1
             GROUP BY role ORDER BY role COLLATE \"C\"",
            &[&i(since_ms)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(RoleWindowUsage {
                role: r.try_get(0)?,
                issued: u(r.try_get(1)?),
                identities: u(r.try_get(2)?),
                max_ttl_used: u(r.try_get::<_, Option<i64>>(3)?.unwrap_or(0)),
                last_ms: u(r.try_get(4)?),
            })
        })
        .collect()
}

/// Issuance per role over the whole log.
pub async fn role_all_time(db: Db<'_>) -> PgResult<Vec<RoleAllTime>> {
    let rows = db
        .query(
            "SELECT COALESCE(role, ''), COUNT(*), MIN(time_ms), MAX(time_ms)
             FROM audit WHERE event = 'cert_issued'
             GROUP BY role ORDER BY role COLLATE \"C\"",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(RoleAllTime {
                role: r.try_get(0)?,
                issued: u(r.try_get(1)?),
                first_ms: u(r.try_get(2)?),
                last_ms: u(r.try_get(3)?),
            })
        })
        .collect()
}

/// Which principals each role's certificates carried since `since_ms`.
pub async fn principals_granted(db: Db<'_>, since_ms: u64) -> PgResult<Vec<PrincipalUse>> {
    // A damaged principals column (which `audit verify` reports) counts
    // as no principals here, as SQLite's json_valid() check does.
    let rows = db
        .query(
            "SELECT COALESCE(a.role, ''), j.value, COUNT(*)
             FROM audit a
             CROSS JOIN LATERAL json_array_elements_text(mayfly_principals(a.principals)) AS j(value)
             WHERE a.event = 'cert_issued' AND a.time_ms >= $1
             GROUP BY 1, 2 ORDER BY 1 COLLATE \"C\", 2 COLLATE \"C\"",
            &[&i(since_ms)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(PrincipalUse {
                role: r.try_get(0)?,
                principal: r.try_get(1)?,
                count: u(r.try_get(2)?),
            })
        })
        .collect()
}

/// Certificates issued per role and UTC day since `since_ms`.
pub async fn daily_issuance(db: Db<'_>, since_ms: u64) -> PgResult<Vec<DailyIssuance>> {
    let rows = db
        .query(
            "SELECT COALESCE(role, ''), time_ms / 86400000, COUNT(*)
             FROM audit WHERE event = 'cert_issued' AND time_ms >= $1
             GROUP BY 1, 2 ORDER BY 1 COLLATE \"C\", 2",
            &[&i(since_ms)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(DailyIssuance {
                role: r.try_get(0)?,
                day: u(r.try_get(1)?),
                count: u(r.try_get(2)?),
            })
        })
        .collect()
}

async fn pairs(db: Db<'_>, sql: &str, since_ms: u64) -> PgResult<Vec<(String, u64)>> {
    let rows = db.query(sql, &[&i(since_ms)]).await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, u(r.try_get(1)?))))
        .collect()
}

/// Refusals by reason code since `since_ms`, most frequent first.
pub async fn denials_by_reason(db: Db<'_>, since_ms: u64) -> PgResult<Vec<(String, u64)>> {
    pairs(
        db,
        "SELECT COALESCE(reason_code, ''), COUNT(*) FROM audit
         WHERE event = 'cert_denied' AND time_ms >= $1
         GROUP BY 1 ORDER BY 2 DESC, 1 COLLATE \"C\"",
        since_ms,
    )
    .await
}

/// Audit records by event since `since_ms`.
pub async fn event_counts(db: Db<'_>, since_ms: u64) -> PgResult<Vec<(String, u64)>> {
    pairs(
        db,
        "SELECT event, COUNT(*) FROM audit WHERE time_ms >= $1
         GROUP BY event ORDER BY event COLLATE \"C\"",
        since_ms,
    )
    .await
}

/// Issuance records since `since_ms` that lack a required field.
pub async fn incomplete_issuance_records(db: Db<'_>, since_ms: u64) -> PgResult<u64> {
    let n: i64 = db
        .one(
            "SELECT COUNT(*) FROM audit
             WHERE event = 'cert_issued' AND time_ms >= $1
               AND (issuer IS NULL OR subject IS NULL OR role IS NULL OR serial IS NULL
                    OR key_id IS NULL OR valid_after IS NULL OR valid_before IS NULL
                    OR key_fingerprint IS NULL OR policy_digest IS NULL OR request_id = ''
                    OR principals = '[]')",
            &[&i(since_ms)],
        )
        .await?
        .try_get(0)?;
    Ok(u(n))
}

/// Size and time span of the audit log.
pub async fn audit_span(db: Db<'_>) -> PgResult<AuditSpan> {
    let r = db
        .one(
            "SELECT COUNT(*), COALESCE(MAX(seq), 0), MIN(time_ms), MAX(time_ms) FROM audit",
            &[],
        )
        .await?;
    Ok(AuditSpan {
        records: u(r.try_get(0)?),
        max_seq: u(r.try_get(1)?),
        first_ms: r.try_get::<_, Option<i64>>(2)?.map(u),
        last_ms: r.try_get::<_, Option<i64>>(3)?.map(u),
    })
}

/// Revocations recorded since `since_ms`.
pub async fn revocations_since(db: Db<'_>, since_ms: u64) -> PgResult<u64> {
    let n: i64 = db
        .one(
            "SELECT COUNT(*) FROM revocations WHERE time_ms >= $1",
            &[&i(since_ms)],
        )
        .await?
        .try_get(0)?;
    Ok(u(n))
}

/// The gauges of one `/metrics` scrape (index lookups and small tables).
pub async fn scrape_gauges(db: Db<'_>, now: u64) -> PgResult<ScrapeGauges> {
    let r = db
        .one(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM audit),
                    (SELECT COUNT(*) FROM revocations WHERE expires_at > $1),
                    COALESCE(SUM(CASE WHEN subject <> '' AND role = '' THEN 1 ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN subject <> '' AND role <> '' THEN 1 ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN subject = '' AND role <> '' THEN 1 ELSE 0 END), 0)
             FROM disabled",
            &[&i(now)],
        )
        .await?;
    Ok(ScrapeGauges {
        audit_records: u(r.try_get(0)?),
        live_revocations: u(r.try_get(1)?),
        disabled_identities: u(r.try_get(2)?),
        disabled_identity_roles: u(r.try_get(3)?),
        disabled_roles: u(r.try_get(4)?),
    })
}

/// Number of audit records of `event`.
pub async fn count_events(db: Db<'_>, event: &str) -> PgResult<u64> {
    let n: i64 = db
        .one("SELECT COUNT(*) FROM audit WHERE event = $1", &[&event])
        .await?
        .try_get(0)?;
    Ok(u(n))
}
