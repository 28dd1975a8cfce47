//! CA keys in the database: one `ca_keys` row per stored key, as
//! [`crate::store::KeyStore`] specifies for a store shared by replicas.
//! The private key text is stored only passphrase-encrypted (the store
//! never decrypts it); the first replica on an empty database creates a
//! CA's key and the primary key decides which of several starting at once
//! wins; a rotation step is checked on the rows it read `FOR UPDATE`,
//! under the audit chain lock, in the transaction that applies it.
//!
//! The audit checkpoint signing key is kept here too, as the active key
//! of base [`crate::audit::checkpoint::KEY_FILE`] (`audit_key`): one key
//! for every replica, created by the same race rule. It is not a CA, so
//! [`cas`] leaves it out.

use tokio_postgres::Row;

use super::access::bump_keys_version;
use super::chain;
use super::db::{i, u, Db, PgResult};
use super::issuance::last_expiry_by_ca;
use crate::audit::checkpoint::KEY_FILE as AUDIT_KEY_BASE;
use crate::ca::keys::{is_encrypted, NewKey, StoredKey, UNENCRYPTED_SHARED_KEY};
use crate::ca::rotation::{check_retire_expiry, check_step, CaKeys, KeyStep, RotationError, Slot};
use crate::ca::KeyLocation;
use crate::store::{KeyChange, StateVersion};

/// Schema migration 3: the table of stored keys.
pub const SCHEMA: &str = r#"
CREATE TABLE ca_keys (
    base        TEXT   NOT NULL,
    slot        TEXT   NOT NULL CHECK (slot IN ('active', 'next', 'previous')),
    public_key  TEXT   NOT NULL,
    private_key TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (base, slot)
);
"#;

/// Refuses key text that is not passphrase-encrypted: every replica and
/// every backup of the database would hold a key that signs.
pub fn refuse_unencrypted(private: &str) -> Result<(), RotationError> {
    if is_encrypted(private) == Some(true) {
        Ok(())
    } else {
        Err(RotationError::State(UNENCRYPTED_SHARED_KEY.into()))
    }
}

fn slot_of(name: &str) -> Option<Slot> {
    Slot::ALL.into_iter().find(|s| s.as_str() == name)
}

fn stored(base: &str, slot: Slot, row: &Row) -> PgResult<StoredKey> {
    let private: String = row.try_get(2)?;
    Ok(StoredKey {
        public: row.try_get(1)?,
        private: zeroize::Zeroizing::new(private),
        created_at: Some(u(row.try_get(3)?)),
        location: KeyLocation::Database {
            base: base.to_string(),
            slot: slot.as_str(),
        },
    })
}

/// Every CA base with a stored key, sorted (the audit key is no CA).
pub async fn cas(db: Db<'_>) -> PgResult<Vec<String>> {
    let rows = db
        .query(
            "SELECT DISTINCT base FROM ca_keys WHERE base <> $1 ORDER BY base",
            &[&AUDIT_KEY_BASE],
        )
        .await?;
    rows.iter()
        .map(|r| r.try_get::<_, String>(0).map_err(Into::into))
        .collect()
}

/// The stored keys of `base`; `for_update` locks the rows until the
/// transaction ends.
pub async fn ca_keys(
    db: Db<'_>,
    base: &str,
    for_update: bool,
) -> PgResult<Result<CaKeys, RotationError>> {
    let sql = if for_update {
        "SELECT slot, public_key, private_key, created_at FROM ca_keys WHERE base = $1 FOR UPDATE"
    } else {
        "SELECT slot, public_key, private_key, created_at FROM ca_keys WHERE base = $1"
    };
    let mut keys = CaKeys::default();
    for row in db.query(sql, &[&base]).await? {
        let name: String = row.try_get(0)?;
        let Some(slot) = slot_of(&name) else {
            return Ok(Err(RotationError::State(format!(
                "CA {base} has a stored key in an unknown slot {name:?}"
            ))));
        };
        *keys.get_mut(slot) = Some(stored(base, slot, &row)?);
    }
    Ok(Ok(keys))
}

async fn insert(db: Db<'_>, base: &str, slot: Slot, key: &NewKey, now: u64) -> PgResult<u64> {
    db.execute(
        "INSERT INTO ca_keys (base, slot, public_key, private_key, created_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (base, slot) DO NOTHING",
        &[
            &base,
            &slot.as_str(),
            &key.public,
            &key.private.as_str(),
            &i(now),
        ],
    )
    .await
}

