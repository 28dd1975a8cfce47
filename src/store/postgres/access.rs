//! Revocations, deactivations and the state version in PostgreSQL.
//!
//! Each change is one transaction that first takes the chain lock (it
//! appends audit records), so it serialises with every issuance commit of
//! every replica: a revocation sweep sees every certificate committed
//! before it, and an issuance that commits after a deactivation sees the
//! flag. The state version is bumped in the same transaction, which also
//! sends `NOTIFY mayfly_state` (delivered at COMMIT) so other replicas
//! refresh at once ([`super::listen`]).

use super::chain;
use super::db::{i, u, Db, PgResult};
use super::issuance::{live_certs, target_of};
use crate::audit::AuditRecord;
use crate::store::{
    CertFilter, DisableTarget, DisabledEntry, IssuedCert, Revocation, StateVersion,
};

/// The channel every state bump notifies.
pub const CHANNEL: &str = "mayfly_state";

/// Bumps the state version (inside the change's transaction) and notifies
/// the other replicas; `changed_at` never goes backwards.
pub async fn bump_version(tx: Db<'_>, now: u64) -> PgResult<StateVersion> {
    let row = tx
        .one(
            "WITH s AS (UPDATE state SET version = version + 1,
                            changed_at = GREATEST(changed_at, $1)
                        RETURNING version, changed_at)
             SELECT version, changed_at, pg_notify('mayfly_state', version::text)::text FROM s",
            &[&i(now)],
        )
        .await?;
    Ok(StateVersion {
        version: u(row.try_get(0)?),
        changed_at: u(row.try_get(1)?),
    })
}

/// [`bump_version`] for a change of the CA keys: also records the new
/// version as the keys' last change (`state.keys_changed`), which the
/// group commit compares with the version each issuance acted on.
pub async fn bump_keys_version(tx: Db<'_>, now: u64) -> PgResult<StateVersion> {
    let v = bump_version(tx, now).await?;
    tx.execute("UPDATE state SET keys_changed = version", &[])
        .await?;
    Ok(v)
}

/// The current state version.
pub async fn state_version(db: Db<'_>) -> PgResult<StateVersion> {
    let row = db.one("SELECT version, changed_at FROM state", &[]).await?;
    Ok(StateVersion {
        version: u(row.try_get(0)?),
        changed_at: u(row.try_get(1)?),
    })
}

/// Inserts revocations; an already revoked serial or key id is kept once.
pub async fn insert_revocations(tx: Db<'_>, revocations: &[Revocation], now: u64) -> PgResult<()> {
    for r in revocations {
        tx.execute(
            "INSERT INTO revocations (time_ms, ca_key, serial, key_id, expires_at, reason, actor)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[
                &i(now).saturating_mul(1000),
                &r.ca_key,
                &r.serial.map(|s| s as i64),
                &r.key_id,
                &i(r.expires_at),
                &r.reason,
                &r.actor,
            ],
        )
        .await?;
    }
    Ok(())
}

/// Records revocations and their audit records, bumping the version.
pub async fn revoke(
    tx: Db<'_>,
    revocations: &[Revocation],
    audit: &[AuditRecord],
    now: u64,
) -> PgResult<StateVersion> {
    chain::append(tx, audit).await?;
    insert_revocations(tx, revocations, now).await?;
    bump_version(tx, now).await
}

/// Revokes every live certificate matching `filter`. `None` for the
/// version means nothing was written (the caller reads the version).
pub async fn revoke_matching(
    tx: Db<'_>,
    filter: &CertFilter,
    now: u64,
    revoke: &crate::store::Revoker,
) -> PgResult<(Vec<IssuedCert>, Option<StateVersion>)> {
    let mut head = chain::lock_head(tx).await?;
    let certs = live_certs(tx, filter, now).await?;
    if certs.is_empty() {
        return Ok((certs, None));
    }
    let (revocations, audit): (Vec<_>, Vec<_>) = certs.iter().map(revoke).unzip();
    insert_revocations(tx, &revocations, now).await?;
    let rows = chain::chain_records(&mut head, &audit);
    chain::insert_rows(tx, &rows).await?;
    chain::save_head(tx, &head).await?;
    let v = bump_version(tx, now).await?;
    Ok((certs, Some(v)))
}

