//! What a store is, by concern. Each trait is async (its methods return a
//! boxed future, so the traits stay object-safe and a handle is an
//! `Arc<dyn Trait>`), `Send + Sync`, and fails with [`StoreError`].
//!
//! A backend implements all of them over one database; the SQLite backend
//! is [`super::sqlite_store::SqliteStore`]. A PostgreSQL backend with many
//! replicas implements the same traits, and the counters of
//! [`IssuanceCounters`] then live in the database instead of in memory.
//!
//! Every read-then-write sequence that must not interleave with another
//! writer is one method here, so a backend runs it as one transaction:
//! [`IssuanceStore::issue`] (disabled check, `max_active_certs`, approval
//! redemption, then the record), [`AccessStore::disable_and_revoke`] and
//! [`AccessStore::revoke_matching`]. [`KeyStore::rotate`] applies a CA key
//! rotation step, its audit record and the state-version bump as one
//! operation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::import::{ImportRefusal, ImportedState, RevocationRow, StoreCounts, UnfinishedImport};
use super::reports::{
    AuditSpan, DailyIssuance, IdentityRoleUsage, LastDenialRow, PrincipalUse, RoleAllTime,
    RoleWindowUsage, ScrapeGauges,
};
use super::sessions::{SessionKey, SessionRow};
use super::{
    CertFilter, DisableTarget, DisabledEntry, GuardRefusal, IssueGuard, IssuedCert, Revocation,
    StateVersion, StoreError,
};
use crate::approval::{ApprovalError, ApprovalRequest, ApprovalStatus};
use crate::audit::chain::{BadRow, ChainMeta, Hash, StoredRecord};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::search::AuditQuery;
use crate::audit::AuditRecord;
use crate::ca::keys::{NewKey, StoredKey};
use crate::ca::rotation::{CaKeys, KeyStep, RotationError, Slots};
use crate::policy::limits::RateLimit;
use crate::replica::Heartbeat;

/// Checkpoints read in one page, each with its id (a row that cannot be
/// read as a checkpoint comes as `Err`).
pub type CheckpointPage = Vec<(i64, Result<Checkpoint, BadRow>)>;

/// The future a store method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Turns one certificate found by a revocation sweep into its revocation
/// and audit record (run inside the store's transaction).
pub type Revoker = Box<dyn Fn(&IssuedCert) -> (Revocation, AuditRecord) + Send + Sync>;

/// Signs a checkpoint of the chain head: `(seq, hash, time_ms)` to the
/// signature text (run inside the store's transaction, so the head cannot
/// move in between).
pub type CheckpointSigner = Box<dyn FnOnce(u64, &Hash, i64) -> Result<String, String> + Send>;

/// Called after each commit of the log (a group commit or an admin
/// change), once the waiting requests have their answers. Must not block:
/// the audit stream uses it to wake its own thread.
pub type AfterCommit = Box<dyn FnMut() + Send>;

/// Issuance: the durable record of every certificate and the facts read
/// from it (serials, used token ids, live certificates).
pub trait IssuanceStore: Send + Sync {
    /// Appends an issuance record if `guard` still holds when it commits,
    /// in the same group commit as concurrent records. `Ok(Err(_))`: the
    /// guard failed and nothing was written.
    fn issue(
        &self,
        record: AuditRecord,
        guard: Option<IssueGuard>,
    ) -> StoreFuture<'_, Result<(), GuardRefusal>>;
    /// Highest certificate serial ever recorded (0 if none).
    fn max_serial(&self) -> StoreFuture<'_, u64>;
    /// Replay ids of tokens that minted a certificate and expire after `now`.
    fn used_tokens(&self, now: u64) -> StoreFuture<'_, Vec<(String, u64)>>;
    /// Issued certificates matching `filter` that are still valid at `now`
    /// and not revoked.
    fn live_certs(&self, filter: &CertFilter, now: u64) -> StoreFuture<'_, Vec<IssuedCert>>;
    /// How many certificates of `issuer`/`subject` in `role` are valid at
    /// `now` and not revoked (the `max_active_certs` count).
    fn active_certs(
        &self,
        issuer: &str,
        subject: &str,
        role: &str,
        now: u64,
    ) -> StoreFuture<'_, u64>;
    /// Latest `valid_before` of any certificate signed by `ca_key` (0 if none).
    fn last_expiry_by_ca(&self, ca_key: &str) -> StoreFuture<'_, u64>;
}

