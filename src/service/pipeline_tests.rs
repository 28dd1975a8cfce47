//! The order of the issuance pipeline, seen from the store: token, then
//! policy, then limits, then replay, then mint, then the durable record.
//! A fake wraps the real (SQLite) store, records every issuance, counter and
//! audit call, and can fail the durable record on demand. Each refusal must
//! stop the pipeline before anything after it runs: a token refused by
//! policy or a rate limit is not burnt, a replayed token mints nothing, and
//! no certificate leaves without its record.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;
use crate::audit::chain::{BadRow, ChainMeta, Hash, StoredRecord};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::search::AuditQuery;
use crate::audit::AuditRecord;
use crate::auth::test_key::{JWKS, PKCS8_PEM};
use crate::ca::CertKind;
use crate::clock::ManualClock;
use crate::config::{IssuerConfig, StoreBackend};
use crate::policy::limits::RateLimit;
use crate::store::traits::{
    AfterCommit, AuditLog, CheckpointPage, CheckpointSigner, IssuanceCounters, IssuanceStore,
    StoreFuture,
};
use crate::store::{
    CertFilter, GuardRefusal, IssueGuard, IssuedCert, OpenMode, StateVersion, StoreConfig,
};

const NOW: u64 = 1_800_000_000;
const BOT_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl bot";
const SUB: &str = "system:serviceaccount:backup:restic";
/// The issuer's name (`[[issuer]] name`), as records and deactivations
/// name it.
const ISSUER: &str = "k8s";

/// Records the calls the pipeline makes; delegates to the real store.
struct Recording {
    calls: Mutex<Vec<&'static str>>,
    fail_issue: AtomicBool,
    issuance: Arc<dyn IssuanceStore>,
    counters: Arc<dyn IssuanceCounters>,
    audit: Arc<dyn AuditLog>,
}

impl Recording {
    fn note(&self, call: &'static str) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
    }

    /// The calls so far, and forget them.
    fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl IssuanceStore for Recording {
    fn issue(
        &self,
        record: AuditRecord,
        guard: Option<IssueGuard>,
    ) -> StoreFuture<'_, Result<(), GuardRefusal>> {
        self.note("issue");
        if self.fail_issue.load(Ordering::SeqCst) {
            return Box::pin(async { Err(StoreError::Backend("injected failure".into())) });
        }
        self.issuance.issue(record, guard)
    }
    fn max_serial(&self) -> StoreFuture<'_, u64> {
        self.issuance.max_serial()
    }
    fn used_tokens(&self, now: u64) -> StoreFuture<'_, Vec<(String, u64)>> {
        self.issuance.used_tokens(now)
    }
    fn live_certs(&self, filter: &CertFilter, now: u64) -> StoreFuture<'_, Vec<IssuedCert>> {
        self.note("live_certs");
        self.issuance.live_certs(filter, now)
    }
    fn active_certs(
        &self,
        issuer: &str,
        subject: &str,
        role: &str,
        now: u64,
    ) -> StoreFuture<'_, u64> {
        self.note("active_certs");
        self.issuance.active_certs(issuer, subject, role, now)
    }
    fn last_expiry_by_ca(&self, ca_key: &str) -> StoreFuture<'_, u64> {
        self.issuance.last_expiry_by_ca(ca_key)
    }
}

impl IssuanceCounters for Recording {
    fn start(&self, now: u64) -> StoreFuture<'_, ()> {
        self.counters.start(now)
    }
    fn next_serial(&self) -> StoreFuture<'_, u64> {
        self.note("next_serial");
        self.counters.next_serial()
    }
    fn claim_token(&self, id: &str, expires_at: u64, now: u64) -> StoreFuture<'_, bool> {
        self.note("claim_token");
        self.counters.claim_token(id, expires_at, now)
    }
    fn claims_at_commit(&self) -> bool {
        self.counters.claims_at_commit()
    }
    fn take_rate(
        &self,
        key: &str,
        rate: RateLimit,
        now: f64,
    ) -> StoreFuture<'_, Result<(), Duration>> {
        self.note("take_rate");
        self.counters.take_rate(key, rate, now)
    }
}

