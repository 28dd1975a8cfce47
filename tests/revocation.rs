//! Revocation, deactivation and host trust with real programs: a real OIDC
//! provider, `mayfly serve`, `mayfly revoke` / `identity` / `host sync` /
//! `host cert` / `known-hosts` as an operator and a host would run them,
//! and a real sshd enforcing the KRL through `RevokedKeys`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use support::{http, keygen_ed25519, mayfly, ok, ClientSpec, Mayfly, Oidc, Sshd};

const DEPLOY_POLICY: &str = r#"
description = "Deploy acme services from CI"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
[claims]
repository = "acme/*"
"#;

const NODES_POLICY: &str = r#"
description = "Cluster nodes get host certificates for their own name"
owner = "infra@example.com"
issuer = "ci"
cert_type = "host"
hostnames = ["{node}.test.example"]
max_ttl = "7d"
default_ttl = "1d"
[claims]
node = "node*"
"#;

struct Env {
    oidc: Oidc,
    ca: Mayfly,
    dir: tempfile::TempDir,
}

fn setup() -> Env {
    let repo = json!({"repository": "acme/api"});
    let oidc = Oidc::start(&[
        ClientSpec::new("deploy-rs", "RS256").claims(repo.clone()),
        ClientSpec::new("deploy-es", "ES256").claims(repo.clone()),
        ClientSpec::new("ops-admin", "RS256").claims(json!({"groups": ["sre"]})),
        ClientSpec::new("node1", "EdDSA").claims(json!({"node": "node1"})),
        // A GitHub-style subject, full of characters key ids do not keep.
        ClientSpec::new("gh-job", "ES256")
            .claims(json!({"repository": "acme/api", "sub": "repo:acme/api:ref:refs/heads/main"})),
    ]);
    let extra = format!(
        "{}\n[[admin]]\nissuer = \"ci\"\n[admin.claims]\ngroups = \"sre\"\n",
        oidc.issuer_toml("ci")
    );
    let ca = Mayfly::start(
        &extra,
        &[("deploy", DEPLOY_POLICY), ("nodes", NODES_POLICY)],
    );
    Env {
        oidc,
        ca,
        dir: support::temp_dir("revocation"),
    }
}

impl Env {
    fn sync_dir(&self) -> PathBuf {
        self.dir.path().join("etc-ssh-mayfly")
    }

    fn host_sync(&self) {
        std::fs::create_dir_all(self.sync_dir()).expect("mkdir");
        ok(mayfly(&[
            "host",
            "sync",
            "--server",
            &self.ca.url(),
            "--dir",
            self.sync_dir().to_str().expect("utf8"),
        ]));
    }

    fn cli(&self, args: &[&str]) -> String {
        let mut all: Vec<&str> = args.to_vec();
        let cfg = self.ca.config_path().to_str().expect("utf8").to_string();
        all.extend(["--config", &cfg]);
        ok(mayfly(&all))
    }

    fn request(&self, path: &str, token: &str, body: Value) -> http::Response {
        let auth = format!("Bearer {token}");
        http::post_json(
            &format!("{}{path}", self.ca.url()),
            &[("Authorization", auth.as_str())],
            &body,
        )
        .expect("POST")
    }

