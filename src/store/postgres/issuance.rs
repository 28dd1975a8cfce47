//! Issuance in PostgreSQL: the guarded group commit, the live-certificate
//! queries, and the counters that SQLite mode keeps in memory (serials,
//! used tokens, rate-limit buckets), here shared by every replica.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::try_join_all;

use super::chain;
use super::db::{i, u, Db, PgError, PgResult, PipelinedTx};
use crate::approval::{ApprovalError, ApprovalRequest};
use crate::audit::AuditRecord;
use crate::policy::limits::RateLimit;
use crate::store::{CertFilter, DisableTarget, GuardRefusal, GuardedRecord, IssuedCert};

const LIVE_BASE: &str = "FROM audit a WHERE event = 'cert_issued' AND valid_before > $1 \
    AND serial IS NOT NULL AND NOT EXISTS (SELECT 1 FROM revocations r \
    WHERE r.ca_key = a.ca_key AND (r.serial = a.serial OR r.key_id = a.key_id))";

const LIVE_COLUMNS: &str = "SELECT serial, COALESCE(key_id, ''), COALESCE(cert_type, 'user'), \
    COALESCE(role, ''), COALESCE(issuer, ''), COALESCE(subject, ''), valid_before, \
    COALESCE(ca_key, '')";

/// The filter's condition and its parameters after `$1` (the time).
fn filter_sql(filter: &CertFilter) -> (Cow<'static, str>, Vec<FilterArg<'_>>) {
    match filter {
        CertFilter::Serial(n) => (" AND serial = $2".into(), vec![FilterArg::Int(*n as i64)]),
        CertFilter::KeyId(k) => {
            use crate::store::key_id_index::{condition, serial_of, PG_INDEXED};
            let serial = serial_of(k);
            let cond = condition(PG_INDEXED, "$2", serial.map(|_| "$3"));
            let mut args = vec![FilterArg::Text(k)];
            args.extend(serial.map(FilterArg::Int));
            (format!(" AND {cond}").into(), args)
        }
        CertFilter::Role(r) => (" AND role = $2".into(), vec![FilterArg::Text(r)]),
        CertFilter::Identity {
            issuer,
            subject,
            role: None,
        } => (
            " AND issuer = $2 AND subject = $3".into(),
            vec![FilterArg::Text(issuer), FilterArg::Text(subject)],
        ),
        CertFilter::Identity {
            issuer,
            subject,
            role: Some(role),
        } => (
            " AND issuer = $2 AND subject = $3 AND role = $4".into(),
            vec![
                FilterArg::Text(issuer),
                FilterArg::Text(subject),
                FilterArg::Text(role),
            ],
        ),
    }
}

enum FilterArg<'a> {
    Int(i64),
    Text(&'a str),
}

fn params<'a>(
    now: &'a i64,
    args: &'a [FilterArg<'a>],
) -> Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)> {
    let mut p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![now];
    for a in args {
        p.push(match a {
            FilterArg::Int(n) => n,
            FilterArg::Text(s) => s,
        });
    }
    p
}

/// Issued certificates matching `filter`, valid at `now` and not revoked.
pub async fn live_certs(db: Db<'_>, filter: &CertFilter, now: u64) -> PgResult<Vec<IssuedCert>> {
    let (cond, args) = filter_sql(filter);
    let now = i(now);
    let sql = format!("{LIVE_COLUMNS} {LIVE_BASE}{cond} ORDER BY serial");
    let rows = db.query(&sql, &params(&now, &args)).await?;
    rows.iter()
        .map(|r| {
            Ok(IssuedCert {
                serial: r.try_get::<_, i64>(0)? as u64,
                key_id: r.try_get(1)?,
                cert_type: r.try_get(2)?,
                role: r.try_get(3)?,
                issuer: r.try_get(4)?,
                subject: r.try_get(5)?,
                valid_before: u(r.try_get(6)?),
                ca_key: r.try_get(7)?,
            })
        })
        .collect()
}

