//! Moving a CA to another store: `mayfly store migrate --from A --to B`
//! (typically a single-node SQLite CA to PostgreSQL).
//!
//! What moves: the audit chain verbatim (same `seq`, `prev_hash` and
//! `hash`, so the chain and its signed checkpoints verify on the target
//! exactly as on the source), the checkpoints with their ids, the stream
//! cursor, every revocation (expired ones too: reports count them), the
//! deactivations, every approval request as it stands, the serial floor
//! (the target never hands out a serial at or below the source's highest)
//! and the revocation state version (the target's KRL version continues
//! from the source's: hosts refuse a KRL whose version goes back). The
//! audit checkpoint key (`data_dir/audit_key`) is copied into the target's
//! `data_dir`, because the target goes on signing checkpoints of the same
//! chain. A target shared by replicas (PostgreSQL) keeps the CA keys and
//! the audit key in the database: every stored CA key (every slot, every
//! CA base) is copied there as it is, and must be passphrase-encrypted
//! already (refused before anything is written otherwise); the audit key,
//! a plain file on a single node, is stored encrypted with the target's CA
//! passphrase.
//!
//! # The source must be stopped
//!
//! A copy of a CA that keeps running is stale the moment it is taken: a
//! revocation recorded on the source after the copy would never reach the
//! target's KRL. So the source CA is stopped first, and this refuses to
//! run while anything answers on the source's `listen` address. The
//! source is opened read-only and its facts (counts, chain head, highest
//! serial, state version, stream cursor) are read before and after the
//! copy; if they moved (an admin command, or a CA under another config),
//! the migration fails instead of finishing.
//!
//! # Order, and what a failure leaves
//!
//! 1. Refusals before the target is claimed (its schema may have been
//!    created, nothing else is written): the same database on both sides,
//!    a running source, a target that is not empty, a different audit key
//!    in the target's `data_dir`, a source holding an unfinished import, a
//!    source whose audit log does not verify (tampering is never copied).
//! 2. The target is claimed ([`crate::store::ImportStore::begin_import`]:
//!    empty, or refused). From here on, a failure leaves the target marked
//!    as an unfinished import, which the next run and `mayfly serve`
//!    refuse with what to do (recreate it empty): a failed run is never
//!    resumed, merged into or served; it is redone from scratch.
//! 3. Pages of at most [`PAGE`] rows, each written in one transaction.
//! 4. The target is checked end to end: its chain verifies (with the
//!    source's audit key), its counts, head and state version equal the
//!    source's, its highest serial is at least the source's.
//! 5. The CA keys and the audit key are copied, then the import mark is
//!    cleared.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use zeroize::Zeroizing;

use crate::audit::chain::{self, BadRow, Hash};
use crate::audit::checkpoint::{AuditPublicKey, KEY_FILE, PUB_FILE};
use crate::audit::verify::VerifyReport;
use crate::ca::keys::{
    encrypt_key_text, is_encrypted, shared_audit_key_passphrase, Secret, StoredKey,
};
use crate::ca::rotation::{CaKeys, Slot};
use crate::ca::KeyLocation;
use crate::config::Config;
use crate::evidence::verify::verify_db;
use crate::store::import::{
    same_database, ImportRefusal, ImportedState, StoreCounts, UnfinishedImport, RECREATE_HINT,
};
use crate::store::{OpenMode, StateVersion, Store, StoreConfig, StoreError};

/// Rows read and written per page (one transaction each on the target).
pub const PAGE: usize = 10_000;

