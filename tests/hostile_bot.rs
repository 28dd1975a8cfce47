//! A bot that wants more than its role gives, and requests that race, against
//! a real `mayfly serve` with tokens from the real OIDC provider. Each test
//! is one hole a review found: it fails if the hole comes back.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{http, keygen_ed25519, now, ClientSpec, Mayfly, Oidc};

/// Break-glass access: approved per use, one live certificate at a time,
/// and the person who triggered the job may not approve it.
const JIT_POLICY: &str = r#"
description = "Break-glass, approved per use"
owner = "platform@example.com"
issuer = "ci"
principals = ["readonly", "root"]
max_ttl = "1h"
default_ttl = "5m"
max_active_certs = 1
[claims]
repository = "acme/*"
[approval]
required = 1
issuer = "ci"
approvers = ["groups:sre"]
distinct = ["actor=preferred_username"]
"#;

/// No approval; a tight identity rate limit.
const LIMITED_POLICY: &str = r#"
description = "Backups"
owner = "storage@example.com"
issuer = "ci"
principals = ["backup"]
max_ttl = "10m"
identity_rate_limit = "2/h"
[claims]
repository = "acme/*"
"#;

/// Many certificates, for the deactivation race.
const DEPLOY_POLICY: &str = r#"
description = "Deploy"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
[claims]
repository = "acme/*"
"#;

struct Env {
    oidc: Oidc,
    ca: Mayfly,
    dir: tempfile::TempDir,
}

fn setup() -> Env {
    let oidc = Oidc::start(&[
        ClientSpec::new("bot", "ES256").claims(json!({"repository": "acme/api", "actor": "carol"})),
        ClientSpec::new("alice", "ES256")
            .claims(json!({"groups": ["sre"], "preferred_username": "alice"})),
        ClientSpec::new("carol", "ES256")
            .claims(json!({"groups": ["sre"], "preferred_username": "Carol"})),
        ClientSpec::new("dave", "ES256").claims(json!({"groups": ["sre"]})),
        ClientSpec::new("bob", "ES256").claims(json!({"groups": ["dev"]})),
    ]);
    let ca = Mayfly::start(
        &oidc.issuer_toml("ci"),
        &[
            ("jit", JIT_POLICY),
            ("limited", LIMITED_POLICY),
            ("deploy", DEPLOY_POLICY),
        ],
    );
    Env {
        oidc,
        ca,
        dir: support::temp_dir("hostile"),
    }
}

impl Env {
    fn post_as(&self, path: &str, who: &str, body: &Value) -> http::Response {
        let auth = format!("Bearer {}", self.oidc.token(who));
        self.post_with(path, &auth, body)
    }

    fn post_with(&self, path: &str, auth: &str, body: &Value) -> http::Response {
        http::post_json(
            &format!("{}{path}", self.ca.url()),
            &[("Authorization", auth)],
            body,
        )
        .expect("POST")
    }

