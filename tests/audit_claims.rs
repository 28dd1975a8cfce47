//! The audit names the job: an issuer's `audit_claims` are recorded in the
//! audit records of issuances, refusals and approvals, bounded, shown by
//! `mayfly audit search` (table and `--json`), the export and `mayfly
//! request list` / `approve`, and covered by the hash chain, on SQLite and
//! on a real PostgreSQL. Tokens come from a test issuer whose keys the test
//! holds (`support::issuer`), so they can carry any claims.

mod support;

use std::path::Path;

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use support::issuer::TestIssuer;
use support::{all_output, http, keygen_ed25519, mayfly, ok, Mayfly, Postgres};

const DEPLOY: &str = r#"
description = "Deploy acme repositories"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
[claims]
repository = "acme/*"
"#;

const PROD: &str = r#"
description = "Production deploys need a human"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
[claims]
repository = "acme/*"
[approval]
required = 1
issuer = "ci"
approvers = ["groups:sre"]
expires = "15m"
"#;

const AUDIT_CLAIMS: &str =
    "audit_claims = [\"run_id\", \"sha\", \"actor\", \"note\", \"kubernetes.io/pod/name\"]";

/// A CA on `store_toml` (empty: SQLite) trusting `issuer` as `ci`.
fn ca(issuer: &TestIssuer, store_toml: &str) -> Mayfly {
    Mayfly::start(
        &format!("{}\n{store_toml}", issuer.issuer_toml("ci", AUDIT_CLAIMS)),
        &[("deploy", DEPLOY), ("prod", PROD)],
    )
}

fn token(issuer: &TestIssuer, sub: &str, extra: Value) -> String {
    let mut claims = issuer.claims(sub);
    for (k, v) in extra.as_object().expect("object") {
        claims[k] = v.clone();
    }
    issuer.sign(Algorithm::ES256, &claims)
}

/// The claims of one GitHub-like job, with a long value holding a newline
/// and an escape sequence, and a claim that is not listed.
fn job() -> Value {
    json!({
        "repository": "acme/api",
        "run_id": "4242",
        "sha": "deadbeef",
        "actor": "octocat",
        "note": format!("line1\nline2\u{1b}[31m{}", "x".repeat(1000)),
        "kubernetes.io": {"pod": {"name": "runner-7"}},
        "unlisted": "must-not-be-recorded",
    })
}

fn post(ca: &Mayfly, token: &str, body: &Value) -> http::Response {
    let auth = format!("Bearer {token}");
    http::post_json(
        &format!("{}/v1/certs/user", ca.url()),
        &[("Authorization", auth.as_str())],
        body,
    )
    .expect("POST /v1/certs/user")
}

fn check_job(rec: &Value) {
    let job = &rec["mayfly"]["job"];
    assert_eq!(job["run_id"], "4242", "{rec}");
    assert_eq!(job["sha"], "deadbeef", "{rec}");
    assert_eq!(job["actor"], "octocat", "{rec}");
    assert_eq!(job["kubernetes.io/pod/name"], "runner-7", "{rec}");
    let note = job["note"].as_str().expect("note recorded");
    assert_eq!(note.chars().count(), 257, "cut at 256 characters: {note}");
    assert!(note.ends_with('…'), "{note}");
    assert!(!note.chars().any(char::is_control), "{note:?}");
    assert!(!rec.to_string().contains("must-not-be-recorded"), "{rec}");
}