/// How long the check for a running source CA waits for a connection.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a migration did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// `--from` and `--to` are one database.
    #[error("--from and --to name the same database ({0})")]
    SameStore(String),
    /// Something answers on the source CA's listen address.
    #[error(
        "something answers on {0}, the source CA's listen address: stop the source CA first \
         (a CA that keeps running after the copy records revocations and certificates the \
         target never sees)"
    )]
    SourceRunning(SocketAddr),
    /// A store could not be opened.
    #[error("opening {location}: {source}")]
    Open {
        /// Where.
        location: String,
        /// Why.
        source: StoreError,
    },
    /// The target's data_dir has another audit checkpoint key.
    #[error(
        "{0} is not the source's audit checkpoint key, so the target would sign checkpoints of \
         the copied chain with another key than its old checkpoints; remove it (and {pub_file}) \
         if nothing else uses that data_dir, or give --to a config with another data_dir",
        pub_file = PUB_FILE
    )]
    DifferentAuditKey(PathBuf),
    /// Reading or writing a file (the audit key, the target's data_dir) failed.
    #[error("{path}: {source}")]
    File {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The source's audit public key cannot be read.
    #[error("{path}: {reason}")]
    AuditPublicKey {
        /// Which file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The source is itself the target of an unfinished import.
    #[error("the source {location} holds an unfinished import from {} (started at unix ms {}); it is not a CA's complete state", .unfinished.from, .unfinished.started_ms)]
    SourceUnfinished {
        /// The source.
        location: String,
        /// The import it holds.
        unfinished: UnfinishedImport,
    },
    /// The source's audit log does not verify; nothing was copied.
    #[error("the source audit log does not verify ({}); nothing was copied. `mayfly audit verify --config` on the source config names every problem", first_problem(.0))]
    SourceTampered(Box<VerifyReport>),
    /// The target is not empty or holds an unfinished import.
    #[error("the target {location} cannot take the copy: {refusal}")]
    TargetRefused {
        /// The target.
        location: String,
        /// Why.
        refusal: ImportRefusal,
    },
    /// A source audit row cannot be read.
    #[error("source audit record {} cannot be read: {}", .0.seq, .0.what)]
    SourceUnreadable(BadRow),
    /// The source changed while it was copied.
    #[error(
        "the source changed during the copy ({0}): something still writes to it (the source CA \
         under another config, or an admin command); stop it"
    )]
    SourceChanged(String),
    /// The copy does not verify or does not match the source.
    #[error("the copy does not match the source: {0}")]
    Mismatch(String),
    /// A step after the target was claimed failed: the target holds part
    /// of the copy, marked unfinished.
    #[error("{cause}; the target {target} now holds an unfinished import, which `mayfly serve` and `mayfly store migrate` refuse: {RECREATE_HINT}")]
    Interrupted {
        /// The target.
        target: String,
        /// What failed.
        cause: Box<MigrateError>,
    },
    /// A CA key of the source cannot go into the target as it is.
    #[error(
        "{0}; encrypt the source's CA key files first (`ssh-keygen -p -f FILE` for each of \
         user_ca, host_ca, user_ca-<group> and their .next/.previous in the source's data_dir, \
         with the passphrase the replicas will use) and set [ca] key_protection = \"passphrase\" \
         in both configs"
    )]
    UnencryptedKey(String),
    /// The CA keys or the audit key could not be read or stored.
    #[error("CA keys: {0}")]
    Keys(String),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MigrateError {
    /// True when the source's audit log was found tampered with (the
    /// command's "no" answer, exit 2).
    pub fn is_tampered_source(&self) -> bool {
        matches!(self, MigrateError::SourceTampered(_))
    }
}

fn first_problem(r: &VerifyReport) -> String {
    r.problems
        .first()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "a problem".into())
}

/// The chain head copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Head {
    /// Its seq.
    pub seq: u64,
    /// Its hash, hex.
    pub hash: String,
}

/// What happened to the audit checkpoint key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKeyOutcome {
    /// Copied into the target's data_dir.
    Copied,
    /// The target's data_dir had the same key already.
    AlreadyThere,
    /// The source has none (it never streamed or checkpointed).
    None,
}

/// What a finished migration copied and checked.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The source's location.
    pub from: String,
    /// The target's location.
    pub to: String,
    /// Rows copied, per kind (equal to what source and target hold).
    pub copied: StoreCounts,
    /// The chain head, the same on both (`None`: empty log).
    pub head: Option<Head>,
    /// The source's highest serial; the target issues above it.
    pub serial_floor: u64,
    /// The revocation state version (the KRL version) carried over.
    pub state_version: u64,
    /// The audit stream cursor carried over.
    pub stream_cursor: Option<u64>,
    /// Signed checkpoints whose signature was verified on the target.
    pub checkpoints_verified: u64,
    /// The audit checkpoint key.
    pub audit_key: AuditKeyOutcome,
    /// The target's data_dir (where the audit key is).
    pub target_data_dir: PathBuf,
    /// The CA bases whose keys were copied into the target's database
    /// (empty when the target keeps keys as files).
    pub ca_keys: Vec<String>,
    /// Whether the audit key was stored (encrypted) in the target's database.
    pub audit_key_in_database: bool,
}

