//! Several real `mayfly serve` replicas on one real PostgreSQL database
//! agree on everything they must share: used tokens, serials, revocations
//! and the KRL, deactivations, approvals, `max_active_certs`, the CA keys
//! and the one audit chain.
//!
//! One cluster serves the whole binary (`Postgres::shared`), each test has
//! its own database. Tokens come from a test issuer whose keys the test
//! holds (`support::issuer`), so a test can make hundreds of single-use
//! tokens; certificates and KRLs are checked with the real `ssh-keygen`.
//! The faults (PostgreSQL stopped, failover, `kill -9`) are in
//! `tests/replica_faults.rs`.

mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::json;
use support::http::Response;
use support::replicas::{error_code, krl_revokes, together, Issued, Replicas, Shared, DEPLOY_ROLE};
use support::{http, ok, Mayfly, PgDb, Postgres};

/// How long a revocation may take to reach another replica's `/v1/krl`
/// (the contract: LISTEN/NOTIFY, with a poll as the fallback).
const KRL_WITHIN: Duration = Duration::from_secs(1);

fn database() -> PgDb {
    Postgres::shared().create_database()
}

/// `n` replicas of a fresh database running `policies`.
fn replicas(n: usize, policies: &[(&str, &str)], extra: &str) -> Replicas {
    replicas_on(&database(), n, policies, extra)
}

/// `n` replicas of `db` running `policies`.
fn replicas_on(db: &PgDb, n: usize, policies: &[(&str, &str)], extra: &str) -> Replicas {
    Replicas::start(
        n,
        Shared {
            store_toml: &db.store_toml(),
            policies,
            extra,
        },
    )
}

/// One client's work: `(replica, serial)` of each certificate it got.
type Job<'a> = Box<dyn FnOnce() -> Vec<(usize, u64)> + Send + 'a>;

/// The `serial` of every `cert_issued` record, in chain order.
fn audited_serials(r: &Replicas) -> Vec<u64> {
    r.audit(&["--event", "cert_issued"])
        .iter()
        .map(|rec| {
            rec["ssh"]["cert"]["serial"]
                .as_u64()
                .unwrap_or_else(|| panic!("cert_issued without a serial: {rec}"))
        })
        .collect()
}

#[track_caller]
fn expect_refusal(r: &Response, status: u16, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(error_code(r), code, "{what}: {}", r.text());
    assert!(
        r.json().get("certificate").is_none(),
        "{what}: a refusal with a certificate: {}",
        r.text()
    );
}

// ---- used tokens -----------------------------------------------------------

#[test]
fn one_token_sent_to_two_replicas_at_once_gives_exactly_one_certificate() {
    const TOKENS: usize = 100;
    const AT_ONCE: usize = 20;
    let r = replicas(3, &[("deploy", DEPLOY_ROLE)], "");
    // Each token goes to a different pair of replicas, both requests
    // released at the same instant, 20 tokens (40 requests) at a time.
    let tokens: Vec<(String, String)> = (0..TOKENS)
        .map(|_| {
            let claims = r.issuer.claims("bot-race");
            let jti = claims["jti"].as_str().expect("jti").to_string();
            (jti, r.issuer.sign(Algorithm::ES256, &claims))
        })
        .collect();
    let mut outcomes: Vec<(Response, Response)> = Vec::with_capacity(TOKENS);
    for (batch_no, batch) in tokens.chunks(AT_ONCE).enumerate() {
        let mut jobs: Vec<Box<dyn FnOnce() -> Response + Send + '_>> = Vec::new();
        for (k, (_, token)) in batch.iter().enumerate() {
            let n = batch_no * AT_ONCE + k;
            let (a, b) = (n % 3, (n + 1) % 3);
            let r = &r;
            jobs.push(Box::new(move || r.request_cert(a, "deploy", token)));
            jobs.push(Box::new(move || r.request_cert(b, "deploy", token)));
        }
        let mut answers = together(jobs).into_iter();
        while let (Some(x), Some(y)) = (answers.next(), answers.next()) {
            outcomes.push((x, y));
        }
    }

    let mut issued: HashMap<String, u64> = HashMap::new();
    for (n, ((jti, _), (x, y))) in tokens.iter().zip(&outcomes).enumerate() {
        let certs: Vec<Issued> = [x, y]
            .into_iter()
            .filter_map(Issued::from_response)
            .collect();
        assert_eq!(
            certs.len(),
            1,
            "token {n} sent to replicas {} and {}: {} certificates ({} {} / {} {})\n{}",
            n % 3,
            (n + 1) % 3,
            certs.len(),
            x.status,
            x.text(),
            y.status,
            y.text(),
            r.logs()
        );
        let refused = if x.status == 200 { y } else { x };
        expect_refusal(refused, 401, "token_replayed", &format!("token {n}"));
        issued.insert(jti.clone(), certs[0].serial);
    }

    // The audit log has exactly one issuance per token: the one returned.
    let records = r.audit(&["--event", "cert_issued"]);
    assert_eq!(records.len(), TOKENS, "cert_issued records");
    let mut seen = HashSet::new();
    for rec in &records {
        let token_id = rec["mayfly"]["token"]["id"].as_str().expect("token id");
        let jti = token_id
            .strip_prefix("ci:jti:")
            .unwrap_or_else(|| panic!("token id {token_id}"));
        assert!(seen.insert(jti.to_string()), "two issuances for {jti}");
        assert_eq!(
            rec["ssh"]["cert"]["serial"].as_u64(),
            issued.get(jti).copied(),
            "the audited serial of {jti} is the one returned"
        );
    }
}

