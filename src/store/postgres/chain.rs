//! The audit chain in PostgreSQL: one chain for every replica.
//!
//! A transaction that appends records first locks the `chain_head` row
//! ([`lock_head`]); the lock is held until COMMIT, so appends from all
//! replicas are serialised and each continues from the head the previous
//! one committed. Records are stored exactly as
//! [`crate::audit::chain::stored_form`] defines and hashed with
//! [`crate::audit::chain::record_hash_with`], so a record has the same hash
//! here as in SQLite, and `mayfly audit verify` reads both the same way.
//! A batch is inserted with one statement (`unnest` over column arrays).

use super::db::{i, u, Db, PgError, PgResult};
use crate::audit::chain::{self, BadRow, ChainMeta, Hash, StoredRecord};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::search::AuditQuery;
use crate::audit::AuditRecord;
use crate::store::traits::CheckpointPage;

/// Columns read for a record, in [`read_record`] order.
const AUDIT_COLUMNS: &str = "seq, time_ms, event, request_id, client_addr, issuer, \
    subject, role, reason_code, reason, serial, key_id, principals, valid_after, valid_before, \
    key_fingerprint, token_id, token_exp, policy_digest, cert_type, ca_key, actor, claims, \
    prev_hash, hash";

/// The statement of [`insert_rows`].
pub const INSERT: &str =
    "INSERT INTO audit (seq, time_ms, event, request_id, client_addr, issuer, \
    subject, role, reason_code, reason, serial, key_id, principals, valid_after, valid_before, \
    key_fingerprint, token_id, token_exp, policy_digest, cert_type, ca_key, actor, claims, \
    prev_hash, hash) \
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
    $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::text[], \
    $13::text[], $14::bigint[], $15::bigint[], $16::text[], $17::text[], $18::bigint[], \
    $19::text[], $20::text[], $21::text[], $22::text[], $23::text[], $24::bytea[], $25::bytea[])";

/// The chain head: the last seq used and the hash the next record links to.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    /// Last seq used (rows deleted from the end still count).
    pub seq: u64,
    /// Hash of the last record.
    pub hash: Hash,
}

fn as_hash(v: &[u8]) -> Option<Hash> {
    <[u8; 32]>::try_from(v).ok()
}

/// The statement of [`lock_head`].
pub const LOCK_HEAD: &str = "SELECT seq, hash FROM chain_head FOR UPDATE";

/// Locks the chain head row until the transaction ends and reads it. Every
/// writer that appends records, and every guarded read-then-write, calls
/// this first.
pub async fn lock_head(tx: Db<'_>) -> PgResult<Head> {
    let st = tx.statement(LOCK_HEAD).await?;
    lock_head_prepared(tx, &st).await
}

/// [`lock_head`] with its statement prepared already: the lock request is
/// sent on the first poll, so statements polled after it in the same
/// pipeline run after the lock is held (the server runs one connection's
/// statements in the order they arrive, each on a snapshot taken when it
/// starts).
pub async fn lock_head_prepared(tx: Db<'_>, lock: &tokio_postgres::Statement) -> PgResult<Head> {
    let row = tx.one_prepared(lock, &[]).await?;
    let seq: i64 = row.try_get(0)?;
    let hash: Vec<u8> = row.try_get(1)?;
    let Some(hash) = as_hash(&hash) else {
        return Err(PgError::msg(
            "postgres: chain_head.hash is not a 32-byte hash (changed outside mayfly?); run \
             `mayfly audit verify`",
        ));
    };
    Ok(Head { seq: u(seq), hash })
}

/// Chains `records` after `head` (pure): assigns seqs, fills in the
/// hashes, and advances `head`.
pub fn chain_records(head: &mut Head, records: &[AuditRecord]) -> Vec<StoredRecord> {
    let mut scratch = Vec::with_capacity(1024);
    records
        .iter()
        .map(|r| {
            head.seq += 1;
            let mut row = chain::stored_form(r, head.seq);
            let hash = chain::record_hash_with(&row, &head.hash, &mut scratch);
            row.prev_hash = Some(head.hash);
            row.hash = Some(hash);
            head.hash = hash;
            row
        })
        .collect()
}