    /// A fresh user cert for `client`, written next to a fresh key.
    fn user_cert(&self, client: &str) -> (PathBuf, PathBuf, Value) {
        let (key, public) = keygen_ed25519(self.dir.path());
        let r = self.request(
            "/v1/certs/user",
            &self.oidc.token(client),
            json!({"role": "deploy", "public_key": public}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let cert = PathBuf::from(format!("{}-cert.pub", key.display()));
        std::fs::write(
            &cert,
            format!("{}\n", v["certificate"].as_str().expect("cert")),
        )
        .expect("write");
        (key, cert, v)
    }
}

fn logs_in(sshd: &Sshd, key: &Path, cert: &Path) -> bool {
    sshd.ssh("deploy", key, cert, "true").status.success()
}

#[test]
fn revoked_certificates_are_refused_by_sshd_after_host_sync() {
    let env = setup();
    env.host_sync();
    let ca_pub =
        std::fs::read_to_string(env.sync_dir().join("user_ca.pub")).expect("synced CA keys");
    assert_eq!(
        ca_pub,
        http::get(&format!("{}/v1/ca/user.pub", env.ca.url()))
            .expect("get")
            .text()
    );
    let sshd = Sshd::start_with_revoked_keys(&ca_pub, &env.sync_dir().join("revoked.krl"));

    // By serial.
    let (k1, c1, a1) = env.user_cert("deploy-rs");
    assert!(logs_in(&sshd, &k1, &c1));
    let serial = a1["serial"].as_u64().expect("serial").to_string();
    let out = env.cli(&[
        "revoke",
        "--serial",
        &serial,
        "--reason",
        "key leaked in CI log",
    ]);
    assert!(out.contains(&serial), "{out}");
    env.host_sync();
    assert!(!logs_in(&sshd, &k1, &c1), "revoked serial still logs in");
    assert!(sshd.log().contains("revoked"), "{}", sshd.log());
    let (k2, c2, a2) = env.user_cert("deploy-rs");
    assert!(logs_in(&sshd, &k2, &c2), "a new cert must still work");

    // By key id, the string sshd logs.
    let key_id = a2["key_id"].as_str().expect("key id");
    env.cli(&["revoke", "--key-id", key_id]);
    env.host_sync();
    assert!(!logs_in(&sshd, &k2, &c2), "revoked key id still logs in");
    let krl = env.sync_dir().join("revoked.krl");
    let q = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(&krl)
        .arg(&c1)
        .arg(&c2)
        .output()
        .expect("ssh-keygen -Q");
    let q = String::from_utf8_lossy(&q.stdout);
    assert_eq!(q.matches("REVOKED").count(), 2, "{q}");

    // By identity: every live cert of deploy-rs, none of deploy-es.
    let (k3, c3, _) = env.user_cert("deploy-rs");
    let (k4, c4, _) = env.user_cert("deploy-rs");
    let (k5, c5, _) = env.user_cert("deploy-es");
    let out = env.cli(&[
        "revoke",
        "--issuer",
        "ci",
        "--subject",
        "deploy-rs",
        "--reason",
        "rotated",
    ]);
    assert_eq!(out.lines().count(), 2, "two live certs of deploy-rs: {out}");
    env.host_sync();
    assert!(!logs_in(&sshd, &k3, &c3));
    assert!(!logs_in(&sshd, &k4, &c4));
    assert!(logs_in(&sshd, &k5, &c5), "another identity is untouched");

    // A serial the CA never issued is "not found" (exit 7).
    let out = mayfly(&[
        "revoke",
        "--serial",
        "12345",
        "--config",
        env.ca.config_path().to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no certificate matches serial 12345"));

    // Every revocation is in the audit log with its actor.
    let by_cli = env
        .ca
        .audit(&["--event", "cert_revoked"])
        .iter()
        .filter(|r| {
            r["mayfly"]["actor"]
                .as_str()
                .is_some_and(|a| a.starts_with("cli:"))
        })
        .count();
    assert_eq!(by_cli, 4);
}

#[test]
fn disabled_identity_gets_403_and_loses_its_live_certs() {
    let env = setup();
    env.host_sync();
    let ca_pub = std::fs::read_to_string(env.sync_dir().join("user_ca.pub")).expect("ca");
    let sshd = Sshd::start_with_revoked_keys(&ca_pub, &env.sync_dir().join("revoked.krl"));
    let (k, c, _) = env.user_cert("deploy-es");
    let out = env.cli(&[
        "identity",
        "disable",
        "--issuer",
        "ci",
        "--subject",
        "deploy-es",
        "--reason",
        "job retired",
    ]);
    assert!(
        out.contains("disabled") && out.contains("revoked serial"),
        "{out}"
    );
    let (_, public) = keygen_ed25519(env.dir.path());
    let r = env.request(
        "/v1/certs/user",
        &env.oidc.token("deploy-es"),
        json!({"role": "deploy", "public_key": public}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "disabled");
    assert!(r.json()["message"]
        .as_str()
        .expect("m")
        .contains("ci/deploy-es is disabled"));
    env.host_sync();
    assert!(
        !logs_in(&sshd, &k, &c),
        "live cert of a disabled identity must be revoked"
    );
    let list = env.cli(&["identity", "disabled"]);
    assert!(
        list.contains("deploy-es") && list.contains("job retired"),
        "{list}"
    );
    let inventory = env.cli(&["identity", "list"]);
    let line = inventory
        .lines()
        .find(|l| l.contains("deploy-es"))
        .unwrap_or_else(|| panic!("{inventory}"));
    assert!(line.starts_with("disabled"), "{inventory}");
    // Other identities are unaffected; enabling restores issuance only.
    let (k2, c2, _) = env.user_cert("deploy-rs");
    assert!(logs_in(&sshd, &k2, &c2));
    env.cli(&[
        "identity",
        "enable",
        "--issuer",
        "ci",
        "--subject",
        "deploy-es",
    ]);
    let (k3, c3, _) = env.user_cert("deploy-es");
    assert!(logs_in(&sshd, &k3, &c3));
    assert!(!logs_in(&sshd, &k, &c), "enable does not un-revoke");
    // A whole role.
    env.cli(&[
        "identity", "disable", "--role", "deploy", "--reason", "freeze",
    ]);
    let (_, public) = keygen_ed25519(env.dir.path());
    let r = env.request(
        "/v1/certs/user",
        &env.oidc.token("deploy-rs"),
        json!({"role": "deploy", "public_key": public}),
    );
    assert_eq!(r.json()["error"], "disabled", "{}", r.text());
    assert!(r.json()["message"]
        .as_str()
        .expect("m")
        .contains("role \"deploy\" is disabled"));
}

#[test]
fn admin_api_revokes_with_an_admin_token_only_and_the_krl_has_validators() {
    let env = setup();
    let krl_url = format!("{}/v1/krl", env.ca.url());
    let first = http::get(&krl_url).expect("krl");
    let etag = first.header("etag").expect("etag").to_string();
    assert!(first.header("last-modified").is_some());
    let again =
        http::request("GET", &krl_url, &[("If-None-Match", etag.as_str())], b"").expect("krl");
    assert_eq!(again.status, 304);

    let (_, _, a) = env.user_cert("deploy-rs");
    let serial = a["serial"].as_u64().expect("serial");
    let r = env.request(
        "/v1/admin/revoke",
        &env.oidc.token("deploy-es"),
        json!({"serial": serial, "reason": "x"}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "not_admin");
    let admin = env.oidc.token("ops-admin");
    let r = env.request(
        "/v1/admin/revoke",
        &admin,
        json!({"serial": serial, "reason": "incident 42"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["revoked"][0]["serial"], json!(serial));

    let after =
        http::request("GET", &krl_url, &[("If-None-Match", etag.as_str())], b"").expect("krl");
    assert_eq!(after.status, 200, "a new revocation changes the ETag");
    let v1: u64 = first
        .header("x-krl-version")
        .expect("v")
        .parse()
        .expect("n");
    let v2: u64 = after
        .header("x-krl-version")
        .expect("v")
        .parse()
        .expect("n");
    assert!(v2 > v1);
    // The admin token may be used again (admin calls are not single-use).
    let r = env.request(
        "/v1/admin/disable",
        &admin,
        json!({"role": "deploy", "reason": "freeze"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let actors = env
        .ca
        .audit(&[])
        .iter()
        .filter(|r| r["mayfly"]["actor"] == "admin:ci:ops-admin")
        .count();
    assert!(
        actors >= 2,
        "admin actions audited with the admin's identity"
    );
    assert_eq!(env.ca.audit_count("admin_denied"), 1);
}

#[test]
fn bot_verifies_a_mayfly_host_certificate_with_only_the_cert_authority_line() {
    let env = setup();
    env.host_sync();
    let ca_pub = std::fs::read_to_string(env.sync_dir().join("user_ca.pub")).expect("ca");
    let token_file = env.dir.path().join("node-token");
    std::fs::write(&token_file, env.oidc.token("node1")).expect("token");
    let server = env.ca.url();
    let make_cert = |host_pub: &Path| -> PathBuf {
        let out = ok(mayfly(&[
            "host",
            "cert",
            "--server",
            &server,
            "--role",
            "nodes",
            "--key",
            host_pub.to_str().expect("utf8"),
            "--token-file",
            token_file.to_str().expect("utf8"),
        ]));
        PathBuf::from(out.trim())
    };
    let sshd = Sshd::start_with_host_cert(&ca_pub, &env.sync_dir().join("revoked.krl"), &make_cert);
    let host_cert = sshd.dir().join("ssh_host_ed25519_key-cert.pub");
    let shown = ok(Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&host_cert)
        .output()
        .expect("ssh-keygen"));
    assert!(
        shown.contains("host certificate") && shown.contains("node1.test.example"),
        "{shown}"
    );

    let known_hosts = env.dir.path().join("known_hosts");
    let kh = ok(mayfly(&[
        "known-hosts",
        "--server",
        &server,
        "--domain",
        "*.test.example",
    ]));
    assert!(
        kh.starts_with("@cert-authority *.test.example ssh-ed25519 "),
        "{kh}"
    );
    std::fs::write(&known_hosts, &kh).expect("write known_hosts");

    let (key, cert, _) = env.user_cert("deploy-rs");
    let connect = |alias: &str| {
        let mut args: Vec<String> = vec![
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", known_hosts.display()),
            "-o".into(),
            format!("HostKeyAlias={alias}"),
            "-i".into(),
            key.display().to_string(),
            "-o".into(),
            format!("CertificateFile={}", cert.display()),
        ];
        args.extend(sshd.client_args("deploy"));
        args.push("id -un".into());
        Command::new("ssh")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("ssh")
    };
    let good = connect("node1.test.example");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&good.stdout).trim(), "deploy");
    let wrong = connect("node2.test.example");
    assert_eq!(
        wrong.status.code(),
        Some(255),
        "a host cert for another name must be refused"
    );

    // The node cannot get a certificate for another node's name.
    let r = env.request(
        "/v1/certs/host",
        &env.oidc.token("node1"),
        json!({"role": "nodes", "public_key": std::fs::read_to_string(sshd.dir().join("ssh_host_ed25519_key.pub")).expect("pub"), "hostnames": ["node2.test.example"]}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "principal_not_allowed");
    // And a bot cannot use a host role for a user certificate, or the reverse.
    let (_, public) = keygen_ed25519(env.dir.path());
    let r = env.request(
        "/v1/certs/user",
        &env.oidc.token("node1"),
        json!({"role": "nodes", "public_key": public}),
    );
    assert_eq!(r.json()["error"], "wrong_cert_type", "{}", r.text());
}

#[test]
fn key_ids_write_the_subject_cleaned_and_ids_that_cannot_exist_are_named() {
    let env = setup();
    let (_, _, v) = env.user_cert("gh-job");
    let serial = v["serial"].as_u64().expect("serial");
    // What mayfly really writes (and sshd logs): ':' in the subject became '_'.
    let real = format!("mayfly:deploy:ci:repo_acme/api_ref_refs/heads/main:{serial}");
    assert_eq!(v["key_id"], real.as_str());
    let cfg = env.ca.config_path().to_str().expect("utf8").to_string();
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).to_string();

    // The subject as the token spells it cannot be in a key id: both
    // commands say so and name the key id to use instead.
    let wrong = format!("mayfly:deploy:ci:repo:acme/api:ref:refs/heads/main:{serial}");
    let hint = format!(
        "warning: key id {wrong:?} cannot exist: mayfly writes every character of a subject \
         other than A-Z a-z 0-9 . _ - / @ = + (including ':') as '_' and keeps at most 128; \
         did you mean {real:?}?\n"
    );
    // Exit 7: not found.
    let out = mayfly(&["audit", "search", "--config", &cfg, "--key-id", &wrong]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(stderr(&out), format!("{hint}no matching audit records\n"));
    let out = mayfly(&["revoke", "--config", &cfg, "--key-id", &wrong]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "{hint}mayfly: no certificate matches key id {wrong:?}: the audit log has no \
             record of it; check the key id (as sshd logs it)\n"
        )
    );

    // The real key id: no warning, and it finds and revokes the certificate.
    let out = mayfly(&["audit", "search", "--config", &cfg, "--key-id", &real]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&real),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = mayfly(&["revoke", "--config", &cfg, "--key-id", &real]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("revoked serial {serial} key_id {real} ")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn revoking_twice_succeeds_and_says_when_and_by_whom_and_unknown_serials_are_not_found() {
    let env = setup();
    let (_, _, v) = env.user_cert("gh-job");
    let serial = v["serial"].as_u64().expect("serial").to_string();
    let key_id = v["key_id"].as_str().expect("key id").to_string();
    let cfg = env.ca.config_path().to_str().expect("utf8").to_string();
    let text = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    let first = mayfly(&[
        "revoke", "--config", &cfg, "--serial", &serial, "--reason", "leaked",
    ]);
    assert!(first.status.success(), "{}", text(&first));
    let krl_url = format!("{}/v1/krl", env.ca.url());
    let krl = || http::get(&krl_url).expect("krl").body;
    let krl_after_first = krl();

    // Again, by serial and by key id: success, nothing new in the KRL, and
    // the line says it was revoked before, when, by whom and why.
    for args in [["--serial", serial.as_str()], ["--key-id", key_id.as_str()]] {
        let again = mayfly(&["revoke", "--config", &cfg, args[0], args[1]]);
        assert_eq!(again.status.code(), Some(0), "{}", text(&again));
        let out = String::from_utf8_lossy(&again.stdout).to_string();
        assert!(
            out.starts_with(&format!(
                "already revoked serial {serial} key_id {key_id} (at 20"
            )),
            "{out}"
        );
        assert!(
            out.contains(" by cli:") && out.ends_with(": leaked)\n"),
            "{out}"
        );
        assert!(
            String::from_utf8_lossy(&again.stderr).starts_with("0 certificate(s) revoked"),
            "{}",
            text(&again)
        );
    }
    assert_eq!(
        krl(),
        krl_after_first,
        "a second revocation changed the KRL"
    );
    // Only one revocation record.
    assert_eq!(env.ca.audit_count("cert_revoked"), 1);

    // --json: the same facts for scripts.
    let json = mayfly(&["revoke", "--config", &cfg, "--serial", &serial, "--json"]);
    assert!(json.status.success(), "{}", text(&json));
    let j: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
    assert_eq!(j["revoked"], serde_json::json!([]));
    assert_eq!(j["already_revoked"][0]["serial"].to_string(), serial);
    assert_eq!(j["already_revoked"][0]["reason"], "leaked");

    // A serial the CA never issued is "not found" (exit 7), not "done".
    let unknown = mayfly(&["revoke", "--config", &cfg, "--serial", "987654321"]);
    assert_eq!(unknown.status.code(), Some(7), "{}", text(&unknown));
    assert!(
        text(&unknown)
            .contains("no certificate matches serial 987654321: the audit log has no record of it"),
        "{}",
        text(&unknown)
    );
    // No target at all is a usage error (exit 2).
    let none = mayfly(&["revoke", "--config", &cfg]);
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));
}