/// The whole flow on one CA; returns the config path for the tamper check.
fn job_claims_flow(issuer: &TestIssuer, ca: &Mayfly) {
    let dir = support::temp_dir("audit-claims");
    let (_, public) = keygen_ed25519(dir.path());
    let config = ca.config_path();

    // An issuance and a refusal of a token of the same job.
    let r = post(
        ca,
        &token(issuer, "repo:acme/api:ref:refs/heads/main", job()),
        &json!({"role": "deploy", "public_key": public}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut other = job();
    other["repository"] = json!("evil/api");
    let r = post(
        ca,
        &token(issuer, "repo:evil/api:ref:refs/heads/main", other),
        &json!({"role": "deploy", "public_key": public}),
    );
    assert_eq!(r.status, 403, "{}", r.text());

    let issued = support::audit_search(config, &["--event", "cert_issued"]);
    assert_eq!(issued.len(), 1);
    check_job(&issued[0]);
    let denied = support::audit_search(config, &["--event", "cert_denied"]);
    assert_eq!(denied.len(), 1);
    check_job(&denied[0]);

    // The table shows the job next to what happened.
    let table = ok(mayfly(&[
        "audit",
        "search",
        "--config",
        &config.display().to_string(),
        "--event",
        "cert_issued",
    ]));
    assert!(
        table.contains("run_id=4242")
            && table.contains("actor=octocat")
            && table.contains("sha=deadbeef"),
        "{table}"
    );

    // An approval request shows the approver the run, commit and actor.
    let r = post(
        ca,
        &token(issuer, "repo:acme/api:ref:refs/heads/main", job()),
        &json!({"role": "prod", "public_key": public}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["approval_request"]
        .as_str()
        .expect("id")
        .to_string();
    let alice = dir.path().join("alice.token");
    std::fs::write(&alice, token(issuer, "alice", json!({"groups": ["sre"]}))).expect("token");
    let who = [
        "--server",
        &ca.url(),
        "--token-file",
        alice.to_str().expect("path"),
    ];
    let list = ok(mayfly(&[&["request", "list"][..], &who[..]].concat()));
    assert!(list.contains(&id), "{list}");
    assert!(
        list.contains("job: actor=octocat")
            && list.contains("run_id=4242")
            && list.contains("sha=deadbeef"),
        "{list}"
    );
    std::fs::write(&alice, token(issuer, "alice", json!({"groups": ["sre"]}))).expect("token");
    let approved = ok(mayfly(
        &[
            &["request", "approve", id.as_str(), "--reason", "ok"][..],
            &who[..],
        ]
        .concat(),
    ));
    assert!(
        approved.contains("approved") && approved.contains("run_id=4242"),
        "{approved}"
    );
    let granted = support::audit_search(config, &["--event", "approval_granted"]);
    assert_eq!(granted.len(), 1);
    check_job(&granted[0]);

    // The export carries the job, and the log and the export verify.
    let export = dir.path().join("audit.jsonl");
    ok(mayfly(&[
        "audit",
        "export",
        "--config",
        &config.display().to_string(),
        "--out",
        &export.display().to_string(),
    ]));
    let text = std::fs::read_to_string(&export).expect("export");
    let issued_line: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json line"))
        .find(|l| l["event"]["action"] == "cert_issued")
        .expect("cert_issued exported");
    check_job(&issued_line);
    assert_eq!(issued_line["mayfly"]["audit"]["chain"], 2, "{issued_line}");
    verify_ok(&["--config", &config.display().to_string()]);
    verify_ok(&["--export", &export.display().to_string()]);
}

fn verify_ok(args: &[&str]) {
    let out = mayfly(&[&["audit", "verify"][..], args].concat());
    assert!(
        out.status.success(),
        "audit verify {args:?} failed:\n{}",
        all_output(&out)
    );
}

fn verify_fails_at_a_record(config: &Path) {
    let out = mayfly(&["audit", "verify", "--config", &config.display().to_string()]);
    let text = all_output(&out);
    assert!(
        !out.status.success(),
        "an altered job claim went unnoticed:\n{text}"
    );
    assert!(text.contains("altered") || text.contains("seq"), "{text}");
}

#[test]
fn job_claims_are_recorded_bounded_shown_and_chained_on_sqlite() {
    let issuer = TestIssuer::start();
    let mut ca = ca(&issuer, "");
    job_claims_flow(&issuer, &ca);
    ca.stop();
    // Changing a recorded run id breaks the chain.
    let db = rusqlite::Connection::open(ca.data_dir().join("mayfly.db")).expect("open db");
    let n = db
        .execute(
            "UPDATE audit SET claims = replace(claims, '4242', '4243') WHERE event = 'cert_issued'",
            [],
        )
        .expect("update");
    assert_eq!(n, 1);
    drop(db);
    verify_fails_at_a_record(ca.config_path());
}

#[test]
fn job_claims_are_recorded_bounded_shown_and_chained_on_postgres() {
    let issuer = TestIssuer::start();
    let db = Postgres::shared().create_database();
    let ca = ca(
        &issuer,
        &format!(
            "{}\n{}",
            db.store_toml(),
            support::postgres::encrypted_ca_toml()
        ),
    );
    job_claims_flow(&issuer, &ca);
    db.psql(
        "UPDATE audit SET claims = replace(claims, '4242', '4243') WHERE event = 'cert_issued'",
    );
    verify_fails_at_a_record(ca.config_path());
}

#[test]
fn records_written_before_job_claims_still_verify() {
    // A log whose records carry no claims (an issuer without audit_claims,
    // as every record before them) keeps the version-1 hash and verifies.
    let issuer = TestIssuer::start();
    let ca = Mayfly::start(
        &issuer.issuer_toml("ci", "audit_claims = []"),
        &[("deploy", DEPLOY)],
    );
    let dir = support::temp_dir("audit-claims-none");
    let (_, public) = keygen_ed25519(dir.path());
    let r = post(
        &ca,
        &token(&issuer, "repo:acme/api:ref:refs/heads/main", job()),
        &json!({"role": "deploy", "public_key": public}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let issued = support::audit_search(ca.config_path(), &["--event", "cert_issued"]);
    assert!(issued[0]["mayfly"].get("job").is_none(), "{}", issued[0]);
    assert_eq!(issued[0]["mayfly"]["audit"]["chain"], 1);
    verify_ok(&["--config", &ca.config_path().display().to_string()]);
}