/// Inserts chained rows with one statement.
pub async fn insert_rows(tx: Db<'_>, rows: &[StoredRecord]) -> PgResult<()> {
    let st = tx.statement(INSERT).await?;
    insert_rows_prepared(tx, &st, rows).await
}

/// [`insert_rows`] with its statement ([`INSERT`]) prepared: the
/// insert is sent on the first poll, so that a statement polled after it
/// in a pipeline (the COMMIT) runs after it.
pub async fn insert_rows_prepared(
    tx: Db<'_>,
    st: &tokio_postgres::Statement,
    rows: &[StoredRecord],
) -> PgResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let seq: Vec<i64> = rows.iter().map(|r| i(r.seq)).collect();
    let time_ms: Vec<i64> = rows.iter().map(|r| r.time_ms).collect();
    let event: Vec<&str> = rows.iter().map(|r| r.event.as_str()).collect();
    let request_id: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    let text = |f: fn(&StoredRecord) -> &Option<String>| -> Vec<Option<&str>> {
        rows.iter().map(|r| f(r).as_deref()).collect()
    };
    let int =
        |f: fn(&StoredRecord) -> Option<i64>| -> Vec<Option<i64>> { rows.iter().map(f).collect() };
    let client_addr = text(|r| &r.client_addr);
    let issuer = text(|r| &r.issuer);
    let subject = text(|r| &r.subject);
    let role = text(|r| &r.role);
    let reason_code = text(|r| &r.reason_code);
    let reason = text(|r| &r.reason);
    let serial = int(|r| r.serial);
    let key_id = text(|r| &r.key_id);
    let principals: Vec<String> = rows
        .iter()
        .map(|r| chain::principals_json(&r.principals))
        .collect();
    let valid_after = int(|r| r.valid_after);
    let valid_before = int(|r| r.valid_before);
    let key_fingerprint = text(|r| &r.key_fingerprint);
    let token_id = text(|r| &r.token_id);
    let token_exp = int(|r| r.token_exp);
    let policy_digest = text(|r| &r.policy_digest);
    let cert_type = text(|r| &r.cert_type);
    let ca_key = text(|r| &r.ca_key);
    let actor = text(|r| &r.actor);
    let claims = text(|r| &r.claims);
    let prev_hash: Vec<Option<&[u8]>> = rows
        .iter()
        .map(|r| r.prev_hash.as_ref().map(|h| &h[..]))
        .collect();
    let hash: Vec<Option<&[u8]>> = rows
        .iter()
        .map(|r| r.hash.as_ref().map(|h| &h[..]))
        .collect();
    tx.execute_prepared(
        st,
        &[
            &seq,
            &time_ms,
            &event,
            &request_id,
            &client_addr,
            &issuer,
            &subject,
            &role,
            &reason_code,
            &reason,
            &serial,
            &key_id,
            &principals,
            &valid_after,
            &valid_before,
            &key_fingerprint,
            &token_id,
            &token_exp,
            &policy_digest,
            &cert_type,
            &ca_key,
            &actor,
            &claims,
            &prev_hash,
            &hash,
        ],
    )
    .await?;
    Ok(())
}

/// The statement of [`save_head`].
pub const SAVE_HEAD: &str = "UPDATE chain_head SET seq = $1, hash = $2";

/// Saves the advanced head (same transaction as the rows).
pub async fn save_head(tx: Db<'_>, head: &Head) -> PgResult<()> {
    let st = tx.statement(SAVE_HEAD).await?;
    save_head_prepared(tx, &st, head).await
}

