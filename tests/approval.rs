//! Just-in-time approvals end to end with two real OIDC identities (a bot
//! and a person), `mayfly serve`, the `mayfly request` approver commands,
//! `mayfly ssh` waiting for the approval, and a real sshd.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{http, keygen_ed25519, ClientSpec, Mayfly, Oidc, Sshd};

const PROD_POLICY: &str = r#"
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

struct Env {
    oidc: Oidc,
    ca: Mayfly,
    dir: tempfile::TempDir,
}

fn setup() -> Env {
    let oidc = Oidc::start(&[
        ClientSpec::new("bot", "RS256").claims(json!({"repository": "acme/api"})),
        ClientSpec::new("alice", "ES256").claims(json!({"groups": ["sre"]})),
        ClientSpec::new("bob", "ES256").claims(json!({"groups": ["dev"]})),
        ClientSpec::new("sre-bot", "EdDSA")
            .claims(json!({"repository": "acme/ops", "groups": ["sre"]})),
    ]);
    let ca = Mayfly::start(&oidc.issuer_toml("ci"), &[("prod-deploy", PROD_POLICY)]);
    Env {
        oidc,
        ca,
        dir: support::temp_dir("approval"),
    }
}

impl Env {
    fn post(&self, path: &str, who: &str, body: Value) -> http::Response {
        let auth = format!("Bearer {}", self.oidc.token(who));
        http::post_json(
            &format!("{}{path}", self.ca.url()),
            &[("Authorization", auth.as_str())],
            &body,
        )
        .expect("POST")
    }
    fn list(&self, who: &str) -> Value {
        let auth = format!("Bearer {}", self.oidc.token(who));
        http::request(
            "GET",
            &format!("{}/v1/requests", self.ca.url()),
            &[("Authorization", auth.as_str())],
            b"",
        )
        .expect("GET")
        .json()
    }
    fn token_file(&self, who: &str) -> String {
        let p = self.dir.path().join(format!("{who}.token"));
        std::fs::write(&p, self.oidc.token(who)).expect("token");
        p.display().to_string()
    }
}

