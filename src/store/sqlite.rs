//! SQLite backend: WAL journal, `synchronous=FULL` (a commit is on disk
//! when it returns), a unique index on serials so a reused serial can never
//! be recorded (and so never issued).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

use super::traits::CheckpointSigner;
use super::{
    CertFilter, DisableTarget, DisabledEntry, GuardRefusal, GuardedRecord, IssueGuard, IssuedCert,
    Revocation, StateVersion, StoreError,
};
use crate::audit::chain::{self, stored_form, Hash, StoredRecord};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::search::AuditQuery;
use crate::audit::AuditRecord;

pub use crate::audit::chain::{BadRow, ChainMeta};

/// The blocking interface of the SQLite connection, driven from the
/// writer thread or a reader thread ([`super::writer`]). The import steps
/// of `mayfly store migrate` are in `store::sqlite_import`.
pub trait Backend: super::sqlite_import::ImportBackend + Send + 'static {
    /// Appends records in one durable transaction: all or none.
    fn append_batch(&mut self, records: &[AuditRecord]) -> Result<(), StoreError>;
    /// Appends records in one durable transaction, checking each record's
    /// guard in order inside it (so a guard sees the records before it).
    /// A record whose guard fails is not written and gets its refusal; the
    /// others commit. `Err` means nothing was written.
    fn append_guarded(
        &mut self,
        records: &[GuardedRecord],
    ) -> Result<Vec<Result<(), GuardRefusal>>, StoreError>;
    /// Highest certificate serial ever recorded (0 if none).
    fn max_serial(&mut self) -> Result<u64, StoreError>;
    /// Replay ids of tokens that minted a certificate and expire after `now`.
    fn used_tokens(&mut self, now: u64) -> Result<Vec<(String, u64)>, StoreError>;
    /// Issued certificates matching `filter` that are still valid at `now`
    /// and not revoked.
    fn live_certs(&mut self, filter: &CertFilter, now: u64) -> Result<Vec<IssuedCert>, StoreError>;
    /// Records revocations and their audit records in one transaction,
    /// bumping the state version. Already-revoked serials are kept once.
    fn revoke(
        &mut self,
        revocations: &[Revocation],
        audit: &[AuditRecord],
        now: u64,
    ) -> Result<StateVersion, StoreError>;
    /// Revocations whose certificates are still valid at `now`.
    fn live_revocations(&mut self, now: u64) -> Result<Vec<Revocation>, StoreError>;
    /// Revokes every live certificate matching `filter` in one transaction:
    /// the certificates are read, `revoke` turns each into its revocation
    /// and audit record, and the state version is bumped. Returns the
    /// revoked certificates (none: nothing written) and the new version.
    fn revoke_matching(
        &mut self,
        filter: &CertFilter,
        now: u64,
        revoke: &dyn Fn(&IssuedCert) -> (Revocation, AuditRecord),
    ) -> Result<(Vec<IssuedCert>, StateVersion), StoreError>;
    /// Disables `key` and revokes the live certificates matching `filter`
    /// in one transaction, so no certificate issued before the flag is set
    /// escapes the sweep. Returns whether the flag changed and what was
    /// revoked.
    fn disable_and_revoke(
        &mut self,
        key: &DisableTarget,
        entry: &DisabledEntry,
        audit: &AuditRecord,
        filter: &CertFilter,
        now: u64,
        revoke: &dyn Fn(&IssuedCert) -> (Revocation, AuditRecord),
    ) -> Result<(bool, Vec<IssuedCert>), StoreError>;
    /// Disables (`Some(entry)`) or re-enables (`None`) `key`, with its audit
    /// record, in one transaction. Returns whether anything changed.
    fn set_disabled(
        &mut self,
        key: &DisableTarget,
        entry: Option<&DisabledEntry>,
        audit: &AuditRecord,
        now: u64,
    ) -> Result<bool, StoreError>;
    /// Every disabled entry.
    fn disabled(&mut self) -> Result<Vec<DisabledEntry>, StoreError>;
    /// The current state version.
    fn state_version(&mut self) -> Result<StateVersion, StoreError>;
    /// SQLite's `PRAGMA data_version` on this connection: it changes when
    /// another connection, in this process or another, has committed
    /// since this connection last looked, and only then.
    fn data_version(&mut self) -> Result<i64, StoreError>;
    /// Latest `valid_before` of any certificate signed by `ca_key` (0 if none).
    fn last_expiry_by_ca(&mut self, ca_key: &str) -> Result<u64, StoreError>;
    /// Appends `audit` and bumps the state version in one transaction (for
    /// changes other processes must notice, such as CA key rotation), and
    /// records the new version as the last change of the CA keys.
    fn record_change(&mut self, audit: &AuditRecord, now: u64) -> Result<StateVersion, StoreError>;
    /// Inserts or replaces an approval request, with its audit records, in one transaction.
    fn approval_put(
        &mut self,
        req: &crate::approval::ApprovalRequest,
        audit: &[AuditRecord],
    ) -> Result<(), StoreError>;
    /// One approval request.
    fn approval_get(
        &mut self,
        id: &str,
    ) -> Result<Option<crate::approval::ApprovalRequest>, StoreError>;
    /// Approval requests in a state (all if `None`).
    fn approval_list(
        &mut self,
        status: Option<crate::approval::ApprovalStatus>,
    ) -> Result<Vec<crate::approval::ApprovalRequest>, StoreError>;
    /// Signs the current chain head and stores the checkpoint, in one
    /// write transaction ([`Sqlite::write_checkpoint`]).
    fn write_checkpoint(
        &mut self,
        key_fingerprint: &str,
        time_ms: i64,
        sign: CheckpointSigner,
    ) -> Result<Option<Checkpoint>, StoreError>;
    /// Saves the audit streaming cursor.
    fn set_stream_cursor(&mut self, seq: u64) -> Result<(), StoreError>;
    /// Replaces one replica's heartbeat row and returns the row it
    /// replaced ([`super::ReplicaStore::heartbeat`]).
    fn replica_heartbeat(
        &mut self,
        beat: &crate::replica::Heartbeat,
    ) -> Result<Option<crate::replica::Heartbeat>, StoreError>;
    /// Stores a host's sync report ([`super::HostStore::host_report`]).
    fn host_report(&mut self, row: &crate::fleet::HostRow) -> Result<Option<u64>, StoreError>;
    /// Stores a console session ([`super::SessionStore::put_session`]).
    fn session_put(
        &mut self,
        key: &super::SessionKey,
        row: &super::SessionRow,
        now: u64,
    ) -> Result<(), StoreError>;
    /// Ends a console session ([`super::SessionStore::delete_session`]).
    fn session_delete(&mut self, key: &super::SessionKey) -> Result<(), StoreError>;
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS audit (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms         INTEGER NOT NULL,
    event           TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    client_addr     TEXT,
    issuer          TEXT,
    subject         TEXT,
    role            TEXT,
    reason_code     TEXT,
    reason          TEXT,
    serial          INTEGER,
    key_id          TEXT,
    principals      TEXT NOT NULL DEFAULT '[]',
    valid_after     INTEGER,
    valid_before    INTEGER,
    key_fingerprint TEXT,
    token_id        TEXT,
    token_exp       INTEGER,
    policy_digest   TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS audit_serial ON audit(serial) WHERE serial IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_token ON audit(token_exp) WHERE token_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_subject ON audit(issuer, subject);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
INSERT OR IGNORE INTO meta (k, v) VALUES ('schema_version', '2');
INSERT OR IGNORE INTO meta (k, v) VALUES ('state_version', '0');
INSERT OR IGNORE INTO meta (k, v) VALUES ('state_changed_at', '0');
CREATE TABLE IF NOT EXISTS revocations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms     INTEGER NOT NULL,
    ca_key      TEXT NOT NULL,
    serial      INTEGER,
    key_id      TEXT,
    expires_at  INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    actor       TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS revocations_serial ON revocations(ca_key, serial) WHERE serial IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS revocations_key_id ON revocations(ca_key, key_id) WHERE key_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS revocations_expiry ON revocations(expires_at);
CREATE TABLE IF NOT EXISTS disabled (
    issuer   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    role     TEXT NOT NULL,
    time_ms  INTEGER NOT NULL,
    reason   TEXT NOT NULL,
    actor    TEXT NOT NULL,
    PRIMARY KEY (issuer, subject, role)
);
"#;

/// Columns added after schema version 1, added to older databases on open.
const ADDED_AUDIT_COLUMNS: [(&str, &str); 4] = [
    ("cert_type", "TEXT"),
    ("ca_key", "TEXT"),
    ("actor", "TEXT"),
    ("claims", "TEXT"),
];

fn err(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The SQLite store.
pub struct Sqlite {
    /// The connection; report queries in sibling modules use it read-only.
    pub(crate) conn: Connection,
}

impl Sqlite {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<Sqlite, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(busy_timeout).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        migrate(&conn)?;
        migrate_chain(&conn)?;
        super::replicas::migrate(&conn)?;
        super::hosts::migrate(&conn)?;
        super::sessions::migrate(&conn)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(Sqlite { conn })
    }
}

impl Sqlite {
    /// Number of audit records of `event` (e.g. `cert_issued`).
    pub fn count_events(&self, event: &str) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM audit WHERE event = ?1",
                [event],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(err)
    }
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let mut st = conn
        .prepare("SELECT name FROM pragma_table_info('audit')")
        .map_err(err)?;
    let have: Vec<String> = st
        .query_map([], |r| r.get(0))
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)?;
    for (col, ty) in ADDED_AUDIT_COLUMNS {
        if !have.iter().any(|h| h == col) {
            conn.execute_batch(&format!("ALTER TABLE audit ADD COLUMN {col} {ty}"))
                .map_err(err)?;
        }
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS audit_live ON audit(valid_before) WHERE event = 'cert_issued';
         UPDATE meta SET v = '2' WHERE k = 'schema_version';",
    )
    .map_err(err)
}

/// Appends `records` to the hash chain. Runs inside a write transaction
/// (IMMEDIATE: the write lock is held), so the head read here is the head
/// for every process that writes this database (`mayfly revoke` on the CA
/// host included): nothing is cached between transactions.
pub(crate) fn insert_audit(
    tx: &rusqlite::Transaction<'_>,
    records: &[AuditRecord],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut head = chain_head(tx)?;
    insert_audit_at(tx, &mut head, records)
}