// ---- serials ---------------------------------------------------------------

#[test]
fn serials_stay_unique_across_three_replicas_under_concurrent_load_and_restarts() {
    const CLIENTS_PER_REPLICA: usize = 4;
    const CERTS_PER_CLIENT: usize = 6;
    let mut r = replicas(3, &[("deploy", DEPLOY_ROLE)], "");
    let load = |r: &Replicas| -> Vec<(usize, u64)> {
        let mut jobs: Vec<Job<'_>> = Vec::new();
        for i in 0..r.len() {
            for _ in 0..CLIENTS_PER_REPLICA {
                jobs.push(Box::new(move || {
                    (0..CERTS_PER_CLIENT)
                        .map(|_| (i, r.cert(i, "deploy", "bot-serial").serial))
                        .collect()
                }));
            }
        }
        together(jobs).into_iter().flatten().collect()
    };
    let mut got = load(&r);
    // A clean restart and a crash: neither may hand out a serial again.
    r.node_mut(0).restart();
    r.node_mut(1).kill();
    r.node_mut(1).restart();
    got.extend(load(&r));

    let total = 2 * r.len() * CLIENTS_PER_REPLICA * CERTS_PER_CLIENT;
    assert_eq!(got.len(), total);
    let mut by_serial: HashMap<u64, usize> = HashMap::new();
    for (i, serial) in &got {
        if let Some(other) = by_serial.insert(*serial, *i) {
            panic!("serial {serial} was issued by replica {other} and by replica {i}");
        }
    }
    // The audit log holds each serial once, and exactly those.
    let audited = audited_serials(&r);
    assert_eq!(audited.len(), total, "cert_issued records");
    let audited_set: BTreeSet<u64> = audited.iter().copied().collect();
    assert_eq!(audited_set.len(), total, "a serial audited twice");
    let returned: BTreeSet<u64> = by_serial.keys().copied().collect();
    assert_eq!(audited_set, returned);
    // The serial in the answer is the certificate's own.
    let one = r.cert(2, "deploy", "bot-serial");
    let cert = one.write(r.dir());
    let shown = ok(std::process::Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&cert)
        .output()
        .expect("ssh-keygen -L"));
    assert!(
        shown.contains(&format!("Serial: {}", one.serial)),
        "{shown}"
    );
    assert!(!returned.contains(&one.serial));
}

// ---- revocations and the KRL -------------------------------------------------