/// The state of issuance that is process memory in SQLite mode (one
/// server per database) and shared rows with many replicas: serials, the
/// used-token (replay) set, and rate-limit buckets.
pub trait IssuanceCounters: Send + Sync {
    /// Loads what the counters start from (SQLite mode: the highest serial
    /// and the unexpired used token ids recorded in the log). Called once
    /// at start, before the first certificate; `now` is unix seconds.
    fn start(&self, now: u64) -> StoreFuture<'_, ()>;
    /// The next certificate serial: never handed out before, above every
    /// recorded serial and above the clock floor taken at [`Self::start`].
    fn next_serial(&self) -> StoreFuture<'_, u64>;
    /// Marks token `id` (valid until `expires_at`) as used at `now`.
    /// `false`: it was used already, and the request must be refused.
    fn claim_token(&self, id: &str, expires_at: u64, now: u64) -> StoreFuture<'_, bool>;
    /// Whether tokens are better claimed in the issuance's commit
    /// ([`crate::store::IssueGuard::claims`]) than by [`Self::claim_token`]
    /// before signing: a shared database, where a separate claim is a
    /// round trip and a commit of its own per certificate. The commit
    /// claims the tokens of every record it does not refuse as stale, in
    /// order, so two requests with one token still give exactly one
    /// certificate.
    fn claims_at_commit(&self) -> bool {
        false
    }
    /// Takes one token from `key`'s bucket at `now` (seconds, any
    /// monotonic origin). `Err(wait)`: how long until one is available.
    fn take_rate(
        &self,
        key: &str,
        rate: RateLimit,
        now: f64,
    ) -> StoreFuture<'_, Result<(), Duration>>;
}