/// As [`insert_audit`], continuing from `head` (the last seq and hash,
/// read once per transaction) and advancing it.
fn insert_audit_at(
    tx: &rusqlite::Transaction<'_>,
    head: &mut (u64, Hash),
    records: &[AuditRecord],
) -> Result<(), StoreError> {
    let (mut seq, mut prev) = *head;
    let mut st = tx
        .prepare_cached(
            "INSERT INTO audit (seq, time_ms, event, request_id, client_addr, issuer, subject, role,
                reason_code, reason, serial, key_id, principals, valid_after, valid_before,
                key_fingerprint, token_id, token_exp, policy_digest, cert_type, ca_key, actor,
                claims, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)",
        )
        .map_err(err)?;
    let mut scratch = Vec::with_capacity(1024);
    for r in records {
        seq += 1;
        let row = stored_form(r, seq);
        let hash = chain::record_hash_with(&row, &prev, &mut scratch);
        insert_audit_row(&mut st, &row, seq, &prev, &hash).map_err(err)?;
        prev = hash;
    }
    *head = (seq, prev);
    Ok(())
}

/// The revocation in columns `first..first + 6` of `r`: `ca_key, serial,
/// key_id, expires_at, reason, actor` (the `revocations` table's order).
pub(super) fn revocation_at(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Revocation> {
    Ok(Revocation {
        ca_key: r.get(first)?,
        serial: r.get::<_, Option<i64>>(first + 1)?.map(|s| s as u64),
        key_id: r.get(first + 2)?,
        expires_at: r.get::<_, i64>(first + 3)? as u64,
        reason: r.get(first + 4)?,
        actor: r.get(first + 5)?,
    })
}

/// Inserts one chained audit row at `seq` with its `prev` and `hash`
/// through `st`, the prepared `INSERT INTO audit` of every column in
/// table order (the append path and the import share it).
pub(super) fn insert_audit_row(
    st: &mut rusqlite::CachedStatement<'_>,
    row: &StoredRecord,
    seq: u64,
    prev: &Hash,
    hash: &Hash,
) -> rusqlite::Result<usize> {
    st.execute(params![
        seq as i64,
        row.time_ms,
        row.event,
        row.request_id,
        row.client_addr,
        row.issuer,
        row.subject,
        row.role,
        row.reason_code,
        row.reason,
        row.serial,
        row.key_id,
        chain::principals_json(&row.principals),
        row.valid_after,
        row.valid_before,
        row.key_fingerprint,
        row.token_id,
        row.token_exp,
        row.policy_digest,
        row.cert_type,
        row.ca_key,
        row.actor,
        row.claims,
        &prev[..],
        &hash[..],
    ])
}

/// The disabled entry, if any, that blocks `issuer`/`subject` in `role`:
/// the identity everywhere, the identity in this role, or the whole role.
fn disabled_entry(
    conn: &Connection,
    issuer: &str,
    subject: &str,
    role: &str,
) -> Result<Option<DisableTarget>, StoreError> {
    use rusqlite::OptionalExtension as _;
    conn.prepare_cached(
        "SELECT issuer, subject, role FROM disabled
         WHERE (issuer = ?1 AND subject = ?2 AND (role = '' OR role = ?3))
            OR (issuer = '' AND subject = '' AND role = ?3)
         LIMIT 1",
    )
    .and_then(|mut st| {
        st.query_row(params![issuer, subject, role], target_of)
            .optional()
    })
    .map_err(err)
}

/// Whether any identity, role or issuer is deactivated.
fn any_disabled(conn: &Connection) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM disabled)")
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .map_err(err)
}

/// The target of a `disabled` row from its first three columns (see
/// [`DisableTarget::columns`]). A row naming nothing is an error, so a
/// damaged table fails the read (and an issuance that checks it) instead
/// of being skipped.
fn target_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<DisableTarget> {
    DisableTarget::from_columns(r.get(0)?, r.get(1)?, r.get(2)?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Checks `guard` inside the transaction `tx`; on success writes the
/// redeemed approval's new state and its audit record.
fn check_guard(
    tx: &rusqlite::Transaction<'_>,
    head: &mut (u64, Hash),
    guard: &IssueGuard,
    any_disabled: bool,
    now: u64,
) -> Result<Result<(), GuardRefusal>, StoreError> {
    use crate::approval::ApprovalError;
    if any_disabled {
        if let Some(d) = disabled_entry(tx, &guard.issuer, &guard.subject, &guard.role)? {
            return Ok(Err(GuardRefusal::Disabled(d)));
        }
    }
    if let Some(p) = &guard.renews {
        if renewed_cert_revoked(tx, p)? {
            return Ok(Err(GuardRefusal::RenewsRevoked {
                serial: p.serial,
                key_id: p.key_id.clone(),
            }));
        }
    }
    if let Some(max) = guard.max_active {
        let filter = CertFilter::Identity {
            issuer: guard.issuer.clone(),
            subject: guard.subject.clone(),
            role: Some(guard.role.clone()),
        };
        let renewed = guard.renews.as_ref().is_some_and(|p| p.valid_at(now));
        let live =
            (live_certs_on(tx, &filter, now)?.len() as u64).saturating_sub(u64::from(renewed));
        if live >= u64::from(max) {
            return Ok(Err(GuardRefusal::TooManyActive { live, max }));
        }
    }
    if let Some(r) = &guard.redeem {
        let Some(mut a) = super::approvals::approval_get_on(tx, &r.id)? else {
            return Ok(Err(ApprovalError::NotFound(r.id.clone()).into()));
        };
        if let Err(e) = crate::approval::redeem(
            &mut a,
            (&guard.issuer, &guard.subject, &guard.role),
            &r.key_fingerprint,
            r.renews_key.as_deref(),
            now,
        ) {
            return Ok(Err(e.into()));
        }
        super::approvals::approval_write_on(tx, &a)?;
        insert_audit_at(tx, head, std::slice::from_ref(&r.record))?;
    }
    Ok(Ok(()))
}

/// Whether a revocation names the certificate a renewal presents.
fn renewed_cert_revoked(
    conn: &Connection,
    p: &crate::ca::renewal::PreviousCert,
) -> Result<bool, StoreError> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM revocations WHERE ca_key = ?1 AND (serial = ?2 OR key_id = ?3))",
    )
    .and_then(|mut st| st.query_row(params![p.ca_key, p.serial as i64, p.key_id], |r| r.get(0)))
    .map_err(err)
}

/// Issued certificates matching `filter` that are valid at `now` and not revoked.
fn live_certs_on(
    conn: &Connection,
    filter: &CertFilter,
    now: u64,
) -> Result<Vec<IssuedCert>, StoreError> {
    let (sql, args) = live_sql(filter, now);
    let mut st = conn.prepare_cached(&sql).map_err(err)?;
    let rows = st
        .query_map(rusqlite::params_from_iter(args), |r| {
            Ok(IssuedCert {
                serial: r.get::<_, i64>(0)? as u64,
                key_id: r.get(1)?,
                cert_type: r.get(2)?,
                role: r.get(3)?,
                issuer: r.get(4)?,
                subject: r.get(5)?,
                valid_before: r.get::<_, i64>(6)? as u64,
                ca_key: r.get(7)?,
            })
        })
        .map_err(err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(err)
}

/// The SQL of [`live_certs_on`] and its parameters.
fn live_sql(filter: &CertFilter, now: u64) -> (String, Vec<rusqlite::types::Value>) {
    let base = "SELECT serial, COALESCE(key_id, ''), COALESCE(cert_type, 'user'), COALESCE(role, ''),
                COALESCE(issuer, ''), COALESCE(subject, ''), valid_before, COALESCE(ca_key, '')
                FROM audit a WHERE event = 'cert_issued' AND valid_before > ?1 AND serial IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM revocations r
                    WHERE r.ca_key = a.ca_key AND (r.serial = a.serial OR r.key_id = a.key_id))";
    let now = now as i64;
    match filter {
        CertFilter::Serial(n) => (
            format!("{base} AND serial = ?2"),
            vec![now.into(), (*n as i64).into()],
        ),
        CertFilter::KeyId(k) => {
            use super::key_id_index::{condition, serial_of, SQLITE_INDEXED};
            let serial = serial_of(k);
            let cond = condition(SQLITE_INDEXED, "?2", serial.map(|_| "?3"));
            let mut args = vec![now.into(), k.clone().into()];
            args.extend(serial.map(Into::into));
            (format!("{base} AND {cond}"), args)
        }
        CertFilter::Role(r) => (
            format!("{base} AND role = ?2"),
            vec![now.into(), r.clone().into()],
        ),
        CertFilter::Identity {
            issuer,
            subject,
            role: None,
        } => (
            format!("{base} AND issuer = ?2 AND subject = ?3"),
            vec![now.into(), issuer.clone().into(), subject.clone().into()],
        ),
        CertFilter::Identity {
            issuer,
            subject,
            role: Some(role),
        } => (
            format!("{base} AND issuer = ?2 AND subject = ?3 AND role = ?4"),
            vec![
                now.into(),
                issuer.clone().into(),
                subject.clone().into(),
                role.clone().into(),
            ],
        ),
    }
}

/// Inserts revocations (already-revoked entries are kept once).
fn insert_revocations(
    tx: &rusqlite::Transaction<'_>,
    revocations: &[Revocation],
    now: u64,
) -> Result<(), StoreError> {
    let mut st = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO revocations (time_ms, ca_key, serial, key_id, expires_at, reason, actor)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(err)?;
    for r in revocations {
        st.execute(params![
            (now as i64) * 1000,
            r.ca_key,
            opt_i64(r.serial),
            r.key_id,
            r.expires_at as i64,
            r.reason,
            r.actor
        ])
        .map_err(err)?;
    }
    Ok(())
}

