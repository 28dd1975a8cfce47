//! The PostgreSQL schema, as versioned migrations applied at start.
//!
//! Each migration runs in its own transaction and is recorded in
//! `schema_migrations`. All of them run under a session advisory lock, so
//! replicas that start together apply each migration once while the others
//! wait, then find it recorded. Only [`OpenMode::Create`] (the server)
//! migrates; administrative commands require the schema to be current and
//! say which command creates it, and read-only commands never write.
//!
//! # Tables
//!
//! * `audit`: the records, with the same columns as SQLite and stored in
//!   the same canonical form ([`crate::audit::chain::stored_form`]), so a
//!   record hashes the same in both backends. A unique index on `serial`
//!   makes a reused serial impossible to record, and so to issue.
//! * `chain_head`: one row with the last `seq` and `hash` of the chain and
//!   the last checkpoint id. Every transaction that appends records locks
//!   it first (`SELECT ... FOR UPDATE`): one chain across all replicas, and
//!   every guarded read-then-write (disabled check, `max_active_certs`,
//!   approval redemption and votes) is evaluated after that lock, so it is
//!   exact across replicas. Counters kept here only move on commit, so a
//!   rolled-back transaction leaves no gap (unlike a sequence).
//! * `audit_checkpoints`: signed checkpoints of the chain head.
//! * `state`: one row with the revocation/deactivation state version, bumped
//!   in the transaction of each change, which also sends `NOTIFY
//!   mayfly_state`.
//! * `revocations`, `disabled`, `approvals`: as in SQLite.
//! * `used_tokens`: replay ids of used tokens until they expire; the
//!   primary key makes a claim exactly-once across replicas.
//! * `rate_buckets`: one token bucket per key, taken from in one statement.
//!   Token ids and bucket keys are bytes (`BYTEA`): they come from tokens
//!   and may hold NUL, which `TEXT` cannot.
//! * `serial_counter`: one row, the next unreserved serial; replicas reserve
//!   small blocks from it with an update that only moves it up.
//! * `meta`: key/value facts (the audit streaming cursor, chain migration
//!   notes).
//! * `host_reports`: the last sync report of each host (version 4).
//! * `console_sessions`: web console sessions, keyed by the SHA-256 of the
//!   session cookie, shared by the replicas (version 5).
//! * `ca_keys`: one row per stored CA key (base, slot), the private key
//!   passphrase-encrypted, and the audit checkpoint key as base
//!   `audit_key` ([`super::keys`]).

use deadpool_postgres::Client;

use super::db::pg_err;
use crate::store::{OpenMode, StoreError};

/// One schema change.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// Key of the advisory lock held while migrating ("mayfly" + 1).
const MIGRATION_LOCK: i64 = 0x6d61_7966_6c79_0001;

/// The migrations, in order. Append only: a released migration never
/// changes, the next change is a new entry.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "audit chain, issuance, access, approvals, counters",
        sql: V1,
    },
    Migration {
        version: 2,
        name: "replica heartbeats",
        sql: super::replicas::SCHEMA,
    },
    Migration {
        version: 3,
        name: "CA keys and the audit key",
        sql: super::keys::SCHEMA,
    },
    Migration {
        version: 4,
        name: "audit job claims, host sync reports",
        sql: V4,
    },
    Migration {
        version: 5,
        name: "console sessions",
        sql: super::sessions::SCHEMA,
    },
    Migration {
        version: 6,
        name: "a partial key-id index on the audit log",
        sql: V6,
    },
    Migration {
        version: 7,
        name: "the state version of the CA keys' last change",
        sql: V7,
    },
];

/// The state version at which the CA keys last changed: a group commit
/// refuses an issuance that read the keys at an earlier version
/// (`IssueGuard::acted_on`). 0 on an upgraded database: its replicas load
/// their keys at start.
const V7: &str = "ALTER TABLE state ADD COLUMN keys_changed BIGINT NOT NULL DEFAULT 0;";

/// The key-id index leaves out the issuance rows the serial finds (see
/// `store::key_id_index`); its predicate is `key_id_index::PG_INDEXED`
/// word for word (a unit test compares them).
const V6: &str = r#"
DROP INDEX IF EXISTS audit_key_id;
CREATE INDEX audit_key_id_rest ON audit (key_id) WHERE key_id IS NOT NULL AND NOT (event = 'cert_issued' AND serial IS NOT NULL AND right(key_id, length(serial::text) + 1) = ':' || serial::text);
"#;