/// [`save_head`] with its statement ([`SAVE_HEAD`]) prepared: sent on the
/// first poll.
pub async fn save_head_prepared(
    tx: Db<'_>,
    st: &tokio_postgres::Statement,
    head: &Head,
) -> PgResult<()> {
    tx.execute_prepared(st, &[&i(head.seq), &&head.hash[..]])
        .await?;
    Ok(())
}

/// Locks the head, appends `records` and saves the head: the whole append
/// of an administrative change, inside its transaction.
pub async fn append(tx: Db<'_>, records: &[AuditRecord]) -> PgResult<()> {
    let mut head = lock_head(tx).await?;
    if records.is_empty() {
        return Ok(());
    }
    let rows = chain_records(&mut head, records);
    insert_rows(tx, &rows).await?;
    save_head(tx, &head).await
}

/// Reads one row selected with [`AUDIT_COLUMNS`]. A value mayfly never
/// writes (non-canonical principals, a hash of the wrong length) is a
/// [`BadRow`] that `audit verify` reports, not an error of the scan.
fn read_record(row: &tokio_postgres::Row) -> Result<StoredRecord, BadRow> {
    let seq_raw: i64 = row.try_get(0).unwrap_or(0);
    let seq = u(seq_raw);
    let parse = || -> Result<StoredRecord, String> {
        if seq_raw <= 0 {
            return Err(format!("seq {seq_raw} is not positive"));
        }
        let text = |i: usize, name: &str| -> Result<Option<String>, String> {
            row.try_get::<_, Option<String>>(i)
                .map_err(|e| format!("column {name}: {e}"))
        };
        let int = |i: usize, name: &str| -> Result<Option<i64>, String> {
            row.try_get::<_, Option<i64>>(i)
                .map_err(|e| format!("column {name}: {e}"))
        };
        let hash = |i: usize, name: &str| -> Result<Option<Hash>, String> {
            match row
                .try_get::<_, Option<Vec<u8>>>(i)
                .map_err(|e| format!("column {name}: {e}"))?
            {
                None => Ok(None),
                Some(b) => as_hash(&b)
                    .map(Some)
                    .ok_or_else(|| format!("column {name} is not a 32-byte hash")),
            }
        };
        let required = |v: Option<String>, name: &str| v.ok_or(format!("column {name} is NULL"));
        let principals_text = required(text(12, "principals")?, "principals")?;
        let principals: Vec<String> = serde_json::from_str(&principals_text)
            .map_err(|_| "column principals is not a JSON array of strings".to_string())?;
        if chain::principals_json(&principals) != principals_text {
            return Err("column principals is not in canonical JSON form".into());
        }
        Ok(StoredRecord {
            seq,
            time_ms: int(1, "time_ms")?.ok_or("column time_ms is NULL")?,
            event: required(text(2, "event")?, "event")?,
            request_id: required(text(3, "request_id")?, "request_id")?,
            client_addr: text(4, "client_addr")?,
            issuer: text(5, "issuer")?,
            subject: text(6, "subject")?,
            role: text(7, "role")?,
            reason_code: text(8, "reason_code")?,
            reason: text(9, "reason")?,
            serial: int(10, "serial")?,
            key_id: text(11, "key_id")?,
            principals,
            valid_after: int(13, "valid_after")?,
            valid_before: int(14, "valid_before")?,
            key_fingerprint: text(15, "key_fingerprint")?,
            token_id: text(16, "token_id")?,
            token_exp: int(17, "token_exp")?,
            policy_digest: text(18, "policy_digest")?,
            cert_type: text(19, "cert_type")?,
            ca_key: text(20, "ca_key")?,
            actor: text(21, "actor")?,
            claims: text(22, "claims")?,
            prev_hash: hash(23, "prev_hash")?,
            hash: hash(24, "hash")?,
        })
    };
    parse().map_err(|what| BadRow { seq, what })
}