/// The last used seq and the hash the next record links to. The next seq
/// continues after both the highest row and SQLite's AUTOINCREMENT counter,
/// so rows deleted from the end leave a visible gap instead of being
/// silently re-used.
pub(crate) fn chain_head(conn: &Connection) -> Result<(u64, Hash), StoreError> {
    use rusqlite::OptionalExtension as _;
    let last: Option<(i64, Option<Vec<u8>>)> = conn
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .and_then(|mut st| {
            st.query_row([], |r| Ok((r.get(0)?, r.get(1).ok().flatten())))
                .optional()
        })
        .map_err(err)?;
    let counter: Option<i64> = conn
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'audit'")
        .and_then(|mut st| st.query_row([], |r| r.get(0)).optional())
        .map_err(err)?;
    let last_seq = last.as_ref().map(|(s, _)| *s).unwrap_or(0);
    let seq = last_seq.max(counter.unwrap_or(0)).max(0) as u64;
    let prev = match last {
        None => chain::GENESIS,
        Some((_, Some(h))) if h.len() == 32 => {
            let mut out = [0u8; 32];
            out.copy_from_slice(&h);
            out
        }
        Some((s, _)) => {
            // Only a row written outside mayfly lacks a hash; `audit verify`
            // reports it. Issuance goes on, linked to the zero hash.
            tracing::error!(
                seq = s,
                "audit: the last audit record has no valid chain hash (written outside mayfly?); run `mayfly audit verify`"
            );
            chain::GENESIS
        }
    };
    Ok((seq, prev))
}

/// Audit-chain schema added in schema version 3: the chain columns and
/// signed checkpoints. There is deliberately no index on time: every
/// index slows each insert, and `export --since` scans once.
const CHAIN_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    seq             INTEGER NOT NULL,
    hash            BLOB NOT NULL,
    time_ms         INTEGER NOT NULL,
    key_fingerprint TEXT NOT NULL,
    signature       TEXT NOT NULL
);
"#;

/// The index behind `audit search --key-id` and `revoke --key-id` ("which
/// job was this login?"): partial, see [`super::key_id_index`]. A database
/// written before holds the full index, which is replaced once.
fn key_id_index_schema() -> String {
    use super::key_id_index::{INDEX, OLD_INDEX, SQLITE_INDEXED};
    format!(
        "DROP INDEX IF EXISTS {OLD_INDEX};
         CREATE INDEX IF NOT EXISTS {INDEX} ON audit(key_id) WHERE {SQLITE_INDEXED};"
    )
}

/// Columns of the audit table that the chain hash covers, in encoding
/// order, followed by the chain columns. Reads select exactly these.
pub(crate) const AUDIT_COLUMNS: &str = "seq, time_ms, event, request_id, client_addr, issuer, \
    subject, role, reason_code, reason, serial, key_id, principals, valid_after, valid_before, \
    key_fingerprint, token_id, token_exp, policy_digest, cert_type, ca_key, actor, claims, \
    prev_hash, hash";

/// Meta keys of the chain.
pub(crate) const META_LEGACY_THROUGH: &str = "audit_chain_legacy_through";
pub(crate) const META_MIGRATED_AT: &str = "audit_chain_migrated_at_ms";
pub(crate) const META_STREAM_CURSOR: &str = "audit_stream_cursor";

fn table_columns(conn: &Connection, table: &str) -> Result<Vec<String>, StoreError> {
    let mut st = conn
        .prepare("SELECT name FROM pragma_table_info(?1)")
        .map_err(err)?;
    let cols = st
        .query_map([table], |r| r.get(0))
        .map_err(err)?
        .collect::<Result<Vec<String>, _>>()
        .map_err(err);
    cols
}

/// Adds the chain columns and tables, and chains the records of a database
/// written before the chain existed, once (recorded in `meta`).
fn migrate_chain(conn: &Connection) -> Result<(), StoreError> {
    let have = table_columns(conn, "audit")?;
    for col in ["prev_hash", "hash"] {
        if !have.iter().any(|h| h == col) {
            conn.execute_batch(&format!("ALTER TABLE audit ADD COLUMN {col} BLOB"))
                .map_err(err)?;
        }
    }
    conn.execute_batch(CHAIN_SCHEMA).map_err(err)?;
    conn.execute_batch(&key_id_index_schema()).map_err(err)?;
    if legacy_rows_unchained(conn)? {
        chain_legacy_rows(conn)?;
    }
    Ok(())
}

/// True when rows exist, none has a hash, and no migration was recorded:
/// a database from before the chain. (Once anything is chained, a row
/// without a hash is evidence for `audit verify`, never chained here.)
fn legacy_rows_unchained(conn: &Connection) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM audit)
            AND NOT EXISTS(SELECT 1 FROM audit WHERE hash IS NOT NULL)
            AND NOT EXISTS(SELECT 1 FROM meta WHERE k = ?1)",
        [META_LEGACY_THROUGH],
        |r| r.get(0),
    )
    .map_err(err)
}