/// The schema version this build needs.
pub fn current_version() -> i32 {
    MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
}

/// Job claims in audit records (hashed with chain encoding version 2 when
/// present, so earlier records keep verifying), and the last sync report
/// of each host (`mayfly hosts`).
const V4: &str = r#"
ALTER TABLE audit ADD COLUMN claims TEXT;

CREATE TABLE host_reports (
    host            TEXT PRIMARY KEY,
    reported_at     BIGINT NOT NULL,
    krl_version     BIGINT NOT NULL,
    ca_fingerprints TEXT NOT NULL,
    last_error      TEXT,
    cert_serial     BIGINT NOT NULL,
    client_addr     TEXT
);
"#;

const V1: &str = r#"
CREATE TABLE audit (
    seq             BIGINT PRIMARY KEY,
    time_ms         BIGINT NOT NULL,
    event           TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    client_addr     TEXT,
    issuer          TEXT,
    subject         TEXT,
    role            TEXT,
    reason_code     TEXT,
    reason          TEXT,
    serial          BIGINT,
    key_id          TEXT,
    principals      TEXT NOT NULL DEFAULT '[]',
    valid_after     BIGINT,
    valid_before    BIGINT,
    key_fingerprint TEXT,
    token_id        TEXT,
    token_exp       BIGINT,
    policy_digest   TEXT,
    cert_type       TEXT,
    ca_key          TEXT,
    actor           TEXT,
    prev_hash       BYTEA,
    hash            BYTEA
);
CREATE UNIQUE INDEX audit_serial ON audit (serial) WHERE serial IS NOT NULL;
CREATE INDEX audit_subject ON audit (issuer, subject, role);
CREATE INDEX audit_live ON audit (valid_before) WHERE event = 'cert_issued';
CREATE INDEX audit_key_id ON audit (key_id) WHERE key_id IS NOT NULL;
CREATE INDEX audit_ca_expiry ON audit (ca_key, valid_before) WHERE event = 'cert_issued';
CREATE INDEX audit_report_event ON audit (event, time_ms, role);

CREATE TABLE chain_head (
    id          BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    seq         BIGINT NOT NULL,
    hash        BYTEA NOT NULL,
    checkpoints BIGINT NOT NULL
);
INSERT INTO chain_head (seq, hash, checkpoints) VALUES (0, decode(repeat('00', 32), 'hex'), 0);

CREATE TABLE audit_checkpoints (
    id              BIGINT PRIMARY KEY,
    seq             BIGINT NOT NULL,
    hash            BYTEA NOT NULL,
    time_ms         BIGINT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    signature       TEXT NOT NULL
);

CREATE TABLE state (
    id         BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    version    BIGINT NOT NULL,
    changed_at BIGINT NOT NULL
);
INSERT INTO state (version, changed_at) VALUES (0, 0);

CREATE TABLE revocations (
    id          BIGSERIAL PRIMARY KEY,
    time_ms     BIGINT NOT NULL,
    ca_key      TEXT NOT NULL,
    serial      BIGINT,
    key_id      TEXT,
    expires_at  BIGINT NOT NULL,
    reason      TEXT NOT NULL,
    actor       TEXT NOT NULL
);
CREATE UNIQUE INDEX revocations_serial ON revocations (ca_key, serial) WHERE serial IS NOT NULL;
CREATE UNIQUE INDEX revocations_key_id ON revocations (ca_key, key_id) WHERE key_id IS NOT NULL;
CREATE INDEX revocations_expiry ON revocations (expires_at);
CREATE INDEX revocations_time ON revocations (time_ms);

CREATE TABLE disabled (
    issuer   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    role     TEXT NOT NULL,
    time_ms  BIGINT NOT NULL,
    reason   TEXT NOT NULL,
    actor    TEXT NOT NULL,
    PRIMARY KEY (issuer, subject, role)
);