#[test]
fn approved_request_mints_once_and_nobody_else_can_approve() {
    let env = setup();
    let (_, public) = keygen_ed25519(env.dir.path());
    let body = json!({"role": "prod-deploy", "public_key": public});
    let r = env.post("/v1/certs/user", "bot", body.clone());
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["approval_request"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(id.starts_with("apr_"));

    // bob is no approver; the bot cannot mint before approval.
    assert_eq!(env.list("bob"), json!([]));
    let r = env.post(
        &format!("/v1/requests/{id}/approve"),
        "bob",
        json!({"reason": "lgtm"}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "not_approver");
    let mut redeem = body.clone();
    redeem["approval_request"] = json!(id);
    assert_eq!(
        env.post("/v1/certs/user", "bot", redeem.clone()).status,
        202
    );
    // The request and the poll are "pending" in the metrics, not denials.
    let metrics = http::get(&format!("{}/metrics", env.ca.url()))
        .expect("metrics")
        .text();
    assert!(
        metrics.contains("mayfly_certs_pending_total{role=\"prod-deploy\"} 2"),
        "{metrics}"
    );
    assert!(!metrics.contains("approval_pending"), "{metrics}");

    // alice (groups: sre) sees it and approves; then the bot mints, once.
    let pending = env.list("alice");
    assert_eq!(pending[0]["id"], json!(id), "{pending}");
    assert_eq!(pending[0]["subject"], "bot");
    let r = env.post(
        &format!("/v1/requests/{id}/approve"),
        "alice",
        json!({"reason": "change 1234"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "approved");
    let r = env.post("/v1/certs/user", "bot", redeem.clone());
    assert_eq!(r.status, 200, "{}", r.text());
    let r = env.post("/v1/certs/user", "bot", redeem.clone());
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "approval_not_pending");

    // Another identity cannot redeem it, even with the same key.
    let (_, other) = keygen_ed25519(env.dir.path());
    let r = env.post(
        "/v1/certs/user",
        "bot",
        json!({"role": "prod-deploy", "public_key": other, "approval_request": id}),
    );
    assert_eq!(r.json()["error"], "approval_mismatch", "{}", r.text());

    // Requester who is also an approver cannot approve itself.
    let (_, own) = keygen_ed25519(env.dir.path());
    let r = env.post(
        "/v1/certs/user",
        "sre-bot",
        json!({"role": "prod-deploy", "public_key": own}),
    );
    let own_id = r.json()["approval_request"]
        .as_str()
        .expect("id")
        .to_string();
    let r = env.post(
        &format!("/v1/requests/{own_id}/approve"),
        "sre-bot",
        json!({}),
    );
    assert_eq!(r.json()["error"], "self_approval", "{}", r.text());

    // A denial ends a request.
    let r = env.post(
        &format!("/v1/requests/{own_id}/deny"),
        "alice",
        json!({"reason": "not now"}),
    );
    assert_eq!(r.json()["status"], "denied");
    let r = env.post(
        "/v1/certs/user",
        "sre-bot",
        json!({"role": "prod-deploy", "public_key": own, "approval_request": own_id}),
    );
    assert_eq!(r.json()["error"], "approval_not_pending");

    for (event, n) in [
        ("approval_requested", 2),
        ("approval_granted", 1),
        ("approval_denied", 1),
        ("approval_used", 1),
        ("cert_issued", 1),
    ] {
        assert_eq!(env.ca.audit_count(event), n, "{event}");
    }
}

#[test]
fn mayfly_ssh_waits_for_approval_and_then_logs_in() {
    let env = setup();
    let ca_pub = http::get(&format!("{}/v1/ca/user.pub", env.ca.url()))
        .expect("ca")
        .text();
    let sshd = Sshd::start(&ca_pub);
    let mut args: Vec<String> = vec![
        "ssh".into(),
        "--server".into(),
        env.ca.url(),
        "--role".into(),
        "prod-deploy".into(),
        "--token-file".into(),
        env.token_file("bot"),
        "--approval-timeout".into(),
        "60s".into(),
        "--".into(),
    ];
    args.extend(sshd.client_args("deploy"));
    args.push("id -un".into());
    let mut child = Command::new(Mayfly::bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mayfly ssh");
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().expect("stderr");
    let sink = stderr.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let start = Instant::now();
    let id = loop {
        let text = stderr.lock().expect("lock").clone();
        if let Some(pos) = text.find("mayfly request approve apr_") {
            let rest = &text[pos + "mayfly request approve ".len()..];
            break rest.split_whitespace().next().expect("id").to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no approval prompt: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The progress line is visible while it waits. Not a terminal (a CI
    // log): one line per change of state, no carriage-return redraws.
    std::thread::sleep(Duration::from_millis(2500));
    {
        let text = stderr.lock().expect("lock").clone();
        assert_eq!(text.matches("waiting for approval").count(), 1, "{text}");
        assert!(!text.contains('\r'), "{text:?}");
    }
    let out = Command::new(Mayfly::bin())
        .args([
            "request",
            "list",
            "--server",
            &env.ca.url(),
            "--token-file",
            &env.token_file("alice"),
        ])
        .output()
        .expect("request list");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&id),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Command::new(Mayfly::bin())
        .args([
            "request",
            "approve",
            &id,
            "--reason",
            "release 7",
            "--server",
            &env.ca.url(),
            "--token-file",
            &env.token_file("alice"),
        ])
        .output()
        .expect("request approve");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("approved"));
    let status = child.wait().expect("wait");
    reader.join().expect("reader");
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read");
    assert!(status.success(), "{}", stderr.lock().expect("lock"));
    assert_eq!(stdout.trim(), "deploy");
}