fn chain_legacy_rows(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
    let result = (|| {
        // Another process may have done it while we waited for the lock.
        if !legacy_rows_unchained(conn)? {
            return Ok(0u64);
        }
        let mut prev = chain::GENESIS;
        let mut last = 0u64;
        let mut count = 0u64;
        let mut scratch = Vec::with_capacity(1024);
        loop {
            let mut rows = Vec::with_capacity(10_000);
            scan_rows(conn, last + 1, Some(10_000), &mut |r| {
                rows.push(r);
                true
            })?;
            if rows.is_empty() {
                break;
            }
            let mut up = conn
                .prepare_cached("UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3")
                .map_err(err)?;
            for row in rows {
                match row {
                    Ok(r) => {
                        let h = chain::record_hash_with(&r, &prev, &mut scratch);
                        up.execute(params![&prev[..], &h[..], r.seq as i64])
                            .map_err(err)?;
                        prev = h;
                        last = r.seq;
                        count += 1;
                    }
                    Err(bad) => {
                        // Left unchained: `audit verify` names it.
                        tracing::warn!(seq = bad.seq, reason = %bad.what,
                            "audit: legacy record cannot be read; left unchained");
                        last = bad.seq;
                    }
                }
            }
        }
        conn.execute(
            "INSERT OR REPLACE INTO meta (k, v) VALUES (?1, ?2), (?3, ?4)",
            params![
                META_LEGACY_THROUGH,
                last.to_string(),
                META_MIGRATED_AT,
                now_ms().to_string()
            ],
        )
        .map_err(err)?;
        conn.execute("UPDATE meta SET v = '3' WHERE k = 'schema_version'", [])
            .map_err(err)?;
        Ok(count)
    })();
    match result {
        Ok(n) => {
            conn.execute_batch("COMMIT").map_err(err)?;
            if n > 0 {
                tracing::info!(
                    records = n,
                    "audit: chained {n} records written before the hash chain existed; \
                     changes made to them before now cannot be detected"
                );
            }
            Ok(())
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn col_text(row: &rusqlite::Row<'_>, i: usize, name: &str) -> Result<Option<String>, String> {
    use rusqlite::types::ValueRef;
    match row.get_ref(i).map_err(|e| e.to_string())? {
        ValueRef::Null => Ok(None),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map(|s| Some(s.to_string()))
            .map_err(|_| format!("column {name} is not valid UTF-8")),
        other => Err(format!(
            "column {name} holds {:?} data, not text",
            other.data_type()
        )),
    }
}

fn col_int(row: &rusqlite::Row<'_>, i: usize, name: &str) -> Result<Option<i64>, String> {
    use rusqlite::types::ValueRef;
    match row.get_ref(i).map_err(|e| e.to_string())? {
        ValueRef::Null => Ok(None),
        ValueRef::Integer(n) => Ok(Some(n)),
        other => Err(format!(
            "column {name} holds {:?} data, not an integer",
            other.data_type()
        )),
    }
}

fn col_hash(row: &rusqlite::Row<'_>, i: usize, name: &str) -> Result<Option<Hash>, String> {
    use rusqlite::types::ValueRef;
    match row.get_ref(i).map_err(|e| e.to_string())? {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(b) if b.len() == 32 => {
            let mut h = [0u8; 32];
            h.copy_from_slice(b);
            Ok(Some(h))
        }
        other => Err(format!(
            "column {name} is not a 32-byte hash ({:?})",
            other.data_type()
        )),
    }
}

fn required<T>(v: Option<T>, name: &str) -> Result<T, String> {
    v.ok_or_else(|| format!("column {name} is NULL"))
}

/// Reads one row selected with [`AUDIT_COLUMNS`], strictly: a value of a
/// type mayfly never writes is an error, not a conversion.
fn read_row(row: &rusqlite::Row<'_>) -> Result<Result<StoredRecord, BadRow>, rusqlite::Error> {
    let seq_raw: i64 = row.get(0)?;
    let seq = seq_raw.max(0) as u64;
    let parse = || -> Result<StoredRecord, String> {
        if seq_raw <= 0 {
            return Err(format!("seq {seq_raw} is not positive"));
        }
        let principals_text = required(col_text(row, 12, "principals")?, "principals")?;
        let principals: Vec<String> = serde_json::from_str(&principals_text)
            .map_err(|_| "column principals is not a JSON array of strings".to_string())?;
        if chain::principals_json(&principals) != principals_text {
            return Err("column principals is not in canonical JSON form".into());
        }
        Ok(StoredRecord {
            seq,
            time_ms: required(col_int(row, 1, "time_ms")?, "time_ms")?,
            event: required(col_text(row, 2, "event")?, "event")?,
            request_id: required(col_text(row, 3, "request_id")?, "request_id")?,
            client_addr: col_text(row, 4, "client_addr")?,
            issuer: col_text(row, 5, "issuer")?,
            subject: col_text(row, 6, "subject")?,
            role: col_text(row, 7, "role")?,
            reason_code: col_text(row, 8, "reason_code")?,
            reason: col_text(row, 9, "reason")?,
            serial: col_int(row, 10, "serial")?,
            key_id: col_text(row, 11, "key_id")?,
            principals,
            valid_after: col_int(row, 13, "valid_after")?,
            valid_before: col_int(row, 14, "valid_before")?,
            key_fingerprint: col_text(row, 15, "key_fingerprint")?,
            token_id: col_text(row, 16, "token_id")?,
            token_exp: col_int(row, 17, "token_exp")?,
            policy_digest: col_text(row, 18, "policy_digest")?,
            cert_type: col_text(row, 19, "cert_type")?,
            ca_key: col_text(row, 20, "ca_key")?,
            actor: col_text(row, 21, "actor")?,
            claims: col_text(row, 22, "claims")?,
            prev_hash: col_hash(row, 23, "prev_hash")?,
            hash: col_hash(row, 24, "hash")?,
        })
    };
    Ok(parse().map_err(|what| BadRow { seq, what }))
}

/// Calls `f` with each record from `from_seq` on, in seq order, until it
/// returns false or `limit` rows were read.
fn scan_rows(
    conn: &Connection,
    from_seq: u64,
    limit: Option<usize>,
    f: &mut dyn FnMut(Result<StoredRecord, BadRow>) -> bool,
) -> Result<(), StoreError> {
    let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE seq >= ?1 ORDER BY seq LIMIT ?2");
    let mut st = conn.prepare_cached(&sql).map_err(err)?;
    let limit = limit.map(|l| l as i64).unwrap_or(-1);
    let mut rows = st
        .query(params![from_seq.min(i64::MAX as u64) as i64, limit])
        .map_err(err)?;
    while let Some(row) = rows.next().map_err(err)? {
        if !f(read_row(row).map_err(err)?) {
            break;
        }
    }
    Ok(())
}

/// The audit-chain queries: verification, export, search, checkpoints.
impl Sqlite {
    /// Opens an existing database read-only: no schema change, no
    /// migration (for `audit verify`, `export`, `search`).
    pub fn open_read_only(path: &Path, busy_timeout: Duration) -> Result<Sqlite, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(busy_timeout).map_err(err)?;
        let cols = table_columns(&conn, "audit")?;
        if cols.is_empty() {
            return Err(StoreError::Backend(format!(
                "{} has no audit table",
                path.display()
            )));
        }
        for col in ["prev_hash", "hash", "cert_type", "ca_key", "actor"] {
            if !cols.iter().any(|c| c == col) {
                return Err(StoreError::Backend(format!(
                    "{} predates the audit hash chain (no {col} column); start this version of \
                     mayfly on it once to upgrade it",
                    path.display()
                )));
            }
        }
        if !cols.iter().any(|c| c == "claims") {
            // A database from before job claims, opened without changing
            // it: a temporary view (temp objects shadow main ones) gives
            // its records the NULL claims they were hashed without.
            conn.execute_batch(
                "CREATE TEMP VIEW audit AS SELECT *, NULL AS claims FROM main.audit",
            )
            .map_err(err)?;
        }
        Ok(Sqlite { conn })
    }

    /// Calls `f` with each audit record from `from_seq` on, in seq order,
    /// until it returns false or `limit` records were read. Rows that cannot
    /// be read as records come as `Err`.
    pub fn scan_audit(
        &self,
        from_seq: u64,
        limit: Option<usize>,
        f: &mut dyn FnMut(Result<StoredRecord, BadRow>) -> bool,
    ) -> Result<(), StoreError> {
        scan_rows(&self.conn, from_seq, limit, f)
    }

    /// The record at `seq`, if present.
    pub fn audit_record(
        &self,
        seq: u64,
    ) -> Result<Option<Result<StoredRecord, BadRow>>, StoreError> {
        let mut out = None;
        scan_rows(&self.conn, seq, Some(1), &mut |r| {
            let at = match &r {
                Ok(x) => x.seq,
                Err(b) => b.seq,
            };
            if at == seq {
                out = Some(r);
            }
            false
        })?;
        Ok(out)
    }

    /// The highest seq present and its hash (None when the log is empty).
    pub fn audit_head(&self) -> Result<Option<(u64, Option<Hash>)>, StoreError> {
        use rusqlite::OptionalExtension as _;
        let last: Option<(i64, Option<Vec<u8>>)> = self
            .conn
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1).ok().flatten())),
            )
            .optional()
            .map_err(err)?;
        Ok(last.map(|(s, h)| {
            let h = h.filter(|h| h.len() == 32).map(|h| {
                let mut out = [0u8; 32];
                out.copy_from_slice(&h);
                out
            });
            (s.max(0) as u64, h)
        }))
    }

    /// Where an export `--since time_ms` starts: the record after the last
    /// one older than `time_ms`, so the export is one contiguous run to the
    /// head. Scans back from the head (no time index), so a recent `--since`
    /// reads only the recent tail. `None` when nothing is that new.
    pub fn first_seq_since(&self, time_ms: i64) -> Result<Option<u64>, StoreError> {
        let older: Option<i64> = self
            .conn
            .query_row(
                "SELECT MAX(seq) FROM (SELECT seq FROM audit WHERE time_ms < ?1 ORDER BY seq DESC LIMIT 1)",
                [time_ms],
                |r| r.get(0),
            )
            .map_err(err)?;
        let first = older.unwrap_or(0).max(0) as u64 + 1;
        let head = self.audit_head()?.map(|(s, _)| s).unwrap_or(0);
        Ok((first <= head).then_some(first))
    }

    /// Chain facts kept beside the records.
    pub fn chain_meta(&self) -> Result<ChainMeta, StoreError> {
        use rusqlite::OptionalExtension as _;
        let meta = |k: &str| -> Result<Option<String>, StoreError> {
            self.conn
                .query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0))
                .optional()
                .map_err(err)
        };
        let counter = |name: &str| -> Result<u64, StoreError> {
            self.conn
                .query_row(
                    "SELECT seq FROM sqlite_sequence WHERE name = ?1",
                    [name],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map(|v| v.unwrap_or(0).max(0) as u64)
                .map_err(err)
        };
        Ok(ChainMeta {
            legacy_through: meta(META_LEGACY_THROUGH)?.and_then(|v| v.parse().ok()),
            migrated_at_ms: meta(META_MIGRATED_AT)?.and_then(|v| v.parse().ok()),
            seq_counter: counter("audit")?,
            max_seq: self.audit_head()?.map(|(s, _)| s).unwrap_or(0),
            checkpoint_counter: counter("audit_checkpoints")?,
        })
    }

    /// Calls `f` with every checkpoint, oldest first (streamed: a CA
    /// signs up to one a minute, half a million a year).
    pub fn scan_checkpoints(
        &self,
        f: &mut dyn FnMut(Result<Checkpoint, BadRow>),
    ) -> Result<(), StoreError> {
        let mut after = 0i64;
        loop {
            let page = self.checkpoints_page(after, 10_000)?;
            let n = page.len();
            for (id, cp) in page {
                after = id;
                f(cp);
            }
            if n < 10_000 {
                return Ok(());
            }
        }
    }

    /// Up to `limit` checkpoints with an id above `after_id`, oldest
    /// first, each with its id.
    pub fn checkpoints_page(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<super::traits::CheckpointPage, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, seq, hash, time_ms, key_fingerprint, signature
                 FROM audit_checkpoints WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(err)?;
        let mut rows = st
            .query(params![after_id, limit.min(i64::MAX as usize) as i64])
            .map_err(err)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(err)? {
            let id: i64 = row.get(0).map_err(err)?;
            let seq = col_int(row, 1, "seq").ok().flatten().unwrap_or(0).max(0) as u64;
            let parse = || -> Result<Checkpoint, String> {
                Ok(Checkpoint {
                    id,
                    seq,
                    hash: required(col_hash(row, 2, "hash")?, "hash")?,
                    time_ms: required(col_int(row, 3, "time_ms")?, "time_ms")?,
                    key_fingerprint: required(
                        col_text(row, 4, "key_fingerprint")?,
                        "key_fingerprint",
                    )?,
                    signature: required(col_text(row, 5, "signature")?, "signature")?,
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

    /// The latest checkpoint's (seq, hash), if any (not verified).
    pub fn checkpoints_last(&self) -> Result<Option<(u64, Hash)>, StoreError> {
        use rusqlite::OptionalExtension as _;
        let row: Option<(i64, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT seq, hash FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(err)?;
        Ok(row.and_then(|(s, h)| {
            <[u8; 32]>::try_from(h.as_slice())
                .ok()
                .map(|h| (s.max(0) as u64, h))
        }))
    }

    /// The latest checkpoint's (seq, time_ms), if any (not verified).
    pub fn checkpoints_last_at(&self) -> Result<Option<(u64, i64)>, StoreError> {
        use rusqlite::OptionalExtension as _;
        let row: Option<(i64, i64)> = self
            .conn
            .query_row(
                "SELECT seq, time_ms FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(err)?;
        Ok(row.map(|(s, t)| (s.max(0) as u64, t)))
    }

    /// Signs the current chain head with `sign` and stores the checkpoint,
    /// in one write transaction (so the head cannot move in between).
    /// Returns `None` when the log is empty or the head is already
    /// checkpointed. `sign(seq, hash, time_ms)` returns the signature text.
    pub fn write_checkpoint(
        &mut self,
        key_fingerprint: &str,
        time_ms: i64,
        sign: impl FnOnce(u64, &Hash, i64) -> Result<String, String>,
    ) -> Result<Option<Checkpoint>, StoreError> {
        use rusqlite::OptionalExtension as _;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let head: Option<(i64, Option<Vec<u8>>)> = tx
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1).ok().flatten())),
            )
            .optional()
            .map_err(err)?;
        let Some((seq, Some(hash))) = head else {
            return Ok(None);
        };
        let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else {
            return Ok(None);
        };
        let seq = seq.max(0) as u64;
        let last: Option<i64> = tx
            .query_row(
                "SELECT seq FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?;
        if last == Some(seq as i64) {
            return Ok(None);
        }
        let signature = sign(seq, &hash, time_ms).map_err(StoreError::Backend)?;
        tx.execute(
            "INSERT INTO audit_checkpoints (seq, hash, time_ms, key_fingerprint, signature)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![seq as i64, &hash[..], time_ms, key_fingerprint, signature],
        )
        .map_err(err)?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(err)?;
        Ok(Some(Checkpoint {
            id,
            seq,
            hash,
            time_ms,
            key_fingerprint: key_fingerprint.to_string(),
            signature,
        }))
    }

    /// Where live streaming to the audit sinks got to (last seq sent).
    pub fn stream_cursor(&self) -> Result<Option<u64>, StoreError> {
        use rusqlite::OptionalExtension as _;
        self.conn
            .query_row(
                "SELECT v FROM meta WHERE k = ?1",
                [META_STREAM_CURSOR],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map(|v| v.and_then(|v| v.parse().ok()))
            .map_err(err)
    }

    /// Saves the streaming cursor.
    pub fn set_stream_cursor(&mut self, seq: u64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES (?1, ?2)",
                params![META_STREAM_CURSOR, seq.to_string()],
            )
            .map(|_| ())
            .map_err(err)
    }

    /// Records matching `q`, newest first, at most `q.limit`.
    pub fn search_audit(
        &self,
        q: &AuditQuery,
    ) -> Result<Vec<Result<StoredRecord, BadRow>>, StoreError> {
        let (sql, args) = search_sql(q);
        let mut st = self.conn.prepare(&sql).map_err(err)?;
        let mut rows = st.query(rusqlite::params_from_iter(args)).map_err(err)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(err)? {
            out.push(read_row(row).map_err(err)?);
        }
        Ok(out)
    }
}

/// The SQL of [`Sqlite::search_audit`] and its parameters.
fn search_sql(q: &AuditQuery) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE 1 = 1");
    let mut args: Vec<Value> = Vec::new();
    let mut add = |cond: &str, v: Value| {
        args.push(v);
        sql.push_str(&format!(" AND {cond} ?{}", args.len()));
    };
    if let Some(s) = &q.subject {
        add("subject =", s.clone().into());
    }
    if let Some(s) = &q.issuer {
        add("issuer =", s.clone().into());
    }
    if let Some(s) = &q.role {
        add("role =", s.clone().into());
    }
    if let Some(s) = &q.event {
        add("event =", s.clone().into());
    }
    if let Some(t) = q.since_ms {
        add("time_ms >=", t.into());
    }
    if let Some(n) = q.serial {
        // A revocation keeps the serial it revoked in its reason
        // ("serial N: ..."), since only issuance claims the column.
        args.push((n as i64).into());
        args.push(format!("serial {n}:%").into());
        sql.push_str(&format!(
                " AND (serial = ?{} OR (event = 'cert_revoked' AND serial IS NULL AND reason LIKE ?{}))",
                args.len() - 1,
                args.len()
            ));
    }
    if let Some(k) = &q.key_id {
        use super::key_id_index::{condition, serial_of, SQLITE_INDEXED};
        let serial = serial_of(k);
        args.push(k.clone().into());
        let key = format!("?{}", args.len());
        let serial_at = serial.map(|n| {
            args.push(n.into());
            format!("?{}", args.len())
        });
        sql.push_str(" AND ");
        sql.push_str(&condition(SQLITE_INDEXED, &key, serial_at.as_deref()));
    }
    sql.push_str(&format!(" ORDER BY seq DESC LIMIT {}", q.limit.max(1)));
    (sql, args)
}

fn bump_version(tx: &rusqlite::Transaction<'_>, now: u64) -> Result<StateVersion, StoreError> {
    tx.execute(
        "UPDATE meta SET v = CAST(CAST(v AS INTEGER) + 1 AS TEXT) WHERE k = 'state_version'",
        [],
    )
    .map_err(err)?;
    // changed_at never goes backwards, even if the clock does.
    tx.execute(
        "UPDATE meta SET v = CAST(MAX(CAST(v AS INTEGER), ?1) AS TEXT) WHERE k = 'state_changed_at'",
        [now as i64],
    )
    .map_err(err)?;
    read_version(tx)
}

/// The state version at which the CA keys last changed (0: never, or
/// before this was recorded; a server loads its keys at start anyway).
fn keys_changed(conn: &Connection) -> Result<u64, StoreError> {
    conn.prepare_cached(
        "SELECT COALESCE((SELECT CAST(v AS INTEGER) FROM meta WHERE k = 'keys_changed'), 0)",
    )
    .and_then(|mut st| st.query_row([], |r| r.get::<_, i64>(0)))
    .map(|v| v as u64)
    .map_err(err)
}

fn read_version(conn: &Connection) -> Result<StateVersion, StoreError> {
    // Cached: a server reads this whenever another connection committed.
    let get = |k: &str| -> Result<u64, StoreError> {
        conn.prepare_cached("SELECT CAST(v AS INTEGER) FROM meta WHERE k = ?1")
            .and_then(|mut st| st.query_row([k], |r| r.get::<_, i64>(0)))
            .map(|v| v as u64)
            .map_err(err)
    };
    Ok(StateVersion {
        version: get("state_version")?,
        changed_at: get("state_changed_at")?,
    })
}

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|x| x as i64)
}