CREATE TABLE approvals (
    id          TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    role        TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX approvals_status ON approvals (status, expires_at);

CREATE TABLE used_tokens (
    id          BYTEA PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX used_tokens_expiry ON used_tokens (expires_at);

CREATE TABLE rate_buckets (
    key      BYTEA PRIMARY KEY,
    tokens   DOUBLE PRECISION NOT NULL,
    last_at  DOUBLE PRECISION NOT NULL,
    full_at  DOUBLE PRECISION NOT NULL,
    taken    BOOLEAN NOT NULL
);
CREATE INDEX rate_buckets_full ON rate_buckets (full_at);

CREATE TABLE serial_counter (
    id    BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    next  BIGINT NOT NULL
);
INSERT INTO serial_counter (next) VALUES (1);

-- The principals column as a JSON array, or an empty one when the text is
-- not an array of strings (only a row changed outside mayfly). The common
-- case, mayfly's compact form with plain strings, is matched without the
-- exception block and its subtransaction.
CREATE FUNCTION mayfly_principals(t TEXT) RETURNS JSON
LANGUAGE plpgsql IMMUTABLE STRICT AS $fn$
BEGIN
    IF t ~ '^\[("[^"\\\x01-\x1f]*"(,"[^"\\\x01-\x1f]*")*)?\]$' THEN
        RETURN t::json;
    END IF;
    BEGIN
        IF json_typeof(t::json) = 'array' THEN
            RETURN t::json;
        END IF;
    EXCEPTION WHEN others THEN
        NULL;
    END;
    RETURN '[]'::json;
END
$fn$;

CREATE TABLE meta (
    k  TEXT PRIMARY KEY,
    v  TEXT NOT NULL
);
"#;

/// Whether the schema is there, and at which version.
async fn installed_version(c: &Client) -> Result<Option<i32>, StoreError> {
    let exists: bool = c
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let v: Option<i32> = c
        .query_one("SELECT MAX(version) FROM schema_migrations", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    Ok(Some(v.unwrap_or(0)))
}

/// Brings the schema to [`current_version`] (`Create`), or checks that it
/// is there (`Existing`, `ReadOnly`). `location` names the database in
/// messages.
pub async fn prepare(c: &mut Client, mode: OpenMode, location: &str) -> Result<(), StoreError> {
    let want = current_version();
    if mode != OpenMode::Create {
        return match installed_version(c).await? {
            None | Some(0) => Err(StoreError::NoSchema(location.to_string())),
            Some(v) if v < want => Err(StoreError::Backend(format!(
                "{location} has mayfly schema version {v}, this mayfly needs {want}; start \
                 `mayfly serve --config FILE` of this version once (it upgrades the schema)"
            ))),
            Some(v) if v > want => Err(too_new(location, v, want)),
            Some(_) => Ok(()),
        };
    }
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    let result = migrate(c, location, want).await;
    // Released even when a migration failed; a dropped connection releases
    // it too.
    let unlock = c
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err);
    result?;
    unlock.map(|_| ())
}

fn too_new(location: &str, have: i32, want: i32) -> StoreError {
    StoreError::Backend(format!(
        "{location} has mayfly schema version {have}, newer than this mayfly knows ({want}); \
         run the newer mayfly (a replica never downgrades the schema)"
    ))
}

async fn migrate(c: &mut Client, location: &str, want: i32) -> Result<(), StoreError> {
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY,
            name       TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(pg_err)?;
    let have = installed_version(c).await?.unwrap_or(0);
    if have > want {
        return Err(too_new(location, have, want));
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > have) {
        let tx = c.transaction().await.map_err(pg_err)?;
        tx.batch_execute(m.sql).await.map_err(|e| {
            StoreError::Backend(format!(
                "applying mayfly schema migration {} ({}) to {location}: {}",
                m.version,
                m.name,
                super::db::describe(&e)
            ))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        tracing::info!(
            version = m.version,
            name = m.name,
            database = location,
            "store: applied schema migration"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::key_id_index::{INDEX, OLD_INDEX, PG_INDEXED};

    #[test]
    fn the_key_id_index_is_built_with_the_predicate_queries_repeat() {
        assert!(
            V6.contains(&format!(
                "CREATE INDEX {INDEX} ON audit (key_id) WHERE {PG_INDEXED};"
            )),
            "{V6}"
        );
        assert!(V6.contains(&format!("DROP INDEX IF EXISTS {OLD_INDEX};")));
        assert_eq!(MIGRATIONS[5].version, 6);
    }

    #[test]
    fn migrations_are_numbered_in_order_and_the_last_is_current() {
        for (n, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, n + 1, "{}", m.name);
        }
        assert_eq!(current_version(), 7);
    }
}