/// The audit log: append with group commit, scan, checkpoints, search.
/// Records are stored in their canonical form
/// ([`crate::audit::chain::stored_form`]) and chained inside the write
/// transaction that inserts them.
pub trait AuditLog: Send + Sync {
    /// Appends one record and returns once it is durable.
    fn append(&self, record: AuditRecord) -> StoreFuture<'_, ()>;
    /// Appends `record` and bumps the state version in one transaction
    /// (changes other processes must notice, such as a CA key rotation).
    /// The new version also counts as a change of the CA keys: issuances
    /// that read the keys before it are refused at commit
    /// ([`crate::store::IssueGuard::acted_on`]).
    fn record_change(&self, record: AuditRecord, now: u64) -> StoreFuture<'_, StateVersion>;
    /// Up to `limit` records from `from_seq` on, in seq order. Rows that
    /// cannot be read as records come as `Err`.
    fn scan(
        &self,
        from_seq: u64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Result<StoredRecord, BadRow>>>;
    /// The record at `seq`, if present.
    fn record(&self, seq: u64) -> StoreFuture<'_, Option<Result<StoredRecord, BadRow>>>;
    /// The highest seq present and its hash (`None` when the log is empty).
    fn head(&self) -> StoreFuture<'_, Option<(u64, Option<Hash>)>>;
    /// Where an export `--since time_ms` starts: the record after the last
    /// one older than `time_ms` (`None` when nothing is that new).
    fn first_seq_since(&self, time_ms: i64) -> StoreFuture<'_, Option<u64>>;
    /// Chain facts kept beside the records.
    fn chain_meta(&self) -> StoreFuture<'_, ChainMeta>;
    /// Up to `limit` checkpoints with an id above `after_id`, oldest first,
    /// each with its id.
    fn checkpoints(&self, after_id: i64, limit: usize) -> StoreFuture<'_, CheckpointPage>;
    /// The latest checkpoint's (seq, hash), if any (not verified).
    fn last_checkpoint(&self) -> StoreFuture<'_, Option<(u64, Hash)>>;
    /// The latest checkpoint's seq and signing time (unix ms), if any (not
    /// verified): what the console shows as the last signed checkpoint.
    fn last_checkpoint_at(&self) -> StoreFuture<'_, Option<(u64, i64)>>;
    /// Signs the current head with `sign` and stores the checkpoint in one
    /// write transaction. `None` when the log is empty or the head is
    /// already checkpointed.
    fn write_checkpoint(
        &self,
        key_fingerprint: &str,
        time_ms: i64,
        sign: CheckpointSigner,
    ) -> StoreFuture<'_, Option<Checkpoint>>;
    /// Where live streaming to the audit sinks got to (last seq sent).
    fn stream_cursor(&self) -> StoreFuture<'_, Option<u64>>;
    /// Saves the streaming cursor.
    fn set_stream_cursor(&self, seq: u64) -> StoreFuture<'_, ()>;
    /// Records matching `q` ([`AuditQuery::matches`]), newest first, at
    /// most `q.limit`.
    fn search(&self, q: &AuditQuery) -> StoreFuture<'_, Vec<Result<StoredRecord, BadRow>>>;
    /// Calls `hook` after every commit of this process's writer. Not every
    /// backend can notice other writers; readers poll as well.
    fn on_commit(&self, hook: AfterCommit);
}

/// Approval requests (just-in-time access); each change is written with
/// its audit records in one transaction. Redemption is part of
/// [`IssuanceStore::issue`].
pub trait ApprovalStore: Send + Sync {
    /// Inserts or replaces `req`, with its audit records, in one transaction.
    fn put(&self, req: ApprovalRequest, audit: Vec<AuditRecord>) -> StoreFuture<'_, ()>;
    /// One approval request.
    fn get(&self, id: &str) -> StoreFuture<'_, Option<ApprovalRequest>>;
    /// Approval requests in a state (all if `None`), newest first.
    fn list(&self, status: Option<ApprovalStatus>) -> StoreFuture<'_, Vec<ApprovalRequest>>;
    /// Every approval request (any state) with an id above `after_id`
    /// (`""` for the first page), by id, at most `limit`: the whole table
    /// page by page, for `mayfly store migrate`.
    fn list_after(&self, after_id: &str, limit: usize) -> StoreFuture<'_, Vec<ApprovalRequest>>;
    /// Records one approver's vote on request `id` as one atomic
    /// read-then-write ([`crate::approval::apply_vote`] decides), with its
    /// audit record. `Ok(Err(_))`: the vote was refused, nothing written.
    fn vote(
        &self,
        id: &str,
        vote: Vote,
        audit: AuditRecord,
    ) -> StoreFuture<'_, Result<ApprovalRequest, ApprovalError>>;
    /// Withdraws request `id` as one atomic read-then-write
    /// ([`crate::approval::apply_cancel`] decides against the stored row,
    /// so a cancel racing a vote, a redemption or the expiry has one
    /// outcome), with its audit record. `Ok(Err(_))`: refused, nothing
    /// written.
    fn cancel(
        &self,
        id: &str,
        cancel: Cancel,
        audit: AuditRecord,
    ) -> StoreFuture<'_, Result<ApprovalRequest, ApprovalError>>;
}

/// The withdrawal of an approval request.
#[derive(Debug, Clone)]
pub struct Cancel {
    /// `requester:<issuer>:<subject>` or `admin:<issuer>:<subject>`.
    pub by: String,
    /// Why.
    pub reason: String,
    /// Unix seconds.
    pub now: u64,
}

/// One approver's vote on an approval request.
#[derive(Debug, Clone)]
pub struct Vote {
    /// `issuer:subject` of the approver.
    pub approver: String,
    /// Approve (true) or deny.
    pub approve: bool,
    /// Why.
    pub reason: String,
    /// Unix seconds.
    pub now: u64,
}

/// Revocations and deactivations, and the state version that tells
/// readers (the KRL cache, other processes) that they changed.
pub trait AccessStore: Send + Sync {
    /// Records revocations and their audit records in one transaction,
    /// bumping the state version. Already-revoked serials are kept once.
    fn revoke(
        &self,
        revocations: Vec<Revocation>,
        audit: Vec<AuditRecord>,
        now: u64,
    ) -> StoreFuture<'_, StateVersion>;
    /// Revokes every live certificate matching `filter` in one
    /// transaction; returns the revoked certificates (none: nothing
    /// written) and the new version.
    fn revoke_matching(
        &self,
        filter: CertFilter,
        now: u64,
        revoke: Revoker,
    ) -> StoreFuture<'_, (Vec<IssuedCert>, StateVersion)>;
    /// Disables `key` and revokes the live certificates matching `filter`
    /// in one transaction, so no certificate issued before the flag is set
    /// escapes the sweep. Returns whether the flag changed and what was
    /// revoked.
    fn disable_and_revoke(
        &self,
        entry: DisabledEntry,
        audit: AuditRecord,
        filter: CertFilter,
        now: u64,
        revoke: Revoker,
    ) -> StoreFuture<'_, (bool, Vec<IssuedCert>)>;
    /// Disables (`Some(entry)`) or re-enables (`None`) `key`, with its
    /// audit record, in one transaction. Returns whether anything changed.
    fn set_disabled(
        &self,
        key: DisableTarget,
        entry: Option<DisabledEntry>,
        audit: AuditRecord,
        now: u64,
    ) -> StoreFuture<'_, bool>;
    /// Revocations whose certificates are still valid at `now`.
    fn live_revocations(&self, now: u64) -> StoreFuture<'_, Vec<Revocation>>;
    /// Every revocation ever recorded (expired ones included) with a row
    /// id above `after_id`, by id, at most `limit`: the history page by
    /// page, for `mayfly store migrate`.
    fn revocation_history(
        &self,
        after_id: i64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<RevocationRow>>;
    /// Every disabled entry.
    fn disabled(&self) -> StoreFuture<'_, Vec<DisabledEntry>>;
    /// The current state version.
    fn state_version(&self) -> StoreFuture<'_, StateVersion>;
}

/// Read-only report queries (inventory, access review, compliance
/// evidence, scrape-time gauges), served apart from the request path so a
/// slow report never holds up a certificate.
pub trait ReportStore: Send + Sync {
    /// Per identity and role: issued and denied counts, first and last use.
    fn identity_usage(&self) -> StoreFuture<'_, Vec<IdentityRoleUsage>>;
    /// The latest refusal of each identity.
    fn last_denials(&self) -> StoreFuture<'_, Vec<LastDenialRow>>;
    /// Issuance per role since `since_ms`.
    fn role_window_usage(&self, since_ms: u64) -> StoreFuture<'_, Vec<RoleWindowUsage>>;
    /// Issuance per role over the whole log.
    fn role_all_time(&self) -> StoreFuture<'_, Vec<RoleAllTime>>;
    /// Which principals each role's certificates carried since `since_ms`.
    fn principals_granted(&self, since_ms: u64) -> StoreFuture<'_, Vec<PrincipalUse>>;
    /// Certificates issued per role and UTC day since `since_ms`.
    fn daily_issuance(&self, since_ms: u64) -> StoreFuture<'_, Vec<DailyIssuance>>;
    /// Refusals by reason code since `since_ms`, most frequent first.
    fn denials_by_reason(&self, since_ms: u64) -> StoreFuture<'_, Vec<(String, u64)>>;
    /// Audit records by event since `since_ms`.
    fn event_counts(&self, since_ms: u64) -> StoreFuture<'_, Vec<(String, u64)>>;
    /// Issuance records since `since_ms` that lack a required field.
    fn incomplete_issuance_records(&self, since_ms: u64) -> StoreFuture<'_, u64>;
    /// Size and time span of the audit log.
    fn audit_span(&self) -> StoreFuture<'_, AuditSpan>;
    /// Revocations recorded since `since_ms`.
    fn revocations_since(&self, since_ms: u64) -> StoreFuture<'_, u64>;
    /// The gauges of one `/metrics` scrape (cheap queries only; never
    /// builds an index).
    fn scrape_gauges(&self, now: u64) -> StoreFuture<'_, ScrapeGauges>;
    /// Number of audit records of `event` (e.g. `cert_issued`).
    fn count_events(&self, event: &str) -> StoreFuture<'_, u64>;
}

/// CA keys and their rotation state, shared by every process of the CA.
///
/// A CA is named by its base (`user_ca`, `host_ca`, `user_ca-<group>`) and
/// has up to three slots ([`crate::ca::rotation::Slot`]). The store keeps
/// each key as OpenSSH private key text ([`StoredKey`]: passphrase-encrypted
/// under `[ca] key_protection = "passphrase"`) with its public line; it
/// never decrypts. PKCS#11 keys are not stored: they stay on the token.
///
/// Whether a step fits is decided by
/// [`crate::ca::rotation::check_step`] (and, for retire,
/// [`crate::ca::rotation::check_retire_expiry`]), which every
/// implementation calls on the stored state inside the operation that
/// applies the step, so all of them refuse alike.
///
/// # SQLite mode (files)
///
/// `SqliteStore` keeps the keys as files beside its database, in
/// `data_dir`: `user_ca`, `user_ca.next`, `user_ca.previous` (0600, written
/// to a temp file, fsynced, hard-linked into place so an existing key is
/// never replaced). Activation links `user_ca` to `user_ca.previous` and
/// then renames `user_ca.next` over `user_ca`; retire removes
/// `user_ca.previous`. The file step comes first, then the audit record
/// and the state-version bump in one SQLite transaction: a crash between
/// them leaves the step done but not yet recorded, never recorded but not
/// done. One server owns a SQLite database, so no lock across machines is
/// needed; two processes creating the same key file at once still end up
/// with one key (the hard link fails for the second, which loads the
/// first's).
///
/// # PostgreSQL (what a shared-database implementation must do)
///
/// One table, one row per stored key:
///
/// ```sql
/// CREATE TABLE ca_keys (
///     base        TEXT   NOT NULL,   -- 'user_ca', 'host_ca', 'user_ca-<group>'
///     slot        TEXT   NOT NULL CHECK (slot IN ('active', 'next', 'previous')),
///     public_key  TEXT   NOT NULL,   -- StoredKey::public (the audit ca_key form)
///     private_key TEXT   NOT NULL,   -- OpenSSH text, passphrase-encrypted
///     created_at  BIGINT NOT NULL,   -- unix seconds, from the inserting replica
///     PRIMARY KEY (base, slot)
/// );
/// ```
///
/// * [`KeyStore::shared`] is `true`. Start-up then refuses an unencrypted
///   file key (`[ca] key_protection = "none"`) before anything is stored,
///   and [`KeyStore::create_active_if_absent`] and a `Stage` step refuse
///   any key text for which [`crate::ca::keys::is_encrypted`] is not
///   `Some(true)`, with [`crate::ca::keys::UNENCRYPTED_SHARED_KEY`].
/// * [`KeyStore::ca_keys`]: `SELECT ... WHERE base = $1`, locations
///   [`crate::ca::KeyLocation::Database`]. [`KeyStore::cas`]:
///   `SELECT DISTINCT base ... ORDER BY base`.
/// * [`KeyStore::create_active_if_absent`] resolves the first-start race
///   by the primary key, in one transaction: if the CA has a next or
///   previous row but no active one, refuse (the same words as
///   [`crate::ca::rotation::check_step`] for a missing active key); else
///   `INSERT ... (base, 'active', ...) ON CONFLICT (base, slot) DO
///   NOTHING`, then `SELECT` the active row. Two replicas starting at once
///   on an empty database both insert; the second insert waits on the
///   first's uncommitted row, then does nothing, and its `SELECT` (a new
///   snapshot under READ COMMITTED) returns the first's key: both sign
///   with ONE key. Returns `(row, inserted)`. No audit record (as today,
///   a key's creation is logged, not audited) and no version bump: a
///   replica that starts later loads the row.
/// * [`KeyStore::rotate`] is one transaction (one write of the store's
///   writer, like `record_change`): first append `change.audit` to the
///   chain, which takes the chain head row lock (`SELECT ... FROM
///   chain_head FOR UPDATE`) as every transaction that appends audit rows
///   does, so rotations serialise with each other and with every issuance
///   commit of every replica; then `SELECT ... FROM ca_keys WHERE base =
///   $1 FOR UPDATE` and call `check_step` on what was read (a rotation run
///   at the same time on another host is refused as
///   [`RotationError::Changed`], never half applied); for `Retire`, read
///   `MAX(valid_before)` of the `cert_issued` rows whose `ca_key` is the
///   previous key's public line, in the same transaction, and call
///   `check_retire_expiry`; then apply: `Stage`: `INSERT` the `next` row;
///   `Activate`: `UPDATE ... SET slot = 'previous' WHERE slot = 'active'`
///   and then `UPDATE ... SET slot = 'active' WHERE slot = 'next'` (two
///   statements, in this order, so the primary key never sees two active
///   rows; a `previous` row equal to the active key cannot exist here);
///   `Retire`: `DELETE` the `previous` row. Then bump the state version
///   (which sends `NOTIFY mayfly_state`; every replica reloads its key
///   rings when the version moves, `Service::refresh_admin`) and commit.
///   A refusal rolls the whole transaction back, the audit row with it,
///   and returns `Ok(Err(_))`.
/// * The table comes as a new versioned migration (3).
/// * The audit checkpoint signing key is stored the same way, as the
///   active key of base `audit_key` ([`crate::audit::checkpoint::KEY_FILE`];
///   no CA has that base), created by the same race rule, so every replica
///   signs checkpoints with one key; [`KeyStore::cas`] leaves it out. A
///   store that is not shared keeps it as the file `data_dir/audit_key`.
pub trait KeyStore: Send + Sync {
    /// Whether the keys are shared with processes on other machines (a
    /// database of replicas). Such a store only takes encrypted keys.
    fn shared(&self) -> bool;
    /// The base names of every CA with a stored key, sorted.
    fn cas(&self) -> StoreFuture<'_, Vec<String>>;
    /// The stored keys of CA `base`, by slot (all empty: none yet).
    /// `Ok(Err(_))`: a stored key cannot be read (file mode, bad mode
    /// bits, not an OpenSSH key).
    fn ca_keys(&self, base: &str) -> StoreFuture<'_, Result<CaKeys, RotationError>>;
    /// Stores `key` as the active key of CA `base` unless one is stored,
    /// and returns the active key stored now and whether it is `key`. Of
    /// any number of processes calling this at once, exactly one key
    /// wins and every caller gets it. Refused when the CA has a next or
    /// previous key but no active one (an interrupted rotation).
    fn create_active_if_absent(
        &self,
        base: &str,
        key: NewKey,
    ) -> StoreFuture<'_, Result<(StoredKey, bool), RotationError>>;
    /// Applies one rotation step, its audit record and a state-version
    /// bump as one operation, if the step fits the stored keys and they
    /// are still what it was decided on. `Ok(Err(_))`: refused, nothing
    /// changed.
    fn rotate(&self, change: KeyChange) -> StoreFuture<'_, Result<StateVersion, RotationError>>;
    /// Stores the keys of CA `base` as they are, every slot (`mayfly store
    /// migrate` into an empty store). `Ok(Err(_))`: a slot is taken
    /// already, or (shared store) a key is not encrypted.
    fn import_keys(&self, base: &str, keys: CaKeys) -> StoreFuture<'_, Result<(), RotationError>>;
}

/// A CA key rotation step with its audit record, as [`KeyStore::rotate`]
/// applies it.
#[derive(Debug)]
pub struct KeyChange {
    /// CA base name (`user_ca`, `host_ca`, `user_ca-<group>`).
    pub base: String,
    /// The step.
    pub step: KeyStep,
    /// The public lines of the slots the step was decided on; refused as
    /// [`RotationError::Changed`] when the stored ones differ.
    pub expected: Slots,
    /// The `ca_key_rotated` record, written with the step.
    pub audit: AuditRecord,
    /// Unix seconds: retire's expiry check and the state version's time.
    pub now: u64,
}

/// Replica heartbeats: one row per replica of this database, each
/// written only by its own replica. With many replicas on one database the
/// rows are the fleet as the database sees it (`mayfly status`).
pub trait ReplicaStore: Send + Sync {
    /// Inserts or replaces the row of `beat.replica` and returns the row
    /// it replaced, if any (so a replica notices another process writing
    /// under its id). Rows last seen more than
    /// [`crate::replica::RETENTION_SECS`] before `beat.last_seen` are
    /// dropped in the same write.
    fn heartbeat(&self, beat: Heartbeat) -> StoreFuture<'_, Option<Heartbeat>>;
    /// Every replica row, in no particular order.
    fn replicas(&self) -> StoreFuture<'_, Vec<Heartbeat>>;
}

/// The last sync report of each host (`mayfly host sync` reports,
/// `mayfly hosts` lists them).
pub trait HostStore: Send + Sync {
    /// Stores `row` as its host's last report, unless the stored one is
    /// later: then nothing changes and the stored report's time is
    /// returned (a replayed, older report never replaces a newer one).
    fn host_report(&self, row: crate::fleet::HostRow) -> StoreFuture<'_, Option<u64>>;
    /// Every host's last report, by name.
    fn hosts(&self) -> StoreFuture<'_, Vec<crate::fleet::HostRow>>;
}

/// Console sessions, in the store so that every replica of it knows them:
/// a person logged in through one replica is logged in on all, and a
/// logout on any ends the session on all. Keyed by the SHA-256 of the
/// session cookie's value ([`SessionKey`]); the value itself is never
/// stored.
pub trait SessionStore: Send + Sync {
    /// Stores a session under `key`, dropping the sessions expired at
    /// `now` in the same write.
    fn put_session(&self, key: SessionKey, row: SessionRow, now: u64) -> StoreFuture<'_, ()>;
    /// The session of `key`, if there is one live at `now`.
    fn session(&self, key: SessionKey, now: u64) -> StoreFuture<'_, Option<SessionRow>>;
    /// Ends the session of `key` (nothing happens if there is none).
    fn delete_session(&self, key: SessionKey) -> StoreFuture<'_, ()>;
}

/// The target side of `mayfly store migrate`: a whole CA's state taken
/// into an EMPTY store, page by page (a large log never sits in memory at
/// once), rows verbatim. The flow and what each step guarantees:
///
/// 1. [`ImportStore::begin_import`] checks that the store is empty (no
///    row of any kind of [`StoreCounts`], no audit or checkpoint id ever
///    used) and writes an "import in progress" mark, in one transaction.
/// 2. The `import_*` methods each write one page in one transaction, and
///    refuse unless the mark is there. [`ImportStore::import_audit`]
///    takes the rows exactly as the source stored them (same `seq`,
///    `prev_hash`, `hash`) and refuses a page that does not continue the
///    stored chain (seq + 1, `prev_hash` = the stored head's hash, and
///    `hash` = the chain hash of the row), so the chain and its signed
///    checkpoints verify unchanged on the target.
///    [`ImportStore::import_checkpoints`] keeps their ids (the verifier
///    treats a gap in ids as deleted checkpoints).
/// 3. [`ImportStore::import_state`]: the serial floor (no serial at or
///    below it is handed out from then on, whatever the clock says), the
///    state version (the KRL version continues), the stream cursor and the
///    chain facts of [`ImportedState`].
/// 4. The caller verifies the copy; then [`ImportStore::finish_import`]
///    clears the mark.
///
/// While the mark is there, [`IssuanceCounters::start`] fails with
/// [`UnfinishedImport::refusal`], so no server runs on half a CA, and a
/// new import is refused with [`ImportRefusal::Unfinished`]: a failed run
/// is never resumed or merged into; the store is recreated empty.
pub trait ImportStore: Send + Sync {
    /// How many rows of each kind the store holds.
    fn counts(&self) -> StoreFuture<'_, StoreCounts>;
    /// The import begun on this store and not finished, if any.
    fn unfinished_import(&self) -> StoreFuture<'_, Option<UnfinishedImport>>;
    /// Claims the empty store for an import from `from` (the source's
    /// location), begun at `now_ms`. `Ok(Err(_))`: refused, nothing written.
    fn begin_import(&self, from: &str, now_ms: i64) -> StoreFuture<'_, Result<(), ImportRefusal>>;
    /// Appends audit rows verbatim; they must continue the stored chain.
    fn import_audit(&self, rows: Vec<StoredRecord>) -> StoreFuture<'_, ()>;
    /// Stores signed checkpoints verbatim, ids included (each above the
    /// stored ones).
    fn import_checkpoints(&self, checkpoints: Vec<Checkpoint>) -> StoreFuture<'_, ()>;
    /// Stores revocations with their ids and times.
    fn import_revocations(&self, rows: Vec<RevocationRow>) -> StoreFuture<'_, ()>;
    /// Stores disabled entries.
    fn import_disabled(&self, entries: Vec<DisabledEntry>) -> StoreFuture<'_, ()>;
    /// Stores approval requests as they are (state, votes, expiry).
    fn import_approvals(&self, requests: Vec<ApprovalRequest>) -> StoreFuture<'_, ()>;
    /// Sets the state carried besides rows (serial floor, state version,
    /// stream cursor, chain facts).
    fn import_state(&self, state: ImportedState) -> StoreFuture<'_, ()>;
    /// Clears the import mark: the store is a CA's store from now on.
    fn finish_import(&self) -> StoreFuture<'_, ()>;
}

/// Every concern of one backend. A handle is cheap to clone; each
/// accessor gives the concern's trait object.
#[derive(Clone)]
pub struct Store {
    pub(super) issuance: Arc<dyn IssuanceStore>,
    pub(super) counters: Arc<dyn IssuanceCounters>,
    pub(super) audit: Arc<dyn AuditLog>,
    pub(super) approvals: Arc<dyn ApprovalStore>,
    pub(super) access: Arc<dyn AccessStore>,
    pub(super) reports: Arc<dyn ReportStore>,
    pub(super) keys: Arc<dyn KeyStore>,
    pub(super) replicas: Arc<dyn ReplicaStore>,
    pub(super) imports: Arc<dyn ImportStore>,
    pub(super) hosts: Arc<dyn HostStore>,
    pub(super) sessions: Arc<dyn SessionStore>,
}

impl Store {
    /// A handle over one backend that implements every concern.
    pub fn new<B>(backend: Arc<B>) -> Store
    where
        B: IssuanceStore
            + IssuanceCounters
            + AuditLog
            + ApprovalStore
            + AccessStore
            + ReportStore
            + KeyStore
            + ReplicaStore
            + ImportStore
            + HostStore
            + SessionStore
            + 'static,
    {
        Store {
            issuance: backend.clone(),
            counters: backend.clone(),
            audit: backend.clone(),
            approvals: backend.clone(),
            access: backend.clone(),
            reports: backend.clone(),
            keys: backend.clone(),
            replicas: backend.clone(),
            hosts: backend.clone(),
            sessions: backend.clone(),
            imports: backend,
        }
    }

