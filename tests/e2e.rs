//! End to end with real programs: a real OIDC provider (oidc-provider on
//! node) issues workload tokens, `mayfly serve` verifies them and mints
//! certificates, a real `sshd` trusts the CA and the real `ssh` client logs
//! in. Nothing here is mocked; a program that cannot start fails the test.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use support::{http, keygen_ed25519, now, ClientSpec, Mayfly, Oidc, Sshd};

const DEPLOY_POLICY: &str = r#"
description = "Deploy acme services from CI"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
default_ttl = "5m"
extensions = ["permit-pty"]

[claims]
repository = "acme/*"
ref = "refs/heads/main"
"#;

const REPO_CLAIMS: fn() -> Value = || json!({"repository": "acme/api", "ref": "refs/heads/main"});

struct Env {
    oidc: Oidc,
    ca: Mayfly,
    sshd: Sshd,
    dir: tempfile::TempDir,
}

fn setup() -> Env {
    let clients = [
        ClientSpec::new("deploy-rs", "RS256").claims(REPO_CLAIMS()),
        ClientSpec::new("deploy-es", "ES256").claims(REPO_CLAIMS()),
        ClientSpec::new("deploy-ed", "EdDSA").claims(REPO_CLAIMS()),
        ClientSpec::new("intruder", "RS256")
            .claims(json!({"repository": "evil/api", "ref": "refs/heads/main"})),
        ClientSpec::new("other-aud", "RS256")
            .claims(REPO_CLAIMS())
            .audience("not-mayfly"),
    ];
    let oidc = Oidc::start(&clients);
    let ca = Mayfly::start(&oidc.issuer_toml("ci"), &[("deploy", DEPLOY_POLICY)]);
    let ca_pub = http::get(&format!("{}/v1/ca/user.pub", ca.url()))
        .expect("GET user.pub")
        .text();
    let sshd = Sshd::start(&ca_pub);
    Env {
        oidc,
        ca,
        sshd,
        dir: support::temp_dir("e2e"),
    }
}

impl Env {
    fn request(&self, token: Option<&str>, body: &Value) -> http::Response {
        let auth;
        let mut headers = Vec::new();
        if let Some(t) = token {
            auth = format!("Bearer {t}");
            headers.push(("Authorization", auth.as_str()));
        }
        http::post_json(&format!("{}/v1/certs/user", self.ca.url()), &headers, body)
            .expect("POST /v1/certs/user")
    }

    fn new_key(&self) -> (std::path::PathBuf, String) {
        keygen_ed25519(self.dir.path())
    }

    /// Requests a cert for a fresh key and writes it next to the key.
    fn cert_for(
        &self,
        token: &str,
        extra: Value,
    ) -> (std::path::PathBuf, std::path::PathBuf, Value) {
        let (key, public) = self.new_key();
        let mut body = json!({"role": "deploy", "public_key": public});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let r = self.request(Some(token), &body);
        assert_eq!(r.status, 200, "{}\n{}", r.text(), self.ca.stderr_log());
        let answer = r.json();
        let cert_path = key.with_file_name(format!(
            "{}-cert.pub",
            key.file_name().and_then(|n| n.to_str()).expect("name")
        ));
        std::fs::write(
            &cert_path,
            format!("{}\n", answer["certificate"].as_str().expect("certificate")),
        )
        .expect("write cert");
        (key, cert_path, answer)
    }