/// Polls `/v1/krl` of replica `i` from now on until it serves a version
/// above `above`, and returns that answer. Panics if a request that
/// started more than [`KRL_WITHIN`] after `returned` still got an older
/// version: requests before that may see either.
fn krl_after(r: &Replicas, i: usize, above: u64, returned: Instant, how: &str) -> Response {
    loop {
        let started = Instant::now();
        let resp = r.krl(i);
        let took = started.elapsed();
        assert_eq!(resp.status, 200, "KRL of replica {i}: {}", resp.text());
        let version = krl_version(&resp);
        if version > above {
            return resp;
        }
        let late = started.saturating_duration_since(returned);
        assert!(
            late <= KRL_WITHIN,
            "{how}: replica {i} still served KRL version {version} (not above {above}) to a \
             request sent {late:?} after the revocation returned (answered in {took:?})\n{}",
            r.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn krl_version(resp: &Response) -> u64 {
    resp.header("x-krl-version")
        .expect("X-KRL-Version")
        .parse()
        .expect("a number")
}

/// Checks that each of `replicas` serves, within [`KRL_WITHIN`] of
/// `returned`, a KRL above version `above` that revokes `cert` and not
/// `live` (all polled at once); returns the highest version seen.
#[track_caller]
fn krl_reaches_replicas(
    r: &Replicas,
    replicas: &[usize],
    above: u64,
    returned: Instant,
    (cert, live): (&std::path::Path, &std::path::Path),
    how: &str,
) -> u64 {
    let answers = together(
        replicas
            .iter()
            .map(|&i| {
                Box::new(move || krl_after(r, i, above, returned, how))
                    as Box<dyn FnOnce() -> Response + Send + '_>
            })
            .collect(),
    );
    let mut version = 0;
    for (&i, resp) in replicas.iter().zip(&answers) {
        let krl = r.dir().join(format!("krl-{i}-{}", krl_version(resp)));
        std::fs::write(&krl, &resp.body).expect("write KRL");
        assert!(
            krl_revokes(&krl, cert),
            "{how}: the KRL of replica {i} (version {}) does not revoke the certificate",
            krl_version(resp)
        );
        assert!(
            !krl_revokes(&krl, live),
            "{how}: the KRL of replica {i} revokes a live certificate"
        );
        version = version.max(krl_version(resp));
    }
    version
}

#[test]
fn a_revocation_on_one_replica_reaches_every_krl_within_a_second_with_the_same_bytes() {
    let r = replicas(3, &[("deploy", DEPLOY_ROLE)], "");
    let c1 = r.cert(1, "deploy", "bot-krl");
    let c2 = r.cert(2, "deploy", "bot-krl");
    let live = r.cert(0, "deploy", "bot-krl");
    let (f1, f2, flive) = (c1.write(r.dir()), c2.write(r.dir()), live.write(r.dir()));
    // Every replica has served (and cached) a KRL before the change.
    let v0 = (0..3).map(|i| krl_version(&r.krl(i))).max().unwrap_or(0);
    for i in 0..3 {
        let krl = r.dir().join(format!("krl-before-{i}"));
        std::fs::write(&krl, &r.krl(i).body).expect("write KRL");
        assert!(!krl_revokes(&krl, &f1));
    }

    // Through the admin API of replica 0.
    let resp = r.post(
        0,
        "/v1/admin/revoke",
        &r.admin_token(),
        &json!({"serial": c1.serial, "reason": "leaked"}),
    );
    let returned = Instant::now();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v1 = krl_reaches_replicas(
        &r,
        &[1, 2],
        v0,
        returned,
        (&f1, &flive),
        "admin API on replica 0",
    );

    // Through `mayfly revoke --config` against the shared database: a
    // process that is no replica at all.
    let out = r.cli(&[
        "revoke",
        "--serial",
        &c2.serial.to_string(),
        "--reason",
        "leaked",
    ]);
    let returned = Instant::now();
    let text = ok(out);
    assert!(
        text.contains(&format!("revoked serial {}", c2.serial)),
        "{text}"
    );
    let v2 = krl_reaches_replicas(&r, &[0, 1, 2], v1, returned, (&f2, &flive), "mayfly revoke");
    assert!(v2 > v1 && v1 > v0, "versions only go up: {v0} {v1} {v2}");

    // Every replica serves the same bytes, ETag and version.
    let krls: Vec<Response> = (0..3).map(|i| r.krl(i)).collect();
    for (i, k) in krls.iter().enumerate() {
        assert_eq!(krl_version(k), v2, "version of replica {i}");
        assert_eq!(
            k.header("etag"),
            krls[0].header("etag"),
            "ETag of replica {i}"
        );
        assert!(
            k.body == krls[0].body,
            "replica {i} serves other KRL bytes for version {v2} than replica 0"
        );
    }
    // A conditional GET with replica 0's ETag is 304 on every replica.
    let etag = krls[0].header("etag").expect("ETag").to_string();
    for i in 0..3 {
        let again = http::request(
            "GET",
            &format!("{}/v1/krl", r.node(i).url()),
            &[("If-None-Match", etag.as_str())],
            b"",
        )
        .expect("GET /v1/krl");
        assert_eq!(again.status, 304, "replica {i}");
    }
    let krl = r.dir().join("krl-final");
    std::fs::write(&krl, &krls[2].body).expect("write KRL");
    assert!(krl_revokes(&krl, &f1) && krl_revokes(&krl, &f2) && !krl_revokes(&krl, &flive));
}

// ---- deactivations -----------------------------------------------------------

#[test]
fn a_deactivation_through_one_replica_is_honoured_by_another_on_the_very_next_request() {
    let r = replicas(3, &[("deploy", DEPLOY_ROLE)], "");
    for k in 0..6 {
        let (a, b, c) = (k % 3, (k + 1) % 3, (k + 2) % 3);
        let sub = format!("bot-d{k}");
        // b and c have just issued to this identity (their view is warm).
        r.cert(b, "deploy", &sub);
        r.cert(c, "deploy", &sub);
        let how = if k % 2 == 0 {
            let resp = r.post(
                a,
                "/v1/admin/disable",
                &r.admin_token(),
                &json!({"issuer": "ci", "subject": sub, "reason": "retired"}),
            );
            assert_eq!(resp.status, 200, "{}", resp.text());
            format!("admin API on replica {a}")
        } else {
            ok(r.cli(&[
                "identity",
                "disable",
                "--issuer",
                "ci",
                "--subject",
                &sub,
                "--reason",
                "retired",
            ]));
            "mayfly identity disable".to_string()
        };
        // The very next request, on another replica, with no pause.
        let next = r.request_cert(b, "deploy", &r.token(&sub));
        expect_refusal(
            &next,
            403,
            "disabled",
            &format!("{sub} after {how}, replica {b}"),
        );
        assert!(
            r.json_message(&next)
                .contains(&format!("ci/{sub} is disabled")),
            "{}",
            next.text()
        );
        let next = r.request_cert(c, "deploy", &r.token(&sub));
        expect_refusal(
            &next,
            403,
            "disabled",
            &format!("{sub} after {how}, replica {c}"),
        );
        // Others are untouched.
        r.cert(b, "deploy", "bot-other");
    }

    // A whole role, disabled on replica 2 and then refused by 0 and 1.
    r.cert(0, "deploy", "bot-role");
    r.cert(1, "deploy", "bot-role");
    let resp = r.post(
        2,
        "/v1/admin/disable",
        &r.admin_token(),
        &json!({"role": "deploy", "reason": "freeze"}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    for i in [0, 1] {
        let next = r.request_cert(i, "deploy", &r.token("bot-role"));
        expect_refusal(&next, 403, "disabled", &format!("role freeze, replica {i}"));
        assert!(
            r.json_message(&next)
                .contains("role \"deploy\" is disabled"),
            "{}",
            next.text()
        );
    }
    // Enabled again through the CLI: every replica issues again.
    ok(r.cli(&["identity", "enable", "--role", "deploy"]));
    for i in 0..3 {
        let again = support::wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
            Issued::from_response(&r.request_cert(i, "deploy", &r.token("bot-role")))
        });
        assert!(again.is_some(), "replica {i} still refuses an enabled role");
    }
}

// ---- approvals ---------------------------------------------------------------

const APPROVED_ROLE: &str = r#"
description = "Production deploys need a person"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
[claims]
sub = "bot*"
[approval]
required = 1
issuer = "ci"
approvers = ["groups:sre"]
expires = "15m"
"#;

const TWO_PERSON_ROLE: &str = r#"
description = "Break-glass needs two people"
owner = "platform@example.com"
issuer = "ci"
principals = ["root"]
max_ttl = "10m"
[claims]
sub = "bot*"
[approval]
required = 2
issuer = "ci"
approvers = ["groups:sre"]
expires = "15m"
"#;

impl Replicas {
    /// A person's token: `groups: ["sre"]` makes an approver.
    fn person(&self, name: &str) -> String {
        self.token_with(name, json!({"groups": ["sre"]}))
    }

    /// Asks for a certificate in an approved `role` on replica `i`;
    /// returns the approval request's id.
    fn ask_approval(&self, i: usize, role: &str) -> String {
        let resp = self.request_cert(i, role, &self.token("bot-jit"));
        assert_eq!(resp.status, 202, "{}", resp.text());
        resp.json()["approval_request"]
            .as_str()
            .expect("approval_request")
            .to_string()
    }

    /// Redeems approval `id` on replica `i` with a fresh token.
    fn redeem(&self, i: usize, role: &str, id: &str) -> Response {
        self.post(
            i,
            "/v1/certs/user",
            &self.token("bot-jit"),
            &json!({"role": role, "public_key": self.public_key(), "approval_request": id}),
        )
    }

    fn vote(&self, i: usize, id: &str, who: &str) -> Response {
        self.post(
            i,
            &format!("/v1/requests/{id}/approve"),
            &self.person(who),
            &json!({"reason": "change 1234"}),
        )
    }

    fn json_message(&self, r: &Response) -> String {
        r.json()["message"].as_str().unwrap_or_default().to_string()
    }
}

#[test]
fn an_approval_requested_on_one_replica_approved_on_another_is_redeemed_once_on_a_third() {
    let r = replicas(
        3,
        &[("prod", APPROVED_ROLE), ("break-glass", TWO_PERSON_ROLE)],
        "",
    );
    // Requested on A, seen and approved on B, redeemed on C, once.
    let id = r.ask_approval(0, "prod");
    let pending = r.get_with(1, "/v1/requests", &r.person("alice")).json();
    assert!(
        pending
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p["id"] == json!(id))),
        "replica 1 does not list {id}: {pending}"
    );
    let before = r.redeem(2, "prod", &id);
    assert_eq!(before.status, 202, "not yet approved: {}", before.text());
    let resp = r.vote(1, &id, "alice");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["status"], "approved");
    let cert = r.redeem(2, "prod", &id);
    assert!(Issued::from_response(&cert).is_some(), "{}", cert.text());
    expect_refusal(
        &r.redeem(0, "prod", &id),
        403,
        "approval_not_pending",
        "used on A",
    );
    expect_refusal(
        &r.redeem(1, "prod", &id),
        403,
        "approval_not_pending",
        "used on B",
    );

    // One approval redeemed on two replicas at the same instant: one wins.
    for round in 0..5 {
        let id = r.ask_approval(round % 3, "prod");
        assert_eq!(r.vote((round + 1) % 3, &id, "alice").status, 200);
        let answers = together(vec![
            Box::new(|| r.redeem(1, "prod", &id)) as Box<dyn FnOnce() -> Response + Send>,
            Box::new(|| r.redeem(2, "prod", &id)),
        ]);
        let won = answers.iter().filter(|a| a.status == 200).count();
        assert_eq!(
            won,
            1,
            "round {round}: {} redemptions of one approval: {} / {}",
            won,
            answers[0].text(),
            answers[1].text()
        );
        let lost = answers.iter().find(|a| a.status != 200).expect("a loser");
        expect_refusal(lost, 403, "approval_not_pending", &format!("round {round}"));
    }

    // Two people needed: the same person approving on two replicas at once
    // counts once; a second person on a third replica completes it.
    for round in 0..3 {
        let id = r.ask_approval(0, "break-glass");
        let answers = together(vec![
            Box::new(|| r.vote(1, &id, "alice")) as Box<dyn FnOnce() -> Response + Send>,
            Box::new(|| r.vote(2, &id, "alice")),
        ]);
        let counted: Vec<&Response> = answers.iter().filter(|a| a.status == 200).collect();
        assert_eq!(
            counted.len(),
            1,
            "round {round}: alice's vote on two replicas: {} / {}",
            answers[0].text(),
            answers[1].text()
        );
        assert_eq!(counted[0].json()["status"], "pending", "one of two votes");
        let dup = answers
            .iter()
            .find(|a| a.status != 200)
            .expect("a duplicate");
        expect_refusal(dup, 403, "already_voted", &format!("round {round}"));
        let early = r.redeem(1, "break-glass", &id);
        assert_eq!(early.status, 202, "one vote of two: {}", early.text());
        let resp = r.vote(0, &id, "carol");
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["status"], "approved");
        let cert = r.redeem(2, "break-glass", &id);
        assert!(Issued::from_response(&cert).is_some(), "{}", cert.text());
    }

    // One vote per approval above, two per two-person approval.
    for (event, n) in [
        ("approval_requested", 1 + 5 + 3),
        ("approval_granted", 1 + 5 + 2 * 3),
        ("approval_vote_refused", 3),
        ("approval_used", 1 + 5 + 3),
        ("cert_issued", 1 + 5 + 3),
    ] {
        assert_eq!(r.audit(&["--event", event]).len(), n, "{event}");
    }
}

