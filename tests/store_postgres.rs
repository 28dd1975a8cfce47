//! The PostgreSQL store against a real PostgreSQL (tests/support/postgres.rs):
//! what two replicas sharing one database must agree on, each checked with
//! two store instances racing each other. The second instance of each pair
//! is opened on a thread of its own, so it gets its own runtime, pool and
//! writer, as a replica in another process would.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mayfly::approval::{ApprovalError, ApprovalRequest, ApprovalStatus};
use mayfly::audit::checkpoint::AuditKey;
use mayfly::audit::search::AuditQuery;
use mayfly::audit::{AuditRecord, EventKind};
use mayfly::config::{PgSettings, StoreBackend};
use mayfly::store::{
    CertFilter, DisableTarget, DisabledEntry, GuardRefusal, IssueGuard, IssuedCert, OpenMode,
    Redemption, Revocation, Revoker, Store, StoreConfig, StoreError, Vote,
};
use serde_json::json;
use support::{http, keygen_ed25519, ClientSpec, Mayfly, Oidc, PgDb, Postgres};

fn config(db: &PgDb, mode: OpenMode) -> StoreConfig {
    StoreConfig {
        backend: StoreBackend::Postgres,
        sqlite_path: "/nonexistent/mayfly.db".into(),
        busy_timeout: Duration::from_secs(10),
        mode,
        postgres: Some(PgSettings {
            url: format!("{}?sslmode=disable", db.url),
            password_file: Some(db.password_file.clone()),
            pool_size: 8,
        }),
    }
}

/// A store on `db` in this runtime (the server's way).
fn open(db: &PgDb, mode: OpenMode) -> Result<Store, StoreError> {
    mayfly::store::open(&config(db, mode))
}

/// A store on `db` opened on another thread, outside any runtime: it runs
/// its own, like a replica in another process.
fn open_apart(db: &PgDb, mode: OpenMode) -> Store {
    let cfg = config(db, mode);
    std::thread::spawn(move || mayfly::store::open(&cfg))
        .join()
        .expect("open thread")
        .expect("open the second replica's store")
}

/// Two replicas on a fresh database.
fn two_replicas() -> (PgDb, Store, Store) {
    let db = Postgres::shared().create_database();
    let a = open(&db, OpenMode::Create).expect("replica a");
    let b = open_apart(&db, OpenMode::Create);
    (db, a, b)
}

fn now_s() -> u64 {
    support::now()
}

/// A certificate of `subject` in role `deploy`, valid for 10 minutes.
fn issued(serial: u64, subject: &str) -> AuditRecord {
    let now = now_s();
    let mut r = AuditRecord::new(EventKind::CertIssued, now * 1000, &format!("req-{serial}"));
    r.serial = Some(serial);
    r.issuer = Some("ci".into());
    r.subject = Some(subject.into());
    r.role = Some("deploy".into());
    r.key_id = Some(format!("mayfly:deploy:ci:{subject}:{serial}"));
    r.principals = vec!["deploy".into()];
    r.valid_after = Some(now - 60);
    r.valid_before = Some(now + 600);
    r.ca_key = Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE ca".into());
    r.cert_type = Some("user".into());
    r.token_id = Some(format!("ci:jti-{serial}"));
    r.token_exp = Some(now + 300);
    r
}

fn guard(max: Option<u32>) -> IssueGuard {
    IssueGuard {
        issuer: "ci".into(),
        subject: "bot".into(),
        role: "deploy".into(),
        max_active: max,
        redeem: None,
        renews: None,
        acted_on: None,
        claims: Vec::new(),
    }
}

fn revoker() -> Revoker {
    Box::new(|c: &IssuedCert| {
        (
            Revocation {
                ca_key: c.ca_key.clone(),
                serial: Some(c.serial),
                key_id: None,
                expires_at: c.valid_before,
                reason: "test".into(),
                actor: "admin".into(),
            },
            AuditRecord::new(EventKind::CertRevoked, now_s() * 1000, "admin"),
        )
    })
}

/// Awaits race tasks, one per token, each counting how many of the two
/// replicas accepted its token: exactly one must have.
async fn one_winner_per_token(tasks: Vec<tokio::task::JoinHandle<u8>>, what: &str) {
    for (n, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.expect("task"), 1, "token {n}: {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_sent_to_two_replicas_at_once_mints_one_certificate() {
    let (_db, a, b) = two_replicas();
    let now = now_s();
    let mut tasks = Vec::new();
    for n in 0..300 {
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("ci:jti-race-{n}");
            let (x, y) = tokio::join!(
                a.counters().claim_token(&id, now + 300, now),
                b.counters().claim_token(&id, now + 300, now)
            );
            u8::from(x.expect("claim on a")) + u8::from(y.expect("claim on b"))
        }));
    }
    one_winner_per_token(tasks, "exactly one replica may accept it").await;
    // Used means used, on either replica, until the token expires.
    assert!(!b
        .counters()
        .claim_token("ci:jti-race-7", now + 300, now + 1)
        .await
        .expect("claim"));
    // An expired token's row may be taken again (it cannot verify anyway).
    assert!(a
        .counters()
        .claim_token("ci:jti-race-7", now + 900, now + 301)
        .await
        .expect("claim"));
}