/// How many certificates match `filter` (valid at `now`, not revoked).
pub async fn count_live(db: Db<'_>, filter: &CertFilter, now: u64) -> PgResult<u64> {
    let (cond, args) = filter_sql(filter);
    let now = i(now);
    let sql = format!("SELECT COUNT(*) {LIVE_BASE}{cond}");
    let n: i64 = db.one(&sql, &params(&now, &args)).await?.try_get(0)?;
    Ok(u(n))
}

/// The disabled entry, if any, that blocks `issuer`/`subject` in `role`.
pub async fn disabled_entry(
    db: Db<'_>,
    issuer: &str,
    subject: &str,
    role: &str,
) -> PgResult<Option<DisableTarget>> {
    let row = db
        .opt(
            "SELECT issuer, subject, role FROM disabled
             WHERE (issuer = $1 AND subject = $2 AND (role = '' OR role = $3))
                OR (issuer = '' AND subject = '' AND role = $3)
             LIMIT 1",
            &[&issuer, &subject, &role],
        )
        .await?;
    row.map(|r| target_of(&r)).transpose()
}

/// The target of a `disabled` row (its first three columns). A row naming
/// nothing fails the read, and so the issuance that checks it.
pub fn target_of(r: &tokio_postgres::Row) -> PgResult<DisableTarget> {
    DisableTarget::from_columns(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)
        .map_err(|e| PgError::msg(format!("postgres: a disabled row is damaged: {e}")))
}

/// One approval request, locked for the rest of the transaction when `tx`
/// is one.
pub async fn approval_get(db: Db<'_>, id: &str, lock: bool) -> PgResult<Option<ApprovalRequest>> {
    let sql = if lock {
        "SELECT body FROM approvals WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT body FROM approvals WHERE id = $1"
    };
    let row = db.opt(sql, &[&id]).await?;
    row.map(|r| {
        let body: String = r.try_get(0)?;
        serde_json::from_str(&body)
            .map_err(|e| PgError::msg(format!("postgres: approval {id} is damaged: {e}")))
    })
    .transpose()
}

/// Inserts or replaces an approval request (inside the caller's transaction).
pub async fn approval_write(db: Db<'_>, req: &ApprovalRequest) -> PgResult<()> {
    let body = serde_json::to_string(req)
        .map_err(|e| PgError::msg(format!("encoding approval {}: {e}", req.id)))?;
    db.execute(
        "INSERT INTO approvals (id, status, role, expires_at, body) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status,
            expires_at = EXCLUDED.expires_at, body = EXCLUDED.body",
        &[
            &req.id,
            &req.status.as_str(),
            &req.role,
            &i(req.expires_at.get()),
            &body,
        ],
    )
    .await?;
    Ok(())
}

/// Whether any identity, role or issuer is deactivated.
/// Whether any deactivation exists, and the state version of the last
/// change of the CA keys, in one statement.
async fn disabled_and_keys_changed(db: Db<'_>) -> PgResult<(bool, u64)> {
    let row = db
        .one(
            "SELECT EXISTS (SELECT 1 FROM disabled), (SELECT keys_changed FROM state)",
            &[],
        )
        .await?;
    Ok((row.try_get(0)?, u(row.try_get(1)?)))
}

/// What a guard needs from the database, read for every guarded record of
/// a batch at once (pipelined) after the chain lock.
struct Facts {
    disabled: Option<DisableTarget>,
    live: u64,
    renews_revoked: bool,
}

async fn facts(db: Db<'_>, g: &crate::store::IssueGuard, now: u64) -> PgResult<Facts> {
    let live = match g.max_active {
        Some(_) => {
            let filter = CertFilter::Identity {
                issuer: g.issuer.clone(),
                subject: g.subject.clone(),
                role: Some(g.role.clone()),
            };
            count_live(db, &filter, now).await?
        }
        None => 0,
    };
    let renews_revoked = match &g.renews {
        Some(p) => db
            .one(
                "SELECT EXISTS (SELECT 1 FROM revocations WHERE ca_key = $1 AND (serial = $2 OR key_id = $3))",
                &[&p.ca_key, &i(p.serial), &p.key_id],
            )
            .await?
            .try_get(0)?,
        None => false,
    };
    Ok(Facts {
        disabled: None,
        live,
        renews_revoked,
    })
}