    fn expect_error(&self, r: &http::Response, status: u16, code: &str) -> Value {
        assert_eq!(r.status, status, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"], json!(code), "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(
            v["request_id"].as_str().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert!(v.get("certificate").is_none());
        v
    }
}

fn keygen_show(cert: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(cert)
        .output()
        .expect("run ssh-keygen -L");
    assert!(
        out.status.success(),
        "ssh-keygen -L failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn bot_with_oidc_token_logs_in_to_real_sshd_for_each_token_algorithm() {
    let env = setup();
    for client in ["deploy-rs", "deploy-es", "deploy-ed"] {
        let token = env.oidc.token(client);
        let (key, cert, answer) = env.cert_for(&token, json!({}));
        let out = env.sshd.ssh("deploy", &key, &cert, "id -un");
        assert!(
            out.status.success(),
            "{client}: login failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            env.sshd.log()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "deploy");
        let key_id = answer["key_id"].as_str().expect("key_id");
        assert_eq!(
            key_id,
            format!("mayfly:deploy:ci:{client}:{}", answer["serial"])
        );
        // sshd logs the key id: that is how a login traces back to the job.
        assert!(env.sshd.log().contains(key_id), "sshd log lacks {key_id}");

        let shown = keygen_show(&cert);
        assert!(
            shown.contains("Type: ssh-ed25519-cert-v01@openssh.com user certificate"),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("Serial: {}", answer["serial"])),
            "{shown}"
        );
        assert!(shown.contains("permit-pty"), "{shown}");
        assert!(!shown.contains("permit-port-forwarding"), "{shown}");
        let ttl = answer["valid_before"].as_u64().expect("vb") - now();
        assert!((280..=300).contains(&ttl), "default ttl 5m, got {ttl}s");
        assert!(
            answer["valid_after"].as_u64().expect("va") <= now() - 55,
            "backdated ~60s"
        );
    }
    assert_eq!(env.ca.audit_count("cert_issued"), 3);
}

#[test]
fn certificate_is_refused_for_a_principal_it_does_not_hold() {
    let env = setup();
    let (key, cert, _) = env.cert_for(&env.oidc.token("deploy-rs"), json!({}));
    let out = env.sshd.ssh("backup", &key, &cert, "id -un");
    assert_eq!(out.status.code(), Some(255), "login as backup must fail");
    assert!(
        env.sshd.log().contains("not in principals") || env.sshd.log().contains("principal"),
        "{}",
        env.sshd.log()
    );
    let out = env.sshd.ssh("deploy", &key, &cert, "true");
    assert!(out.status.success());
}

#[test]
fn mayfly_ssh_logs_in_with_an_in_memory_key_and_forwards_the_exit_code() {
    let env = setup();
    let token_file = env.dir.path().join("token");
    let run = |cmd: &str| {
        std::fs::write(&token_file, env.oidc.token("deploy-ed")).expect("write token");
        let mut args = vec![
            "ssh".to_string(),
            "--server".into(),
            env.ca.url(),
            "--role".into(),
            "deploy".into(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--".into(),
        ];
        args.extend(env.sshd.client_args("deploy"));
        args.push(cmd.into());
        Command::new(Mayfly::bin())
            .args(&args)
            .env_remove("MAYFLY_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("run mayfly ssh")
    };
    let out = run("id -un");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.sshd.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "deploy");
    let out = run("exit 7");
    assert_eq!(out.status.code(), Some(7));
    // No private key was written anywhere we were told about.
    assert!(!token_file.with_file_name("id_ed25519").exists());

    // A refused request prints the server's reason, readably, and no ssh runs.
    std::fs::write(&token_file, env.oidc.token("intruder")).expect("write token");
    let mut args: Vec<String> = vec![
        "ssh".into(),
        "--server".into(),
        env.ca.url(),
        "--role".into(),
        "deploy".into(),
        "--token-file".into(),
        token_file.display().to_string(),
        "--".into(),
    ];
    args.extend(env.sshd.client_args("deploy"));
    args.push("true".into());
    let out = Command::new(Mayfly::bin())
        .args(&args)
        .output()
        .expect("run mayfly ssh");
    assert_eq!(out.status.code(), Some(3), "a policy refusal exits 3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("403") && err.contains("claims.repository"),
        "{err}"
    );
}

#[test]
fn mayfly_cert_writes_key_and_certificate_that_log_in() {
    let env = setup();
    let out_dir = env.dir.path().join("out");
    let out = Command::new(Mayfly::bin())
        .args([
            "cert",
            "--server",
            &env.ca.url(),
            "--role",
            "deploy",
            "--ttl",
            "2m",
            "--out",
        ])
        .arg(&out_dir)
        .env("MAYFLY_TOKEN", env.oidc.token("deploy-rs"))
        .output()
        .expect("run mayfly cert");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = out_dir.join("id_ed25519-cert.pub");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        cert.display().to_string()
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out_dir.join("id_ed25519"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let login = env
        .sshd
        .ssh("deploy", &out_dir.join("id_ed25519"), &cert, "id -un");
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    assert!(keygen_show(&cert).contains("Valid: from"));
}

#[test]
fn token_whose_claims_do_not_match_gets_403_naming_the_rule() {
    let env = setup();
    let (_, public) = env.new_key();
    let r = env.request(
        Some(&env.oidc.token("intruder")),
        &json!({"role": "deploy", "public_key": public}),
    );
    let v = env.expect_error(&r, 403, "claim_mismatch");
    let msg = v["message"].as_str().expect("message");
    assert!(msg.contains("deploy.toml claims.repository"), "{msg}");
    assert!(msg.contains("evil/api"), "{msg}");
    let r = env.request(
        Some(&env.oidc.token("deploy-rs")),
        &json!({"role": "nope", "public_key": public}),
    );
    env.expect_error(&r, 403, "unknown_role");
    assert_eq!(
        env.ca
            .audit(&["--event", "cert_denied", "--subject", "intruder"])
            .iter()
            .filter(|r| r["mayfly"]["reason_code"] == "claim_mismatch")
            .count(),
        1
    );
}

/// A token's unknown `alg` is quoted back in the 401, cut to a few dozen
/// characters like every other value a caller controls.
#[test]
fn unknown_alg_is_quoted_back_cut_short() {
    let env = setup();
    let (_, public) = env.new_key();
    let body = json!({"role": "deploy", "public_key": public});
    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let alg = "\u{7}".repeat(1000);
    let token = format!(
        "{}.{}.AAAA",
        b64(&json!({"alg": alg, "typ": "JWT"})),
        b64(&env.oidc.valid_claims("deploy-rs"))
    );
    let v = env.expect_error(
        &env.request(Some(&token), &body),
        401,
        "algorithm_not_allowed",
    );
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.len() < 400, "{} bytes: {msg}", msg.len());
    assert!(msg.contains(r"\u{7}"), "{msg}");
}

#[test]
fn bad_tokens_get_401_naming_the_failed_check() {
    let env = setup();
    let (_, public) = env.new_key();
    let body = json!({"role": "deploy", "public_key": public});
    env.expect_error(&env.request(None, &body), 401, "missing_token");
    env.expect_error(&env.request(Some("garbled"), &body), 401, "malformed_token");
    env.expect_error(&env.request(Some("a.b.c"), &body), 401, "malformed_token");

    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = env.oidc.valid_claims("deploy-rs");
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    env.expect_error(
        &env.request(Some(&none), &body),
        401,
        "algorithm_not_allowed",
    );

    // A token from the real provider, but for another audience.
    env.expect_error(
        &env.request(Some(&env.oidc.token("other-aud")), &body),
        401,
        "wrong_audience",
    );

    // Signed by the provider's real key, but expired beyond the leeway.
    let mut expired = env.oidc.valid_claims("deploy-rs");
    expired["exp"] = json!(now() - 120);
    expired["iat"] = json!(now() - 420);
    let v = env.expect_error(
        &env.request(Some(&env.oidc.forge("RS256", expired)), &body),
        401,
        "token_expired",
    );
    assert!(v["message"].as_str().expect("m").contains("expired"));

    let mut future = env.oidc.valid_claims("deploy-rs");
    future["nbf"] = json!(now() + 600);
    env.expect_error(
        &env.request(Some(&env.oidc.forge("RS256", future)), &body),
        401,
        "token_not_yet_valid",
    );

    // Payload changed after signing.
    let good = env.oidc.token("deploy-rs");
    let parts: Vec<&str> = good.split('.').collect();
    let mut evil = env.oidc.valid_claims("intruder");
    evil["repository"] = json!("acme/api");
    let tampered = format!("{}.{}.{}", parts[0], b64(&evil), parts[2]);
    env.expect_error(&env.request(Some(&tampered), &body), 401, "bad_signature");

    let mut other_iss = env.oidc.valid_claims("deploy-rs");
    other_iss["iss"] = json!("https://token.example.com");
    env.expect_error(
        &env.request(Some(&env.oidc.forge("RS256", other_iss)), &body),
        401,
        "unknown_issuer",
    );

    // After all that, a good token still works: the server kept serving.
    let r = env.request(Some(&good), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let denied = env.ca.audit_count("cert_denied");
    assert!(denied >= 9, "denials recorded: {denied}");
}

#[test]
fn a_token_mints_only_once() {
    let env = setup();
    let token = env.oidc.token("deploy-es");
    let (_, public) = env.new_key();
    let body = json!({"role": "deploy", "public_key": public});
    assert_eq!(env.request(Some(&token), &body).status, 200);
    env.expect_error(&env.request(Some(&token), &body), 401, "token_replayed");
    // Also after a restart: the replay cache is restored from the audit log.
    let mut env = env;
    env.ca.restart();
    env.expect_error(&env.request(Some(&token), &body), 401, "token_replayed");
}

#[test]
fn ttl_above_max_is_never_granted() {
    let env = setup();
    let (_, public) = env.new_key();
    let r = env.request(
        Some(&env.oidc.token("deploy-rs")),
        &json!({"role": "deploy", "public_key": public, "ttl_seconds": 3600}),
    );
    let v = env.expect_error(&r, 403, "ttl_exceeds_max");
    assert!(v["message"].as_str().expect("m").contains("600"));
    let (_, _, answer) = env.cert_for(&env.oidc.token("deploy-rs"), json!({"ttl_seconds": 600}));
    assert!(answer["valid_before"].as_u64().expect("vb") <= now() + 600);
    let (_, _, answer) = env.cert_for(&env.oidc.token("deploy-rs"), json!({"ttl_seconds": 60}));
    assert!(answer["valid_before"].as_u64().expect("vb") <= now() + 60);
    let r = env.request(
        Some(&env.oidc.token("deploy-rs")),
        &json!({"role": "deploy", "public_key": public, "principals": ["root"]}),
    );
    env.expect_error(&r, 403, "principal_not_allowed");
}

#[test]
fn bad_input_gets_400_or_413_and_the_server_keeps_serving() {
    let env = setup();
    let tok = || env.oidc.token("deploy-rs");
    let r = env.request(
        Some(&tok()),
        &json!({"role": "deploy", "public_key": "ssh-ed25519 AAAAnotbase64"}),
    );
    env.expect_error(&r, 400, "invalid_public_key");
    let r = env.request(
        Some(&tok()),
        &json!({"role": "deploy", "public_key": "hello"}),
    );
    env.expect_error(&r, 400, "invalid_public_key");
    // A real but weak RSA key.
    let rsa = env.dir.path().join("rsa2048");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
        .arg(&rsa)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let rsa_pub = std::fs::read_to_string(rsa.with_extension("pub")).expect("rsa pub");
    let r = env.request(
        Some(&tok()),
        &json!({"role": "deploy", "public_key": rsa_pub}),
    );
    let v = env.expect_error(&r, 400, "unsupported_key_type");
    assert!(v["message"].as_str().expect("m").contains("3072"));
    // Not JSON, unknown fields, wrong types.
    let r = http::request(
        "POST",
        &format!("{}/v1/certs/user", env.ca.url()),
        &[("Content-Type", "application/json")],
        b"{not json",
    )
    .expect("post");
    env.expect_error(&r, 400, "invalid_json");
    let r = env.request(
        Some(&tok()),
        &json!({"role": "deploy", "public_key": "x", "admin": true}),
    );
    env.expect_error(&r, 400, "invalid_json");
    // Oversized body.
    let big = json!({"role": "deploy", "public_key": "x".repeat(100 * 1024)});
    let r = env.request(Some(&tok()), &big);
    env.expect_error(&r, 413, "body_too_large");

    let (key, cert, _) = env.cert_for(&tok(), json!({}));
    assert!(env.sshd.ssh("deploy", &key, &cert, "true").status.success());
}

#[test]
fn restart_keeps_the_ca_key_and_never_reuses_a_serial() {
    let mut env = setup();
    let user_pub = || {
        http::get(&format!("{}/v1/ca/user.pub", env.ca.url()))
            .expect("get")
            .text()
    };
    let before = user_pub();
    let key_file = std::fs::read(env.ca.data_dir().join("user_ca")).expect("key file");
    let (_, _, a1) = env.cert_for(&env.oidc.token("deploy-rs"), json!({}));
    env.ca.restart();
    let user_pub = || {
        http::get(&format!("{}/v1/ca/user.pub", env.ca.url()))
            .expect("get")
            .text()
    };
    assert_eq!(user_pub(), before);
    assert_eq!(
        std::fs::read(env.ca.data_dir().join("user_ca")).expect("key file"),
        key_file
    );
    let (key, cert, a2) = env.cert_for(&env.oidc.token("deploy-rs"), json!({}));
    assert!(
        a2["serial"].as_u64() > a1["serial"].as_u64(),
        "{a1} then {a2}"
    );
    // The sshd still trusts certs minted after the restart.
    assert!(env.sshd.ssh("deploy", &key, &cert, "true").status.success());
}

#[test]
fn store_failure_gives_503_and_no_certificate() {
    let env = setup();
    let (_, public) = env.new_key();
    let body = json!({"role": "deploy", "public_key": public});
    let issued_before = env.ca.audit_count("cert_issued");
    // The fault: another process holds the SQLite database locked.
    let db = rusqlite::Connection::open(env.ca.data_dir().join("mayfly.db")).expect("open db");
    db.execute_batch("BEGIN EXCLUSIVE")
        .expect("lock the database");
    let r = env.request(Some(&env.oidc.token("deploy-rs")), &body);
    let v = env.expect_error(&r, 503, "store_unavailable");
    assert!(v["message"].as_str().expect("m").contains("no certificate"));
    db.execute_batch("COMMIT").expect("unlock");
    drop(db);
    assert_eq!(
        env.ca.audit_count("cert_issued"),
        issued_before,
        "nothing recorded while locked"
    );
    let r = env.request(Some(&env.oidc.token("deploy-rs")), &body);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn ca_public_key_and_krl_are_served_for_sshd() {
    let env = setup();
    let r = http::get(&format!("{}/v1/ca/user.pub", env.ca.url())).expect("get");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    assert!(r.text().starts_with("ssh-ed25519 "));
    let host = http::get(&format!("{}/v1/ca/host.pub", env.ca.url()))
        .expect("get")
        .text();
    assert_ne!(host, r.text(), "user and host CA keys differ");
    let krl = http::get(&format!("{}/v1/krl", env.ca.url())).expect("get");
    assert_eq!(krl.status, 200);
    let krl_path = env.dir.path().join("krl");
    std::fs::write(&krl_path, &krl.body).expect("write krl");
    let (key, cert, _) = env.cert_for(&env.oidc.token("deploy-rs"), json!({}));
    let _ = key;
    let q = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(&krl_path)
        .arg(&cert)
        .output()
        .expect("ssh-keygen -Q");
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    assert!(String::from_utf8_lossy(&q.stdout).contains("ok"));
    let m = http::get(&format!("{}/metrics", env.ca.url()))
        .expect("metrics")
        .text();
    assert!(
        m.contains("mayfly_certs_issued_total{role=\"deploy\"} 1"),
        "{m}"
    );
}