/// The way certificate requests claim their token on PostgreSQL: in the
/// group commit of the certificate's record, not in a statement of its
/// own. One token in two replicas' commits at once: one certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_claimed_in_two_replicas_commits_at_once_gives_one_certificate() {
    let (_db, a, b) = two_replicas();
    assert!(a.counters().claims_at_commit() && b.counters().claims_at_commit());
    let now = now_s();
    let claiming = |id: &str, exp: u64| IssueGuard {
        claims: vec![(id.to_string(), exp)],
        ..guard(None)
    };
    let mut tasks = Vec::new();
    for n in 0..200u64 {
        let (a, b) = (a.clone(), b.clone());
        let (ga, gb) = (
            claiming(&format!("ci:jti-commit-{n}"), now + 300),
            claiming(&format!("ci:jti-commit-{n}"), now + 300),
        );
        tasks.push(tokio::spawn(async move {
            let (x, y) = tokio::join!(
                a.issuance().issue(issued(1000 + 2 * n, "bot"), Some(ga)),
                b.issuance().issue(issued(1001 + 2 * n, "bot"), Some(gb))
            );
            let (x, y) = (x.expect("store a"), y.expect("store b"));
            for r in [&x, &y] {
                assert!(matches!(r, Ok(()) | Err(GuardRefusal::Replayed)), "{r:?}");
            }
            u8::from(x.is_ok()) + u8::from(y.is_ok())
        }));
    }
    one_winner_per_token(tasks, "exactly one certificate").await;
    // Exactly the accepted records were written.
    let live = a
        .issuance()
        .live_certs(
            &CertFilter::Identity {
                issuer: "ci".into(),
                subject: "bot".into(),
                role: None,
            },
            now,
        )
        .await
        .expect("live");
    assert_eq!(live.len(), 200);
    // One group with the same token twice: the first record gets it.
    let (x, y) = tokio::join!(
        a.issuance().issue(
            issued(5000, "bot"),
            Some(claiming("ci:jti-twice", now + 300))
        ),
        a.issuance().issue(
            issued(5001, "bot"),
            Some(claiming("ci:jti-twice", now + 300))
        )
    );
    let mut answers = [x.expect("store"), y.expect("store")];
    answers.sort_by_key(|r| r.is_err());
    assert_eq!(answers, [Ok(()), Err(GuardRefusal::Replayed)]);
    // The separate claim sees what the commits claimed.
    assert!(!b
        .counters()
        .claim_token("ci:jti-commit-7", now + 300, now + 1)
        .await
        .expect("claim"));
}