    /// `mayfly <args> --config <the CA's config>`, which must succeed.
    fn mayfly(&self, args: &[&str]) -> String {
        let out = Command::new(Mayfly::bin())
            .args(args)
            .args(["--config", self.ca.config_path().to_str().expect("utf8")])
            .output()
            .expect("run mayfly");
        assert!(
            out.status.success(),
            "mayfly {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Audit records of `event`, as `audit search --json` prints them.
    fn audit(&self, event: &str) -> Vec<Value> {
        self.ca.audit(&["--event", event])
    }

    /// Asks for approval of `body` as the bot; the pending request's id.
    fn pending(&self, body: &Value) -> String {
        let r = self.post_as("/v1/certs/user", "bot", body);
        assert_eq!(r.status, 202, "{}", r.text());
        r.json()["approval_request"]
            .as_str()
            .expect("id")
            .to_string()
    }

    /// Asks for approval of `body` and has alice approve it; the id.
    fn approved(&self, body: &Value) -> String {
        let id = self.pending(body);
        let r = self.post_as(
            &format!("/v1/requests/{id}/approve"),
            "alice",
            &json!({"reason": "change 42"}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        id
    }
}

fn with_id(body: &Value, id: &str) -> Value {
    let mut b = body.clone();
    b["approval_request"] = json!(id);
    b
}

#[test]
fn a_redemption_mints_at_most_what_the_approver_saw() {
    let env = setup();
    let (_, key) = keygen_ed25519(env.dir.path());
    let asked =
        json!({"role": "jit", "public_key": key, "principals": ["readonly"], "ttl_seconds": 60});
    let id = env.approved(&asked);

    // More principals than approved: refused, naming the difference.
    let r = env.post_as(
        "/v1/certs/user",
        "bot",
        &json!({"role": "jit", "public_key": key, "principals": ["root"], "ttl_seconds": 60, "approval_request": id}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "approval_exceeded");
    assert!(r.text().contains("root"), "{}", r.text());
    // A longer lifetime than approved: refused, naming both.
    let r = env.post_as(
        "/v1/certs/user",
        "bot",
        &json!({"role": "jit", "public_key": key, "principals": ["readonly"], "ttl_seconds": 3600, "approval_request": id}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "approval_exceeded");
    assert!(
        r.text().contains("60s") && r.text().contains("3600s"),
        "{}",
        r.text()
    );
    // Another key: refused.
    let (_, other) = keygen_ed25519(env.dir.path());
    let r = env.post_as(
        "/v1/certs/user",
        "bot",
        &json!({"role": "jit", "public_key": other, "approval_request": id}),
    );
    assert_eq!(r.json()["error"], "approval_mismatch", "{}", r.text());

    // Leaving principals and TTL out gets exactly what was approved (the
    // role's defaults would be both principals for 5 minutes).
    let r = env.post_as(
        "/v1/certs/user",
        "bot",
        &json!({"role": "jit", "public_key": key, "approval_request": id}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let cert = r.json();
    assert_eq!(cert["principals"], json!(["readonly"]));
    let lifetime = cert["valid_before"].as_u64().expect("vb")
        - now().min(cert["valid_before"].as_u64().expect("vb"));
    assert!(
        lifetime <= 60,
        "lifetime {lifetime}s above the approved 60s"
    );
    // What the certificate itself says, read by ssh-keygen.
    let cert_path = env.dir.path().join("jit-cert.pub");
    std::fs::write(&cert_path, cert["certificate"].as_str().expect("cert")).expect("write");
    let listing = support::keygen::run_ssh_keygen(&["-L", "-f", cert_path.to_str().expect("utf8")]);
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.contains("readonly") && !text.contains("root"),
        "{text}"
    );
}

#[test]
fn max_active_certs_holds_at_redemption() {
    let env = setup();
    let (_, k1) = keygen_ed25519(env.dir.path());
    let (_, k2) = keygen_ed25519(env.dir.path());
    let b1 = json!({"role": "jit", "public_key": k1, "principals": ["readonly"]});
    let b2 = json!({"role": "jit", "public_key": k2, "principals": ["readonly"]});
    let id1 = env.approved(&b1);
    let id2 = env.approved(&b2);
    let r = env.post_as("/v1/certs/user", "bot", &with_id(&b1, &id1));
    assert_eq!(r.status, 200, "{}", r.text());
    // One certificate is live; the role allows one: the second approval
    // does not lift the cap.
    let r = env.post_as("/v1/certs/user", "bot", &with_id(&b2, &id2));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "too_many_active_certs");
}

#[test]
fn concurrent_redemptions_of_one_approval_mint_one_certificate() {
    let env = setup();
    let (_, key) = keygen_ed25519(env.dir.path());
    let body = json!({"role": "jit", "public_key": key, "principals": ["readonly"]});
    let id = env.approved(&body);
    let redeem = with_id(&body, &id);
    // Distinct tokens, so replay protection is not what stops them.
    let auths: Vec<String> = (0..8)
        .map(|_| format!("Bearer {}", env.oidc.token("bot")))
        .collect();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = auths
            .iter()
            .map(|auth| {
                let env = &env;
                let redeem = &redeem;
                s.spawn(move || env.post_with("/v1/certs/user", auth, redeem).status)
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(env.audit("approval_used").len(), 1);
}

#[test]
fn an_approval_request_on_a_role_without_approval_is_400_and_bypasses_no_limit() {
    let env = setup();
    let (_, key) = keygen_ed25519(env.dir.path());
    let plain = json!({"role": "limited", "public_key": key});
    let sneaky = with_id(&plain, "x");
    let r = env.post_as("/v1/certs/user", "bot", &sneaky);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "approval_not_required");
    // The limit (2 per hour) holds whatever the body says.
    assert_eq!(env.post_as("/v1/certs/user", "bot", &plain).status, 200);
    assert_eq!(env.post_as("/v1/certs/user", "bot", &plain).status, 200);
    let r = env.post_as("/v1/certs/user", "bot", &plain);
    assert_eq!(r.status, 429, "{}", r.text());
    let r = env.post_as("/v1/certs/user", "bot", &sneaky);
    assert_ne!(r.status, 200, "{}", r.text());
    assert_eq!(env.audit("cert_issued").len(), 2);
}

#[test]
fn no_certificate_survives_identity_disable_while_requests_race() {
    let env = setup();
    let (_, key) = keygen_ed25519(env.dir.path());
    let body = json!({"role": "deploy", "public_key": key});
    let stop = AtomicBool::new(false);
    let issued = AtomicUsize::new(0);
    // (serial or None, started after the disable returned)
    let results: Mutex<Vec<(u16, Option<u64>, bool)>> = Mutex::new(Vec::new());
    let disabled_at: Mutex<Option<Instant>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let mut claims = env.oidc.valid_claims("bot");
                    claims["jti"] = json!(uuid::Uuid::new_v4().to_string());
                    let auth = format!("Bearer {}", env.oidc.forge("ES256", claims));
                    let started = Instant::now();
                    let after = disabled_at
                        .lock()
                        .expect("lock")
                        .is_some_and(|t| started > t);
                    let r = env.post_with("/v1/certs/user", &auth, &body);
                    let serial = (r.status == 200).then(|| {
                        issued.fetch_add(1, Ordering::Relaxed);
                        r.json()["serial"].as_u64().expect("serial")
                    });
                    if r.status != 200 {
                        assert_eq!(r.status, 403, "{}", r.text());
                        assert_eq!(r.json()["error"], "disabled", "{}", r.text());
                    }
                    results
                        .lock()
                        .expect("lock")
                        .push((r.status, serial, after));
                }
            });
        }
        let t0 = Instant::now();
        while issued.load(Ordering::Relaxed) < 40 {
            assert!(t0.elapsed() < Duration::from_secs(60), "too slow to issue");
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = env.mayfly(&[
            "identity",
            "disable",
            "--issuer",
            "ci",
            "--subject",
            "bot",
            "--reason",
            "race",
        ]);
        assert!(out.contains("disabled"), "{out}");
        *disabled_at.lock().expect("lock") = Some(Instant::now());
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
    });
    let results = results.into_inner().expect("lock");
    let issued: BTreeSet<u64> = results.iter().filter_map(|r| r.1).collect();
    // A revocation record names the certificate by key id, whose last
    // field is the serial.
    let revoked: BTreeSet<u64> = env
        .audit("cert_revoked")
        .iter()
        .filter_map(|r| {
            r["ssh"]["cert"]["key_id"]
                .as_str()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(issued.len() >= 40);
    let escaped: Vec<&u64> = issued.difference(&revoked).collect();
    assert!(
        escaped.is_empty(),
        "{} of {} certificates escaped the deactivation ({} revoked): {:?}",
        escaped.len(),
        issued.len(),
        revoked.len(),
        escaped.iter().take(5).collect::<Vec<_>>()
    );
    let late: Vec<_> = results.iter().filter(|r| r.2).collect();
    assert!(!late.is_empty(), "no request started after the disable");
    assert!(
        late.iter().all(|r| r.0 == 403),
        "issued after disable returned"
    );
}

#[test]
fn unauthenticated_refusals_are_sampled_and_unknown_roles_are_no_labels() {
    let mut env = setup();
    let (_, key) = keygen_ed25519(env.dir.path());
    for i in 0..300 {
        let r = http::post_json(
            &format!("{}/v1/certs/user", env.ca.url()),
            &[],
            &json!({"role": format!("random-{i}"), "public_key": key}),
        )
        .expect("POST");
        assert_eq!(r.status, 401);
    }
    let metrics = http::get(&format!("{}/metrics", env.ca.url()))
        .expect("metrics")
        .text();
    assert!(!metrics.contains("random-"), "unknown roles became labels");
    assert!(
        metrics
            .contains(r#"mayfly_certs_denied_total{role="_unknown",reason="missing_token"} 300"#),
        "{metrics}"
    );
    // A graceful stop writes the summary of the window.
    env.ca.stop();
    env.ca.restart();
    let denied = env.audit("cert_denied");
    assert!(
        denied.len() <= 20,
        "{} refusals before authentication were each written",
        denied.len()
    );
    assert!(
        !denied.is_empty(),
        "the first refusals are recorded in full"
    );
    let summaries = env.audit("refusals_summarized");
    let counted: u64 = summaries
        .iter()
        .map(|r| {
            let text = r.to_string();
            let at = text.find("missing_token=").expect("count by code") + "missing_token=".len();
            text[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<u64>()
                .expect("number")
        })
        .sum();
    assert_eq!(counted + denied.len() as u64, 300, "{summaries:?}");
}

#[test]
fn refused_votes_are_audited() {
    let env = setup();
    let (_, key) = keygen_ed25519(env.dir.path());
    let body = json!({"role": "jit", "public_key": key, "principals": ["readonly"]});
    let id = env.pending(&body);
    let approve = format!("/v1/requests/{id}/approve");
    // Not an approver.
    let r = env.post_as(&approve, "bob", &json!({}));
    assert_eq!(r.json()["error"], "not_approver", "{}", r.text());
    // The person who triggered the job.
    let r = env.post_as(&approve, "carol", &json!({}));
    assert_eq!(r.json()["error"], "self_approval", "{}", r.text());
    // A real approval, then the same approver again.
    assert_eq!(env.post_as(&approve, "alice", &json!({})).status, 200);
    let r = env.post_as(&approve, "alice", &json!({}));
    assert_eq!(r.status, 403, "{}", r.text());
    let refused = env.audit("approval_vote_refused");
    let codes: Vec<String> = refused.iter().map(|r| r.to_string()).collect();
    assert_eq!(refused.len(), 3, "{codes:?}");
    for (code, who) in [
        ("not_approver", "ci:bob"),
        ("self_approval", "ci:carol"),
        ("approval_not_pending", "ci:alice"),
    ] {
        assert!(
            codes.iter().any(|c| c.contains(code) && c.contains(who)),
            "no audited refusal {code} by {who}: {codes:?}"
        );
    }
}

#[test]
fn the_person_who_triggered_a_job_cannot_approve_it_from_their_own_account() {
    let env = setup();
    let (_, key) = keygen_ed25519(env.dir.path());
    let body = json!({"role": "jit", "public_key": key, "principals": ["readonly"]});
    let id = env.pending(&body);
    let approve = format!("/v1/requests/{id}/approve");
    // carol's preferred_username "Carol" is the job's actor "carol".
    let r = env.post_as(&approve, "carol", &json!({}));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "self_approval");
    assert!(r.text().contains("actor"), "{}", r.text());
    // An approver token without the claim cannot prove it is someone else.
    let r = env.post_as(&approve, "dave", &json!({}));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("preferred_username"), "{}", r.text());
    // Anyone else in the group may.
    let r = env.post_as(&approve, "alice", &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    // A job whose token lacks the actor claim gets no approval request.
    let mut claims = env.oidc.valid_claims("bot");
    claims.as_object_mut().expect("object").remove("actor");
    let auth = format!("Bearer {}", env.oidc.forge("ES256", claims));
    let (_, key2) = keygen_ed25519(env.dir.path());
    let r = env.post_with(
        "/v1/certs/user",
        &auth,
        &json!({"role": "jit", "public_key": key2}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("actor"), "{}", r.text());
}