/// Up to `limit` records from `from_seq` on, in seq order.
pub async fn scan(
    db: Db<'_>,
    from_seq: u64,
    limit: usize,
) -> PgResult<Vec<Result<StoredRecord, BadRow>>> {
    let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2");
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = db.query(&sql, &[&i(from_seq), &limit]).await?;
    Ok(rows.iter().map(read_record).collect())
}

/// The record at `seq`, if present.
pub async fn record(db: Db<'_>, seq: u64) -> PgResult<Option<Result<StoredRecord, BadRow>>> {
    let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE seq = $1");
    Ok(db.opt(&sql, &[&i(seq)]).await?.as_ref().map(read_record))
}

/// The highest seq present and its hash.
pub async fn head(db: Db<'_>) -> PgResult<Option<(u64, Option<Hash>)>> {
    let row = db
        .opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[])
        .await?;
    Ok(row.map(|r| {
        let seq: i64 = r.try_get(0).unwrap_or(0);
        let hash: Option<Vec<u8>> = r.try_get(1).unwrap_or(None);
        (u(seq), hash.as_deref().and_then(as_hash))
    }))
}

/// Where an export `--since time_ms` starts (see
/// [`crate::store::AuditLog::first_seq_since`]): scans back from the head.
pub async fn first_seq_since(db: Db<'_>, time_ms: i64) -> PgResult<Option<u64>> {
    let older: Option<i64> = db
        .one(
            "SELECT MAX(seq) FROM (SELECT seq FROM audit WHERE time_ms < $1 ORDER BY seq DESC LIMIT 1) o",
            &[&time_ms],
        )
        .await?
        .try_get(0)
        ?;
    let first = u(older.unwrap_or(0)) + 1;
    let last = head(db).await?.map(|(s, _)| s).unwrap_or(0);
    Ok((first <= last).then_some(first))
}

/// Chain facts for `audit verify`.
pub async fn chain_meta(db: Db<'_>) -> PgResult<ChainMeta> {
    let row = db
        .one(
            "SELECT h.seq, h.checkpoints, (SELECT MAX(seq) FROM audit),
                    (SELECT v FROM meta WHERE k = 'audit_chain_legacy_through'),
                    (SELECT v FROM meta WHERE k = 'audit_chain_migrated_at_ms')
             FROM chain_head h",
            &[],
        )
        .await?;
    let get_i = |n: usize| -> PgResult<Option<i64>> { Ok(row.try_get(n)?) };
    let get_s = |n: usize| -> PgResult<Option<String>> { Ok(row.try_get(n)?) };
    Ok(ChainMeta {
        legacy_through: get_s(3)?.and_then(|v| v.parse().ok()),
        migrated_at_ms: get_s(4)?.and_then(|v| v.parse().ok()),
        seq_counter: u(get_i(0)?.unwrap_or(0)),
        max_seq: u(get_i(2)?.unwrap_or(0)),
        checkpoint_counter: u(get_i(1)?.unwrap_or(0)),
    })
}

/// Up to `limit` checkpoints with an id above `after_id`.
pub async fn checkpoints(db: Db<'_>, after_id: i64, limit: usize) -> PgResult<CheckpointPage> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = db
        .query(
            "SELECT id, seq, hash, time_ms, key_fingerprint, signature
             FROM audit_checkpoints WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after_id, &limit],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get(0)?;
        let seq = u(row.try_get::<_, i64>(1).unwrap_or(0));
        let parse = || -> Result<Checkpoint, String> {
            let hash: Vec<u8> = row.try_get(2).map_err(|e| e.to_string())?;
            Ok(Checkpoint {
                id,
                seq,
                hash: as_hash(&hash).ok_or("column hash is not a 32-byte hash")?,
                time_ms: row.try_get(3).map_err(|e| e.to_string())?,
                key_fingerprint: row.try_get(4).map_err(|e| e.to_string())?,
                signature: row.try_get(5).map_err(|e| e.to_string())?,
            })
        };
        out.push((
            id,
            parse().map_err(|what| BadRow {
                seq,
                what: format!("#{id}: {what}"),
            }),
        ));
    }
    Ok(out)
}