    /// A handle assembled from separate parts (tests, fakes, a backend
    /// that keeps some concern elsewhere).
    // One argument per concern, in `into_parts` order.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        issuance: Arc<dyn IssuanceStore>,
        counters: Arc<dyn IssuanceCounters>,
        audit: Arc<dyn AuditLog>,
        approvals: Arc<dyn ApprovalStore>,
        access: Arc<dyn AccessStore>,
        reports: Arc<dyn ReportStore>,
        keys: Arc<dyn KeyStore>,
        replicas: Arc<dyn ReplicaStore>,
        imports: Arc<dyn ImportStore>,
        hosts: Arc<dyn HostStore>,
        sessions: Arc<dyn SessionStore>,
    ) -> Store {
        Store {
            issuance,
            counters,
            audit,
            approvals,
            access,
            reports,
            keys,
            replicas,
            imports,
            hosts,
            sessions,
        }
    }

    /// The trait objects of this handle, in [`Store::from_parts`]
    /// order: to wrap one concern (a fake that records calls or fails on
    /// demand) and keep the others.
    #[allow(clippy::type_complexity)]
    pub fn into_parts(
        self,
    ) -> (
        Arc<dyn IssuanceStore>,
        Arc<dyn IssuanceCounters>,
        Arc<dyn AuditLog>,
        Arc<dyn ApprovalStore>,
        Arc<dyn AccessStore>,
        Arc<dyn ReportStore>,
        Arc<dyn KeyStore>,
        Arc<dyn ReplicaStore>,
        Arc<dyn ImportStore>,
        Arc<dyn HostStore>,
        Arc<dyn SessionStore>,
    ) {
        (
            self.issuance,
            self.counters,
            self.audit,
            self.approvals,
            self.access,
            self.reports,
            self.keys,
            self.replicas,
            self.imports,
            self.hosts,
            self.sessions,
        )
    }