impl AuditLog for Recording {
    fn append(&self, record: AuditRecord) -> StoreFuture<'_, ()> {
        self.note("append");
        self.audit.append(record)
    }
    fn record_change(&self, record: AuditRecord, now: u64) -> StoreFuture<'_, StateVersion> {
        self.audit.record_change(record, now)
    }
    fn scan(
        &self,
        from_seq: u64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Result<StoredRecord, BadRow>>> {
        self.audit.scan(from_seq, limit)
    }
    fn record(&self, seq: u64) -> StoreFuture<'_, Option<Result<StoredRecord, BadRow>>> {
        self.audit.record(seq)
    }
    fn head(&self) -> StoreFuture<'_, Option<(u64, Option<Hash>)>> {
        self.audit.head()
    }
    fn first_seq_since(&self, time_ms: i64) -> StoreFuture<'_, Option<u64>> {
        self.audit.first_seq_since(time_ms)
    }
    fn chain_meta(&self) -> StoreFuture<'_, ChainMeta> {
        self.audit.chain_meta()
    }
    fn checkpoints(&self, after_id: i64, limit: usize) -> StoreFuture<'_, CheckpointPage> {
        self.audit.checkpoints(after_id, limit)
    }
    fn last_checkpoint(&self) -> StoreFuture<'_, Option<(u64, Hash)>> {
        self.audit.last_checkpoint()
    }
    fn last_checkpoint_at(&self) -> StoreFuture<'_, Option<(u64, i64)>> {
        self.audit.last_checkpoint_at()
    }
    fn write_checkpoint(
        &self,
        key_fingerprint: &str,
        time_ms: i64,
        sign: CheckpointSigner,
    ) -> StoreFuture<'_, Option<Checkpoint>> {
        self.audit.write_checkpoint(key_fingerprint, time_ms, sign)
    }
    fn stream_cursor(&self) -> StoreFuture<'_, Option<u64>> {
        self.audit.stream_cursor()
    }
    fn set_stream_cursor(&self, seq: u64) -> StoreFuture<'_, ()> {
        self.audit.set_stream_cursor(seq)
    }
    fn search(&self, q: &AuditQuery) -> StoreFuture<'_, Vec<Result<StoredRecord, BadRow>>> {
        self.audit.search(q)
    }
    fn on_commit(&self, hook: AfterCommit) {
        self.audit.on_commit(hook)
    }
}

const ROLE: &str = r#"
description = "pipeline test"
owner = "sre@example.com"
issuer = "k8s"
principals = ["backup"]
max_ttl = "10m"
default_ttl = "5m"
extensions = []
rate_limit = "2/m"
max_active_certs = 5
[claims]
sub = "system:serviceaccount:backup:restic"
"#;

struct Rig {
    service: Service,
    rec: Arc<Recording>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, JWKS).expect("jwks");
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir(&policy_dir).expect("policy dir");
    std::fs::write(policy_dir.join("backup.toml"), ROLE).expect("role");
    let policy = crate::policy::load_dir(&policy_dir).expect("policy loads");
    let manual = Arc::new(ManualClock::at(NOW));
    let clock: Arc<dyn Clock> = manual.clone();
    let issuer = IssuerConfig {
        name: "k8s".into(),
        url: "https://kubernetes.default.svc".into(),
        audience: "mayfly".into(),
        jwks_file: Some(jwks),
        replay_protection: true,
        leeway: Duration::from_secs(30),
        max_token_bytes: 4096,
        max_stale_keys: crate::config::DEFAULT_MAX_STALE_KEYS,
        kind: crate::config::IssuerKind::Kubernetes,
        audit_claims: vec![
            "kubernetes.io/pod/name".into(),
            "kubernetes.io/pod/uid".into(),
        ],
    };
    let verifier = Verifier::new(
        &[issuer],
        reqwest::Client::new(),
        Default::default(),
        clock.clone(),
    );
    let ring = |_base: &str| crate::ca::rotation::KeyRing {
        active: crate::ca::Authority::new(crate::ca::CaKey::generate()),
        next: None,
        previous: None,
    };
    let store = crate::store::open(&StoreConfig {
        backend: StoreBackend::SQLite,
        sqlite_path: dir.path().join("mayfly.db"),
        busy_timeout: Duration::from_secs(5),
        mode: OpenMode::Create,
        postgres: None,
    })
    .expect("store opens");
    let (
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
    ) = store.into_parts();
    let rec = Arc::new(Recording {
        calls: Mutex::new(Vec::new()),
        fail_issue: AtomicBool::new(false),
        issuance,
        counters,
        audit,
    });
    let store = Store::from_parts(
        rec.clone(),
        rec.clone(),
        rec.clone(),
        approvals,
        access,
        reports.clone(),
        keys,
        replicas,
        imports,
        hosts,
        sessions,
    );
    store.counters().start(NOW).await.expect("counters start");
    let service = Service::new(ServiceParts {
        verifier,
        policy,
        user_keys: ring("user_ca"),
        host_keys: ring("host_ca"),
        key_loader: None,
        store,
        backdate: Duration::from_secs(30),
        metrics: Arc::new(Metrics::for_data_dir(dir.path(), reports)),
        admins: Vec::new(),
        clock,
    });
    rec.take();
    Rig {
        service,
        rec,
        clock: manual,
        _dir: dir,
    }
}