/// The facts of a store that a migration compares: the source before and
/// after the copy, and the target after it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Facts {
    counts: StoreCounts,
    head: Option<(u64, Option<Hash>)>,
    max_serial: u64,
    version: StateVersion,
    cursor: Option<u64>,
}

impl Facts {
    async fn read(s: &Store) -> Result<Facts, StoreError> {
        Ok(Facts {
            counts: s.imports().counts().await?,
            head: s.audit().head().await?,
            max_serial: s.issuance().max_serial().await?,
            version: s.access().state_version().await?,
            cursor: s.audit().stream_cursor().await?,
        })
    }

    fn head_seq(&self) -> u64 {
        self.head.map(|(s, _)| s).unwrap_or(0)
    }

    /// What differs from `other`, in words (empty: nothing).
    fn differences(&self, other: &Facts, source: &str, target: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.counts != other.counts {
            out.push(format!(
                "{source} holds {}, {target} {}",
                self.counts, other.counts
            ));
        }
        if self.head != other.head {
            out.push(format!(
                "{source} ends at {}, {target} at {}",
                describe_head(self.head),
                describe_head(other.head)
            ));
        }
        if self.version != other.version {
            out.push(format!(
                "{source} is at state version {}, {target} at {}",
                self.version.version, other.version.version
            ));
        }
        out
    }
}

fn describe_head(h: Option<(u64, Option<Hash>)>) -> String {
    match h {
        None => "no record".into(),
        Some((seq, Some(h))) => format!("seq {seq} (hash {})", &chain::hex(&h)[..16]),
        Some((seq, None)) => format!("seq {seq} (no hash)"),
    }
}

/// The audit key files of one data_dir.
struct Files {
    private: PathBuf,
    public: PathBuf,
}

impl Files {
    fn of(data_dir: &Path) -> Files {
        Files {
            private: data_dir.join(KEY_FILE),
            public: data_dir.join(PUB_FILE),
        }
    }

    /// The private key's bytes (`None`: no file).
    fn read(&self) -> Result<Option<Zeroizing<Vec<u8>>>, MigrateError> {
        match std::fs::read(&self.private) {
            Ok(b) => Ok(Some(Zeroizing::new(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(MigrateError::File {
                path: self.private.clone(),
                source,
            }),
        }
    }
}

/// A migration with both ends open and every refusal that needs nothing
/// written already made.
pub struct Migration {
    source: Store,
    source_at: String,
    source_keys: Files,
    target: Store,
    target_at: String,
    target_dir: PathBuf,
    target_keys: Files,
    target_ca: crate::config::CaKeyConfig,
}

/// Fails when something accepts connections on `listen` (the unspecified
/// address is probed on loopback).
pub fn ensure_stopped(listen: SocketAddr) -> Result<(), MigrateError> {
    let mut probe = listen;
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => probe.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        IpAddr::V6(ip) if ip.is_unspecified() => probe.set_ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        _ => {}
    }
    match TcpStream::connect_timeout(&probe, PROBE_TIMEOUT) {
        Ok(_) => Err(MigrateError::SourceRunning(listen)),
        Err(_) => Ok(()),
    }
}

fn open_store(cfg: &StoreConfig) -> Result<Store, MigrateError> {
    crate::store::open(cfg).map_err(|source| MigrateError::Open {
        location: cfg.location(),
        source,
    })
}

impl Migration {
    /// Refuses one database on both sides and a running source, creates
    /// the target's data_dir (0700) if needed, and opens the source
    /// read-only and the target as a server would (creating and upgrading
    /// its schema).
    pub fn open(from: &Config, to: &Config) -> Result<Migration, MigrateError> {
        let source_cfg = StoreConfig::from_config(from, OpenMode::ReadOnly);
        let target_cfg = StoreConfig::from_config(to, OpenMode::Create);
        if same_database(&source_cfg, &target_cfg) {
            return Err(MigrateError::SameStore(source_cfg.location()));
        }
        ensure_stopped(from.listen)?;
        let source = open_store(&source_cfg)?;
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&to.data_dir)
                .map_err(|source| MigrateError::File {
                    path: to.data_dir.clone(),
                    source,
                })?;
        }
        let target = open_store(&target_cfg)?;
        let target_at = target_cfg.location();
        let source_keys = Files::of(&from.data_dir);
        let target_keys = Files::of(&to.data_dir);
        Ok(Migration {
            source,
            source_at: source_cfg.location(),
            source_keys,
            target,
            target_at,
            target_dir: to.data_dir.clone(),
            target_keys,
            target_ca: to.ca.clone(),
        })
    }