// ---- max_active_certs --------------------------------------------------------

const CAPPED_ROLE: &str = r#"
description = "Backups, three at a time"
owner = "storage@example.com"
issuer = "ci"
principals = ["backup"]
max_ttl = "10m"
max_active_certs = 3
[claims]
sub = "bot*"
"#;

/// `n` requests of `sub` spread over the replicas, released together;
/// returns the certificates and checks every refusal names the cap.
fn capped_race(r: &Replicas, n: usize, sub: &str) -> Vec<Issued> {
    let tokens: Vec<String> = (0..n).map(|_| r.token(sub)).collect();
    let jobs: Vec<Box<dyn FnOnce() -> Response + Send + '_>> = tokens
        .iter()
        .enumerate()
        .map(|(k, t)| {
            Box::new(move || r.request_cert(k % r.len(), "backup", t))
                as Box<dyn FnOnce() -> Response + Send + '_>
        })
        .collect();
    let answers = together(jobs);
    for a in answers.iter().filter(|a| a.status != 200) {
        expect_refusal(a, 403, "too_many_active_certs", sub);
        assert!(r.json_message(a).contains("allows 3"), "{}", a.text());
    }
    answers.iter().filter_map(Issued::from_response).collect()
}

#[test]
fn max_active_certs_is_exact_across_replicas_under_a_race() {
    let r = replicas(3, &[("backup", CAPPED_ROLE)], "");
    for round in 0..3 {
        let sub = format!("bot-cap{round}");
        let won = capped_race(&r, 12, &sub);
        assert_eq!(
            won.len(),
            3,
            "round {round}: 12 requests on 3 replicas under max_active_certs = 3 gave {} \
             certificates: serials {:?}",
            won.len(),
            won.iter().map(|c| c.serial).collect::<Vec<_>>()
        );
        // Revoking one makes room for exactly one, wherever it is asked.
        let resp = r.post(
            round % 3,
            "/v1/admin/revoke",
            &r.admin_token(),
            &json!({"serial": won[0].serial, "reason": "room"}),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        let again = capped_race(&r, 6, &sub);
        assert_eq!(again.len(), 1, "round {round}: after one revocation");
    }
    assert_eq!(r.audit(&["--event", "cert_issued"]).len(), 3 * 4);
}

// ---- rate limits -------------------------------------------------------------

const LIMITED_ROLE: &str = r#"
description = "Deploys, four a minute per job"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
identity_rate_limit = "4/m"
[claims]
sub = "bot*"
"#;

#[test]
fn identity_rate_limit_holds_across_replicas_under_a_race() {
    let r = replicas(3, &[("limited", LIMITED_ROLE)], "");
    // Twelve requests of one identity, four on each replica, at once: the
    // shared bucket lets exactly four through (a token refills every
    // 15 s, far longer than the race).
    let tokens: Vec<String> = (0..12).map(|_| r.token("bot-rate")).collect();
    let r = &r;
    let answers = together(
        tokens
            .iter()
            .enumerate()
            .map(|(k, t)| {
                Box::new(move || r.request_cert(k % 3, "limited", t))
                    as Box<dyn FnOnce() -> Response + Send + '_>
            })
            .collect(),
    );
    let won = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(
        won,
        4,
        "identity_rate_limit = 4/m across 3 replicas: {:?}",
        answers
            .iter()
            .map(|a| (a.status, a.text()))
            .collect::<Vec<_>>()
    );
    for a in answers.iter().filter(|a| a.status != 200) {
        expect_refusal(a, 429, "rate_limited", "bot-rate");
        let retry: u64 = a
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("seconds");
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }
    // The limit is per identity: another one is untouched, on any replica.
    for i in 0..3 {
        r.cert(i, "limited", &format!("bot-other{i}"));
    }
}

// ---- policy drift ------------------------------------------------------------

/// The digest of the policy replica `i` enforces, from its `/metrics`.
fn served_digest(r: &Replicas, i: usize) -> String {
    let text = http::get(&format!("{}/metrics", r.node(i).url()))
        .expect("GET /metrics")
        .text();
    text.lines()
        .find_map(|l| l.strip_prefix("mayfly_policy_info{digest=\""))
        .and_then(|l| l.split('"').next())
        .unwrap_or_else(|| panic!("no mayfly_policy_info in /metrics of replica {i}:\n{text}"))
        .to_string()
}

/// `mayfly status --config --json` on the shared database, which must
/// exit with `code`.
fn status_json(r: &Replicas, code: i32) -> serde_json::Value {
    let out = r.cli(&["status", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(code),
        "mayfly status --json:\n{}",
        support::all_output(&out)
    );
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

/// A `deploy` role that differs from [`DEPLOY_ROLE`] only in its TTL.
const DEPLOY_ROLE_SHORTER: &str = "description = \"replica tests\"\nowner = \"sre@example.com\"\n\
    issuer = \"ci\"\nprincipals = [\"deploy\"]\nmax_ttl = \"5m\"\ndefault_ttl = \"5m\"\n\n\
    [claims]\nsub = \"bot*\"\n";

#[test]
fn policy_drift_between_real_replicas_is_shown_by_status_and_cleared_by_a_reload() {
    let db = database();
    let store = db.store_toml();
    let mut r = Replicas::new(Shared {
        store_toml: &store,
        policies: &[],
        extra: "heartbeat_interval = \"1s\"\n",
    });
    r.add(&[("deploy", DEPLOY_ROLE)]);
    r.add(&[("deploy", DEPLOY_ROLE)]);
    r.add(&[("deploy", DEPLOY_ROLE_SHORTER)]);
    let (ours, theirs) = (served_digest(&r, 0), served_digest(&r, 2));
    assert_ne!(ours, theirs);
    assert_eq!(served_digest(&r, 1), ours);
    let ids: Vec<String> = (0..3)
        .map(|i| {
            std::fs::read_to_string(r.node(i).data_dir().join("replica_id"))
                .expect("data_dir/replica_id")
                .trim()
                .to_string()
        })
        .collect();

    // Every replica's heartbeat is in the shared database: status, run
    // anywhere, lists all three and flags the drift.
    let s = status_json(&r, 9);
    assert_eq!(s["status"], "policy_drift", "{s}");
    assert_eq!(s["policy_drift"], true, "{s}");
    assert_eq!(s["live_replicas"], 3, "{s}");
    let mut want = vec![ours.clone(), theirs.clone()];
    want.sort();
    assert_eq!(s["policy_digests"], json!(want), "{s}");
    let rows = s["replicas"].as_array().expect("replicas");
    for (i, id) in ids.iter().enumerate() {
        let row = rows
            .iter()
            .find(|row| row["replica"] == json!(id))
            .unwrap_or_else(|| panic!("replica {i} ({id}) missing from status: {s}"));
        let digest = if i == 2 { &theirs } else { &ours };
        assert_eq!(row["policy_digest"], json!(digest), "replica {i}: {row}");
        assert_eq!(row["listen"], format!("127.0.0.1:{}", r.node(i).port()));
        assert_eq!(row["live"], true, "replica {i}: {row}");
    }
    let out = r.cli(&["status"]);
    let text = support::all_output(&out);
    assert!(
        text.contains("POLICY DRIFT: the 3 live replicas enforce 2 different policies"),
        "{text}"
    );
    // The admin endpoint of any replica says the same.
    for i in 0..3 {
        let v = r.get_with(i, "/v1/admin/replicas", &r.admin_token()).json();
        assert_eq!(v["policy_drift"], true, "replica {i}: {v}");
        assert_eq!(v["live_replicas"], 3, "replica {i}: {v}");
    }

    // The odd one out gets the common policy and reloads: no drift.
    std::fs::write(r.node(2).policy_dir().join("deploy.toml"), DEPLOY_ROLE)
        .expect("rewrite the policy");
    let pid = r.node(2).pid().expect("replica 2 runs").to_string();
    ok(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .output()
        .expect("kill -HUP"));
    let cleared = support::wait_for(Duration::from_secs(15), Duration::from_millis(200), || {
        let out = r.cli(&["status", "--json"]);
        (out.status.code() == Some(0)).then_some(())
    });
    assert!(
        cleared.is_some(),
        "drift not cleared: {}",
        status_json(&r, 9)
    );
    let s = status_json(&r, 0);
    assert_eq!(s["policy_drift"], false, "{s}");
    assert_eq!(s["policy_digests"], json!([ours]), "{s}");
}
// ---- CA keys ---------------------------------------------------------------

#[test]
fn replicas_started_together_on_an_empty_database_serve_one_ca() {
    let db = database();
    let store = db.store_toml();
    let mut r = Replicas::new(Shared {
        store_toml: &store,
        policies: &[("deploy", DEPLOY_ROLE)],
        extra: "",
    });
    let config = r.config_extra().to_string();
    let started: Vec<Mayfly> = together(
        (0..3)
            .map(|_| {
                let config = config.as_str();
                Box::new(move || Mayfly::start(config, &[("deploy", DEPLOY_ROLE)]))
                    as Box<dyn FnOnce() -> Mayfly + Send + '_>
            })
            .collect(),
    );
    for m in started {
        r.adopt(m);
    }
    // One replica created each key, the others loaded it.
    for what in ["user", "host"] {
        let creators = (0..3)
            .filter(|&i| {
                r.node(i)
                    .stderr_log()
                    .contains(&format!("generated a new {what} CA key"))
            })
            .count();
        assert_eq!(
            creators,
            1,
            "the {what} CA key was created by {creators} replicas\n{}",
            r.logs()
        );
    }
    for path in ["/v1/ca/user.pub", "/v1/ca/host.pub"] {
        let keys: Vec<String> = (0..3)
            .map(|i| {
                let resp = http::get(&format!("{}{path}", r.node(i).url())).expect("GET");
                assert_eq!(resp.status, 200, "{path} on replica {i}: {}", resp.text());
                resp.text()
            })
            .collect();
        assert!(!keys[0].trim().is_empty(), "{path}");
        assert!(
            keys.iter().all(|k| *k == keys[0]),
            "replicas serve different {path}:\n{}",
            keys.join("---\n")
        );
    }
    // Every replica signs with that key.
    let user_ca = http::get(&format!("{}/v1/ca/user.pub", r.node(0).url()))
        .expect("GET")
        .text();
    let ca_fields: Vec<String> = user_ca
        .lines()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect();
    for i in 0..3 {
        let cert = r.cert(i, "deploy", "bot-ca").write(r.dir());
        let fp = support::signing_ca(&cert);
        let ca_file = r.dir().join(format!("ca-{i}.pub"));
        std::fs::write(&ca_file, format!("{}\n", ca_fields[0])).expect("write CA key");
        let ca_fp = ok(std::process::Command::new("ssh-keygen")
            .arg("-l")
            .arg("-f")
            .arg(&ca_file)
            .output()
            .expect("ssh-keygen -l"));
        assert!(
            ca_fp.contains(&fp),
            "replica {i} signed with {fp}, not the served user CA {ca_fp}"
        );
    }
}

// ---- the audit chain ---------------------------------------------------------

#[test]
fn audit_verify_passes_after_interleaved_writes_from_three_replicas_and_the_cli() {
    // A checkpoint every few records, so several replicas sign some.
    let db = database();
    let mut r = replicas_on(
        &db,
        3,
        &[("deploy", DEPLOY_ROLE)],
        "[audit]\ncheckpoint_every = 5\n",
    );
    let live = r.cert(0, "deploy", "bot-audit");
    let mut jobs: Vec<Job<'_>> = Vec::new();
    for i in 0..3 {
        for _ in 0..3 {
            let r = &r;
            jobs.push(Box::new(move || {
                let mut got = Vec::new();
                for k in 0..8 {
                    if k % 4 == 3 {
                        // A refusal is a record too.
                        let no = r.request_cert(i, "deploy", &r.token("intruder"));
                        assert_eq!(no.status, 403, "{}", no.text());
                    } else {
                        got.push((i, r.cert(i, "deploy", "bot-audit").serial));
                    }
                }
                got
            }));
        }
    }
    // Administrative writes from a replica and from the CLI meanwhile.
    let admin = r.admin_token();
    let rr = &r;
    jobs.push(Box::new(move || {
        for k in 0..3 {
            let resp = rr.post(
                1,
                "/v1/admin/disable",
                &admin,
                &json!({"issuer": "ci", "subject": format!("bot-gone{k}"), "reason": "x"}),
            );
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
        Vec::new()
    }));
    jobs.push(Box::new(move || {
        for k in 0..3 {
            ok(rr.cli(&["identity", "disable", "--role", &format!("gone{k}")]));
        }
        Vec::new()
    }));
    let issued: Vec<(usize, u64)> = together(jobs).into_iter().flatten().collect();
    ok(r.cli(&[
        "revoke",
        "--serial",
        &live.serial.to_string(),
        "--reason",
        "done",
    ]));

    // The writes really interleaved: in chain order, the replica that
    // issued changes many times.
    let replica_of: HashMap<u64, usize> = issued.iter().map(|(i, s)| (*s, *i)).collect();
    let order: Vec<usize> = audited_serials(&r)
        .iter()
        .filter_map(|s| replica_of.get(s).copied())
        .collect();
    assert_eq!(order.len(), issued.len());
    let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(switches >= 6, "issuances hardly interleaved: {order:?}");

    let report = r.assert_audit_verifies();
    assert!(report.contains("hash chain intact"), "{report}");
    let checkpoints = checkpoint_counts(&report);
    assert!(
        checkpoints.0 >= 5 && checkpoints.0 == checkpoints.1,
        "every checkpoint signed and verified: {report}"
    );
    // A replica's clean shutdown signs the head (unless it is signed
    // already); the chain and every signature still verify.
    r.cert(2, "deploy", "bot-audit");
    r.node_mut(2).stop();
    let report = r.assert_audit_verifies();
    let after = checkpoint_counts(&report);
    assert!(after.0 >= checkpoints.0 && after.0 == after.1, "{report}");

    // The check is real on PostgreSQL: one edited row is named.
    let rows = r.audit(&["--event", "cert_issued"]);
    let seq = rows[rows.len() / 2]["mayfly"]["audit"]["seq"]
        .as_u64()
        .expect("seq");
    db.psql(&format!(
        "UPDATE audit SET reason = 'edited' WHERE seq = {seq}"
    ));
    let (code, out) = r.audit_verify(0);
    assert_ne!(code, Some(0), "an edited row verified:\n{out}");
    assert!(out.contains(&format!("seq {seq}")), "{out}");
}

/// `(checkpoints, signatures verified)` from `mayfly audit verify`.
fn checkpoint_counts(report: &str) -> (u64, u64) {
    let line = report
        .lines()
        .find(|l| l.starts_with("checkpoints: "))
        .unwrap_or_else(|| panic!("no checkpoints in:\n{report}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().expect("a number"))
        .collect();
    (nums[0], nums[1])
}

// ---- CA key rotation through the database ------------------------------------

/// The `SHA256:` fingerprint of one OpenSSH public key line.
fn fingerprint(dir: &std::path::Path, line: &str) -> String {
    let f = dir.join("fp.pub");
    std::fs::write(&f, format!("{line}\n")).expect("write a key line");
    let out = ok(std::process::Command::new("ssh-keygen")
        .arg("-l")
        .arg("-f")
        .arg(&f)
        .output()
        .expect("ssh-keygen -l"));
    out.split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("no fingerprint in {out}"))
        .to_string()
}

/// The user CA key lines replica `i` publishes (`/v1/ca/user.pub`).
fn user_ca_lines(r: &Replicas, i: usize) -> Vec<String> {
    let resp = http::get(&format!("{}/v1/ca/user.pub", r.node(i).url())).expect("GET");
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.text()
        .lines()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

/// Waits (2 s at most) until every replica publishes exactly `want`
/// (in any order), then checks that every replica signs with `signer`.
#[track_caller]
fn every_replica_has(r: &Replicas, want: &[String], signer: &str, step: &str) {
    let want: BTreeSet<String> = want.iter().cloned().collect();
    for i in 0..r.len() {
        let seen = support::wait_for(Duration::from_secs(2), Duration::from_millis(50), || {
            let got: BTreeSet<String> = user_ca_lines(r, i).into_iter().collect();
            (got == want).then_some(())
        });
        assert!(
            seen.is_some(),
            "after {step}, replica {i} publishes {:?}, not {want:?}\n{}",
            user_ca_lines(r, i),
            r.logs()
        );
        let cert = r.cert(i, "deploy", "bot-rotate").write(r.dir());
        let fp = support::signing_ca(&cert);
        assert_eq!(
            fp,
            fingerprint(r.dir(), signer),
            "after {step}, replica {i} signs with another key"
        );
    }
}

#[test]
fn ca_rotation_run_with_the_cli_against_the_database_reaches_every_replica() {
    let r = replicas(3, &[("deploy", DEPLOY_ROLE)], "");
    let old = user_ca_lines(&r, 0);
    assert_eq!(old.len(), 1, "{old:?}");
    every_replica_has(&r, &old, &old[0], "the start");

    ok(r.cli(&["ca", "rotate", "--stage"]));
    let staged = user_ca_lines(&r, 0);
    assert_eq!(staged.len(), 2, "the next key is published: {staged:?}");
    let next = staged
        .iter()
        .find(|l| **l != old[0])
        .expect("a new line")
        .clone();
    every_replica_has(&r, &staged, &old[0], "--stage");

    ok(r.cli(&["ca", "rotate", "--activate"]));
    every_replica_has(&r, &staged, &next, "--activate");

    // Certificates of the old key are still valid: retiring needs --force.
    let refused = r.cli(&["ca", "rotate", "--retire"]);
    assert!(!refused.status.success(), "retire with live certificates");
    ok(r.cli(&["ca", "rotate", "--retire", "--force"]));
    every_replica_has(&r, std::slice::from_ref(&next), &next, "--retire");
}

#[test]
fn two_rotations_run_at_once_from_two_hosts_one_wins_the_other_is_refused() {
    let r = replicas(2, &[("deploy", DEPLOY_ROLE)], "");
    // The second "host" runs the CLI with replica 1's config (its own
    // data_dir); both only meet in the database.
    let configs = [
        r.node(0).config_path().to_path_buf(),
        r.node(1).config_path().to_path_buf(),
    ];
    for round in 0..3 {
        let outs = together(
            configs
                .iter()
                .map(|c| {
                    Box::new(move || {
                        support::mayfly(&[
                            "ca",
                            "rotate",
                            "--stage",
                            "--config",
                            c.to_str().expect("utf-8 path"),
                        ])
                    }) as Box<dyn FnOnce() -> std::process::Output + Send + '_>
                })
                .collect(),
        );
        let won = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(
            won,
            1,
            "round {round}: {}",
            outs.iter()
                .map(support::all_output)
                .collect::<Vec<_>>()
                .join("---\n")
        );
        let lost = outs
            .iter()
            .find(|o| !o.status.success())
            .map(support::all_output)
            .unwrap_or_default();
        assert!(
            lost.contains("changed while this command ran") || lost.contains("already staged"),
            "round {round}: {lost}"
        );
        // One next key in the database: every replica publishes two keys.
        for i in 0..2 {
            let seen = support::wait_for(Duration::from_secs(2), Duration::from_millis(50), || {
                (user_ca_lines(&r, i).len() == 2).then_some(())
            });
            assert!(seen.is_some(), "round {round}: {:?}", user_ca_lines(&r, i));
        }
        ok(r.cli(&["ca", "rotate", "--activate"]));
        ok(r.cli(&["ca", "rotate", "--retire", "--force"]));
    }
}

#[test]
fn a_replica_with_unencrypted_ca_keys_on_postgres_is_refused_at_start_saying_what_to_set() {
    let db = database();
    let store = db.store_toml();
    let r = Replicas::new(Shared {
        store_toml: &store,
        policies: &[("deploy", DEPLOY_ROLE)],
        extra: "",
    });
    // The replicas' config with plain CA keys.
    let config: String = r
        .config_extra()
        .lines()
        .filter(|l| !l.starts_with("passphrase_file"))
        .map(|l| match l.starts_with("key_protection") {
            true => "key_protection = \"none\"\n".to_string(),
            false => format!("{l}\n"),
        })
        .collect();
    let report = match Mayfly::try_start(&config, &[("deploy", DEPLOY_ROLE)]) {
        Ok(_) => panic!("a replica started with unencrypted CA keys on a shared database"),
        Err(report) => report,
    };
    assert!(
        report.contains("[ca] key_protection = \"passphrase\""),
        "{report}"
    );
    assert_eq!(db.psql("SELECT count(*) FROM ca_keys").trim(), "0");
}

/// The number after `label` on its line of a `mayfly bench` report.
fn bench_figure(report: &str, label: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in the bench report:\n{report}"))
}

#[test]
fn bench_on_two_replicas_counts_only_certificates_whose_records_are_in_the_database() {
    let db = database();
    let pw = db.password_file.to_str().expect("utf-8 path");
    for run in 1..=2u64 {
        // A second run on the same database: its token ids are its own.
        let report = ok(support::mayfly(&[
            "bench",
            "--requests",
            "300",
            "--concurrency",
            "16",
            "--store-url",
            &db.url,
            "--pg-password-file",
            pw,
            "--replicas",
            "2",
        ]));
        assert!(
            report.contains("store:               postgres (2 replicas, 16 clients)"),
            "{report}"
        );
        assert_eq!(
            bench_figure(&report, "certificates issued:"),
            300,
            "{report}"
        );
        assert_eq!(
            bench_figure(&report, "audit records added:"),
            300,
            "{report}"
        );
        assert_eq!(
            db.psql("SELECT COUNT(*) FROM audit WHERE event = 'cert_issued'")
                .trim(),
            (300 * run).to_string(),
            "{report}"
        );
        assert_eq!(
            db.psql("SELECT COUNT(DISTINCT serial) FROM audit WHERE event = 'cert_issued'")
                .trim(),
            (300 * run).to_string(),
            "serials are unique across the replicas and the runs"
        );
    }
    let out = support::mayfly(&["bench", "--replicas", "2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--store-url"), "says what to add: {err}");
}