/// The latest checkpoint's (seq, hash).
pub async fn last_checkpoint(db: Db<'_>) -> PgResult<Option<(u64, Hash)>> {
    let row = db
        .opt(
            "SELECT seq, hash FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?;
    Ok(row.and_then(|r| {
        let seq: i64 = r.try_get(0).ok()?;
        let hash: Vec<u8> = r.try_get(1).ok()?;
        as_hash(&hash).map(|h| (u(seq), h))
    }))
}

/// The latest checkpoint's (seq, time_ms).
pub async fn last_checkpoint_at(db: Db<'_>) -> PgResult<Option<(u64, i64)>> {
    let row = db
        .opt(
            "SELECT seq, time_ms FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?;
    Ok(row.and_then(|r| {
        let seq: i64 = r.try_get(0).ok()?;
        let time_ms: i64 = r.try_get(1).ok()?;
        Some((u(seq), time_ms))
    }))
}

/// Signs the current head and stores the checkpoint, holding the chain
/// lock so the head cannot move in between. `None` when the log is empty
/// or the head is already checkpointed. Ids come from `chain_head`, so
/// they have no gaps unless a checkpoint was deleted.
pub async fn write_checkpoint(
    tx: Db<'_>,
    key_fingerprint: &str,
    time_ms: i64,
    sign: crate::store::CheckpointSigner,
) -> PgResult<Option<Checkpoint>> {
    lock_head(tx).await?;
    let Some((seq, Some(hash))) = head(tx).await? else {
        return Ok(None);
    };
    if last_checkpoint(tx).await?.map(|(s, _)| s) == Some(seq) {
        return Ok(None);
    }
    let signature = sign(seq, &hash, time_ms).map_err(PgError::msg)?;
    let id: i64 = tx
        .one(
            "UPDATE chain_head SET checkpoints = checkpoints + 1 RETURNING checkpoints",
            &[],
        )
        .await?
        .try_get(0)?;
    tx.execute(
        "INSERT INTO audit_checkpoints (id, seq, hash, time_ms, key_fingerprint, signature)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &id,
            &i(seq),
            &&hash[..],
            &time_ms,
            &key_fingerprint,
            &signature,
        ],
    )
    .await?;
    Ok(Some(Checkpoint {
        id,
        seq,
        hash,
        time_ms,
        key_fingerprint: key_fingerprint.to_string(),
        signature,
    }))
}

const META_STREAM_CURSOR: &str = "audit_stream_cursor";

/// Where live streaming to the audit sinks got to.
pub async fn stream_cursor(db: Db<'_>) -> PgResult<Option<u64>> {
    let row = db
        .opt("SELECT v FROM meta WHERE k = $1", &[&META_STREAM_CURSOR])
        .await?;
    Ok(row
        .and_then(|r| r.try_get::<_, String>(0).ok())
        .and_then(|v| v.parse().ok()))
}

/// Saves the streaming cursor.
pub async fn set_stream_cursor(db: Db<'_>, seq: u64) -> PgResult<()> {
    db.execute(
        "INSERT INTO meta (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
        &[&META_STREAM_CURSOR, &seq.to_string()],
    )
    .await?;
    Ok(())
}

/// The SQL of a search for `q` and its parameters: exactly
/// [`AuditQuery::matches`], newest first, at most `q.limit`.
pub fn search_sql(q: &AuditQuery) -> (String, Vec<SearchArg>) {
    let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE TRUE");
    let mut args: Vec<SearchArg> = Vec::new();
    let mut add = |cond: &str, v: SearchArg, sql: &mut String| {
        args.push(v);
        sql.push_str(&format!(" AND {cond} ${}", args.len()));
    };
    for (col, v) in [
        ("subject", &q.subject),
        ("issuer", &q.issuer),
        ("role", &q.role),
        ("event", &q.event),
    ] {
        if let Some(v) = v {
            add(&format!("{col} ="), SearchArg::Text(v.clone()), &mut sql);
        }
    }
    if let Some(t) = q.since_ms {
        add("time_ms >=", SearchArg::Int(t), &mut sql);
    }
    if let Some(n) = q.serial {
        // A revocation keeps the serial it revoked in its reason ("serial
        // N: ..."), matched ASCII-case-insensitively as SQLite's LIKE does
        // (translate() folds exactly the letters of the prefix, so no
        // Unicode case rule can widen the match).
        // The same prefix as `AuditQuery::matches` compares.
        let prefix = format!("serial {n}:");
        args.push(SearchArg::Int(n as i64));
        args.push(SearchArg::Text(prefix));
        let (a, b) = (args.len() - 1, args.len());
        sql.push_str(&format!(
            " AND (serial = ${a} OR (event = 'cert_revoked' AND serial IS NULL \
             AND translate(left(reason, char_length(${b})), 'SERIAL', 'serial') = ${b}))"
        ));
    }
    if let Some(k) = &q.key_id {
        use crate::store::key_id_index::{condition, serial_of, PG_INDEXED};
        let serial = serial_of(k);
        args.push(SearchArg::Text(k.clone()));
        let key = format!("${}", args.len());
        let serial_at = serial.map(|n| {
            args.push(SearchArg::Int(n));
            format!("${}", args.len())
        });
        sql.push_str(" AND ");
        sql.push_str(&condition(PG_INDEXED, &key, serial_at.as_deref()));
    }
    sql.push_str(&format!(" ORDER BY seq DESC LIMIT {}", q.limit.max(1)));
    (sql, args)
}

/// A search parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchArg {
    /// A text value.
    Text(String),
    /// An integer value.
    Int(i64),
}