    /// The source's audit public key, if it has one.
    fn audit_public_key(&self) -> Result<Option<AuditPublicKey>, MigrateError> {
        let path = &self.source_keys.public;
        if !path.exists() {
            return Ok(None);
        }
        AuditPublicKey::read(path)
            .map(Some)
            .map_err(|e| MigrateError::AuditPublicKey {
                path: path.clone(),
                reason: e.to_string(),
            })
    }

    /// Copies and checks everything; `now_ms` is when the import began
    /// (kept in the target's import mark while it runs).
    pub async fn run(&self, now_ms: i64) -> Result<Summary, MigrateError> {
        // Said before the audit key, as it is the bigger problem;
        // `begin_import` checks again, atomically.
        let refused = |refusal| MigrateError::TargetRefused {
            location: self.target_at.clone(),
            refusal,
        };
        if let Some(u) = self.target.imports().unfinished_import().await? {
            return Err(refused(ImportRefusal::Unfinished(u)));
        }
        let counts = self.target.imports().counts().await?;
        if !counts.is_empty() {
            return Err(refused(ImportRefusal::NotEmpty(counts)));
        }
        if let (Some(s), Some(t)) = (self.source_keys.read()?, self.target_keys.read()?) {
            if s != t {
                return Err(MigrateError::DifferentAuditKey(
                    self.target_keys.private.clone(),
                ));
            }
        }
        if let Some(unfinished) = self.source.imports().unfinished_import().await? {
            return Err(MigrateError::SourceUnfinished {
                location: self.source_at.clone(),
                unfinished,
            });
        }
        let key = self.audit_public_key()?;
        let report = verify_db(
            self.source.audit(),
            key.as_ref(),
            &format!("source {}", self.source_at),
        )
        .await?;
        if !report.is_intact() {
            return Err(MigrateError::SourceTampered(Box::new(report)));
        }
        let ca_keys = self.source_ca_keys().await?;
        self.target_holds_no_keys().await?;
        let audit_pass = if self.target.keys().shared() {
            Some(self.audit_key_passphrase()?)
        } else {
            None
        };
        let before = Facts::read(&self.source).await?;
        self.target
            .imports()
            .begin_import(&self.source_at, now_ms)
            .await?
            .map_err(refused)?;
        self.copy(&before, key.as_ref(), &ca_keys, audit_pass.as_ref())
            .await
            .map_err(|cause| MigrateError::Interrupted {
                target: self.target_at.clone(),
                cause: Box::new(cause),
            })
    }

    /// The source's stored CA keys, when the target keeps keys in its
    /// database (else none: they stay files). Refuses an unencrypted one
    /// before anything is written.
    async fn source_ca_keys(&self) -> Result<Vec<(String, CaKeys)>, MigrateError> {
        if !self.target.keys().shared() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for base in self.source.keys().cas().await? {
            let keys = self
                .source
                .keys()
                .ca_keys(&base)
                .await?
                .map_err(|e| MigrateError::Keys(e.to_string()))?;
            for slot in Slot::ALL {
                if let Some(k) = keys.get(slot) {
                    if is_encrypted(&k.private) != Some(true) {
                        return Err(MigrateError::UnencryptedKey(format!(
                            "the source's CA key {} is not passphrase-encrypted, and the target \
                             {} keeps CA keys in a database shared by replicas",
                            k.location, self.target_at
                        )));
                    }
                }
            }
            out.push((base, keys));
        }
        Ok(out)
    }

