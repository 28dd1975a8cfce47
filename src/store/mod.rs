//! Durable storage behind a set of async traits, one per concern
//! ([`traits`]): issuance, the issuance counters, the audit log,
//! approvals, revocations and deactivations, reports, CA keys with their
//! rotation state, replica heartbeats, and imports (a whole CA's state
//! into an empty store, [`import`]). Only this module
//! writes SQL, and nothing outside it names a backend: callers hold a
//! [`Store`] from [`open`].
//!
//! The SQLite backend ([`sqlite_store::SqliteStore`]) runs every write on
//! one group-commit writer thread and every read on reader threads
//! ([`writer`]), so no blocking database call runs on an async worker.
//! The PostgreSQL backend ([`postgres::PgStore`]) serves any number of
//! replicas from one database, with the same group commit per replica and
//! one audit chain across all of them.
//! What the audit chain stores and hashes is defined in
//! [`crate::audit::chain`], not here, so a second backend stores the same.

pub mod approvals;
pub mod hosts;
pub mod import;
pub mod key_files;
pub mod key_id_index;
pub mod key_memory;
pub mod memory;
pub mod postgres;
pub mod replicas;
pub mod reports;
pub mod sessions;
pub mod sqlite;
mod sqlite_import;
pub mod sqlite_store;
mod target;
pub mod traits;
mod version_probe;
pub mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::audit::AuditRecord;
use crate::config::{Config, StoreBackend};
pub use target::{DisableTarget, DisableTargetError};

pub use sessions::{SessionKey, SessionRow};
pub use sqlite::Backend;
pub use traits::ImportStore;
pub use traits::{
    AccessStore, AfterCommit, ApprovalStore, AuditLog, Cancel, CheckpointPage, CheckpointSigner,
    HostStore, IssuanceCounters, IssuanceStore, KeyChange, KeyStore, ReplicaStore, ReportStore,
    Revoker, SessionStore, Store, StoreFuture, Vote,
};

/// A store failure. The message is for logs; clients only see "store unavailable".
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("store: {0}")]
    Backend(String),
    /// The writer thread is gone (shutdown or crash).
    #[error("store writer is not running")]
    WriterGone,
    /// The database does not exist, and was not to be created.
    #[error("no database at {0}; is --config the CA's config and has the CA run once?")]
    Missing(String),
    /// The database exists but holds no mayfly schema, and was not to be
    /// created (an administrative command on a fresh PostgreSQL database).
    #[error(
        "{0} has no mayfly tables; start `mayfly serve --config FILE` with this config once \
         (it creates them), or check store.url"
    )]
    NoSchema(String),
}

/// An issued certificate as recorded in the audit log.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, serde::Deserialize)]
pub struct IssuedCert {
    /// Serial.
    pub serial: u64,
    /// Key id.
    pub key_id: String,
    /// `user` or `host`.
    pub cert_type: String,
    /// Role.
    pub role: String,
    /// Issuer name.
    pub issuer: String,
    /// Token subject.
    pub subject: String,
    /// Unix seconds.
    pub valid_before: u64,
    /// OpenSSH line of the CA key that signed it.
    pub ca_key: String,
}

/// Which issued certificates an operation is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertFilter {
    /// One serial.
    Serial(u64),
    /// One key id.
    KeyId(String),
    /// Every certificate of a role.
    Role(String),
    /// Every certificate of one identity (optionally only for one role).
    Identity {
        /// Issuer name.
        issuer: String,
        /// Token subject.
        subject: String,
        /// Only this role, if set.
        role: Option<String>,
    },
}

/// A revocation to record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Revocation {
    /// OpenSSH line of the CA key whose certificate is revoked.
    pub ca_key: String,
    /// Revoked serial (the KRL's serial section).
    pub serial: Option<u64>,
    /// Revoked key id (the KRL's key-id section).
    pub key_id: Option<String>,
    /// When the certificate expires anyway; the KRL drops it after this.
    pub expires_at: u64,
    /// Why.
    pub reason: String,
    /// Who.
    pub actor: String,
}