impl Backend for Sqlite {
    fn write_checkpoint(
        &mut self,
        key_fingerprint: &str,
        time_ms: i64,
        sign: CheckpointSigner,
    ) -> Result<Option<Checkpoint>, StoreError> {
        Sqlite::write_checkpoint(self, key_fingerprint, time_ms, sign)
    }

    fn set_stream_cursor(&mut self, seq: u64) -> Result<(), StoreError> {
        Sqlite::set_stream_cursor(self, seq)
    }

    fn replica_heartbeat(
        &mut self,
        beat: &crate::replica::Heartbeat,
    ) -> Result<Option<crate::replica::Heartbeat>, StoreError> {
        self.replica_heartbeat_impl(beat)
    }

    fn host_report(&mut self, row: &crate::fleet::HostRow) -> Result<Option<u64>, StoreError> {
        self.host_report_impl(row)
    }

    fn session_put(
        &mut self,
        key: &super::SessionKey,
        row: &super::SessionRow,
        now: u64,
    ) -> Result<(), StoreError> {
        self.session_put_impl(key, row, now)
    }

    fn session_delete(&mut self, key: &super::SessionKey) -> Result<(), StoreError> {
        self.session_delete_impl(key)
    }

    fn approval_put(
        &mut self,
        req: &crate::approval::ApprovalRequest,
        audit: &[AuditRecord],
    ) -> Result<(), StoreError> {
        self.approval_put_impl(req, audit)
    }

    fn approval_get(
        &mut self,
        id: &str,
    ) -> Result<Option<crate::approval::ApprovalRequest>, StoreError> {
        self.approval_get_impl(id)
    }

    fn approval_list(
        &mut self,
        status: Option<crate::approval::ApprovalStatus>,
    ) -> Result<Vec<crate::approval::ApprovalRequest>, StoreError> {
        self.approval_list_impl(status)
    }

    fn append_batch(&mut self, records: &[AuditRecord]) -> Result<(), StoreError> {
        // IMMEDIATE takes the write lock up front, so a locked database fails
        // here (after busy_timeout) rather than half-way through.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        insert_audit(&tx, records)?;
        tx.commit().map_err(err)
    }

    fn append_guarded(
        &mut self,
        records: &[GuardedRecord],
    ) -> Result<Vec<Result<(), GuardRefusal>>, StoreError> {
        if records
            .iter()
            .any(|(_, g)| g.as_ref().is_some_and(|g| !g.claims.is_empty()))
        {
            // This store's tokens are claimed before signing
            // (`claims_at_commit` is false): never commit unclaimed ones.
            return Err(StoreError::Backend(
                "token claims sent to a store that takes them before signing".into(),
            ));
        }
        if records
            .iter()
            .any(|(_, g)| g.as_ref().is_some_and(|g| g.redeem.is_some()))
        {
            self.approvals_schema()?;
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut head = chain_head(&tx)?;
        // Nothing in this transaction adds a deactivation, and the write
        // lock keeps others from adding one: with none at its start, no
        // guard of the batch needs to look one up.
        let look_up_disabled = records.iter().any(|(_, g)| g.is_some()) && any_disabled(&tx)?;
        // A change of the CA keys takes the write lock too: what is read
        // here holds until this transaction commits.
        let keys_changed_at = match records
            .iter()
            .any(|(_, g)| g.as_ref().is_some_and(|g| g.acted_on.is_some()))
        {
            true => Some(keys_changed(&tx)?),
            false => None,
        };
        let mut out = Vec::with_capacity(records.len());
        for (record, guard) in records {
            if let Some(g) = guard {
                if let Some(refusal) = g.stale(keys_changed_at) {
                    out.push(Err(refusal));
                    continue;
                }
                let now = record.time_ms / 1000;
                if let Err(refusal) = check_guard(&tx, &mut head, g, look_up_disabled, now)? {
                    out.push(Err(refusal));
                    continue;
                }
            }
            insert_audit_at(&tx, &mut head, std::slice::from_ref(record))?;
            out.push(Ok(()));
        }
        tx.commit().map_err(err)?;
        Ok(out)
    }

    fn revoke_matching(
        &mut self,
        filter: &CertFilter,
        now: u64,
        revoke: &dyn Fn(&IssuedCert) -> (Revocation, AuditRecord),
    ) -> Result<(Vec<IssuedCert>, StateVersion), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let certs = live_certs_on(&tx, filter, now)?;
        if certs.is_empty() {
            let v = read_version(&tx)?;
            return Ok((certs, v));
        }
        let (revocations, audit): (Vec<_>, Vec<_>) = certs.iter().map(revoke).unzip();
        insert_revocations(&tx, &revocations, now)?;
        insert_audit(&tx, &audit)?;
        let v = bump_version(&tx, now)?;
        tx.commit().map_err(err)?;
        Ok((certs, v))
    }