    /// Refuses a shared target that holds CA keys or an audit key already
    /// (a replica was started on it): the copy would sign with other keys
    /// than the source CA's.
    async fn target_holds_no_keys(&self) -> Result<(), MigrateError> {
        if !self.target.keys().shared() {
            return Ok(());
        }
        let mut held = self.target.keys().cas().await?;
        let audit = self.target.keys().ca_keys(KEY_FILE).await?;
        if audit.map(|k| !k.is_empty()).unwrap_or(true) {
            held.push(KEY_FILE.to_string());
        }
        if held.is_empty() {
            return Ok(());
        }
        Err(MigrateError::Keys(format!(
            "the target {} holds keys already ({}: a replica was started on it), and the copy \
             must sign with the source CA's keys; {RECREATE_HINT}",
            self.target_at,
            held.join(", ")
        )))
    }

    /// The passphrase the audit key is stored with in the target's
    /// database: the target's CA passphrase.
    fn audit_key_passphrase(&self) -> Result<Secret, MigrateError> {
        let env = |k: &str| std::env::var(k).ok();
        shared_audit_key_passphrase(&self.target_ca, &env).map_err(|e| {
            MigrateError::Keys(format!(
                "the target keeps the audit key in its database, encrypted with the CA \
                 passphrase of the --to config: {e}"
            ))
        })
    }

    /// Stores the CA keys and (encrypted) the source's audit key in the
    /// target's database.
    async fn copy_keys(
        &self,
        ca_keys: &[(String, CaKeys)],
        audit_pass: Option<&Secret>,
    ) -> Result<bool, MigrateError> {
        let keys = self.target.keys();
        for (base, k) in ca_keys {
            keys.import_keys(base, k.clone())
                .await?
                .map_err(|e| MigrateError::Keys(format!("storing CA {base}: {e}")))?;
        }
        let (Some(pass), Some(text)) = (audit_pass, self.source_keys.read()?) else {
            return Ok(false);
        };
        let text = std::str::from_utf8(&text).map_err(|_| {
            MigrateError::Keys(format!(
                "{} is not an OpenSSH private key",
                self.source_keys.private.display()
            ))
        })?;
        let new = encrypt_key_text(text, pass).map_err(|e| {
            MigrateError::Keys(format!("{}: {e}", self.source_keys.private.display()))
        })?;
        let stored = CaKeys {
            active: Some(StoredKey {
                public: new.public,
                private: new.private,
                created_at: None,
                location: KeyLocation::File(self.source_keys.private.clone()),
            }),
            next: None,
            previous: None,
        };
        keys.import_keys(KEY_FILE, stored)
            .await?
            .map_err(|e| MigrateError::Keys(format!("storing the audit key: {e}")))?;
        Ok(true)
    }