/// Commits one group of records in one transaction: takes the chain lock,
/// evaluates each record's guard in order (each sees the records before it
/// in the group), inserts the records that pass with their redemption
/// records, and commits. The caller answers each record only after this
/// returned, so an issuance is acknowledged only once its record is
/// durable. `Err`: nothing was written.
///
/// The connection is in `slot`; if the transaction could not be ended
/// cleanly, it is closed and `slot` left empty.
pub async fn commit_group(
    slot: &mut Option<deadpool_postgres::Client>,
    records: &[GuardedRecord],
) -> PgResult<Vec<Result<(), GuardRefusal>>> {
    let mut tx = PipelinedTx::new(slot)?;
    let res = group(&tx, records).await;
    if res.is_err() {
        tx.rollback().await;
    }
    res
}

/// The transaction of [`commit_group`]: two pipelines, BEGIN with the
/// chain lock and the reads, then the writes with COMMIT.
async fn group(
    tx: &PipelinedTx<'_>,
    records: &[GuardedRecord],
) -> PgResult<Vec<Result<(), GuardRefusal>>> {
    let db = tx.db();
    // BEGIN, the chain lock, the reads of the facts below and the token
    // claims go to the server together, one round trip while other
    // replicas wait for the lock. The server runs them in the order sent,
    // each on a snapshot taken when it starts, so everything after the
    // lock sees what the lock's previous holder committed. BEGIN is sent
    // first, and the lock's statement is prepared beforehand so that it
    // is the next one sent.
    //
    // Every writer of these facts holds the chain lock while it writes,
    // so they cannot change until this transaction ends. Deactivations are
    // looked up per record only when one exists (one statement per group
    // instead of one per record; usually none exists). The CA keys' last
    // change too: every change of them holds the chain lock.
    let lock = db.statement(chain::LOCK_HEAD).await?;
    let guarded = records.iter().any(|(_, g)| g.is_some());
    let (_, (mut head, (look_up_disabled, keys_changed), mut facts, claimed)) =
        futures_util::future::try_join(
            tx.begin(),
            futures_util::future::try_join4(
                chain::lock_head_prepared(db, &lock),
                async move {
                    match guarded {
                        true => disabled_and_keys_changed(db)
                            .await
                            .map(|(d, v)| (d, Some(v))),
                        false => Ok((false, None)),
                    }
                },
                try_join_all(records.iter().map(|(r, g)| async move {
                    match g {
                        Some(g) => facts(db, g, r.time_ms / 1000).await.map(Some),
                        None => Ok(None),
                    }
                })),
                claim_tokens(db, records),
            ),
        )
        .await?;
    if look_up_disabled {
        let disabled = try_join_all(records.iter().map(|(_, g)| async move {
            match g {
                Some(g) => disabled_entry(db, &g.issuer, &g.subject, &g.role).await,
                None => Ok(None),
            }
        }))
        .await?;
        for (f, d) in facts.iter_mut().zip(disabled) {
            if let Some(f) = f {
                f.disabled = d;
            }
        }
    }
    // `valid_before` of the certificates this group accepted so far, by
    // identity and role: a guard counts them as the database would.
    let mut accepted: HashMap<(&str, &str, &str), Vec<u64>> = HashMap::new();
    let mut redeemed: HashMap<String, ApprovalRequest> = HashMap::new();
    let mut to_insert: Vec<AuditRecord> = Vec::with_capacity(records.len());
    let mut out = Vec::with_capacity(records.len());
    for (((record, guard), fact), claimed) in records.iter().zip(&facts).zip(claimed) {
        if let (Some(g), Some(f)) = (guard, fact) {
            if let Some(refusal) = g.stale(keys_changed) {
                out.push(Err(refusal));
                continue;
            }
            if !claimed {
                out.push(Err(GuardRefusal::Replayed));
                continue;
            }
            let now = record.time_ms / 1000;
            if let Some(d) = &f.disabled {
                out.push(Err(GuardRefusal::Disabled(d.clone())));
                continue;
            }
            if let (true, Some(p)) = (f.renews_revoked, &g.renews) {
                out.push(Err(GuardRefusal::RenewsRevoked {
                    serial: p.serial,
                    key_id: p.key_id.clone(),
                }));
                continue;
            }
            if let Some(max) = g.max_active {
                let key = (g.issuer.as_str(), g.subject.as_str(), g.role.as_str());
                let in_group = accepted
                    .get(&key)
                    .map(|v| v.iter().filter(|vb| **vb > now).count() as u64)
                    .unwrap_or(0);
                let renewed = g.renews.as_ref().is_some_and(|p| p.valid_at(now));
                let live = (f.live + in_group).saturating_sub(u64::from(renewed));
                if live >= u64::from(max) {
                    out.push(Err(GuardRefusal::TooManyActive { live, max }));
                    continue;
                }
            }
            if let Some(r) = &g.redeem {
                let current = match redeemed.get(&r.id) {
                    Some(a) => Some(a.clone()),
                    None => approval_get(db, &r.id, true).await?,
                };
                match redeem(current, g, r, now) {
                    Ok(used) => {
                        redeemed.insert(r.id.clone(), used);
                        to_insert.push(r.record.clone());
                    }
                    Err(e) => {
                        out.push(Err(e.into()));
                        continue;
                    }
                }
            }
        }
        if record.event == crate::audit::EventKind::CertIssued && record.serial.is_some() {
            if let (Some(is), Some(sub), Some(role), Some(vb)) = (
                record.issuer.as_deref(),
                record.subject.as_deref(),
                record.role.as_deref(),
                record.valid_before,
            ) {
                accepted.entry((is, sub, role)).or_default().push(vb);
            }
        }
        to_insert.push(record.clone());
        out.push(Ok(()));
    }
    for a in redeemed.values() {
        approval_write(db, a).await?;
    }
    // The writes and COMMIT go together, in this order, which their
    // statements being prepared beforehand guarantees (each is sent on
    // its first poll). The insert's error, if any, is the one reported (a
    // refused row is retried record by record, see the writer); after a
    // failed statement the COMMIT rolls back.
    let rows = chain::chain_records(&mut head, &to_insert);
    if rows.is_empty() {
        tx.commit().await?;
        tx.ended();
        return Ok(out);
    }
    let insert = db.statement(chain::INSERT).await?;
    let save = db.statement(chain::SAVE_HEAD).await?;
    let (inserted, saved, committed) = futures_util::future::join3(
        chain::insert_rows_prepared(db, &insert, &rows),
        chain::save_head_prepared(db, &save, &head),
        tx.commit(),
    )
    .await;
    committed?;
    tx.ended();
    inserted?;
    saved?;
    Ok(out)
}