/// [`crate::store::KeyStore::create_active_if_absent`], in the
/// transaction `tx`: the primary key resolves a race of replicas starting
/// at once; the loser's `SELECT` (a new snapshot) returns the winner's key.
pub async fn create_active(
    tx: Db<'_>,
    base: &str,
    key: &NewKey,
    now: u64,
) -> PgResult<Result<(StoredKey, bool), RotationError>> {
    if let Err(e) = refuse_unencrypted(&key.private) {
        return Ok(Err(e));
    }
    let others: i64 = tx
        .one(
            "SELECT COUNT(*) FROM ca_keys WHERE base = $1 AND slot <> 'active'
               AND NOT EXISTS (SELECT 1 FROM ca_keys WHERE base = $1 AND slot = 'active')",
            &[&base],
        )
        .await?
        .try_get(0)?;
    if others > 0 {
        return Ok(Err(RotationError::State(format!(
            "CA {base} has a next or previous key but no active key"
        ))));
    }
    let inserted = insert(tx, base, Slot::Active, key, now).await? == 1;
    let row = tx
        .opt(
            "SELECT slot, public_key, private_key, created_at FROM ca_keys
             WHERE base = $1 AND slot = 'active'",
            &[&base],
        )
        .await?;
    match row {
        Some(row) => Ok(Ok((stored(base, Slot::Active, &row)?, inserted))),
        None => Ok(Err(RotationError::State(format!(
            "CA {base} has no active key right after storing one"
        )))),
    }
}

/// [`crate::store::KeyStore::rotate`] in the transaction `tx`; the caller
/// commits on `Ok(Ok(_))` and rolls back otherwise.
pub async fn rotate(
    tx: Db<'_>,
    change: &KeyChange,
) -> PgResult<Result<StateVersion, RotationError>> {
    if let KeyStep::Stage(k) = &change.step {
        if let Err(e) = refuse_unencrypted(&k.private) {
            return Ok(Err(e));
        }
    }
    // The chain head lock first, as every transaction that appends
    // records: rotations serialise with each other and with issuance.
    chain::append(tx, std::slice::from_ref(&change.audit)).await?;
    let base = change.base.as_str();
    let current = match ca_keys(tx, base, true).await? {
        Ok(k) => k,
        Err(e) => return Ok(Err(e)),
    };
    if let Err(e) = check_step(base, &change.step, &current, &change.expected) {
        return Ok(Err(e));
    }
    match &change.step {
        KeyStep::Stage(k) => {
            if insert(tx, base, Slot::Next, k, change.now).await? != 1 {
                return Ok(Err(RotationError::Changed { base: base.into() }));
            }
        }
        KeyStep::Activate => {
            tx.execute(
                "UPDATE ca_keys SET slot = 'previous' WHERE base = $1 AND slot = 'active'",
                &[&base],
            )
            .await?;
            tx.execute(
                "UPDATE ca_keys SET slot = 'active' WHERE base = $1 AND slot = 'next'",
                &[&base],
            )
            .await?;
        }
        KeyStep::Retire { force } => {
            if let Some(prev) = &current.previous {
                let last = last_expiry_by_ca(tx, &prev.public).await?;
                if let Err(e) = check_retire_expiry(prev, last, change.now, *force) {
                    return Ok(Err(e));
                }
            }
            tx.execute(
                "DELETE FROM ca_keys WHERE base = $1 AND slot = 'previous'",
                &[&base],
            )
            .await?;
        }
    }
    Ok(Ok(bump_keys_version(tx, change.now).await?))
}

/// Stores the keys of `base` as they are (a migration into an empty
/// database); every one must be encrypted. Existing rows are kept: the
/// target was empty when the import began.
pub async fn import(db: Db<'_>, base: &str, keys: &CaKeys) -> PgResult<Result<(), RotationError>> {
    for slot in Slot::ALL {
        let Some(k) = keys.get(slot) else { continue };
        if let Err(e) = refuse_unencrypted(&k.private) {
            return Ok(Err(RotationError::State(format!("{}: {e}", k.location))));
        }
        let key = NewKey {
            public: k.public.clone(),
            private: k.private.clone(),
        };
        let at = k.created_at.unwrap_or(0);
        if insert(db, base, slot, &key, at).await? != 1 {
            return Ok(Err(RotationError::State(format!(
                "the target already has a {} key of CA {base}",
                slot.as_str()
            ))));
        }
    }
    Ok(Ok(()))
}