/// A disabled entry with its reason.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, serde::Deserialize)]
pub struct DisabledEntry {
    /// What is disabled.
    #[serde(flatten)]
    pub key: DisableTarget,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// Why.
    pub reason: String,
    /// Who.
    pub actor: String,
}

/// Revision of the revocation/deactivation state; bumps on every change so
/// readers (the KRL cache, other processes) notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateVersion {
    /// Monotonic counter.
    pub version: u64,
    /// Unix seconds of the last change.
    pub changed_at: u64,
}

/// Conditions that must still hold when an issuance record commits. They
/// are checked inside the transaction that writes the record, on the one
/// writer, so nothing can change between the check and the record: a
/// concurrent `identity disable` either commits first (and this issuance is
/// refused) or after (and its revocation sweep sees this certificate); two
/// redemptions of one approval cannot both succeed; two parallel requests
/// cannot both take the last `max_active_certs` slot.
#[derive(Debug, Clone)]
pub struct IssueGuard {
    /// Issuer name of the identity.
    pub issuer: String,
    /// Subject of the identity.
    pub subject: String,
    /// Role of the certificate.
    pub role: String,
    /// Refuse when this many unexpired, unrevoked certificates of the
    /// identity in the role exist already.
    pub max_active: Option<u32>,
    /// An approval this issuance redeems: it must still be approved, and is
    /// marked used in the same transaction.
    pub redeem: Option<Redemption>,
    /// The certificate this issuance renews (`mayfly exec`): refused if
    /// it was revoked, and not counted against `max_active` (the pair
    /// counts once).
    pub renews: Option<crate::ca::renewal::PreviousCert>,
    /// The state version of the cached state (CA keys, deactivations) the
    /// request was decided and signed under. Refused as
    /// [`GuardRefusal::Stale`] when the CA keys changed at a later version
    /// (a rotation step): so a rotation that returned before the request
    /// began always applies to it, without a store read on every request.
    /// Revocations and deactivations need no such check: the guard reads
    /// them itself in the commit. `None`: not checked.
    pub acted_on: Option<u64>,
    /// Token replay ids (with their expiry, unix seconds) to mark used in
    /// the commit, on a store that claims tokens there
    /// ([`crate::store::IssuanceCounters::claims_at_commit`]): refused as
    /// [`GuardRefusal::Replayed`] if one was used already. Empty: the
    /// tokens were claimed before signing.
    pub claims: Vec<(String, u64)>,
}

impl IssueGuard {
    /// [`GuardRefusal::Stale`] when the CA keys changed at state version
    /// `keys_changed` (the store's, read in the commit; `None`: not read),
    /// later than the version this guard acted on.
    pub fn stale(&self, keys_changed: Option<u64>) -> Option<GuardRefusal> {
        match (self.acted_on, keys_changed) {
            (Some(acted_on), Some(keys_changed)) if keys_changed > acted_on => {
                Some(GuardRefusal::Stale {
                    acted_on,
                    keys_changed,
                })
            }
            _ => None,
        }
    }
}

/// An approval redeemed together with an issuance.
#[derive(Debug, Clone)]
pub struct Redemption {
    /// Approval request id.
    pub id: String,
    /// Fingerprint of the key being certified (must be the approved key).
    pub key_fingerprint: String,
    /// A renewal: the approval must be used, unexpired and held by this
    /// key (the last one certified under it); it then moves to
    /// `key_fingerprint`.
    pub renews_key: Option<String>,
    /// The `approval_used` audit record, written just before the issuance.
    pub record: AuditRecord,
}