    async fn copy(
        &self,
        before: &Facts,
        key: Option<&AuditPublicKey>,
        ca_keys: &[(String, CaKeys)],
        audit_pass: Option<&Secret>,
    ) -> Result<Summary, MigrateError> {
        let (src, dst) = (&self.source, self.target.imports());
        let head_seq = before.head_seq();
        let mut copied = StoreCounts::default();

        let mut next = 1u64;
        while next <= head_seq {
            let want = usize::try_from(head_seq - next + 1)
                .unwrap_or(PAGE)
                .min(PAGE);
            let mut page = Vec::with_capacity(want);
            for row in src.audit().scan(next, want).await? {
                page.push(row.map_err(MigrateError::SourceUnreadable)?);
            }
            let Some(last) = page.last() else { break };
            next = last.seq.saturating_add(1);
            copied.audit_records += page.len() as u64;
            dst.import_audit(page).await?;
        }

        let mut after = 0i64;
        loop {
            let rows = src.audit().checkpoints(after, PAGE).await?;
            let n = rows.len();
            let mut page = Vec::with_capacity(n);
            for (id, cp) in rows {
                after = id;
                let cp = cp.map_err(MigrateError::SourceUnreadable)?;
                // A checkpoint beyond the head read at the start was signed
                // during the copy; the final comparison reports that.
                if cp.seq <= head_seq {
                    page.push(cp);
                }
            }
            copied.checkpoints += page.len() as u64;
            if !page.is_empty() {
                dst.import_checkpoints(page).await?;
            }
            if n < PAGE {
                break;
            }
        }

        let mut after = 0i64;
        loop {
            let page = src.access().revocation_history(after, PAGE).await?;
            let n = page.len();
            let Some(last) = page.last() else { break };
            after = last.id;
            copied.revocations += n as u64;
            dst.import_revocations(page).await?;
            if n < PAGE {
                break;
            }
        }

        let disabled = src.access().disabled().await?;
        copied.disabled = disabled.len() as u64;
        if !disabled.is_empty() {
            dst.import_disabled(disabled).await?;
        }

        let mut after = String::new();
        loop {
            let page = src.approvals().list_after(&after, PAGE).await?;
            let n = page.len();
            let Some(last) = page.last() else { break };
            after = last.id.clone();
            copied.approvals += n as u64;
            dst.import_approvals(page).await?;
            if n < PAGE {
                break;
            }
        }

        let meta = src.audit().chain_meta().await?;
        dst.import_state(ImportedState {
            serial_floor: before.max_serial,
            state_version: before.version,
            stream_cursor: before.cursor,
            legacy_through: meta.legacy_through,
            migrated_at_ms: meta.migrated_at_ms,
        })
        .await?;

        let now = Facts::read(src).await?;
        let mut moved = before.differences(&now, "before the copy it", "after it");
        if now.cursor != before.cursor {
            moved.push("its audit stream cursor moved".into());
        }
        if now.max_serial != before.max_serial {
            moved.push(format!(
                "its highest serial went from {} to {}",
                before.max_serial, now.max_serial
            ));
        }
        if !moved.is_empty() {
            return Err(MigrateError::SourceChanged(moved.join("; ")));
        }
        if copied != before.counts {
            return Err(MigrateError::Mismatch(format!(
                "read {copied} from the source, which holds {}",
                before.counts
            )));
        }

        let report = verify_db(
            self.target.audit(),
            key,
            &format!("target {}", self.target_at),
        )
        .await?;
        if !report.is_intact() {
            return Err(MigrateError::Mismatch(format!(
                "the copied audit log does not verify: {}",
                first_problem(&report)
            )));
        }
        let target = Facts::read(&self.target).await?;
        let mut wrong = before.differences(&target, "the source", "the target");
        if target.max_serial < before.max_serial {
            wrong.push(format!(
                "the target's highest serial is {}, below the source's {}",
                target.max_serial, before.max_serial
            ));
        }
        if target.cursor != before.cursor {
            wrong.push("the audit stream cursor was not carried over".into());
        }
        if !wrong.is_empty() {
            return Err(MigrateError::Mismatch(wrong.join("; ")));
        }

        let audit_key = self.carry_audit_key()?;
        let audit_key_in_database = self.copy_keys(ca_keys, audit_pass).await?;
        dst.finish_import().await?;
        Ok(Summary {
            from: self.source_at.clone(),
            to: self.target_at.clone(),
            copied,
            head: before.head.map(|(seq, h)| Head {
                seq,
                hash: h.map(|h| chain::hex(&h)).unwrap_or_default(),
            }),
            serial_floor: before.max_serial,
            state_version: before.version.version,
            stream_cursor: before.cursor,
            checkpoints_verified: report.checkpoints_signed_ok,
            audit_key,
            target_data_dir: self.target_dir.clone(),
            ca_keys: ca_keys.iter().map(|(b, _)| b.clone()).collect(),
            audit_key_in_database,
        })
    }

    /// Copies the audit key files into the target's data_dir, unless the
    /// same key is there already (a different one was refused at open).
    fn carry_audit_key(&self) -> Result<AuditKeyOutcome, MigrateError> {
        let Some(key) = self.source_keys.read()? else {
            return Ok(AuditKeyOutcome::None);
        };
        match self.target_keys.read()? {
            Some(t) if t == key => return Ok(AuditKeyOutcome::AlreadyThere),
            Some(_) => {
                return Err(MigrateError::DifferentAuditKey(
                    self.target_keys.private.clone(),
                ))
            }
            None => {}
        }
        let file_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| MigrateError::File { path, source }
        };
        let public =
            std::fs::read(&self.source_keys.public).map_err(file_err(&self.source_keys.public))?;
        crate::ca::keys::write_atomic(&self.target_keys.private, &key, 0o600)
            .map_err(file_err(&self.target_keys.private))?;
        crate::ca::keys::write_atomic(&self.target_keys.public, &public, 0o644)
            .map_err(file_err(&self.target_keys.public))?;
        Ok(AuditKeyOutcome::Copied)
    }
}
