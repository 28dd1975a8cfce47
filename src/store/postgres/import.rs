//! `mayfly store migrate` into PostgreSQL ([`crate::store::ImportStore`]),
//! and the reads that give this store's whole state when it is a source.
//!
//! Every write step is one transaction that takes the chain lock first, so
//! it is ordered with anything a replica does (a replica started on the
//! database too early is refused its certificates by the import mark, see
//! [`unfinished`], but its appends would still serialise). The import mark
//! is a `meta` row, as in SQLite. What PostgreSQL keeps besides the rows
//! is kept in step with them:
//!
//! * `chain_head` moves to the last imported record and checkpoint, so the
//!   next append continues the imported chain and the next checkpoint id
//!   follows the imported ones;
//! * the `revocations` id sequence is moved past the imported ids;
//! * `used_tokens` gets the unexpired replay ids of imported issuance
//!   records (SQLite rebuilds that set from the log at start; replicas
//!   only read the table), so a token that minted a certificate on the old
//!   CA cannot mint another on the new one;
//! * the serial floor raises `serial_counter`, which every replica
//!   reserves its serials from, and the state version notifies the
//!   replicas like any change.

use super::chain::{self, Head};
use super::db::{i, u, Db, PgError, PgResult};
use super::issuance::approval_write;
use crate::approval::ApprovalRequest;
use crate::audit::chain::{record_hash_with, StoredRecord};
use crate::audit::checkpoint::Checkpoint;
use crate::store::import::{
    ImportRefusal, ImportedState, RevocationRow, StoreCounts, UnfinishedImport,
};
use crate::store::{DisabledEntry, Revocation};

/// `meta` key of the import mark.
const META_IMPORT: &str = "import_in_progress";

async fn set_meta(tx: Db<'_>, k: &str, v: &str) -> PgResult<()> {
    tx.execute(
        "INSERT INTO meta (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
        &[&k, &v],
    )
    .await?;
    Ok(())
}

/// The import begun and not finished, if any.
pub async fn unfinished(db: Db<'_>) -> PgResult<Option<UnfinishedImport>> {
    let row = db
        .opt("SELECT v FROM meta WHERE k = $1", &[&META_IMPORT])
        .await?;
    Ok(row
        .map(|r| r.try_get::<_, String>(0))
        .transpose()?
        .map(|v| {
            // A mark that cannot be read still marks the import unfinished.
            serde_json::from_str(&v).unwrap_or(UnfinishedImport {
                from: format!("an unreadable mark ({v:?})"),
                started_ms: 0,
            })
        }))
}

/// How many rows of each kind the database holds.
pub async fn counts(db: Db<'_>) -> PgResult<StoreCounts> {
    let row = db
        .one(
            "SELECT (SELECT COUNT(*) FROM audit), (SELECT COUNT(*) FROM audit_checkpoints),
                    (SELECT COUNT(*) FROM revocations), (SELECT COUNT(*) FROM disabled),
                    (SELECT COUNT(*) FROM approvals)",
            &[],
        )
        .await?;
    let n = |k: usize| -> PgResult<u64> { Ok(u(row.try_get(k)?)) };
    Ok(StoreCounts {
        audit_records: n(0)?,
        checkpoints: n(1)?,
        revocations: n(2)?,
        disabled: n(3)?,
        approvals: n(4)?,
    })
}

/// Revocations with an id above `after_id`, by id, at most `limit`.
pub async fn revocation_history(
    db: Db<'_>,
    after_id: i64,
    limit: usize,
) -> PgResult<Vec<RevocationRow>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = db
        .query(
            "SELECT id, time_ms, ca_key, serial, key_id, expires_at, reason, actor
             FROM revocations WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after_id, &limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(RevocationRow {
                id: r.try_get(0)?,
                time_ms: u(r.try_get(1)?),
                revocation: Revocation {
                    ca_key: r.try_get(2)?,
                    serial: r.try_get::<_, Option<i64>>(3)?.map(|s| s as u64),
                    key_id: r.try_get(4)?,
                    expires_at: u(r.try_get(5)?),
                    reason: r.try_get(6)?,
                    actor: r.try_get(7)?,
                },
            })
        })
        .collect()
}