/// Marks the tokens of the group's guards used, in one statement; per
/// record, whether it got every token it names
/// ([`crate::store::IssueGuard::claims`]). A record that the commit
/// refuses as stale (the CA keys changed after the version it acted on)
/// claims nothing, since it comes again: the statement itself compares
/// with the keys' last change, read under the chain lock like the rest.
/// Of two records of the group with one token, the first gets it (or, if
/// the first is stale, neither does now; the first gets it when it comes
/// again). A used token counts as free again once it expired, as of the
/// group's earliest request time.
async fn claim_tokens(db: Db<'_>, records: &[GuardedRecord]) -> PgResult<Vec<bool>> {
    let mut owner: HashMap<&str, usize> = HashMap::new();
    let mut ids: Vec<&[u8]> = Vec::new();
    let mut expiries: Vec<i64> = Vec::new();
    let mut acted_on: Vec<Option<i64>> = Vec::new();
    let mut now = u64::MAX;
    for (k, (record, guard)) in records.iter().enumerate() {
        let Some(g) = guard else { continue };
        if g.claims.is_empty() {
            continue;
        }
        now = now.min(record.time_ms / 1000);
        for (id, expires_at) in &g.claims {
            if owner.contains_key(id.as_str()) {
                continue;
            }
            owner.insert(id, k);
            ids.push(id.as_bytes());
            expiries.push(i(*expires_at));
            acted_on.push(g.acted_on.map(i));
        }
    }
    let won: std::collections::HashSet<Vec<u8>> = match ids.is_empty() {
        true => Default::default(),
        false => db
            .query(
                "INSERT INTO used_tokens AS t (id, expires_at)
                 SELECT u.id, u.expires_at
                   FROM unnest($1::bytea[], $2::int8[], $3::int8[]) AS u(id, expires_at, acted_on)
                  WHERE u.acted_on IS NULL OR u.acted_on >= (SELECT keys_changed FROM state)
                 ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at
                    WHERE t.expires_at <= $4
                 RETURNING id",
                &[&ids, &expiries, &acted_on, &i(now)],
            )
            .await?
            .iter()
            .map(|r| r.try_get::<_, Vec<u8>>(0))
            .collect::<Result<_, _>>()?,
    };
    Ok(records
        .iter()
        .enumerate()
        .map(|(k, (_, guard))| {
            guard.as_ref().is_none_or(|g| {
                g.claims.iter().all(|(id, _)| {
                    owner.get(id.as_str()) == Some(&k) && won.contains(id.as_bytes())
                })
            })
        })
        .collect())
}