    fn disable_and_revoke(
        &mut self,
        key: &DisableTarget,
        entry: &DisabledEntry,
        audit: &AuditRecord,
        filter: &CertFilter,
        now: u64,
        revoke: &dyn Fn(&IssuedCert) -> (Revocation, AuditRecord),
    ) -> Result<(bool, Vec<IssuedCert>), StoreError> {
        let (issuer, subject, role) = key.columns();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let changed = tx
            .execute(
                "INSERT OR IGNORE INTO disabled (issuer, subject, role, time_ms, reason, actor)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    issuer,
                    subject,
                    role,
                    entry.time_ms as i64,
                    entry.reason,
                    entry.actor
                ],
            )
            .map_err(err)?;
        let mut head = chain_head(&tx)?;
        insert_audit_at(&tx, &mut head, std::slice::from_ref(audit))?;
        let certs = live_certs_on(&tx, filter, now)?;
        let (revocations, records): (Vec<_>, Vec<_>) = certs.iter().map(revoke).unzip();
        insert_revocations(&tx, &revocations, now)?;
        insert_audit_at(&tx, &mut head, &records)?;
        bump_version(&tx, now)?;
        tx.commit().map_err(err)?;
        Ok((changed > 0, certs))
    }

    fn max_serial(&mut self) -> Result<u64, StoreError> {
        let v: Option<i64> = self
            .conn
            .query_row("SELECT MAX(serial) FROM audit", [], |r| r.get(0))
            .map_err(err)?;
        // An imported CA's highest serial counts even where its records
        // do not (`mayfly store migrate`).
        let floor = super::sqlite_import::serial_floor(&self.conn)?;
        Ok((v.unwrap_or(0) as u64).max(floor))
    }

    fn used_tokens(&mut self, now: u64) -> Result<Vec<(String, u64)>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT token_id, token_exp FROM audit
                 WHERE token_id IS NOT NULL AND event = 'cert_issued' AND token_exp > ?1",
            )
            .map_err(err)?;
        let rows = st
            .query_map([now as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    fn live_certs(&mut self, filter: &CertFilter, now: u64) -> Result<Vec<IssuedCert>, StoreError> {
        live_certs_on(&self.conn, filter, now)
    }

    fn revoke(
        &mut self,
        revocations: &[Revocation],
        audit: &[AuditRecord],
        now: u64,
    ) -> Result<StateVersion, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        insert_revocations(&tx, revocations, now)?;
        insert_audit(&tx, audit)?;
        let v = bump_version(&tx, now)?;
        tx.commit().map_err(err)?;
        Ok(v)
    }

    fn live_revocations(&mut self, now: u64) -> Result<Vec<Revocation>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT ca_key, serial, key_id, expires_at, reason, actor FROM revocations
                 WHERE expires_at > ?1 ORDER BY id",
            )
            .map_err(err)?;
        let rows = st
            .query_map([now as i64], |r| revocation_at(r, 0))
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    fn set_disabled(
        &mut self,
        key: &DisableTarget,
        entry: Option<&DisabledEntry>,
        audit: &AuditRecord,
        now: u64,
    ) -> Result<bool, StoreError> {
        let (issuer, subject, role) = key.columns();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let changed = match entry {
            Some(e) => tx
                .execute(
                    "INSERT OR IGNORE INTO disabled (issuer, subject, role, time_ms, reason, actor)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![issuer, subject, role, e.time_ms as i64, e.reason, e.actor],
                )
                .map_err(err)?,
            None => tx
                .execute(
                    "DELETE FROM disabled WHERE issuer = ?1 AND subject = ?2 AND role = ?3",
                    params![issuer, subject, role],
                )
                .map_err(err)?,
        };
        insert_audit(&tx, std::slice::from_ref(audit))?;
        bump_version(&tx, now)?;
        tx.commit().map_err(err)?;
        Ok(changed > 0)
    }

    fn disabled(&mut self) -> Result<Vec<DisabledEntry>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT issuer, subject, role, time_ms, reason, actor FROM disabled ORDER BY issuer, subject, role",
            )
            .map_err(err)?;
        let rows = st
            .query_map([], |r| {
                Ok(DisabledEntry {
                    key: target_of(r)?,
                    time_ms: r.get::<_, i64>(3)? as u64,
                    reason: r.get(4)?,
                    actor: r.get(5)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    fn state_version(&mut self) -> Result<StateVersion, StoreError> {
        read_version(&self.conn)
    }

    fn data_version(&mut self) -> Result<i64, StoreError> {
        self.conn
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut st| st.query_row([], |r| r.get(0)))
            .map_err(err)
    }

    fn last_expiry_by_ca(&mut self, ca_key: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = self
            .conn
            .query_row(
                "SELECT MAX(valid_before) FROM audit WHERE event = 'cert_issued' AND ca_key = ?1",
                [ca_key],
                |r| r.get(0),
            )
            .map_err(err)?;
        Ok(v.unwrap_or(0) as u64)
    }

    fn record_change(&mut self, audit: &AuditRecord, now: u64) -> Result<StateVersion, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        insert_audit(&tx, std::slice::from_ref(audit))?;
        let v = bump_version(&tx, now)?;
        // A change made this way may be one of the CA keys: issuances that
        // read the keys before it are refused at commit (`keys_changed`).
        tx.execute(
            "INSERT OR REPLACE INTO meta (k, v) VALUES ('keys_changed', ?1)",
            [v.version.to_string()],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(v)
    }
}

/// Whether `table` exists: a database opened read-only that no server of
/// this version has written lacks the newer tables.
pub(super) fn table_exists(conn: &Connection, table: &str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [table],
        |r| r.get(0),
    )
    .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::EventKind;

    fn rec(serial: u64) -> AuditRecord {
        let mut r = AuditRecord::new(EventKind::CertIssued, 1, "req");
        r.serial = Some(serial);
        r.token_id = Some(format!("gh:jti:{serial}"));
        r.token_exp = Some(1000);
        r
    }

    /// A live certificate of `ci`/`bot` in role `deploy`.
    fn issuance(serial: u64) -> AuditRecord {
        let mut r = rec(serial);
        r.time_ms = 1_000_000;
        r.issuer = Some("ci".into());
        r.subject = Some("bot".into());
        r.role = Some("deploy".into());
        r.ca_key = Some("ssh-ed25519 AAAA ca".into());
        r.key_id = Some(format!("k{serial}"));
        r.valid_before = Some(2_000);
        r
    }

    fn guard(max_active: Option<u32>) -> IssueGuard {
        IssueGuard {
            issuer: "ci".into(),
            subject: "bot".into(),
            role: "deploy".into(),
            max_active,
            redeem: None,
            renews: None,
            acted_on: None,
            claims: Vec::new(),
        }
    }

    fn open_tmp() -> (tempfile::TempDir, Sqlite) {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open(&dir.path().join("m.db"), Duration::from_secs(1)).unwrap();
        (dir, db)
    }

    #[test]
    fn an_issuance_after_the_disable_committed_is_refused_in_its_own_commit() {
        let (_d, mut db) = open_tmp();
        let key = DisableTarget::Identity {
            issuer: "ci".into(),
            subject: "bot".into(),
            role: None,
        };
        let entry = DisabledEntry {
            key: key.clone(),
            time_ms: 1,
            reason: "r".into(),
            actor: "a".into(),
        };
        let filter = CertFilter::Identity {
            issuer: "ci".into(),
            subject: "bot".into(),
            role: None,
        };
        let revoke = |c: &IssuedCert| {
            (
                Revocation {
                    ca_key: c.ca_key.clone(),
                    serial: Some(c.serial),
                    key_id: None,
                    expires_at: c.valid_before,
                    reason: "r".into(),
                    actor: "a".into(),
                },
                AuditRecord::new(crate::audit::EventKind::CertRevoked, 1, "admin"),
            )
        };
        let first = db
            .append_guarded(&[(issuance(1), Some(guard(None)))])
            .unwrap();
        assert_eq!(first, vec![Ok(())]);
        let audit = AuditRecord::new(crate::audit::EventKind::Disabled, 1, "admin");
        let (changed, swept) = db
            .disable_and_revoke(&key, &entry, &audit, &filter, 1_000, &revoke)
            .unwrap();
        assert!(changed);
        assert_eq!(swept.iter().map(|c| c.serial).collect::<Vec<_>>(), vec![1]);
        // The request passed every check before the flag; its commit comes
        // after: refused, nothing written.
        let late = db
            .append_guarded(&[(issuance(2), Some(guard(None)))])
            .unwrap();
        assert_eq!(late, vec![Err(GuardRefusal::Disabled(key))]);
        assert!(db.live_certs(&filter, 1_000).unwrap().is_empty());
        assert_eq!(db.count_events("cert_issued").unwrap(), 1);
        // A whole disabled role blocks every identity in it.
        let role = DisableTarget::Role("ops".into());
        db.set_disabled(
            &role,
            Some(&DisabledEntry {
                key: role.clone(),
                ..entry.clone()
            }),
            &audit,
            1,
        )
        .unwrap();
        let mut g = guard(None);
        g.issuer = "other".into();
        g.role = "ops".into();
        assert_eq!(
            db.append_guarded(&[(issuance(3), Some(g))]).unwrap(),
            vec![Err(GuardRefusal::Disabled(role))]
        );
    }

    #[test]
    fn max_active_is_exact_inside_one_group_commit() {
        let (_d, mut db) = open_tmp();
        let batch: Vec<GuardedRecord> = (1..=5)
            .map(|s| (issuance(s), Some(guard(Some(2)))))
            .collect();
        let out = db.append_guarded(&batch).unwrap();
        assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 2, "{out:?}");
        assert_eq!(out[2], Err(GuardRefusal::TooManyActive { live: 2, max: 2 }));
        assert_eq!(db.count_events("cert_issued").unwrap(), 2);
        // Unguarded records in the same batch are not affected.
        let out = db
            .append_guarded(&[(issuance(6), Some(guard(Some(2)))), (rec(7), None)])
            .unwrap();
        assert_eq!(out.len(), 2);
        assert!(out[0].is_err() && out[1].is_ok());
    }

    #[test]
    fn an_approval_is_redeemed_once_in_the_issuance_commit() {
        use crate::approval::{ApprovalError, ApprovalRequest, ApprovalStatus};
        let (_d, mut db) = open_tmp();
        let a = ApprovalRequest {
            id: "apr_1".into(),
            role: "deploy".into(),
            issuer: "ci".into(),
            subject: "bot".into(),
            key_fingerprint: "SHA256:k".into(),
            principals: vec!["deploy".into()],
            ttl_seconds: 60,
            created_at: crate::time::UnixSecs(1),
            expires_at: crate::time::UnixSecs(5_000),
            required: 1,
            status: ApprovalStatus::Approved,
            votes: vec![],
            requester_claims: Default::default(),
            cancelled: None,
            job_claims: Default::default(),
        };
        db.approval_put(&a, &[]).unwrap();
        let redeem = |fp: &str| {
            let mut g = guard(None);
            g.redeem = Some(crate::store::Redemption {
                id: "apr_1".into(),
                key_fingerprint: fp.into(),
                renews_key: None,
                record: AuditRecord::new(crate::audit::EventKind::ApprovalUsed, 1, "r"),
            });
            g
        };
        let out = db
            .append_guarded(&[
                (issuance(1), Some(redeem("SHA256:other"))),
                (issuance(2), Some(redeem("SHA256:k"))),
                (issuance(3), Some(redeem("SHA256:k"))),
            ])
            .unwrap();
        assert_eq!(out[0], Err(ApprovalError::Mismatch("apr_1".into()).into()));
        assert_eq!(out[1], Ok(()));
        assert_eq!(
            out[2],
            Err(ApprovalError::NotPending {
                id: "apr_1".into(),
                status: "used".into()
            }
            .into())
        );
        assert_eq!(
            db.approval_get("apr_1").unwrap().unwrap().status,
            ApprovalStatus::Used
        );
        assert_eq!(db.count_events("approval_used").unwrap(), 1);
        assert_eq!(db.count_events("cert_issued").unwrap(), 1);
    }

    #[test]
    fn records_survive_reopen_and_serials_are_unique() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.db");
        let mut s = Sqlite::open(&p, Duration::from_millis(100)).unwrap();
        s.append_batch(&[rec(5), rec(9)]).unwrap();
        assert!(
            s.append_batch(&[rec(9)]).is_err(),
            "duplicate serial accepted"
        );
        drop(s);
        let mut s = Sqlite::open(&p, Duration::from_millis(100)).unwrap();
        assert_eq!(s.max_serial().unwrap(), 9);
        assert_eq!(s.used_tokens(999).unwrap().len(), 2);
        assert_eq!(s.used_tokens(1000).unwrap().len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_all_commit_and_a_bad_one_fails_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.db");
        let store = crate::store::open(&crate::store::StoreConfig {
            backend: crate::config::StoreBackend::SQLite,
            sqlite_path: p.clone(),
            busy_timeout: Duration::from_millis(100),
            mode: crate::store::OpenMode::Create,
            postgres: None,
        })
        .unwrap();
        let mut tasks = Vec::new();
        for i in 1..=200u64 {
            let s = store.clone();
            // serial 7 twice: exactly one of them must fail.
            let serial = if i == 200 { 7 } else { i };
            tasks.push(tokio::spawn(async move { s.append(rec(serial)).await }));
        }
        let mut failed = 0;
        for t in tasks {
            if t.await.unwrap().is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 1);
        let mut s = Sqlite::open(&p, Duration::from_millis(100)).unwrap();
        let n: i64 = s
            .conn
            .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 199);
        assert_eq!(s.max_serial().unwrap(), 199);
    }

    #[test]
    fn locked_database_fails_instead_of_hanging() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.db");
        let mut s = Sqlite::open(&p, Duration::from_millis(50)).unwrap();
        let other = Connection::open(&p).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        assert!(s.append_batch(&[rec(1)]).is_err());
        other.execute_batch("COMMIT").unwrap();
        s.append_batch(&[rec(1)]).unwrap();
    }
}