/// Approval requests with an id above `after_id`, by id, at most `limit`.
pub async fn approvals_after(
    db: Db<'_>,
    after_id: &str,
    limit: usize,
) -> PgResult<Vec<ApprovalRequest>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = db
        .query(
            "SELECT id, body FROM approvals WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after_id, &limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get(0)?;
            let body: String = r.try_get(1)?;
            serde_json::from_str(&body)
                .map_err(|e| PgError::msg(format!("postgres: approval {id} is damaged: {e}")))
        })
        .collect()
}

/// Takes the chain lock and fails unless an import was begun.
async fn claimed(tx: Db<'_>) -> PgResult<Head> {
    let head = chain::lock_head(tx).await?;
    if unfinished(tx).await?.is_none() {
        return Err(PgError::msg(
            "import: no import was begun on this database (begin_import claims an empty one)",
        ));
    }
    Ok(head)
}

/// Claims the empty database for an import.
pub async fn begin(tx: Db<'_>, from: &str, now_ms: i64) -> PgResult<Result<(), ImportRefusal>> {
    chain::lock_head(tx).await?;
    if let Some(u) = unfinished(tx).await? {
        return Ok(Err(ImportRefusal::Unfinished(u)));
    }
    let counts = counts(tx).await?;
    if !counts.is_empty() {
        return Ok(Err(ImportRefusal::NotEmpty(counts)));
    }
    let meta = chain::chain_meta(tx).await?;
    if meta.seq_counter > 0 || meta.checkpoint_counter > 0 {
        return Ok(Err(ImportRefusal::UsedBefore {
            seq_counter: meta.seq_counter,
            checkpoint_counter: meta.checkpoint_counter,
        }));
    }
    let mark = serde_json::to_string(&UnfinishedImport {
        from: from.to_string(),
        started_ms: now_ms,
    })
    .map_err(|e| PgError::msg(format!("encoding the import mark: {e}")))?;
    set_meta(tx, META_IMPORT, &mark).await?;
    Ok(Ok(()))
}

/// Appends audit rows verbatim after the stored head, moves the head, and
/// records the unexpired replay ids of imported issuances.
pub async fn audit(tx: Db<'_>, rows: &[StoredRecord]) -> PgResult<()> {
    let mut head = claimed(tx).await?;
    let mut scratch = Vec::with_capacity(1024);
    for row in rows {
        let refuse = |what: &str| {
            PgError::msg(format!(
                "import: audit record {} does not continue the chain: {what}",
                row.seq
            ))
        };
        if row.seq != head.seq.saturating_add(1) {
            return Err(refuse(&format!("the stored log ends at seq {}", head.seq)));
        }
        if row.prev_hash != Some(head.hash) {
            return Err(refuse("its prev_hash is not the stored head's hash"));
        }
        let hash = record_hash_with(row, &head.hash, &mut scratch);
        if row.hash != Some(hash) {
            return Err(refuse("its hash is not the chain hash of its columns"));
        }
        head = Head { seq: row.seq, hash };
    }
    chain::insert_rows(tx, rows).await?;
    chain::save_head(tx, &head).await?;
    let (ids, exps): (Vec<&[u8]>, Vec<i64>) = rows
        .iter()
        .filter(|r| r.event == "cert_issued")
        .filter_map(|r| Some((r.token_id.as_deref()?.as_bytes(), r.token_exp?)))
        .unzip();
    if !ids.is_empty() {
        tx.execute(
            "INSERT INTO used_tokens (id, expires_at)
             SELECT id, exp FROM unnest($1::bytea[], $2::bigint[]) AS t(id, exp)
             WHERE exp > extract(epoch FROM now())
             ON CONFLICT (id) DO UPDATE SET expires_at = GREATEST(used_tokens.expires_at,
                EXCLUDED.expires_at)",
            &[&ids, &exps],
        )
        .await?;
    }
    Ok(())
}