/// Whether approval `current` can be redeemed by this issuance; if so, the
/// request as it is after it.
fn redeem(
    current: Option<ApprovalRequest>,
    g: &crate::store::IssueGuard,
    r: &crate::store::Redemption,
    now: u64,
) -> Result<ApprovalRequest, ApprovalError> {
    let Some(mut a) = current else {
        return Err(ApprovalError::NotFound(r.id.clone()));
    };
    crate::approval::redeem(
        &mut a,
        (&g.issuer, &g.subject, &g.role),
        &r.key_fingerprint,
        r.renews_key.as_deref(),
        now,
    )?;
    Ok(a)
}

/// Highest certificate serial ever recorded (0 if none).
pub async fn max_serial(db: Db<'_>) -> PgResult<u64> {
    let v: Option<i64> = db
        .one("SELECT MAX(serial) FROM audit", &[])
        .await?
        .try_get(0)?;
    Ok(v.unwrap_or(0) as u64)
}

/// How many serials a process reserves at a time. Each reservation is a
/// transaction with a WAL flush of its own, and requests wait for it, so
/// it should come rarely; a process that stops leaves at most this many
/// serials unused, which costs nothing (serials are unique, not dense).
pub const SERIAL_BLOCK: u64 = 1024;

/// Reserves `SERIAL_BLOCK` serials above `floor` and above every block
/// reserved before, by any replica: the counter row only moves up, and its
/// row lock makes two reservations disjoint. Returns the first serial of
/// the block.
pub async fn reserve_serials(db: Db<'_>, floor: u64) -> PgResult<u64> {
    let n = i(SERIAL_BLOCK);
    let start: i64 = db
        .one(
            "UPDATE serial_counter SET next = GREATEST(next, $1::bigint + 1) + $2::bigint
             RETURNING next - $2::bigint",
            &[&(floor as i64), &n],
        )
        .await?
        .try_get(0)?;
    Ok(start as u64)
}

/// Marks token `id` used until `expires_at`; `false` if it is used already.
/// One statement: two replicas that claim the same id at once serialise on
/// its primary key, and the second sees the first's row and gets `false`.
/// A row whose token has expired may be claimed again (it cannot verify
/// anyway), as in memory.
pub async fn claim_token(db: Db<'_>, id: &str, expires_at: u64, now: u64) -> PgResult<bool> {
    let row = db
        .opt(
            "INSERT INTO used_tokens AS t (id, expires_at) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at
                WHERE t.expires_at <= $3
             RETURNING 1",
            &[&id.as_bytes(), &i(expires_at), &i(now)],
        )
        .await?;
    Ok(row.is_some())
}

/// Replay ids of tokens used and unexpired at `now`.
pub async fn used_tokens(db: Db<'_>, now: u64) -> PgResult<Vec<(String, u64)>> {
    let rows = db
        .query(
            "SELECT id, expires_at FROM used_tokens WHERE expires_at > $1 ORDER BY id",
            &[&i(now)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let id: Vec<u8> = r.try_get(0)?;
            Ok((String::from_utf8_lossy(&id).into_owned(), u(r.try_get(1)?)))
        })
        .collect()
}