// ---- audit chain tests ----
#[cfg(test)]
mod chain_tests {
    use super::*;
    use crate::audit::chain::Problem;
    use crate::audit::checkpoint::{AuditKey, AuditPublicKey};
    use crate::audit::verify::{LogVerifier, VerifyReport};
    use crate::audit::EventKind;

    /// `audit verify` over this connection, without the async store.
    fn verify_db(
        db: &Sqlite,
        key: Option<&AuditPublicKey>,
        subject: &str,
    ) -> Result<VerifyReport, StoreError> {
        let mut v = LogVerifier::new(subject, key, db.chain_meta()?);
        db.scan_checkpoints(&mut |cp| v.checkpoint(cp))?;
        v.checkpoints_done();
        db.scan_audit(1, None, &mut |r| {
            v.record(r);
            true
        })?;
        Ok(v.finish())
    }

    fn rec(serial: u64) -> AuditRecord {
        let mut r = AuditRecord::new(EventKind::CertIssued, 1_793_491_200_000 + serial, "req");
        r.serial = Some(serial);
        r.key_id = Some(format!("mayfly:deploy:ci:bot:{serial}"));
        r.role = Some("deploy".into());
        r.principals = vec!["deploy".into()];
        r
    }

    fn open(p: &Path) -> Sqlite {
        Sqlite::open(p, Duration::from_millis(500)).expect("open")
    }

    fn problems(db: &Sqlite, key: Option<&AuditKey>) -> Vec<Problem> {
        let pk = key.map(|k| k.public());
        verify_db(db, pk.as_ref(), "test").expect("verify").problems
    }

    fn sign(key: &AuditKey) -> impl Fn(u64, &Hash, i64) -> Result<String, String> + '_ {
        move |s, h, t| key.sign(s, h, t).map_err(|e| e.to_string())
    }

    #[test]
    fn every_column_of_the_audit_table_is_covered_by_the_chain() {
        let d = tempfile::tempdir().expect("tempdir");
        let db = open(&d.path().join("m.db"));
        let mut cols = table_columns(&db.conn, "audit").expect("columns");
        let mut covered: Vec<String> = AUDIT_COLUMNS
            .split(',')
            .map(|c| c.trim().to_string())
            .collect();
        cols.sort();
        covered.sort();
        assert_eq!(
            cols, covered,
            "a new audit column must be added to the chain encoding (new CHAIN_VERSION)"
        );
    }

    #[test]
    fn two_writers_extend_one_chain_and_it_verifies() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("m.db");
        // The server's writer and `mayfly revoke`'s, on separate connections.
        let mut a = open(&p);
        let mut b = open(&p);
        for i in 0..20u64 {
            a.append_batch(&[rec(2 * i + 1), rec(2 * i + 1000)])
                .expect("a");
            b.record_change(&AuditRecord::new(EventKind::Disabled, 5, "admin"), 5)
                .expect("b");
        }
        let r = verify_db(&a, None, "test").expect("verify");
        assert!(r.is_intact(), "{r}");
        assert_eq!(r.records, 60);
        assert_eq!(r.range, Some((1, 60)));
    }

    #[test]
    fn database_from_before_the_chain_is_chained_once_and_said_so() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("m.db");
        {
            let c = Connection::open(&p).expect("raw");
            c.execute_batch(
                "CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL,
                   event TEXT NOT NULL, request_id TEXT NOT NULL, client_addr TEXT, issuer TEXT,
                   subject TEXT, role TEXT, reason_code TEXT, reason TEXT, serial INTEGER, key_id TEXT,
                   principals TEXT NOT NULL DEFAULT '[]', valid_after INTEGER, valid_before INTEGER,
                   key_fingerprint TEXT, token_id TEXT, token_exp INTEGER, policy_digest TEXT);
                 INSERT INTO audit (time_ms, event, request_id, serial, principals)
                   VALUES (1, 'cert_issued', 'r1', 11, '[\"deploy\"]'), (2, 'cert_denied', 'r2', NULL, '[]');",
            )
            .expect("legacy schema");
        }
        let mut db = open(&p);
        db.append_batch(&[rec(12)]).expect("append");
        let r = verify_db(&db, None, "test").expect("verify");
        assert!(r.is_intact(), "{r}");
        assert_eq!(r.records, 3);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("records 1..2 were written before")),
            "{r}"
        );
        // Reopening does not chain again, and an unchained row is evidence.
        db.conn
            .execute("UPDATE audit SET hash = NULL WHERE seq = 2", [])
            .expect("tamper");
        drop(db);
        let db = open(&p);
        assert_eq!(problems(&db, None), vec![Problem::Unchained { seq: 2 }]);
    }

    #[test]
    fn rows_deleted_from_the_end_leave_a_gap_when_logging_resumes() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("m.db");
        let mut db = open(&p);
        db.append_batch(&[rec(1), rec(2), rec(3), rec(4)])
            .expect("append");
        db.conn
            .execute("DELETE FROM audit WHERE seq >= 3", [])
            .expect("truncate");
        let p1 = problems(&db, None);
        assert!(
            matches!(
                p1.first(),
                Some(Problem::Truncated {
                    last: 2,
                    expected: 4,
                    ..
                })
            ),
            "{p1:?}"
        );
        db.append_batch(&[rec(5)]).expect("append");
        assert_eq!(
            problems(&db, None),
            vec![Problem::Missing { from: 3, to: 4 }]
        );
    }

    #[test]
    fn checkpoints_are_signed_and_catch_a_rewritten_history() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("m.db");
        let key = AuditKey::ephemeral();
        let mut db = open(&p);
        db.append_batch(&[rec(1), rec(2), rec(3)]).expect("append");
        let cp = db
            .write_checkpoint(&key.fingerprint(), 1000, sign(&key))
            .expect("checkpoint")
            .expect("written");
        assert_eq!(cp.seq, 3);
        // Nothing new: no second checkpoint of the same head.
        assert!(db
            .write_checkpoint(&key.fingerprint(), 1001, sign(&key))
            .expect("checkpoint")
            .is_none());
        db.append_batch(&[rec(4)]).expect("append");
        let r = verify_db(&db, Some(&key.public()), "test").expect("verify");
        assert!(r.is_intact(), "{r}");
        assert_eq!(r.checkpoints_signed_ok, 1);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("1 record(s) after the last checkpoint")),
            "{r}"
        );

        // Rewrite record 2 and recompute every hash after it: the chain is
        // consistent again, but the signed checkpoint is not.
        db.conn
            .execute("UPDATE audit SET subject = 'mallory' WHERE seq = 2", [])
            .expect("tamper");
        let mut prev = chain::GENESIS;
        let mut rows = Vec::new();
        db.scan_audit(1, None, &mut |r| {
            rows.push(r.expect("row"));
            true
        })
        .expect("scan");
        for r in &mut rows {
            let h = chain::record_hash(r, &prev);
            db.conn
                .execute(
                    "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
                    params![&prev[..], &h[..], r.seq as i64],
                )
                .expect("rehash");
            prev = h;
        }
        let p1 = problems(&db, Some(&key));
        assert!(
            matches!(&p1[..], [Problem::Checkpoint { seq: 3, what }] if what.contains("history rewritten")),
            "{p1:?}"
        );

        // A checkpoint signed by another key, or edited, is refused.
        let other = AuditKey::ephemeral();
        db.conn
            .execute("UPDATE audit_checkpoints SET time_ms = 999", [])
            .expect("tamper checkpoint");
        let p2 = problems(&db, Some(&key));
        assert!(
            p2.iter()
                .any(|p| p.to_string().contains("signature does not match")),
            "{p2:?}"
        );
        let p3 = problems(&db, Some(&other));
        assert!(
            p3.iter()
                .any(|p| p.to_string().contains("not by the audit key")),
            "{p3:?}"
        );
    }

    #[test]
    fn non_canonical_or_mistyped_columns_are_malformed() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("m.db");
        let mut db = open(&p);
        db.append_batch(&[rec(1), rec(2), rec(3)]).expect("append");
        db.conn
            .execute(
                "UPDATE audit SET principals = '[ \"deploy\"]' WHERE seq = 2",
                [],
            )
            .expect("tamper");
        let p1 = problems(&db, None);
        assert!(
            matches!(&p1[..], [Problem::Malformed { seq: 2, what }] if what.contains("canonical")),
            "{p1:?}"
        );
        db.conn
            .execute(
                "UPDATE audit SET principals = '[\"deploy\"]', time_ms = 'x' WHERE seq = 2",
                [],
            )
            .expect("tamper");
        let p2 = problems(&db, None);
        assert!(
            matches!(&p2[..], [Problem::Malformed { seq: 2, what }] if what.contains("time_ms")),
            "{p2:?}"
        );
    }

    #[test]
    fn export_since_starts_after_the_last_older_record() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut db = open(&d.path().join("m.db"));
        assert_eq!(db.first_seq_since(0).expect("empty"), None);
        db.append_batch(&[rec(1), rec(2), rec(3), rec(4)])
            .expect("append");
        let t = |serial: i64| 1_793_491_200_000 + serial;
        assert_eq!(db.first_seq_since(0).expect("q"), Some(1));
        assert_eq!(db.first_seq_since(t(3)).expect("q"), Some(3));
        assert_eq!(db.first_seq_since(t(4) + 1).expect("q"), None);
    }

    #[test]
    fn search_finds_by_key_id_and_serial_including_the_revocation() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("m.db");
        let mut db = open(&p);
        db.append_batch(&[rec(7), rec(8)]).expect("append");
        let mut rv = AuditRecord::new(EventKind::CertRevoked, 9, "admin");
        rv.serial = Some(7);
        rv.key_id = Some("mayfly:deploy:ci:bot:7".into());
        rv.reason = Some("leaked".into());
        db.revoke(&[], &[rv], 9).expect("revoke");
        let by_serial = db
            .search_audit(&AuditQuery {
                serial: Some(7),
                ..AuditQuery::default()
            })
            .expect("search");
        let events: Vec<String> = by_serial
            .into_iter()
            .map(|r| r.expect("row").event)
            .collect();
        assert_eq!(events, vec!["cert_revoked", "cert_issued"]);
        let by_key = db
            .search_audit(&AuditQuery {
                key_id: Some("mayfly:deploy:ci:bot:8".into()),
                ..AuditQuery::default()
            })
            .expect("search");
        assert_eq!(by_key.len(), 1);
        let limited = db
            .search_audit(&AuditQuery {
                role: Some("deploy".into()),
                limit: 1,
                ..AuditQuery::default()
            })
            .expect("search");
        assert_eq!(limited.len(), 1);
    }
}