/// Stores checkpoints with their ids and moves the checkpoint counter.
pub async fn checkpoints(tx: Db<'_>, checkpoints: &[Checkpoint]) -> PgResult<()> {
    let head = claimed(tx).await?;
    let mut last = u(tx
        .one("SELECT checkpoints FROM chain_head", &[])
        .await?
        .try_get(0)?);
    for cp in checkpoints {
        let id = u64::try_from(cp.id).unwrap_or(0);
        if id <= last {
            return Err(PgError::msg(format!(
                "import: checkpoint #{} does not come after the stored #{last}",
                cp.id
            )));
        }
        if cp.seq > head.seq {
            return Err(PgError::msg(format!(
                "import: checkpoint #{} covers seq {}, beyond the imported log (seq {})",
                cp.id, cp.seq, head.seq
            )));
        }
        tx.execute(
            "INSERT INTO audit_checkpoints (id, seq, hash, time_ms, key_fingerprint, signature)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &cp.id,
                &i(cp.seq),
                &&cp.hash[..],
                &cp.time_ms,
                &cp.key_fingerprint,
                &cp.signature,
            ],
        )
        .await?;
        last = id;
    }
    tx.execute("UPDATE chain_head SET checkpoints = $1", &[&i(last)])
        .await?;
    Ok(())
}

/// Stores revocations with their ids and times.
pub async fn revocations(tx: Db<'_>, rows: &[RevocationRow]) -> PgResult<()> {
    claimed(tx).await?;
    for r in rows {
        let v = &r.revocation;
        tx.execute(
            "INSERT INTO revocations (id, time_ms, ca_key, serial, key_id, expires_at, reason, actor)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &r.id,
                &i(r.time_ms),
                &v.ca_key,
                &v.serial.map(|s| s as i64),
                &v.key_id,
                &i(v.expires_at),
                &v.reason,
                &v.actor,
            ],
        )
        .await?;
    }
    // The next revocation recorded here gets an id after the imported ones.
    tx.execute(
        "SELECT setval(pg_get_serial_sequence('revocations', 'id'),
            GREATEST((SELECT MAX(id) FROM revocations), 1))",
        &[],
    )
    .await?;
    Ok(())
}

/// Stores disabled entries.
pub async fn disabled(tx: Db<'_>, entries: &[DisabledEntry]) -> PgResult<()> {
    claimed(tx).await?;
    for e in entries {
        let (issuer, subject, role) = e.key.columns();
        tx.execute(
            "INSERT INTO disabled (issuer, subject, role, time_ms, reason, actor)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&issuer, &subject, &role, &i(e.time_ms), &e.reason, &e.actor],
        )
        .await?;
    }
    Ok(())
}

/// Stores approval requests as they are.
pub async fn approvals(tx: Db<'_>, requests: &[ApprovalRequest]) -> PgResult<()> {
    claimed(tx).await?;
    for r in requests {
        approval_write(tx, r).await?;
    }
    Ok(())
}

/// Sets the serial floor, state version, stream cursor and chain facts.
pub async fn state(tx: Db<'_>, s: &ImportedState) -> PgResult<()> {
    claimed(tx).await?;
    tx.execute(
        "UPDATE serial_counter SET next = GREATEST(next, $1::bigint + 1)",
        &[&i(s.serial_floor)],
    )
    .await?;
    tx.execute(
        "WITH s AS (UPDATE state SET version = GREATEST(version, $1),
                        changed_at = GREATEST(changed_at, $2)
                    RETURNING version)
         SELECT pg_notify('mayfly_state', version::text)::text FROM s",
        &[&i(s.state_version.version), &i(s.state_version.changed_at)],
    )
    .await?;
    if let Some(c) = s.stream_cursor {
        chain::set_stream_cursor(tx, c).await?;
    }
    if let Some(t) = s.legacy_through {
        set_meta(tx, "audit_chain_legacy_through", &t.to_string()).await?;
    }
    if let Some(t) = s.migrated_at_ms {
        set_meta(tx, "audit_chain_migrated_at_ms", &t.to_string()).await?;
    }
    Ok(())
}

/// Clears the import mark.
pub async fn finish(tx: Db<'_>) -> PgResult<()> {
    claimed(tx).await?;
    tx.execute("DELETE FROM meta WHERE k = $1", &[&META_IMPORT])
        .await?;
    Ok(())
}