/// Takes one token from `key`'s bucket, in one statement on the database's
/// clock.
///
/// Precision: the bucket is one row, refilled and taken from by a single
/// `INSERT ... ON CONFLICT DO UPDATE`, so concurrent takes from any number
/// of replicas serialise on the row and the limit is exact across replicas
/// (the same burst and refill as one process). Time is the database
/// server's clock (`clock_timestamp()`, microseconds), not the replicas',
/// so their clock skew does not matter. The `now` the caller passes (a
/// process-local monotonic time) is not comparable between replicas and is
/// not used. A take costs one round trip to the database.
pub async fn take_rate(db: Db<'_>, key: &str, rate: RateLimit) -> PgResult<Result<(), Duration>> {
    if rate.count == 0 || rate.per.is_zero() {
        return Ok(Err(rate.per.max(Duration::from_secs(1))));
    }
    let cap = f64::from(rate.count);
    let refill = cap / rate.per.as_secs_f64();
    let row = db
        .one(
            "WITH now AS (SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8 AS t)
             INSERT INTO rate_buckets AS b (key, tokens, last_at, full_at, taken)
             SELECT $1, $2::float8 - 1, now.t, now.t + 1 / $3::float8, TRUE FROM now
             ON CONFLICT (key) DO UPDATE SET
                tokens = LEAST($2::float8, b.tokens + GREATEST(EXCLUDED.last_at - b.last_at, 0) * $3::float8)
                    - CASE WHEN LEAST($2::float8, b.tokens + GREATEST(EXCLUDED.last_at - b.last_at, 0) * $3::float8) >= 1
                      THEN 1 ELSE 0 END,
                last_at = GREATEST(b.last_at, EXCLUDED.last_at),
                taken = LEAST($2::float8, b.tokens + GREATEST(EXCLUDED.last_at - b.last_at, 0) * $3::float8) >= 1,
                full_at = GREATEST(b.last_at, EXCLUDED.last_at)
                    + ($2::float8 - (LEAST($2::float8, b.tokens + GREATEST(EXCLUDED.last_at - b.last_at, 0) * $3::float8)
                    - CASE WHEN LEAST($2::float8, b.tokens + GREATEST(EXCLUDED.last_at - b.last_at, 0) * $3::float8) >= 1
                      THEN 1 ELSE 0 END)) / $3::float8
             RETURNING taken, tokens",
            &[&key.as_bytes(), &cap, &refill],
        )
        .await?;
    let taken: bool = row.try_get(0)?;
    let tokens: f64 = row.try_get(1)?;
    if taken {
        Ok(Ok(()))
    } else {
        Ok(Err(Duration::from_secs_f64(
            ((1.0 - tokens) / refill).clamp(0.001, rate.per.as_secs_f64().max(0.001)),
        )))
    }
}

/// Drops used-token rows of expired tokens and buckets that are full again
/// (a full bucket carries no state).
pub async fn prune(db: Db<'_>, now: u64) -> PgResult<(u64, u64)> {
    let tokens = db
        .execute("DELETE FROM used_tokens WHERE expires_at <= $1", &[&i(now)])
        .await?;
    let buckets = db
        .execute(
            "DELETE FROM rate_buckets WHERE full_at < EXTRACT(EPOCH FROM clock_timestamp())::float8",
            &[],
        )
        .await?;
    Ok((tokens, buckets))
}

/// Latest `valid_before` of any certificate signed by `ca_key`.
pub async fn last_expiry_by_ca(db: Db<'_>, ca_key: &str) -> PgResult<u64> {
    let v: Option<i64> = db
        .one(
            "SELECT MAX(valid_before) FROM audit WHERE event = 'cert_issued' AND ca_key = $1",
            &[&ca_key],
        )
        .await?
        .try_get(0)?;
    Ok(v.map(u).unwrap_or(0))
}