/// Disables `key` and revokes the live certificates matching `filter`.
pub async fn disable_and_revoke(
    tx: Db<'_>,
    entry: &DisabledEntry,
    audit: &AuditRecord,
    filter: &CertFilter,
    now: u64,
    revoke: &crate::store::Revoker,
) -> PgResult<(bool, Vec<IssuedCert>)> {
    let mut head = chain::lock_head(tx).await?;
    let changed = insert_disabled(tx, &entry.key, entry).await?;
    let certs = live_certs(tx, filter, now).await?;
    let (revocations, records): (Vec<_>, Vec<_>) = certs.iter().map(revoke).unzip();
    insert_revocations(tx, &revocations, now).await?;
    let mut all = Vec::with_capacity(records.len() + 1);
    all.push(audit.clone());
    all.extend(records);
    let rows = chain::chain_records(&mut head, &all);
    chain::insert_rows(tx, &rows).await?;
    chain::save_head(tx, &head).await?;
    bump_version(tx, now).await?;
    Ok((changed, certs))
}

async fn insert_disabled(tx: Db<'_>, key: &DisableTarget, e: &DisabledEntry) -> PgResult<bool> {
    let (issuer, subject, role) = key.columns();
    let n = tx
        .execute(
            "INSERT INTO disabled (issuer, subject, role, time_ms, reason, actor)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            &[&issuer, &subject, &role, &i(e.time_ms), &e.reason, &e.actor],
        )
        .await?;
    Ok(n > 0)
}

/// Disables (`Some`) or re-enables (`None`) `key`, with its audit record.
pub async fn set_disabled(
    tx: Db<'_>,
    key: &DisableTarget,
    entry: Option<&DisabledEntry>,
    audit: &AuditRecord,
    now: u64,
) -> PgResult<bool> {
    chain::append(tx, std::slice::from_ref(audit)).await?;
    let changed = match entry {
        Some(e) => insert_disabled(tx, key, e).await?,
        None => {
            let (issuer, subject, role) = key.columns();
            tx.execute(
                "DELETE FROM disabled WHERE issuer = $1 AND subject = $2 AND role = $3",
                &[&issuer, &subject, &role],
            )
            .await?
                > 0
        }
    };
    bump_version(tx, now).await?;
    Ok(changed)
}

/// Revocations whose certificates are still valid at `now`.
pub async fn live_revocations(db: Db<'_>, now: u64) -> PgResult<Vec<Revocation>> {
    let rows = db
        .query(
            "SELECT ca_key, serial, key_id, expires_at, reason, actor FROM revocations
             WHERE expires_at > $1 ORDER BY id",
            &[&i(now)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Revocation {
                ca_key: r.try_get(0)?,
                serial: r.try_get::<_, Option<i64>>(1)?.map(|s| s as u64),
                key_id: r.try_get(2)?,
                expires_at: u(r.try_get(3)?),
                reason: r.try_get(4)?,
                actor: r.try_get(5)?,
            })
        })
        .collect()
}

/// Every disabled entry.
pub async fn disabled(db: Db<'_>) -> PgResult<Vec<DisabledEntry>> {
    let rows = db
        .query(
            "SELECT issuer, subject, role, time_ms, reason, actor FROM disabled
             ORDER BY issuer, subject, role",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(DisabledEntry {
                key: target_of(r)?,
                time_ms: u(r.try_get(3)?),
                reason: r.try_get(4)?,
                actor: r.try_get(5)?,
            })
        })
        .collect()
}