    /// Issuance records and the facts read from them.
    pub fn issuance(&self) -> &dyn IssuanceStore {
        &*self.issuance
    }

    /// Serials, used tokens and rate-limit buckets.
    pub fn counters(&self) -> &dyn IssuanceCounters {
        &*self.counters
    }

    /// The audit log.
    pub fn audit(&self) -> &dyn AuditLog {
        &*self.audit
    }

    /// The audit log, shared (for a thread that outlives the caller).
    pub fn audit_shared(&self) -> Arc<dyn AuditLog> {
        self.audit.clone()
    }

    /// Approval requests.
    pub fn approvals(&self) -> &dyn ApprovalStore {
        &*self.approvals
    }

    /// Approval requests, shared (for the metrics registry).
    pub fn approvals_shared(&self) -> Arc<dyn ApprovalStore> {
        self.approvals.clone()
    }

    /// Revocations and deactivations.
    pub fn access(&self) -> &dyn AccessStore {
        &*self.access
    }

    /// Report queries.
    pub fn reports(&self) -> &dyn ReportStore {
        &*self.reports
    }

    /// Report queries, shared (for the metrics registry).
    pub fn reports_shared(&self) -> Arc<dyn ReportStore> {
        self.reports.clone()
    }

    /// CA keys and their rotation state.
    pub fn keys(&self) -> &dyn KeyStore {
        &*self.keys
    }