/// A commit that read the CA keys before they last changed (a rotation
/// step, on any replica) is refused and writes nothing, its token claim
/// included; one that read them after commits. A revocation or a
/// deactivation does not refuse it: the guard reads those itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_read_the_ca_keys_before_they_changed_writes_nothing() {
    let (_db, a, b) = two_replicas();
    let before = b.access().state_version().await.expect("version");
    let after = a
        .audit()
        .record_change(
            AuditRecord::new(EventKind::CaKeyRotated, now_s() * 1000, "admin"),
            now_s(),
        )
        .await
        .expect("change");
    assert!(after.version > before.version);
    let stale = IssueGuard {
        acted_on: Some(before.version),
        claims: vec![("ci:jti-stale".into(), now_s() + 300)],
        ..guard(None)
    };
    assert_eq!(
        b.issuance()
            .issue(issued(1, "bot"), Some(stale.clone()))
            .await
            .expect("store"),
        Err(GuardRefusal::Stale {
            acted_on: before.version,
            keys_changed: after.version
        })
    );
    assert_eq!(
        b.issuance().max_serial().await.expect("max"),
        0,
        "nothing written"
    );
    let current = IssueGuard {
        acted_on: Some(after.version),
        ..stale
    };
    assert_eq!(
        b.issuance()
            .issue(issued(1, "bot"), Some(current.clone()))
            .await
            .expect("store"),
        Ok(()),
        "the token was not claimed by the refused commit"
    );
    // A deactivation (of someone else) moves the state version, not the keys.
    disable_role(&a, "other").await;
    assert!(b.access().state_version().await.expect("version").version > after.version);
    let fresh_token = IssueGuard {
        claims: vec![("ci:jti-after-disable".into(), now_s() + 300)],
        ..current
    };
    assert_eq!(
        b.issuance()
            .issue(issued(2, "bot"), Some(fresh_token))
            .await
            .expect("store"),
        Ok(())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serials_are_unique_across_replicas_and_above_every_recorded_one() {
    let (db, a, b) = two_replicas();
    let now = now_s();
    assert!(
        a.counters().next_serial().await.is_err(),
        "a serial before start could repeat a recorded one"
    );
    // A serial far above the clock floor is already recorded.
    let high = (now << 24) + 5_000_000;
    a.audit().append(issued(high, "old")).await.expect("append");
    a.counters().start(now).await.expect("start a");
    b.counters().start(now).await.expect("start b");
    let mut tasks = Vec::new();
    for replica in [a.clone(), b.clone()] {
        for _ in 0..4 {
            let s = replica.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..150 {
                    got.push(s.counters().next_serial().await.expect("serial"));
                }
                got
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a serial was handed out twice");
    assert!(
        all.iter().all(|s| *s > high),
        "a serial at or below a recorded one"
    );
    // Every one of them records (the unique index agrees).
    let mut commits = Vec::new();
    for (n, serial) in all.iter().enumerate() {
        let s = if n % 2 == 0 { a.clone() } else { b.clone() };
        let r = issued(*serial, "bot");
        commits.push(tokio::spawn(async move { s.audit().append(r).await }));
    }
    for c in commits {
        c.await.expect("task").expect("recorded");
    }
    // A replica started later continues above all of them.
    let c = open_apart(&db, OpenMode::Create);
    c.counters().start(now).await.expect("start c");
    let next = c.counters().next_serial().await.expect("serial");
    assert!(next > *all.iter().max().expect("some"), "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_serial_fails_alone_in_its_group_commit() {
    let (_db, a, b) = two_replicas();
    let mut tasks = Vec::new();
    for i in 1..=100u64 {
        let s = a.clone();
        let serial = if i == 100 { 7 } else { i };
        tasks.push(tokio::spawn(async move {
            s.audit().append(issued(serial, "bot")).await
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if t.await.expect("task").is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 1, "exactly the second serial 7 is refused");
    assert_eq!(
        a.reports()
            .count_events("cert_issued")
            .await
            .expect("count"),
        99
    );
    // The failed group's transaction ended: no pooled connection of `a`
    // is left inside it holding the chain lock, so both replicas commit
    // at once again (more appends than `a` has connections).
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                s.audit().append(issued(1000 + i, "bot")),
            )
            .await
        }));
    }
    for t in tasks {
        t.await
            .expect("task")
            .expect("an append after the failed group waited 10 s for the chain lock")
            .expect("an append after the failed group");
    }
    assert_eq!(
        b.reports()
            .count_events("cert_issued")
            .await
            .expect("count"),
        119
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_commit_that_fails_inside_its_transaction_leaves_no_lock_behind() {
    let (db, a, b) = two_replicas();
    // A damaged deactivation (a subject without its issuer) that
    // the guard of this identity reads after taking the chain lock: the
    // commit fails between BEGIN and COMMIT.
    db.psql(
        "INSERT INTO disabled (issuer, subject, role, time_ms, reason, actor) \
         VALUES ('', 'bot', 'deploy', 0, 'damaged', 'test')",
    );
    let half = || IssueGuard {
        issuer: String::new(),
        ..guard(None)
    };
    // More failures than `a` has pooled connections.
    for i in 0..10u64 {
        let res = a.issuance().issue(issued(i + 1, "bot"), Some(half())).await;
        assert!(
            matches!(res, Err(StoreError::Backend(ref m)) if m.contains("damaged")),
            "{res:?}"
        );
    }
    db.psql("DELETE FROM disabled");
    // Had a failed transaction gone back to the pool still open, it would
    // hold the chain lock, and these would wait for it.
    for (s, serial) in [(&b, 100), (&a, 101), (&b, 102)] {
        let res = tokio::time::timeout(
            Duration::from_secs(10),
            s.issuance().issue(issued(serial, "bot"), Some(guard(None))),
        )
        .await
        .expect("an issuance after the failed commits waited 10 s for the chain lock");
        assert_eq!(res.expect("store"), Ok(()));
    }
    assert_eq!(
        b.reports()
            .count_events("cert_issued")
            .await
            .expect("count"),
        3
    );
}

/// Signs a checkpoint with `key`.
fn signer(key: &Arc<AuditKey>) -> mayfly::store::CheckpointSigner {
    let key = key.clone();
    Box::new(move |seq, hash, t| key.sign(seq, hash, t).map_err(|e| e.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_writes_from_two_replicas_make_one_chain_that_verifies() {
    let (db, a, b) = two_replicas();
    let key = Arc::new(AuditKey::ephemeral());
    let mut tasks = Vec::new();
    for i in 0..400u64 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.issuance()
                .issue(
                    issued(1000 + i, &format!("bot{}", i % 7)),
                    Some(guard(None)),
                )
                .await
        }));
    }
    // Administrative changes and checkpoints on both replicas while
    // issuance goes on.
    let mut checkpoints = 0;
    for i in 0..10u64 {
        let s = if i % 2 == 0 { &a } else { &b };
        s.audit()
            .record_change(
                AuditRecord::new(EventKind::Disabled, now_s() * 1000, "admin"),
                now_s(),
            )
            .await
            .expect("record_change");
        if i % 3 == 0 {
            let cp = s
                .audit()
                .write_checkpoint(&key.fingerprint(), (now_s() * 1000) as i64, signer(&key))
                .await
                .expect("checkpoint");
            checkpoints += usize::from(cp.is_some());
        }
    }
    for t in tasks {
        t.await
            .expect("task")
            .expect("issue")
            .expect("no guard refusal");
    }
    let report = mayfly::evidence::verify::verify_db(b.audit(), Some(&key.public()), "pg")
        .await
        .expect("verify");
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.records, 410);
    assert_eq!(report.range, Some((1, 410)));
    assert_eq!(report.checkpoints_signed_ok as usize, checkpoints);
    assert!(checkpoints >= 1);
    // The stored hashes are the audit module's own encoding of the rows
    // (the one SQLite stores), chained in seq order.
    let rows = a.audit().scan(1, 1000).await.expect("scan");
    let mut prev = mayfly::audit::chain::GENESIS;
    for r in rows {
        let r = r.expect("well-formed row");
        let h = mayfly::audit::chain::record_hash(&r, &prev);
        assert_eq!(Some(h), r.hash, "seq {}", r.seq);
        prev = h;
    }
    // Changing one row behind mayfly's back is found.
    db.psql("UPDATE audit SET subject = 'mallory' WHERE seq = 17");
    let report = mayfly::evidence::verify::verify_db(a.audit(), Some(&key.public()), "pg")
        .await
        .expect("verify");
    assert!(!report.is_intact(), "a changed record went unnoticed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_active_certs_is_exact_when_two_replicas_race_for_the_last_slot() {
    let (_db, a, b) = two_replicas();
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.issuance()
                .issue(issued(i + 1, "bot"), Some(guard(Some(3))))
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task").expect("store") {
            Ok(()) => ok += 1,
            Err(GuardRefusal::TooManyActive { live, max: 3 }) => assert_eq!(live, 3),
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    assert_eq!(ok, 3, "max_active_certs = 3 across both replicas");
    let now = now_s();
    assert_eq!(
        b.issuance()
            .active_certs("ci", "bot", "deploy", now)
            .await
            .expect("count"),
        3
    );
    // Revoking one on a makes room for exactly one more, on b.
    let (revoked, _) = a
        .access()
        .revoke_matching(
            CertFilter::Identity {
                issuer: "ci".into(),
                subject: "bot".into(),
                role: Some("deploy".into()),
            },
            now,
            revoker(),
        )
        .await
        .expect("revoke");
    assert_eq!(revoked.len(), 3);
    assert_eq!(
        b.issuance()
            .issue(issued(100, "bot"), Some(guard(Some(1))))
            .await
            .expect("store"),
        Ok(())
    );
    assert!(b
        .issuance()
        .issue(issued(101, "bot"), Some(guard(Some(1))))
        .await
        .expect("store")
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivation_on_one_replica_refuses_the_next_issuance_on_the_other() {
    let (_db, a, b) = two_replicas();
    b.issuance()
        .issue(issued(1, "bot"), Some(guard(None)))
        .await
        .expect("store")
        .expect("issued");
    let key = DisableTarget::Identity {
        issuer: "ci".into(),
        subject: "bot".into(),
        role: None,
    };
    let entry = DisabledEntry {
        key: key.clone(),
        time_ms: now_s() * 1000,
        reason: "leak".into(),
        actor: "admin".into(),
    };
    let (changed, swept) = a
        .access()
        .disable_and_revoke(
            entry,
            AuditRecord::new(EventKind::Disabled, now_s() * 1000, "admin"),
            CertFilter::Identity {
                issuer: "ci".into(),
                subject: "bot".into(),
                role: None,
            },
            now_s(),
            revoker(),
        )
        .await
        .expect("disable");
    assert!(changed);
    assert_eq!(swept.iter().map(|c| c.serial).collect::<Vec<_>>(), vec![1]);
    assert_eq!(
        b.issuance()
            .issue(issued(2, "bot"), Some(guard(None)))
            .await
            .expect("store"),
        Err(GuardRefusal::Disabled(key.clone()))
    );
    assert_eq!(b.access().disabled().await.expect("disabled").len(), 1);
    assert_eq!(
        b.access()
            .live_revocations(now_s())
            .await
            .expect("krl")
            .len(),
        1
    );
    assert!(b
        .access()
        .set_disabled(
            key,
            None,
            AuditRecord::new(EventKind::Enabled, now_s() * 1000, "admin"),
            now_s()
        )
        .await
        .expect("enable"));
    assert_eq!(
        b.issuance()
            .issue(issued(3, "bot"), Some(guard(None)))
            .await
            .expect("store"),
        Ok(())
    );
}

fn approval(id: &str, required: u32, status: ApprovalStatus) -> ApprovalRequest {
    let now = now_s();
    ApprovalRequest {
        id: id.into(),
        role: "deploy".into(),
        issuer: "ci".into(),
        subject: "bot".into(),
        key_fingerprint: "SHA256:k".into(),
        principals: vec!["deploy".into()],
        ttl_seconds: 60,
        created_at: mayfly::time::UnixSecs(now),
        expires_at: mayfly::time::UnixSecs(now + 3600),
        required,
        status,
        votes: vec![],
        requester_claims: Default::default(),
        cancelled: None,
        job_claims: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_votes_and_redemption_race_across_replicas_without_lost_updates() {
    let (_db, a, b) = two_replicas();
    a.approvals()
        .put(approval("apr_race", 3, ApprovalStatus::Pending), vec![])
        .await
        .expect("put");
    // Six approvers at once, half on each replica: the first three approve
    // it, the others find it approved. No vote overwrites another.
    let mut tasks = Vec::new();
    for n in 0..6 {
        let s = if n % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let vote = Vote {
                approver: format!("corp:approver{n}"),
                approve: true,
                reason: "ok".into(),
                now: now_s(),
            };
            s.approvals()
                .vote(
                    "apr_race",
                    vote,
                    AuditRecord::new(EventKind::ApprovalGranted, now_s() * 1000, "r"),
                )
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task").expect("store") {
            Ok(_) => ok += 1,
            Err(ApprovalError::NotPending { .. }) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 3);
    let r = b
        .approvals()
        .get("apr_race")
        .await
        .expect("get")
        .expect("there");
    assert_eq!(r.status, ApprovalStatus::Approved);
    assert_eq!(r.votes.len(), 3, "a vote was lost or counted twice");
    // One approver voting on both replicas at once counts once.
    a.approvals()
        .put(approval("apr_twice", 2, ApprovalStatus::Pending), vec![])
        .await
        .expect("put");
    let vote = || Vote {
        approver: "corp:alice".into(),
        approve: true,
        reason: "ok".into(),
        now: now_s(),
    };
    let rec = || AuditRecord::new(EventKind::ApprovalGranted, now_s() * 1000, "r");
    let (x, y) = tokio::join!(
        a.approvals().vote("apr_twice", vote(), rec()),
        b.approvals().vote("apr_twice", vote(), rec())
    );
    let results = [x.expect("store"), y.expect("store")];
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(ApprovalError::AlreadyVoted(_)))));
    // An approved request redeemed on two replicas at once mints once.
    let redeem = || {
        let mut g = guard(None);
        g.redeem = Some(Redemption {
            id: "apr_race".into(),
            key_fingerprint: "SHA256:k".into(),
            renews_key: None,
            record: AuditRecord::new(EventKind::ApprovalUsed, now_s() * 1000, "r"),
        });
        g
    };
    let (x, y) = tokio::join!(
        a.issuance().issue(issued(50, "bot"), Some(redeem())),
        b.issuance().issue(issued(51, "bot"), Some(redeem()))
    );
    let results = [x.expect("store"), y.expect("store")];
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        a.approvals()
            .get("apr_race")
            .await
            .expect("get")
            .expect("there")
            .status,
        ApprovalStatus::Used
    );
    assert_eq!(
        a.reports()
            .count_events("approval_used")
            .await
            .expect("count"),
        1
    );
    // Two renewals from the key that holds the approval, on two replicas
    // at once: one certificate, and the approval moves to its key.
    let renew = |new: &str| {
        let mut g = guard(None);
        g.redeem = Some(Redemption {
            id: "apr_race".into(),
            key_fingerprint: new.into(),
            renews_key: Some("SHA256:k".into()),
            record: AuditRecord::new(EventKind::ApprovalUsed, now_s() * 1000, "r"),
        });
        g
    };
    let (x, y) = tokio::join!(
        a.issuance()
            .issue(issued(52, "bot"), Some(renew("SHA256:k2"))),
        b.issuance()
            .issue(issued(53, "bot"), Some(renew("SHA256:k3")))
    );
    let results = [x.expect("store"), y.expect("store")];
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    let held = a
        .approvals()
        .get("apr_race")
        .await
        .expect("get")
        .expect("there");
    let winner = if results[0].is_ok() {
        "SHA256:k2"
    } else {
        "SHA256:k3"
    };
    assert_eq!(held.key_fingerprint, winner);
    assert_eq!(held.status, ApprovalStatus::Used);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_of_a_revoked_certificate_is_refused_and_a_live_one_counts_once() {
    let (_db, a, b) = two_replicas();
    let first = issued(60, "renewer");
    assert!(a
        .issuance()
        .issue(first.clone(), None)
        .await
        .expect("store")
        .is_ok());
    let previous = mayfly::ca::renewal::PreviousCert {
        ca_key: first.ca_key.clone().expect("ca key"),
        serial: 60,
        key_id: first.key_id.clone().expect("key id"),
        key_fingerprint: "SHA256:old".into(),
        valid_before: first.valid_before.expect("valid_before"),
    };
    let renewal = |max: Option<u32>| IssueGuard {
        subject: "renewer".into(),
        renews: Some(previous.clone()),
        ..guard(max)
    };
    // One live certificate and max_active_certs = 1: a plain second one is
    // refused, its renewal is not.
    let mut plain = guard(Some(1));
    plain.subject = "renewer".into();
    let r = b
        .issuance()
        .issue(issued(61, "renewer"), Some(plain))
        .await
        .expect("store");
    assert!(
        matches!(r, Err(GuardRefusal::TooManyActive { .. })),
        "{r:?}"
    );
    let r = b
        .issuance()
        .issue(issued(62, "renewer"), Some(renewal(Some(1))))
        .await
        .expect("store");
    assert!(r.is_ok(), "{r:?}");
    // Revoked on one replica, its renewal is refused on the other.
    a.access()
        .revoke(
            vec![mayfly::store::Revocation {
                ca_key: previous.ca_key.clone(),
                serial: Some(60),
                key_id: None,
                expires_at: previous.valid_before,
                reason: "test".into(),
                actor: "test".into(),
            }],
            vec![AuditRecord::new(
                EventKind::CertRevoked,
                now_s() * 1000,
                "rv",
            )],
            now_s(),
        )
        .await
        .expect("revoke");
    let r = b
        .issuance()
        .issue(issued(63, "renewer"), Some(renewal(None)))
        .await
        .expect("store");
    assert!(
        matches!(r, Err(GuardRefusal::RenewsRevoked { serial: 60, .. })),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_across_replicas() {
    let (_db, a, b) = two_replicas();
    let rate: mayfly::policy::limits::RateLimit = "5/h".parse().expect("rate");
    let mut tasks = Vec::new();
    for n in 0..30 {
        let s = if n % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.counters()
                .take_rate("id\0ci\0bot\0deploy", rate, 0.0)
                .await
        }));
    }
    let mut taken = 0;
    for t in tasks {
        match t.await.expect("task").expect("store") {
            Ok(()) => taken += 1,
            Err(wait) => assert!(
                wait <= Duration::from_secs(3600) && !wait.is_zero(),
                "{wait:?}"
            ),
        }
    }
    assert_eq!(taken, 5, "a burst of 5 per hour, across both replicas");
    assert!(a
        .counters()
        .take_rate("other", rate, 0.0)
        .await
        .expect("store")
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_with_nul_from_a_request_is_recorded_and_chained() {
    let (_db, a, b) = two_replicas();
    let now = now_s();
    // A bot can put NUL in the role it asks for and in claims; PostgreSQL's
    // text cannot hold it, and a refusal must still be recorded.
    let mut d = AuditRecord::new(EventKind::CertDenied, now * 1000, "req");
    d.role = Some("de\0ploy".into());
    d.subject = Some("bot\0".into());
    a.audit()
        .append(d)
        .await
        .expect("a denial with NUL is recorded");
    assert!(b
        .counters()
        .claim_token("ci:jti\0x", now + 60, now)
        .await
        .expect("claim"));
    assert!(!a
        .counters()
        .claim_token("ci:jti\0x", now + 60, now)
        .await
        .expect("claim"));
    assert!(!a
        .counters()
        .claim_token("ci:jti\0x", now + 60, now)
        .await
        .expect("claim"));
    assert!(a
        .counters()
        .claim_token("ci:jti\0y", now + 60, now)
        .await
        .expect("claim"));
    let rows = b
        .audit()
        .search(&AuditQuery {
            event: Some("cert_denied".into()),
            ..AuditQuery::default()
        })
        .await
        .expect("search");
    let r = rows.into_iter().next().expect("one").expect("row");
    assert_eq!(r.role.as_deref(), Some("de\u{FFFD}ploy"));
    let report = mayfly::evidence::verify::verify_db(b.audit(), None, "pg")
        .await
        .expect("verify");
    assert!(report.is_intact(), "{report}");
}

/// Disables `role` through `s`, which bumps the state version by one.
async fn disable_role(s: &Store, role: &str) {
    let key = DisableTarget::Role(role.into());
    let entry = DisabledEntry {
        key: key.clone(),
        time_ms: 1,
        reason: "r".into(),
        actor: "a".into(),
    };
    s.access()
        .set_disabled(
            key,
            Some(entry),
            AuditRecord::new(EventKind::Disabled, now_s() * 1000, "admin"),
            now_s(),
        )
        .await
        .expect("disable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_change_on_one_replica_reaches_the_other_within_a_second() {
    let (_db, a, b) = two_replicas();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    b.audit().on_commit(Box::new(move || {
        seen.fetch_add(1, Ordering::SeqCst);
    }));
    // Let b's listener settle on the current version.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for round in 0..3 {
        let before = calls.load(Ordering::SeqCst);
        let changed_at = Instant::now();
        disable_role(&a, &format!("role{round}")).await;
        let v = a.access().state_version().await.expect("version");
        while calls.load(Ordering::SeqCst) == before {
            assert!(
                changed_at.elapsed() < Duration::from_secs(1),
                "round {round}: replica b did not notice a's change within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(b.access().state_version().await.expect("version"), v);
    }
}

/// The state version a request reads is never older than a change that
/// returned before it asked, while many reads run at once and share
/// queries (each read answers only those who asked before it was sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_read_begun_after_a_change_returned_sees_it_while_others_read_at_once() {
    let (_db, a, b) = two_replicas();
    let b = Arc::new(b);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut busy = Vec::new();
    for _ in 0..8 {
        let (b, stop) = (b.clone(), stop.clone());
        busy.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::SeqCst) {
                b.access().state_version().await.expect("read");
                reads += 1;
            }
            reads
        }));
    }
    let v0 = a
        .access()
        .state_version()
        .await
        .expect("version on a")
        .version;
    for round in 0..100u64 {
        disable_role(&a, &format!("role{round}")).await;
        // Each change bumps the version by one.
        let seen = b.access().state_version().await.expect("version on b");
        assert_eq!(
            seen.version,
            v0 + round + 1,
            "round {round}: replica b answered a version older than a change that had returned"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for t in busy {
        assert!(t.await.expect("reader") > 0);
    }
}

/// Requests asking for the state version at once share one query: with
/// the `state` table locked, 40 waiting requests hold one query (two, if
/// the change listener's once-a-second poll came too), not one per pooled
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reading_the_state_version_at_once_share_one_query() {
    let db = Postgres::shared().create_database();
    let b = Arc::new(open(&db, OpenMode::Create).expect("store"));
    let before = b.access().state_version().await.expect("version");
    let locker = {
        let db = db.clone();
        std::thread::spawn(move || {
            db.psql("BEGIN; LOCK TABLE state IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(3); COMMIT;")
        })
    };
    let locked = |db: &PgDb| {
        db.psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = 'state' AND l.mode = 'AccessExclusiveLock' AND l.granted",
        )
        .trim()
            == "1"
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !locked(&db) {
        assert!(
            Instant::now() < deadline,
            "the test could not lock the state table"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let readers: Vec<_> = (0..40)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { b.access().state_version().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let waiting: u32 = db
        .psql(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE query = 'SELECT version, changed_at FROM state' AND wait_event_type = 'Lock'",
        )
        .trim()
        .parse()
        .expect("a count");
    assert!(
        (1..=2).contains(&waiting),
        "{waiting} state-version queries wait for the lock; 40 requests asking at once share one"
    );
    locker.join().expect("locking psql");
    for r in readers {
        assert_eq!(r.await.expect("task").expect("version"), before);
    }
}

/// A varied log: issuance, refusals, revocations (the serial in the
/// reason), and reasons that only look like a revoked serial.
async fn varied_log(s: &Store) {
    let mut records = Vec::new();
    for i in 1..=30u64 {
        let mut r = issued(i, ["alice", "bob", "carol"][(i % 3) as usize]);
        r.time_ms = 1_000_000 + i * 1000;
        if i % 4 == 0 {
            r.role = Some("ops".into());
        }
        records.push(r);
        if i % 5 == 0 {
            let mut d = AuditRecord::new(EventKind::CertDenied, 1_000_000 + i * 1000 + 1, "d");
            d.issuer = Some("ci".into());
            d.subject = Some("bob".into());
            d.reason_code = Some("claim_mismatch".into());
            d.reason = Some(format!("serial {i}: looks like one"));
            records.push(d);
        }
    }
    for r in records {
        s.audit().append(r).await.expect("append");
    }
    for (serial, reason) in [(3u64, "leaked"), (12, "rotated")] {
        let mut rv = AuditRecord::new(EventKind::CertRevoked, 2_000_000 + serial, "admin");
        rv.serial = Some(serial);
        rv.reason = Some(reason.into());
        s.access()
            .revoke(vec![], vec![rv], now_s())
            .await
            .expect("revoke");
    }
    // Revocation records written with other casings and look-alikes.
    for reason in [
        "SERIAL 5: upper",
        "Serial 6:mixed",
        "\u{17f}erial 7: long s",
        "serial 77: other",
        "serial 8 no colon",
    ] {
        let mut rv = AuditRecord::new(EventKind::CertRevoked, 3_000_000, "admin");
        rv.reason = Some(reason.into());
        s.audit().append(rv).await.expect("append");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_returns_exactly_what_audit_query_matches() {
    let db = Postgres::shared().create_database();
    let s = open(&db, OpenMode::Create).expect("store");
    varied_log(&s).await;
    // Key ids the partial key-id index holds and leaves out (see
    // store::key_id_index): issuances whose key id ends in their serial,
    // one that does not, one that repeats another's, and a revocation.
    for (serial, key) in [
        (40u64, "custom-40"),
        (41, "mayfly:deploy:ci:alice:041"),
        (42, "mayfly:deploy:ci:bob:4"),
    ] {
        let mut r = issued(serial, "bob");
        r.key_id = Some(key.into());
        s.audit().append(r).await.expect("append");
    }
    let mut rv = AuditRecord::new(EventKind::CertRevoked, 4_000_000, "admin");
    rv.key_id = Some("mayfly:deploy:ci:bob:4".into());
    rv.reason = Some("key id 4".into());
    s.audit().append(rv).await.expect("append");
    let all: Vec<_> = s
        .audit()
        .scan(1, 10_000)
        .await
        .expect("scan")
        .into_iter()
        .map(|r| r.expect("row"))
        .collect();
    let mut queries = vec![AuditQuery::default()];
    for serial in [3u64, 5, 6, 7, 8, 12, 15, 77, 999] {
        queries.push(AuditQuery {
            serial: Some(serial),
            ..AuditQuery::default()
        });
    }
    for subject in ["alice", "bob", "nobody"] {
        queries.push(AuditQuery {
            subject: Some(subject.into()),
            ..AuditQuery::default()
        });
        queries.push(AuditQuery {
            subject: Some(subject.into()),
            role: Some("ops".into()),
            limit: 3,
            ..AuditQuery::default()
        });
    }
    queries.push(AuditQuery {
        issuer: Some("ci".into()),
        event: Some("cert_denied".into()),
        ..AuditQuery::default()
    });
    for key in [
        "mayfly:deploy:ci:alice:3",
        "mayfly:deploy:ci:bob:4",
        "custom-40",
        "mayfly:deploy:ci:alice:041",
        "mayfly:deploy:ci:alice:41",
        "mayfly:deploy:ci:bob:42",
        "nothing",
    ] {
        queries.push(AuditQuery {
            key_id: Some(key.into()),
            ..AuditQuery::default()
        });
    }
    queries.push(AuditQuery {
        since_ms: Some(1_020_000),
        limit: 7,
        ..AuditQuery::default()
    });
    queries.push(AuditQuery {
        event: Some("cert_revoked".into()),
        serial: Some(5),
        ..AuditQuery::default()
    });
    queries.push(AuditQuery {
        limit: 0,
        ..AuditQuery::default()
    });
    for q in queries {
        let got: Vec<u64> = s
            .audit()
            .search(&q)
            .await
            .expect("search")
            .into_iter()
            .map(|r| r.expect("row").seq)
            .collect();
        let want: Vec<u64> = all
            .iter()
            .rev()
            .filter(|r| q.matches(r))
            .take(q.limit.max(1))
            .map(|r| r.seq)
            .collect();
        assert_eq!(got, want, "{q:?}");
    }
    // Revoking by key id finds both issuances that carry it: one through
    // the serial, one through the partial index.
    let (revoked, _) = s
        .access()
        .revoke_matching(
            CertFilter::KeyId("mayfly:deploy:ci:bob:4".into()),
            now_s(),
            revoker(),
        )
        .await
        .expect("revoke");
    let mut serials: Vec<u64> = revoked.iter().map(|c| c.serial).collect();
    serials.sort_unstable();
    assert_eq!(serials, vec![4, 42]);
    // The planner can answer a key-id lookup from the partial index: the
    // query repeats the index's predicate.
    let cond = mayfly::store::key_id_index::condition(
        mayfly::store::key_id_index::PG_INDEXED,
        "'custom-40'",
        Some("40"),
    );
    let plan = db.psql(&format!(
        "SET enable_seqscan = off; EXPLAIN SELECT seq FROM audit WHERE {cond}"
    ));
    assert!(plan.contains("audit_key_id_rest"), "{plan}");
    assert!(!plan.contains("audit_key_id "), "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_on_an_empty_database_say_which_command_creates_the_schema() {
    let db = Postgres::shared().create_database();
    for mode in [OpenMode::Existing, OpenMode::ReadOnly] {
        let err = open(&db, mode).err().expect("no schema yet");
        assert!(matches!(err, StoreError::NoSchema(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("mayfly serve --config"), "{msg}");
        assert!(msg.contains(&db.name), "names the database: {msg}");
    }
    assert_eq!(
        db.psql("SELECT to_regclass('audit') IS NULL").trim(),
        "t",
        "nothing was created"
    );
    // Three replicas starting together apply each migration once.
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let cfg = config(&db, OpenMode::Create);
            std::thread::spawn(move || mayfly::store::open(&cfg).map(|_| ()))
        })
        .collect();
    for s in starts {
        s.join().expect("thread").expect("open");
    }
    let want = mayfly::store::postgres::schema::current_version();
    assert_eq!(
        db.psql(
            "SELECT COUNT(*) || ' ' || MIN(version) || ' ' || MAX(version) FROM schema_migrations"
        )
        .trim(),
        format!("{want} 1 {want}"),
        "every migration recorded once"
    );
    let s = open(&db, OpenMode::Create).expect("server");
    s.audit().append(issued(1, "bot")).await.expect("append");
    drop(s);
    let admin = open(&db, OpenMode::Existing).expect("existing");
    assert_eq!(
        admin.audit().head().await.expect("head").map(|h| h.0),
        Some(1)
    );
    let ro = open(&db, OpenMode::ReadOnly).expect("read only");
    assert_eq!(ro.audit().head().await.expect("head").map(|h| h.0), Some(1));
    let err = ro
        .audit()
        .append(issued(2, "bot"))
        .await
        .expect_err("read only");
    assert!(err.to_string().contains("read-only"), "{err}");
    let err = ro
        .audit()
        .record_change(AuditRecord::new(EventKind::Disabled, 1, "admin"), 1)
        .await
        .expect_err("read only");
    assert!(err.to_string().contains("read-only"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_missing_database_says_what_to_fix() {
    let pg = Postgres::shared();
    let db = pg.create_database();
    let dir = support::temp_dir("pg-pw");
    let wrong = dir.path().join("pw");
    std::fs::write(&wrong, "not-the-password\n").expect("write");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let mut cfg = config(&db, OpenMode::Create);
    if let Some(p) = cfg.postgres.as_mut() {
        p.password_file = Some(wrong);
    }
    let msg = mayfly::store::open(&cfg)
        .err()
        .expect("wrong password")
        .to_string();
    assert!(
        msg.contains("password") && msg.contains("password_file"),
        "{msg}"
    );
    assert!(!msg.contains("not-the-password"), "{msg}");
    let mut cfg = config(&db, OpenMode::Create);
    if let Some(p) = cfg.postgres.as_mut() {
        p.url = p.url.replace(&db.name, "no_such_db");
    }
    let msg = mayfly::store::open(&cfg)
        .err()
        .expect("no database")
        .to_string();
    assert!(
        msg.contains("no_such_db") && msg.contains("CREATE DATABASE"),
        "{msg}"
    );
}

const POLICY: &str = r#"
description = "Deploys from CI"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
identity_rate_limit = "3/m"
max_active_certs = 2
[claims]
repository = "acme/*"
"#;

#[test]
fn serve_on_postgres_issues_through_the_api_and_audit_verify_checks_the_chain() {
    let db = Postgres::shared().create_database();
    let oidc =
        Oidc::start(&[ClientSpec::new("a", "ES256").claims(json!({"repository": "acme/a"}))]);
    let extra = format!(
        "{}\n{}\n{}",
        oidc.issuer_toml("ci"),
        db.store_toml(),
        support::postgres::encrypted_ca_toml()
    );
    let ca = Mayfly::start(&extra, &[("deploy", POLICY)]);
    let dir = support::temp_dir("pg-e2e");
    let (_, public) = keygen_ed25519(dir.path());
    let ask = || {
        let auth = format!("Bearer {}", oidc.token("a"));
        http::post_json(
            &format!("{}/v1/certs/user", ca.url()),
            &[("Authorization", auth.as_str())],
            &json!({"role": "deploy", "public_key": public}),
        )
        .expect("POST")
    };
    let first = ask();
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(first.json()["certificate"]
        .as_str()
        .expect("cert")
        .starts_with("ssh-ed25519-cert-v01@openssh.com "));
    assert_eq!(ask().status, 200);
    // The guard and the rate bucket live in the database.
    let r = ask();
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "too_many_active_certs");
    let r = ask();
    assert_eq!(r.status, 429, "{}", r.text());
    // The records are in PostgreSQL, not in data_dir.
    assert_eq!(
        db.psql("SELECT COUNT(*) FROM audit WHERE event = 'cert_issued'")
            .trim(),
        "2"
    );
    assert!(
        !ca.data_dir().join("mayfly.db").exists(),
        "a SQLite database was created"
    );
    assert_eq!(ca.audit_count("cert_issued"), 2);
    let out = support::mayfly(&[
        "audit",
        "verify",
        "--config",
        &ca.config_path().display().to_string(),
    ]);
    let text = support::all_output(&out);
    assert!(out.status.success(), "audit verify failed:\n{text}");
    assert!(!text.contains("PROBLEM"), "{text}");
}

// ---- CA keys -------------------------------------------------------------------

fn secret() -> mayfly::ca::keys::Secret {
    mayfly::ca::keys::Secret::new(zeroize::Zeroizing::new("key pass".into()), "test")
}

fn encrypted_key() -> mayfly::ca::NewKey {
    mayfly::ca::NewKey::generate(Some(&secret())).expect("generate")
}

fn rotated(what: &str) -> AuditRecord {
    let mut r = AuditRecord::new(EventKind::CaKeyRotated, now_s() * 1000, "admin");
    r.reason = Some(what.into());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_creating_a_ca_key_at_once_store_one_and_all_get_it() {
    for round in 0..5 {
        let db = Postgres::shared().create_database();
        let stores: Vec<Store> = (0..3).map(|_| open_apart(&db, OpenMode::Create)).collect();
        let tasks: Vec<_> = stores
            .iter()
            .map(|s| {
                let keys = s.keys_shared();
                tokio::spawn(async move {
                    keys.create_active_if_absent("user_ca", encrypted_key())
                        .await
                        .expect("store")
                        .expect("created or loaded")
                })
            })
            .collect();
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.expect("task"));
        }
        assert_eq!(
            got.iter().filter(|(_, inserted)| *inserted).count(),
            1,
            "round {round}: exactly one insert wins"
        );
        assert!(
            got.iter().all(|(k, _)| k.public == got[0].0.public),
            "round {round}: every replica got the winner's key"
        );
        assert_eq!(
            db.psql("SELECT count(*) FROM ca_keys WHERE base = 'user_ca'")
                .trim(),
            "1"
        );
        let stored = stores[2]
            .keys()
            .ca_keys("user_ca")
            .await
            .expect("store")
            .expect("keys");
        assert_eq!(stored.active.expect("active").public, got[0].0.public);
        assert_eq!(stores[0].keys().cas().await.expect("cas"), vec!["user_ca"]);
        assert!(stores[0].keys().shared());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_unencrypted_ca_keys() {
    let (db, a, _b) = two_replicas();
    let plain = mayfly::ca::NewKey::generate(None).expect("generate");
    let err = a
        .keys()
        .create_active_if_absent("host_ca", plain.clone())
        .await
        .expect("store")
        .expect_err("a plain key is refused");
    assert_eq!(err.to_string(), mayfly::ca::keys::UNENCRYPTED_SHARED_KEY);
    a.keys()
        .create_active_if_absent("host_ca", encrypted_key())
        .await
        .expect("store")
        .expect("an encrypted one is stored");
    let keys = a
        .keys()
        .ca_keys("host_ca")
        .await
        .expect("store")
        .expect("keys");
    let err = a
        .keys()
        .rotate(mayfly::store::KeyChange {
            base: "host_ca".into(),
            step: mayfly::ca::rotation::KeyStep::Stage(plain),
            expected: keys.slots(),
            audit: rotated("stage"),
            now: now_s(),
        })
        .await
        .expect("store")
        .expect_err("a plain next key is refused");
    assert_eq!(err.to_string(), mayfly::ca::keys::UNENCRYPTED_SHARED_KEY);
    assert_eq!(
        db.psql("SELECT count(*) FROM ca_keys WHERE slot <> 'active'")
            .trim(),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_steps_move_the_rows_and_a_stale_or_racing_step_changes_nothing() {
    use mayfly::ca::rotation::{KeyStep, RotationError};
    use mayfly::store::KeyChange;
    let (db, a, b) = two_replicas();
    let (first, _) = a
        .keys()
        .create_active_if_absent("user_ca", encrypted_key())
        .await
        .expect("store")
        .expect("create");
    let before = a
        .keys()
        .ca_keys("user_ca")
        .await
        .expect("store")
        .expect("keys");
    let audits = |db: &PgDb| {
        db.psql("SELECT count(*) FROM audit WHERE event = 'ca_key_rotated'")
            .trim()
            .to_string()
    };
    // Two hosts stage at once, both decided on the same keys: one wins,
    // the other is refused as changed and leaves no audit record.
    let (ka, kb) = (encrypted_key(), encrypted_key());
    let change = |k: mayfly::ca::NewKey| KeyChange {
        base: "user_ca".into(),
        step: KeyStep::Stage(k),
        expected: before.slots(),
        audit: rotated("stage"),
        now: now_s(),
    };
    let (ra, rb) = tokio::join!(
        a.keys().rotate(change(ka.clone())),
        b.keys().rotate(change(kb.clone()))
    );
    let results = [ra.expect("store"), rb.expect("store")];
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(RotationError::Changed { .. }))),
        "{results:?}"
    );
    assert_eq!(audits(&db), "1", "the refused step's audit row rolled back");
    let staged = b
        .keys()
        .ca_keys("user_ca")
        .await
        .expect("store")
        .expect("keys");
    let next = staged.next.clone().expect("next").public;
    assert!(next == ka.public || next == kb.public);

    let step = |s: KeyStep, keys: &mayfly::ca::rotation::CaKeys| KeyChange {
        base: "user_ca".into(),
        step: s,
        expected: keys.slots(),
        audit: rotated("step"),
        now: now_s(),
    };
    let v1 = a.access().state_version().await.expect("version");
    b.keys()
        .rotate(step(KeyStep::Activate, &staged))
        .await
        .expect("store")
        .expect("activate");
    assert!(a.access().state_version().await.expect("version").version > v1.version);
    let active = a
        .keys()
        .ca_keys("user_ca")
        .await
        .expect("store")
        .expect("keys");
    assert_eq!(active.active.as_ref().expect("active").public, next);
    assert_eq!(
        active.previous.as_ref().expect("previous").public,
        first.public
    );
    assert!(active.next.is_none());
    // A stale step (decided before the activation) is refused as changed.
    let stale = a
        .keys()
        .rotate(step(KeyStep::Retire { force: true }, &staged))
        .await
        .expect("store");
    assert!(
        matches!(stale, Err(RotationError::Changed { .. })),
        "{stale:?}"
    );
    // Retire refuses while a certificate of the previous key is valid.
    let mut cert = issued(77, "bot");
    cert.ca_key = Some(first.public.clone());
    cert.valid_before = Some(now_s() + 3600);
    a.issuance()
        .issue(cert, None)
        .await
        .expect("store")
        .expect("issued");
    let live = a
        .keys()
        .rotate(step(KeyStep::Retire { force: false }, &active))
        .await
        .expect("store");
    assert!(matches!(live, Err(RotationError::State(_))), "{live:?}");
    let audited = audits(&db);
    a.keys()
        .rotate(step(KeyStep::Retire { force: true }, &active))
        .await
        .expect("store")
        .expect("forced retire");
    assert_eq!(
        db.psql("SELECT string_agg(slot, ',' ORDER BY slot) FROM ca_keys WHERE base = 'user_ca'")
            .trim(),
        "active"
    );
    assert_ne!(audits(&db), audited);
}