#[cfg(test)]
mod key_id_index_tests {
    use super::*;
    use crate::audit::search::AuditQuery;
    use crate::audit::EventKind;

    fn row(event: EventKind, serial: Option<u64>, key_id: &str) -> AuditRecord {
        let mut r = AuditRecord::new(event, 1_000_000, "req");
        r.serial = serial;
        r.key_id = Some(key_id.into());
        r.issuer = Some("ci".into());
        r.subject = Some("bot".into());
        r.role = Some("deploy".into());
        r.ca_key = Some("ssh-ed25519 AAAA ca".into());
        r.valid_before = Some(2_000);
        r
    }

    /// Every way a key id sits in the log: issuances as mayfly writes them
    /// (left out of the index), a revocation naming one, issuances whose
    /// key id does not end in their serial, one without a serial, and a
    /// refusal.
    fn filled() -> (tempfile::TempDir, Sqlite) {
        let d = tempfile::tempdir().expect("tempdir");
        let mut db = Sqlite::open(&d.path().join("m.db"), Duration::from_secs(1)).expect("open");
        use EventKind::{CertDenied, CertIssued, CertRevoked};
        db.append_batch(&[
            row(CertIssued, Some(1), "mayfly:deploy:ci:bot:1"),
            row(CertIssued, Some(2), "mayfly:deploy:ci:bot:2"),
            row(CertIssued, Some(3), "mayfly:deploy:ci:bot:03"),
            row(CertIssued, Some(4), "custom-4"),
            row(CertIssued, Some(5), "mayfly:deploy:ci:bot:1"),
            row(CertIssued, Some(16), "mayfly:deploy:ci:bot:6"),
            row(CertIssued, Some(26), "mayfly:deploy:ci:bot:26"),
            row(CertRevoked, Some(1), "mayfly:deploy:ci:bot:1"),
            row(CertDenied, None, "mayfly:deploy:ci:bot:2"),
        ])
        .expect("append");
        (d, db)
    }

    const KEYS: [&str; 10] = [
        "mayfly:deploy:ci:bot:1",
        "mayfly:deploy:ci:bot:2",
        "mayfly:deploy:ci:bot:03",
        "mayfly:deploy:ci:bot:3",
        "custom-4",
        "mayfly:deploy:ci:bot:6",
        "mayfly:deploy:ci:bot:26",
        "mayfly:deploy:ci:bot:16",
        "1",
        "nothing",
    ];

    /// The rows with `key_id = k`, read without any index.
    fn truth(db: &Sqlite, sql: &str, k: &str) -> Vec<i64> {
        let mut st = db.conn.prepare(sql).expect("prepare");
        let rows = st.query_map([k], |r| r.get(0)).expect("query");
        rows.collect::<Result<_, _>>().expect("rows")
    }

    #[test]
    fn key_id_lookups_find_exactly_the_rows_with_that_key_id() {
        let (_d, db) = filled();
        let mut found = 0;
        for k in KEYS {
            let q = AuditQuery {
                key_id: Some(k.into()),
                limit: 100,
                ..AuditQuery::default()
            };
            let got: Vec<i64> = db
                .search_audit(&q)
                .expect("search")
                .into_iter()
                .map(|r| r.expect("row").seq as i64)
                .collect();
            let want = truth(
                &db,
                "SELECT seq FROM audit NOT INDEXED WHERE key_id = ?1 ORDER BY seq DESC",
                k,
            );
            assert_eq!(got, want, "audit search --key-id {k}");
            found += got.len();

            let live: Vec<i64> = live_certs_on(&db.conn, &CertFilter::KeyId(k.into()), 1_000)
                .expect("live")
                .into_iter()
                .map(|c| c.serial as i64)
                .collect();
            let want = truth(
                &db,
                "SELECT serial FROM audit NOT INDEXED WHERE key_id = ?1 \
                 AND event = 'cert_issued' AND serial IS NOT NULL ORDER BY serial",
                k,
            );
            let mut live = live;
            live.sort_unstable();
            assert_eq!(live, want, "revoke --key-id {k}");
        }
        // The cases above are not all empty answers.
        assert_eq!(found, 9);
    }

    /// The plan of `sql`, one line per step.
    fn plan(db: &Sqlite, sql: &str, args: Vec<rusqlite::types::Value>) -> String {
        let mut st = db
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("prepare");
        let rows = st
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
            .expect("plan");
        rows.collect::<Result<Vec<_>, _>>()
            .expect("rows")
            .join("\n")
    }

    #[test]
    fn key_id_lookups_read_the_partial_index_and_the_serial_not_the_table() {
        let (_d, db) = filled();
        let names: Vec<String> = db
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit'")
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .expect("indexes");
        assert!(names.iter().any(|n| n == "audit_key_id_rest"), "{names:?}");
        assert!(!names.iter().any(|n| n == "audit_key_id"), "{names:?}");
        let q = AuditQuery {
            key_id: Some("mayfly:deploy:ci:bot:2".into()),
            ..AuditQuery::default()
        };
        let (sql, args) = search_sql(&q);
        let (live, live_args) = live_sql(&CertFilter::KeyId("mayfly:deploy:ci:bot:2".into()), 1);
        for p in [plan(&db, &sql, args), plan(&db, &live, live_args)] {
            assert!(
                p.contains("USING INDEX audit_key_id_rest (key_id=?)"),
                "{p}"
            );
            assert!(p.contains("USING INDEX audit_serial (serial=?)"), "{p}");
            let scans = |l: &str| {
                ["SCAN audit", "SCAN a"]
                    .iter()
                    .any(|t| l == *t || l.starts_with(&format!("{t} ")))
            };
            assert!(!p.lines().any(scans), "{p}");
        }
    }

    #[test]
    fn issuances_written_as_mayfly_writes_them_stay_out_of_the_key_id_index() {
        let (_d, db) = filled();
        let indexed: Vec<i64> = db
            .conn
            .prepare(&format!(
                "SELECT serial FROM audit INDEXED BY audit_key_id_rest \
                 WHERE key_id > '' AND {} AND event = 'cert_issued' ORDER BY serial",
                super::super::key_id_index::SQLITE_INDEXED
            ))
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .expect("indexed");
        assert_eq!(indexed, vec![3, 4, 5, 16]);
    }

    #[test]
    fn a_database_with_the_full_key_id_index_gets_the_partial_one() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("m.db");
        drop(Sqlite::open(&p, Duration::from_secs(1)).expect("open"));
        {
            let c = Connection::open(&p).expect("raw");
            c.execute_batch(
                "DROP INDEX audit_key_id_rest;
                 CREATE INDEX audit_key_id ON audit(key_id) WHERE key_id IS NOT NULL;",
            )
            .expect("old index");
        }
        let db = Sqlite::open(&p, Duration::from_secs(1)).expect("reopen");
        let names: Vec<String> = db
            .conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'audit_key_id%'",
            )
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .expect("indexes");
        assert_eq!(names, vec!["audit_key_id_rest".to_string()]);
    }
}