    /// CA keys, shared (for the service's key loader).
    pub fn keys_shared(&self) -> Arc<dyn KeyStore> {
        self.keys.clone()
    }

    /// Replica heartbeats.
    pub fn replicas(&self) -> &dyn ReplicaStore {
        &*self.replicas
    }

    /// Replica heartbeats, shared (for the metrics registry).
    pub fn replicas_shared(&self) -> Arc<dyn ReplicaStore> {
        self.replicas.clone()
    }

    /// Host sync reports.
    pub fn hosts(&self) -> &dyn HostStore {
        &*self.hosts
    }

    /// Host sync reports, shared (for the metrics registry).
    pub fn hosts_shared(&self) -> Arc<dyn HostStore> {
        self.hosts.clone()
    }

    /// Console sessions.
    pub fn sessions(&self) -> &dyn SessionStore {
        &*self.sessions
    }

    /// Console sessions, shared (for the console).
    pub fn sessions_shared(&self) -> Arc<dyn SessionStore> {
        self.sessions.clone()
    }

    /// Taking a whole CA's state into this (empty) store.
    pub fn imports(&self) -> &dyn ImportStore {
        &*self.imports
    }

    /// Appends one audit record and returns once it is durable.
    pub async fn append(&self, record: AuditRecord) -> Result<(), StoreError> {
        self.audit.append(record).await
    }
}