fn token(sub: &str, jti: &str) -> String {
    let claims: Value = json!({"iss": "https://kubernetes.default.svc", "aud": "mayfly",
        "sub": sub, "exp": NOW + 300, "iat": NOW - 10, "nbf": NOW - 10, "jti": jti});
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some("k1".into());
    let k = EncodingKey::from_ed_pem(PKCS8_PEM.as_bytes()).expect("test key");
    jsonwebtoken::encode(&h, &claims, &k).expect("sign")
}

fn request(token: String) -> UserCertRequest {
    UserCertRequest {
        kind: CertKind::User,
        hostnames: None,
        token: Some(crate::auth::BearerToken::new(token)),
        role: "backup".into(),
        public_key: BOT_KEY.into(),
        ttl_seconds: None,
        principals: None,
        request_id: "req-1".into(),
        client_addr: None,
        approval_request: None,
        renewal: None,
    }
}

impl Rig {
    async fn issue(&self, token: String) -> Result<Issuance, IssueError> {
        self.service
            .issue_user_cert(request(token), self.service.clock().now())
            .await
    }
}

/// The store calls of one issuance that goes through, in order.
const ONE_ISSUANCE: [&str; 5] = [
    "take_rate",    // limits: the role's rate limit
    "active_certs", // limits: max_active_certs
    "claim_token",  // replay: the token is used up
    "next_serial",  // mint
    "issue",        // the durable record (guarded commit)
];

#[tokio::test]
async fn a_good_request_runs_limits_then_replay_then_mint_then_the_durable_record() {
    let r = rig().await;
    let out = r.issue(token(SUB, "j1")).await.expect("issued");
    assert!(matches!(out, Issuance::Issued(_)), "{out:?}");
    assert_eq!(r.rec.take(), ONE_ISSUANCE);
}

#[tokio::test]
async fn a_refused_token_stops_before_policy_limits_and_replay() {
    let r = rig().await;
    let mut bad = token(SUB, "j1");
    bad.push('A');
    let e = r.issue(bad).await.expect_err("refused");
    assert!(matches!(e, IssueError::Token(_)), "{e:?}");
    // Only the (sampled) record of the refusal.
    assert_eq!(r.rec.take(), ["append"]);
}

#[tokio::test]
async fn a_policy_denial_stops_before_limits_and_does_not_burn_the_token() {
    let r = rig().await;
    let e = r
        .issue(token("system:serviceaccount:other:bot", "j1"))
        .await
        .expect_err("denied");
    assert!(matches!(e, IssueError::Denied(_)), "{e:?}");
    assert_eq!(r.rec.take(), ["append"]);
}

#[tokio::test]
async fn a_rate_limited_request_does_not_burn_its_token() {
    let r = rig().await;
    for jti in ["j1", "j2"] {
        r.issue(token(SUB, jti)).await.expect("within the limit");
    }
    r.rec.take();
    let e = r.issue(token(SUB, "j3")).await.expect_err("limited");
    assert!(matches!(e, IssueError::RateLimited { .. }), "{e:?}");
    assert_eq!(r.rec.take(), ["take_rate", "append"]);
}

#[tokio::test]
async fn a_replayed_token_mints_nothing() {
    let r = rig().await;
    let t = token(SUB, "j1");
    r.issue(t.clone()).await.expect("first use");
    r.rec.take();
    let e = r.issue(t).await.expect_err("replayed");
    assert!(
        matches!(e, IssueError::Token(crate::auth::TokenError::Replayed)),
        "{e:?}"
    );
    assert_eq!(
        r.rec.take(),
        ["take_rate", "active_certs", "claim_token", "append"]
    );
}

#[tokio::test]
async fn no_certificate_leaves_when_the_durable_record_fails() {
    let r = rig().await;
    r.rec.fail_issue.store(true, Ordering::SeqCst);
    let e = r.issue(token(SUB, "j1")).await.expect_err("store down");
    assert!(matches!(e, IssueError::Store(_)), "{e:?}");
    assert_eq!(
        r.rec.take(),
        ONE_ISSUANCE,
        "a failed record is not followed by a denial record: the store is down"
    );
    // Nothing was recorded as issued.
    r.rec.fail_issue.store(false, Ordering::SeqCst);
    let live = r
        .service
        .store()
        .issuance()
        .active_certs(ISSUER, SUB, "backup", NOW)
        .await
        .expect("count");
    assert_eq!(live, 0);
}