/// Records matching `q`.
pub async fn search(db: Db<'_>, q: &AuditQuery) -> PgResult<Vec<Result<StoredRecord, BadRow>>> {
    let (sql, args) = search_sql(q);
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = args
        .iter()
        .map(|a| match a {
            SearchArg::Text(s) => s as &(dyn tokio_postgres::types::ToSql + Sync),
            SearchArg::Int(n) => n as &(dyn tokio_postgres::types::ToSql + Sync),
        })
        .collect();
    let rows = db.query(&sql, &params).await?;
    Ok(rows.iter().map(read_record).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audit::EventKind;

    #[test]
    fn chaining_here_gives_the_hashes_sqlite_gives() {
        let mut r = AuditRecord::new(EventKind::CertIssued, 1_793_491_200_000, "req");
        r.serial = Some(7);
        r.principals = vec!["deploy".into()];
        let mut rv = AuditRecord::new(EventKind::CertRevoked, 1_793_491_200_001, "admin");
        rv.serial = Some(7);
        rv.reason = Some("leaked".into());
        let mut head = Head {
            seq: 0,
            hash: chain::GENESIS,
        };
        let rows = chain_records(&mut head, &[r.clone(), rv.clone()]);
        // The reference: stored_form + chain() from the audit module.
        let mut want = vec![chain::stored_form(&r, 1), chain::stored_form(&rv, 2)];
        let last = chain::chain(&mut want, chain::GENESIS);
        assert_eq!(rows, want);
        assert_eq!((head.seq, head.hash), (2, last));
        assert_eq!(rows[1].reason.as_deref(), Some("serial 7: leaked"));
        assert_eq!(rows[1].serial, None);
    }

    #[test]
    fn a_serial_search_matches_the_prefix_the_revocation_stores() {
        let (sql, args) = search_sql(&AuditQuery {
            serial: Some(42),
            ..AuditQuery::default()
        });
        assert!(
            sql.contains("translate(left(reason, char_length($2)), 'SERIAL', 'serial') = $2"),
            "{sql}"
        );
        assert_eq!(
            args,
            vec![SearchArg::Int(42), SearchArg::Text("serial 42:".into())]
        );
    }
}
