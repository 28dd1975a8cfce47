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
    setup_with("", PROD_POLICY)
}

/// The four identities plus `root` (an administrator), with `extra`
/// appended to mayfly.toml and `policy` as the prod-deploy role.
fn setup_with(extra: &str, policy: &str) -> Env {
    let oidc = Oidc::start(&[
        ClientSpec::new("bot", "RS256").claims(json!({"repository": "acme/api"})),
        ClientSpec::new("alice", "ES256").claims(json!({"groups": ["sre"]})),
        ClientSpec::new("bob", "ES256").claims(json!({"groups": ["dev"]})),
        ClientSpec::new("sre-bot", "EdDSA")
            .claims(json!({"repository": "acme/ops", "groups": ["sre"]})),
        ClientSpec::new("root", "ES256").claims(json!({"groups": ["admins"]})),
    ]);
    let config = format!(
        "{}\n[[admin]]\nissuer = \"ci\"\n[admin.claims]\nsub = \"root\"\n{extra}",
        oidc.issuer_toml("ci")
    );
    let ca = Mayfly::start(&config, &[("prod-deploy", policy)]);
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
    fn list_all(&self, who: &str) -> Value {
        let auth = format!("Bearer {}", self.oidc.token(who));
        http::request(
            "GET",
            &format!("{}/v1/requests?all=true", self.ca.url()),
            &[("Authorization", auth.as_str())],
            b"",
        )
        .expect("GET")
        .json()
    }
    /// A new approval request by `who` for a fresh key: (id, public key).
    fn open_request(&self, who: &str) -> (String, String) {
        let (_, public) = keygen_ed25519(self.dir.path());
        let r = self.post(
            "/v1/certs/user",
            who,
            json!({"role": "prod-deploy", "public_key": public}),
        );
        assert_eq!(r.status, 202, "{}", r.text());
        let id = r.json()["approval_request"]
            .as_str()
            .expect("id")
            .to_string();
        (id, public)
    }
    /// Runs `mayfly request ARGS --server URL --token-file <who's token>`.
    fn request_cli(&self, who: &str, args: &[&str]) -> std::process::Output {
        let server = self.ca.url();
        let token = self.token_file(who);
        Command::new(Mayfly::bin())
            .arg("request")
            .args(args)
            .args(["--server", server.as_str(), "--token-file", token.as_str()])
            .output()
            .expect("mayfly request")
    }
    /// Starts `mayfly ssh` for the bot against a host that is never
    /// reached, and returns it with its stderr collected as it comes.
    /// Starts `mayfly ssh` as a bot; its stderr collects in the string as
    /// it comes. Join the thread after the bot exits to have all of it.
    fn spawn_bot_ssh(
        &self,
        timeout: &str,
    ) -> (
        std::process::Child,
        Arc<Mutex<String>>,
        std::thread::JoinHandle<()>,
    ) {
        let mut child = Command::new(Mayfly::bin())
            .args([
                "ssh",
                "--server",
                &self.ca.url(),
                "--role",
                "prod-deploy",
                "--token-file",
                &self.token_file("bot"),
                "--approval-timeout",
                timeout,
                "--",
                "-p",
                "1",
                "deploy@127.0.0.1",
                "true",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mayfly ssh");
        let (stderr, reader) = support::process::capture_stderr(&mut child);
        (child, stderr, reader)
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
    assert!(
        !metrics.contains("mayfly_certs_denied_total{role=\"prod-deploy\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("mayfly_approval_requests_open{role=\"prod-deploy\"} 1"),
        "{metrics}"
    );

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
    let (stderr, reader) = support::process::capture_stderr(&mut child);
    let id = support::process::approval_id_in(&stderr);
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

/// Waits until `mayfly ssh`'s stderr names its approval request.
fn wait_for_request_id(stderr: &Arc<Mutex<String>>) -> String {
    let start = Instant::now();
    loop {
        let text = stderr.lock().expect("lock").clone();
        if let Some(pos) = text.find("mayfly request approve apr_") {
            let rest = &text[pos + "mayfly request approve ".len()..];
            return rest.split_whitespace().next().expect("id").to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no approval prompt: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_bot_is_told_who_denied_its_request_and_why() {
    let env = setup();
    let (mut child, stderr, reader) = env.spawn_bot_ssh("60s");
    let id = wait_for_request_id(&stderr);
    let out = env.request_cli(
        "alice",
        &["deny", &id, "--reason", "change freeze until Monday"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = child.wait().expect("wait");
    // Everything the bot wrote, up to its end of stderr.
    reader.join().expect("reader");
    let text = stderr.lock().expect("lock").clone();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("was denied by ci:alice: change freeze until Monday"),
        "{text}"
    );
    // The API answer carries it as well, under the code it always had.
    let (_, public) = keygen_ed25519(env.dir.path());
    let r = env.post(
        "/v1/certs/user",
        "bot",
        json!({"role": "prod-deploy", "public_key": public, "approval_request": id}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    // Another key is a mismatch; the denial is told to the same key only.
    assert_eq!(r.json()["error"], "approval_mismatch");
    let (id2, public2) = env.open_request("bot");
    let r = env.post(
        &format!("/v1/requests/{id2}/deny"),
        "alice",
        json!({"reason": "wrong branch"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = env.post(
        "/v1/certs/user",
        "bot",
        json!({"role": "prod-deploy", "public_key": public2, "approval_request": id2}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "approval_not_pending");
    let message = r.json()["message"].as_str().unwrap_or("").to_string();
    assert!(
        message.contains("denied by ci:alice: wrong branch"),
        "{message}"
    );
}

#[test]
fn a_bot_that_gives_up_cancels_its_request() {
    let env = setup();
    let (mut child, stderr, reader) = env.spawn_bot_ssh("3s");
    let id = wait_for_request_id(&stderr);
    let status = child.wait().expect("wait");
    // Everything the bot wrote, up to its end of stderr.
    reader.join().expect("reader");
    let text = stderr.lock().expect("lock").clone();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains(&format!("no approval for request {id}"))
            && text.contains("the request is cancelled"),
        "{text}"
    );
    // It is gone from the approvers' queue and shows as cancelled.
    assert_eq!(env.list("alice"), json!([]));
    let all = env.list_all("alice");
    assert_eq!(all[0]["id"], json!(id), "{all}");
    assert_eq!(all[0]["status"], "cancelled", "{all}");
    assert!(all[0]["cancelled"]["by"]
        .as_str()
        .unwrap_or("")
        .starts_with("requester:ci:bot"));
    // Nobody can approve it any more.
    let out = env.request_cli("alice", &["approve", &id]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cancelled by requester:ci:bot"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = env.ca.audit(&["--event", "approval_cancelled"]);
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert!(rec[0].to_string().contains("gave up"), "{rec:?}");
}

#[test]
fn only_the_requester_or_an_admin_can_cancel_a_request() {
    let env = setup();
    let (id, _) = env.open_request("bot");
    // An approver is not the requester: refused, audited.
    let r = env.post(&format!("/v1/requests/{id}/cancel"), "alice", json!({}));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "not_canceller");
    assert_eq!(env.ca.audit_count("approval_vote_refused"), 1);
    // The bot cancels its own with the CLI.
    let out = env.request_cli("bot", &["cancel", &id, "--reason", "job aborted"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{id}: cancelled")
    );
    // Twice is refused with the state.
    let out = env.request_cli("bot", &["cancel", &id]);
    assert!(!out.status.success());
    // An administrator cancels anyone's.
    let (id2, _) = env.open_request("bot");
    let out = env.request_cli("root", &["cancel", &id2, "--reason", "stale"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = env.list_all("alice");
    let by: Vec<&str> = all
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|r| r["cancelled"]["by"].as_str())
        .collect();
    assert!(by.contains(&"admin:ci:root"), "{all}");
    assert_eq!(env.ca.audit_count("approval_cancelled"), 2);
}

/// Moves a stored request's expiry into the past, as if its time ran out
/// (the shortest `approval.expires` is a minute).
fn expire_now(env: &Env, id: &str) {
    let db = rusqlite::Connection::open(env.ca.data_dir().join("mayfly.db")).expect("db");
    db.busy_timeout(Duration::from_secs(5)).expect("busy");
    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
        - 1;
    let n = db
        .execute(
            "UPDATE approvals SET expires_at = ?1, body = json_set(body, '$.expires_at', ?1) WHERE id = ?2",
            rusqlite::params![past as i64, id],
        )
        .expect("update");
    assert_eq!(n, 1);
}

#[test]
fn abandoned_requests_show_as_expired_and_cannot_be_approved() {
    let env = setup();
    let (id, public) = env.open_request("bot");
    let (live, _) = env.open_request("bot");
    expire_now(&env, &id);
    // Not in the queue; "expired" (not "pending") in the full list.
    let pending = env.list("alice");
    assert_eq!(pending.as_array().map(Vec::len), Some(1), "{pending}");
    assert_eq!(pending[0]["id"], json!(live));
    let all = env.list_all("alice");
    let row = all
        .as_array()
        .expect("list")
        .iter()
        .find(|r| r["id"] == json!(id))
        .cloned()
        .expect("expired row");
    assert_eq!(row["status"], "expired", "{all}");
    let out = env.request_cli("alice", &["list", "--all"]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let line = table.lines().find(|l| l.contains(&id)).unwrap_or("");
    assert!(
        line.contains("expired") && !line.contains("pending"),
        "{table}"
    );
    // Approving, cancelling and redeeming it are refused, saying so.
    let r = env.post(&format!("/v1/requests/{id}/approve"), "alice", json!({}));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("is expired"), "{}", r.text());
    let r = env.post(&format!("/v1/requests/{id}/cancel"), "bot", json!({}));
    assert!(r.text().contains("is expired"), "{}", r.text());
    let r = env.post(
        "/v1/certs/user",
        "bot",
        json!({"role": "prod-deploy", "public_key": public, "approval_request": id}),
    );
    assert_eq!(r.json()["error"], "approval_not_pending", "{}", r.text());
    assert_eq!(env.ca.audit_count("approval_granted"), 0);
    let metrics = http::get(&format!("{}/metrics", env.ca.url()))
        .expect("metrics")
        .text();
    assert!(
        metrics.contains("mayfly_approval_requests_open{role=\"prod-deploy\"} 1"),
        "{metrics}"
    );
}

/// One HTTP request a [`Receiver`] took: its head (lower-cased header
/// names) and body.
#[derive(Debug, Clone)]
struct Received {
    head: String,
    body: Vec<u8>,
}

/// A local webhook receiver (a small tokio listener on its own thread):
/// answers each request with the next status of `statuses` (the last one
/// repeats) and keeps what it got.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(statuses: &[u16]) -> Receiver {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("addr").port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let statuses = statuses.to_vec();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                let mut n = 0usize;
                loop {
                    let Ok((mut sock, _)) = listener.accept().await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Read the head, then Content-Length bytes of body.
                    let (head, body) = loop {
                        let Ok(k) = sock.read(&mut chunk).await else {
                            break (String::new(), Vec::new());
                        };
                        if k == 0 {
                            break (String::new(), Vec::new());
                        }
                        buf.extend_from_slice(&chunk[..k]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break (head, buf[end + 4..end + 4 + len].to_vec());
                        }
                    };
                    let status = statuses[n.min(statuses.len() - 1)];
                    n += 1;
                    sink.lock().expect("lock").push(Received { head, body });
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = sock.write_all(reply.as_bytes()).await;
                    let _ = sock.shutdown().await;
                }
            });
        });
        Receiver { port, got }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until `n` requests arrived, and returns them.
    fn wait_for(&self, n: usize) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.got.lock().expect("lock").clone();
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} of {n} webhook deliveries arrived",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    aws_lc_rs::hmac::sign(&key, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn approval_webhook_notifies_approvers_retries_and_is_audited() {
    // The global receiver fails once, then takes the notice; the second
    // role's own receiver always fails.
    let global = Receiver::start(&[500, 200]);
    let broken = Receiver::start(&[503]);
    let dir = support::temp_dir("webhook");
    let secret = "4f1c0f6a9d2e4b7c8a1e3f5d7b9c2e4a";
    let secret_file = dir.path().join("webhook-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).expect("secret");
    let db_policy = format!(
        "{}webhook = \"{}\"\n",
        PROD_POLICY.replace("Production deploys", "Database changes"),
        broken.url("/hooks/T000/B000/s3cr3t-path?token=t0k3n")
    );
    let extra = format!(
        "[approval_webhook]\nurl = \"{}\"\nsecret_file = \"{}\"\nserver_url = \"https://ca.example.com\"\nretries = 1\nretry_initial = \"200ms\"\n",
        global.url("/notify"),
        secret_file.display()
    );
    let oidc =
        Oidc::start(&[ClientSpec::new("bot", "RS256").claims(json!({"repository": "acme/api"}))]);
    let ca = Mayfly::start(
        &format!("{}\n{extra}", oidc.issuer_toml("ci")),
        &[("prod-deploy", PROD_POLICY), ("prod-db", &db_policy)],
    );
    let keys = support::temp_dir("webhook-keys");
    let (_, public) = keygen_ed25519(keys.path());
    let auth = format!("Bearer {}", oidc.token("bot"));
    let r = http::post_json(
        &format!("{}/v1/certs/user", ca.url()),
        &[("Authorization", auth.as_str())],
        &json!({"role": "prod-deploy", "public_key": public}),
    )
    .expect("POST");
    assert_eq!(r.status, 202, "{}", r.text());
    // The bot is answered without waiting for the delivery and its retry
    // (sent 200ms after the first attempt fails).
    assert!(global.got.lock().expect("lock").len() < 2);
    let id = r.json()["approval_request"]
        .as_str()
        .expect("id")
        .to_string();
    let got = global.wait_for(2);
    let notice: Value = serde_json::from_slice(&got[1].body).expect("json body");
    assert_eq!(notice["id"], json!(id), "{notice}");
    assert_eq!(notice["role"], "prod-deploy");
    assert_eq!(notice["identity"], "ci:bot");
    assert_eq!(notice["principals"], json!(["deploy"]));
    assert_eq!(notice["ttl_seconds"], 600);
    assert!(notice["key_fingerprint"]
        .as_str()
        .unwrap_or("")
        .starts_with("SHA256:"));
    assert!(
        notice["expires_at"].as_str().unwrap_or("").ends_with('Z'),
        "{notice}"
    );
    assert!(notice.get("claims").is_some(), "{notice}");
    assert_eq!(
        notice["approve_command"],
        format!("mayfly request approve {id} --server https://ca.example.com")
    );
    // Signed over the exact body with the secret (its newline trimmed).
    let want = format!(
        "x-mayfly-signature-256: sha256={}",
        hmac_hex(secret.as_bytes(), &got[1].body)
    );
    assert!(got[1].head.contains(&want), "{}", got[1].head);
    assert_eq!(got[0].body, got[1].body);
    let delivered = support::wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        let recs = ca.audit(&["--event", "approval_webhook_delivered"]);
        (!recs.is_empty()).then_some(recs)
    })
    .expect("delivery audited");
    let text = delivered[0].to_string();
    assert!(text.contains("attempt 2") && text.contains(&id), "{text}");

    // The role's own webhook wins over the global one; it keeps failing,
    // which is audited after the retries, and the bot is not held up.
    let (_, public) = keygen_ed25519(keys.path());
    let auth = format!("Bearer {}", oidc.token("bot"));
    let r = http::post_json(
        &format!("{}/v1/certs/user", ca.url()),
        &[("Authorization", auth.as_str())],
        &json!({"role": "prod-db", "public_key": public}),
    )
    .expect("POST");
    assert_eq!(r.status, 202, "{}", r.text());
    broken.wait_for(2);
    let failed = support::wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        let recs = ca.audit(&["--event", "approval_webhook_failed"]);
        (!recs.is_empty()).then_some(recs)
    })
    .expect("failure audited");
    let text = failed[0].to_string();
    assert!(text.contains("after 2 attempt(s): HTTP 503"), "{text}");
    assert_eq!(
        global.got.lock().expect("lock").len(),
        2,
        "global got the role's notice"
    );
    // Neither the secret nor the URL's path and query reach the audit or the logs.
    let all_audit = format!("{:?}", ca.audit(&[]));
    let logs = format!("{}{}", ca.stderr_log(), ca.stdout_log());
    for secret_text in [secret, "s3cr3t-path", "t0k3n"] {
        assert!(!all_audit.contains(secret_text), "{secret_text} in audit");
        assert!(!logs.contains(secret_text), "{secret_text} in logs: {logs}");
    }
}