/// Why a guarded issuance was refused at commit time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardRefusal {
    /// The identity or role is disabled.
    #[error("disabled: {0:?}")]
    Disabled(DisableTarget),
    /// The identity holds `live` valid certificates in the role already.
    #[error("{live} certificate(s) still valid, the role allows {max}")]
    TooManyActive {
        /// Valid certificates now.
        live: u64,
        /// The role's `max_active_certs`.
        max: u32,
    },
    /// The approval is no longer redeemable (used, expired, another key...).
    #[error(transparent)]
    Approval(#[from] crate::approval::ApprovalError),
    /// The certificate a renewal presents was revoked.
    #[error("certificate serial {serial} ({key_id}) was revoked; it cannot be renewed")]
    RenewsRevoked {
        /// Its serial.
        serial: u64,
        /// Its key id.
        key_id: String,
    },
    /// The CA keys changed since the request read them
    /// ([`IssueGuard::acted_on`]): nothing was written, and the request is
    /// decided and signed again on the current keys.
    #[error("the CA keys changed at state version {keys_changed}, after the request read them at version {acted_on}")]
    Stale {
        /// The state version the request acted on.
        acted_on: u64,
        /// The state version of the last change of the CA keys.
        keys_changed: u64,
    },
    /// A token of [`IssueGuard::claims`] was used already.
    #[error("the token was used already")]
    Replayed,
}

/// One record to append, with the conditions its commit depends on.
pub type GuardedRecord = (AuditRecord, Option<IssueGuard>);

/// How a command opens the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the database if needed (the server).
    Create,
    /// The database must exist (administrative commands and reports on
    /// the CA host; safe while the server runs).
    Existing,
    /// The database must exist and is neither written nor upgraded
    /// (`mayfly audit verify`, `export`, `search`).
    ReadOnly,
}

/// Where and how to open the store: the `[store]` section plus the
/// settings it has always used (`data_dir`, `store_busy_timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Which backend.
    pub backend: StoreBackend,
    /// The SQLite database file (`data_dir/mayfly.db`).
    pub sqlite_path: PathBuf,
    /// How long a write waits for a lock before it fails.
    pub busy_timeout: Duration,
    /// Create, open existing, or read only.
    pub mode: OpenMode,
    /// The PostgreSQL settings (`backend = "postgres"`).
    pub postgres: Option<crate::config::PgSettings>,
}

/// The SQLite database file in the data directory.
pub const SQLITE_FILE: &str = crate::config::files::DATABASE;

impl StoreConfig {
    /// The store of the CA configured by `cfg`, opened as `mode` says.
    /// Commands other than the server wait at least 5 s for a lock held by
    /// the running server.
    pub fn from_config(cfg: &Config, mode: OpenMode) -> StoreConfig {
        let busy_timeout = match mode {
            OpenMode::Create => cfg.store_busy_timeout,
            _ => cfg.store_busy_timeout.max(Duration::from_secs(5)),
        };
        StoreConfig {
            backend: cfg.store.backend,
            sqlite_path: cfg.data_dir.join(SQLITE_FILE),
            busy_timeout,
            mode,
            postgres: cfg.store.postgres.clone(),
        }
    }

    /// Where the data is, for messages (`the database /path/mayfly.db`).
    pub fn location(&self) -> String {
        match self.backend {
            StoreBackend::SQLite => self.sqlite_path.display().to_string(),
            StoreBackend::Postgres => match &self.postgres {
                Some(pg) => postgres::url::parse(&pg.url)
                    .map(|t| t.display)
                    .unwrap_or_else(|_| "the PostgreSQL database of store.url".into()),
                None => "the PostgreSQL database (store.url is not set)".into(),
            },
        }
    }
}

/// Opens the store `cfg` describes and starts its threads. The SQLite
/// store keeps CA keys as files beside its database (the database is
/// `data_dir/mayfly.db`, so the keys stay where they have always been).
pub fn open(cfg: &StoreConfig) -> Result<Store, StoreError> {
    match cfg.backend {
        StoreBackend::SQLite => {
            let s = sqlite_store::SqliteStore::open(&cfg.sqlite_path, cfg.busy_timeout, cfg.mode)?;
            Ok(Store::new(Arc::new(s)))
        }
        StoreBackend::Postgres => Ok(Store::new(Arc::new(postgres::PgStore::open(cfg)?))),
    }
}

/// Runs a store future to completion from synchronous code (a CLI command
/// that is not inside an async runtime), on a current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, StoreError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Backend(format!("starting a runtime for the store: {e}")))?;
    Ok(rt.block_on(f))
}
