//! Policy hot reload against a running `mayfly serve`: a valid edit takes
//! effect within seconds, a broken edit is rejected and the last good
//! policy keeps serving, SIGHUP reloads by itself (with the watcher an hour
//! away), and every reload is audited with the policy digest and trigger.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{http, keygen_ed25519, ClientSpec, Mayfly, Oidc};

const POLICY: &str = r#"
description = "Deploy"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
[claims]
repository = "acme/*"
"#;

fn status(ca: &Mayfly, oidc: &Oidc, public: &str) -> (u16, String) {
    let auth = format!("Bearer {}", oidc.token("bot"));
    let r = http::post_json(
        &format!("{}/v1/certs/user", ca.url()),
        &[("Authorization", auth.as_str())],
        &json!({"role": "deploy", "public_key": public}),
    )
    .expect("POST");
    let code = if r.status == 200 {
        String::new()
    } else {
        r.json()["error"].as_str().unwrap_or("").to_string()
    };
    (r.status, code)
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("not within 15 s: {what}");
}

/// The newest `policy_reloaded` audit record.
fn last_reload(ca: &Mayfly) -> Value {
    ca.audit(&["--event", "policy_reloaded"])
        .pop()
        .expect("a policy_reloaded record")
}

#[test]
fn policy_edits_take_effect_and_broken_edits_are_rejected_by_the_watcher() {
    let oidc =
        Oidc::start(&[ClientSpec::new("bot", "ES256").claims(json!({"repository": "acme/api"}))]);
    let ca = Mayfly::start(&oidc.issuer_toml("ci"), &[("deploy", POLICY)]);
    let work = support::temp_dir("reload");
    let (_, public) = keygen_ed25519(work.path());
    assert_eq!(status(&ca, &oidc, &public).0, 200);
    let file = ca.policy_dir().join("deploy.toml");

    // A valid edit: only other/* may deploy now. No signal: the watcher sees it.
    std::fs::write(&file, POLICY.replace("acme/*", "other/*")).expect("edit");
    eventually("the edit denies acme/api", || {
        status(&ca, &oidc, &public) == (403, "claim_mismatch".into())
    });
    assert_eq!(ca.audit_count("policy_reloaded"), 1);
    assert_eq!(last_reload(&ca)["mayfly"]["actor"], "reload:change");

    // A broken edit: rejected, the last good policy keeps serving.
    std::fs::write(&file, "description = \"half-written\nowner = ").expect("break");
    eventually("the broken edit is rejected", || {
        ca.audit_count("policy_rejected") >= 1
    });
    assert_eq!(status(&ca, &oidc, &public), (403, "claim_mismatch".into()));
    let log = ca.stderr_log();
    assert!(
        log.contains("policy change rejected; keeping the previous policy"),
        "{log}"
    );
    // A running server does not claim to refuse to start.
    assert!(!log.contains("refusing to start"), "{log}");
    // Logs to a pipe carry no colour codes.
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in the log: {log:?}"
    );

    // Fix it back.
    std::fs::write(&file, POLICY).expect("fix");
    eventually("the fix allows acme/api again", || {
        status(&ca, &oidc, &public).0 == 200
    });

    // Each reload names the digest; certificates name the digest that allowed them.
    let reload = last_reload(&ca);
    let digest = reload["mayfly"]["policy"]["digest"]
        .as_str()
        .expect("the reload names the digest");
    assert_eq!(digest.len(), 64);
    let m = http::get(&format!("{}/metrics", ca.url()))
        .expect("metrics")
        .text();
    assert!(
        m.contains(digest),
        "metrics show the policy version in force"
    );
}

#[test]
fn sighup_reloads_the_policy_while_the_watcher_is_an_hour_away() {
    let oidc =
        Oidc::start(&[ClientSpec::new("bot", "ES256").claims(json!({"repository": "acme/api"}))]);
    // The watcher first looks in an hour: only SIGHUP can reload within this test.
    let ca = Mayfly::start(
        &format!("policy_poll_interval = \"1h\"\n{}", oidc.issuer_toml("ci")),
        &[("deploy", POLICY)],
    );
    let work = support::temp_dir("reload-hup");
    let (_, public) = keygen_ed25519(work.path());
    assert_eq!(status(&ca, &oidc, &public).0, 200);

    std::fs::write(
        ca.policy_dir().join("deploy.toml"),
        POLICY.replace("acme/*", "other/*"),
    )
    .expect("edit");
    // Longer than the default 2 s poll: the edit is not in force yet.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status(&ca, &oidc, &public).0, 200);
    assert_eq!(ca.audit_count("policy_reloaded"), 0);

    let pid = ca.pid().expect("pid").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill")
        .success());
    eventually("SIGHUP puts the edit in force", || {
        status(&ca, &oidc, &public) == (403, "claim_mismatch".into())
    });
    assert_eq!(ca.audit_count("policy_reloaded"), 1);
    assert_eq!(last_reload(&ca)["mayfly"]["actor"], "reload:SIGHUP");
}