/// The KRL of one version is the same bytes whenever it is built: a
/// replica starting after a revocation expired serves what the others
/// serve, so a host never sees two KRLs under one version from one CA.
#[tokio::test]
async fn a_krl_built_after_its_revocations_expired_still_holds_them() {
    let rig = rig().await;
    let issued = match rig.issue(token(SUB, "krl-1")).await {
        Ok(Issuance::Issued(i)) => i,
        other => panic!("expected a certificate, got {other:?}"),
    };
    crate::revocation::revoke(
        rig.service.store(),
        CertFilter::Serial(issued.serial),
        "leaked",
        "admin",
        NOW,
    )
    .await
    .expect("revoke");
    // Nothing built the KRL yet; the certificate (and with it its
    // revocation) has expired when it is first built.
    rig.clock.advance(Duration::from_secs(3600));
    let snap = rig.service.krl().await.expect("krl");
    let krl = crate::ca::krl::parse(&snap.bytes).expect("parses");
    assert_eq!(krl.krl_version, 1);
    assert_eq!(krl.serial_count(), 1, "the expired revocation left the KRL");
}

/// A change of the CA keys committed after the service last read them (as
/// `mayfly ca rotate` in another process does) is not missed although no
/// request reads the state first: the commit finds the keys changed,
/// writes nothing, and the request is decided and signed again.
#[tokio::test]
async fn a_key_change_after_the_cache_was_read_makes_the_commit_decide_again() {
    let r = rig().await;
    r.issue(token(SUB, "j1")).await.expect("issued");
    r.rec.take();
    let moved = r
        .service
        .store()
        .audit()
        .record_change(
            crate::audit::AuditRecord::new(
                crate::audit::EventKind::CaKeyRotated,
                NOW * 1000,
                "cli",
            ),
            NOW,
        )
        .await
        .expect("change");
    let out = r.issue(token(SUB, "j2")).await.expect("issued");
    let Issuance::Issued(issued) = out else {
        panic!("expected a certificate, got {out:?}")
    };
    let mut twice = ONE_ISSUANCE.to_vec();
    // The first commit is refused (the keys changed since the cache was
    // read); the request is decided and signed again.
    twice.push("issue");
    assert_eq!(r.rec.take(), twice);
    assert_eq!(r.service.cached_version(), Some(moved));
    // One certificate, one record: the refused commit wrote nothing.
    let live = r
        .service
        .store()
        .issuance()
        .live_certs(&CertFilter::Serial(issued.serial), NOW)
        .await
        .expect("live");
    assert_eq!(live.len(), 1);
    assert_eq!(
        r.service
            .store()
            .issuance()
            .active_certs(ISSUER, SUB, "backup", NOW)
            .await
            .expect("count"),
        2
    );
    // A deactivation (of another role) moves the state version but not
    // the keys: the guard reads deactivations itself, so one commit.
    let other = DisableTarget::Role("other".into());
    let entry = crate::store::DisabledEntry {
        key: other.clone(),
        time_ms: NOW * 1000,
        reason: "incident".into(),
        actor: "admin".into(),
    };
    r.service
        .store()
        .access()
        .set_disabled(
            other,
            Some(entry),
            crate::audit::AuditRecord::new(crate::audit::EventKind::Disabled, NOW * 1000, "cli"),
            NOW,
        )
        .await
        .expect("disable");
    r.clock.advance(Duration::from_secs(61)); // the role's rate limit
    r.rec.take();
    r.issue(token(SUB, "j3")).await.expect("issued");
    assert_eq!(r.rec.take(), ONE_ISSUANCE);
}

/// A refusal that came from the cache is checked against the store before
/// it is given: an identity enabled again (in another process, say) gets
/// its certificate on its very next request.
#[tokio::test]
async fn an_identity_enabled_after_the_cache_was_read_is_served_at_once() {
    let r = rig().await;
    let key = DisableTarget::Identity {
        issuer: ISSUER.into(),
        subject: SUB.into(),
        role: None,
    };
    let note = |event| crate::audit::AuditRecord::new(event, NOW * 1000, "cli");
    let entry = crate::store::DisabledEntry {
        key: key.clone(),
        time_ms: NOW * 1000,
        reason: "incident".into(),
        actor: "admin".into(),
    };
    let access = r.service.store().access();
    assert!(access
        .set_disabled(
            key.clone(),
            Some(entry),
            note(crate::audit::EventKind::Disabled),
            NOW
        )
        .await
        .expect("disable"));
    let e = r.issue(token(SUB, "j1")).await.expect_err("disabled");
    assert!(matches!(e, IssueError::Denied(_)), "{e:?}");
    assert!(r.service.disabled_for(ISSUER, SUB, "backup").is_some());
    assert!(access
        .set_disabled(key, None, note(crate::audit::EventKind::Enabled), NOW)
        .await
        .expect("enable"));
    let out = r.issue(token(SUB, "j2")).await.expect("enabled again");
    assert!(matches!(out, Issuance::Issued(_)), "{out:?}");
}
