//! Remote administration: `mayfly revoke|identity|ca status|audit search|
//! status --server URL` with the operator's own OIDC token, through the
//! admin API, against a real `mayfly serve` and the real OIDC provider. The
//! operator needs no access to the CA's files; the CA records the token's
//! identity as the actor; a bot's token administers nothing.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{json, Value};
use support::{mayfly_command, ClientSpec, Mayfly, Oidc};

const POLICY: &str = r#"
description = "Deploys"
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
        ClientSpec::new("bot", "ES256").claims(json!({"repository": "acme/api"})),
        ClientSpec::new("ops-admin", "RS256").claims(json!({"groups": ["sre"]})),
    ]);
    let extra = format!(
        "{}\n[[admin]]\nissuer = \"ci\"\n[admin.claims]\ngroups = \"sre\"\n",
        oidc.issuer_toml("ci")
    );
    let ca = Mayfly::start(&extra, &[("deploy", POLICY)]);
    Env {
        oidc,
        ca,
        dir: support::temp_dir("remote-admin"),
    }
}

impl Env {
    /// A file holding a fresh token of `who` (operators keep theirs in a file).
    fn token_file(&self, who: &str) -> PathBuf {
        let p = self
            .dir
            .path()
            .join(format!("{who}-{}.tok", support::now()));
        std::fs::write(&p, self.oidc.token(who)).expect("write token");
        p
    }

    /// `mayfly ARGS --server URL --token-file <who's token>`, from a
    /// directory that holds none of the CA's files, as `nobody` would run it.
    fn remote(&self, who: &str, args: &[&str]) -> Output {
        let tok = self.token_file(who);
        mayfly_command()
            .args(args)
            .args(["--server", &self.ca.url(), "--token-file"])
            .arg(&tok)
            .current_dir(self.dir.path())
            .output()
            .expect("run mayfly")
    }

    /// The same command on the CA host (`--config`).
    fn local(&self, args: &[&str]) -> Output {
        mayfly_command()
            .args(args)
            .arg("--config")
            .arg(self.ca.config_path())
            .output()
            .expect("run mayfly")
    }

    /// A certificate for the bot; its serial.
    fn bot_cert(&self) -> Result<u64, Output> {
        // mayfly creates it, 0700.
        let out = self.dir.path().join(format!("out-{}", rand_suffix()));
        let o = mayfly_command()
            .args([
                "cert",
                "--server",
                &self.ca.url(),
                "--role",
                "deploy",
                "--json",
            ])
            .arg("--out")
            .arg(&out)
            .env("MAYFLY_TOKEN", self.oidc.token("bot"))
            .output()
            .expect("mayfly cert");
        if !o.status.success() {
            return Err(o);
        }
        let v: Value = serde_json::from_slice(&o.stdout).expect("cert --json");
        Ok(v["serial"].as_u64().expect("serial"))
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json_of(o: &Output) -> Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

/// Whether `ssh-keygen -Q` finds the certificate with `serial` revoked in
/// the KRL the CA serves now.
fn krl_revokes(env: &Env, serial: u64) -> bool {
    let krl = support::http::get(&format!("{}/v1/krl", env.ca.url())).expect("GET /v1/krl");
    assert_eq!(krl.status, 200);
    let krl_path = env.dir.path().join(format!("krl-{}", rand_suffix()));
    std::fs::write(&krl_path, &krl.body).expect("write krl");
    // A KRL lists serials per CA key; ask about a certificate of that serial
    // by the CA's key, as sshd would: ssh-keygen -Q -l prints the KRL.
    let o = Command::new("ssh-keygen")
        .args(["-Q", "-l", "-f"])
        .arg(&krl_path)
        .output()
        .expect("ssh-keygen -Q -l");
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    listing
        .lines()
        .any(|l| l.trim() == format!("serial: {serial}"))
}

#[test]
fn an_operator_revokes_disables_and_reads_the_ca_remotely_as_their_own_identity() {
    let env = setup();
    let serial = env.bot_cert().expect("bot gets a certificate");
    let s = serial.to_string();

    // Revoke by serial through the admin API.
    let v = json_of(&env.remote(
        "ops-admin",
        &["revoke", "--serial", &s, "--reason", "leaked", "--json"],
    ));
    assert_eq!(v["revoked"][0]["serial"], json!(serial), "{v}");
    assert!(
        krl_revokes(&env, serial),
        "the KRL does not revoke serial {serial}"
    );
    // The audit names the operator's token identity, not an OS user.
    let rec = env.ca.audit(&["--event", "cert_revoked"]);
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert_eq!(rec[0]["mayfly"]["actor"], "admin:ci:ops-admin", "{rec:?}");
    // Again: idempotent, says who revoked it and why.
    let o = env.remote(
        "ops-admin",
        &["revoke", "--serial", &s, "--reason", "again"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("already revoked serial {serial}"))
            && out.contains("admin:ci:ops-admin: leaked"),
        "{}",
        text(&o)
    );
    assert_eq!(env.ca.audit(&["--event", "cert_revoked"]).len(), 1);
    // A serial the CA never issued: not found.
    let o = env.remote(
        "ops-admin",
        &["revoke", "--serial", "987654321", "--reason", "x"],
    );
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));

    // Disable the bot remotely: its next request is refused.
    let v = json_of(&env.remote(
        "ops-admin",
        &[
            "identity",
            "disable",
            "--issuer",
            "ci",
            "--subject",
            "bot",
            "--reason",
            "incident",
            "--json",
        ],
    ));
    assert_eq!(v["changed"], json!(true), "{v}");
    let refused = env
        .bot_cert()
        .expect_err("a disabled bot gets no certificate");
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    let v = json_of(&env.remote("ops-admin", &["identity", "disabled", "--json"]));
    assert_eq!(v[0]["subject"], "bot", "{v}");
    assert_eq!(v[0]["actor"], "admin:ci:ops-admin", "{v}");
    // A typo in the issuer disables nothing and says what exists (exit 1,
    // as on the CA host).
    let o = env.remote(
        "ops-admin",
        &[
            "identity",
            "disable",
            "--issuer",
            "github",
            "--subject",
            "bot",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let local = env.local(&[
        "identity",
        "disable",
        "--issuer",
        "github",
        "--subject",
        "bot",
    ]);
    assert_eq!(local.status.code(), Some(1), "{}", text(&local));
    assert_eq!(env.ca.audit(&["--event", "disabled"]).len(), 1);
    assert!(text(&o).contains("its issuers: ci"), "{}", text(&o));
    // Enable again: the bot is back.
    json_of(&env.remote(
        "ops-admin",
        &[
            "identity",
            "enable",
            "--issuer",
            "ci",
            "--subject",
            "bot",
            "--json",
        ],
    ));
    env.bot_cert()
        .expect("an enabled bot gets a certificate again");

    // Reads: the same answers as on the CA host.
    let remote = json_of(&env.remote("ops-admin", &["identity", "list", "--json"]));
    let local = json_of(&env.local(&["identity", "list", "--json"]));
    let subjects = |v: &Value| -> Vec<String> {
        v["identities"]
            .as_array()
            .expect("identities")
            .iter()
            .map(|i| i["subject"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(subjects(&remote), subjects(&local));
    assert!(subjects(&remote).contains(&"bot".to_string()), "{remote}");

    let remote = json_of(&env.remote("ops-admin", &["ca", "status", "--json"]));
    let local = json_of(&env.local(&["ca", "status", "--json"]));
    let fps = |v: &Value| -> Vec<(String, String, String)> {
        v.as_array()
            .expect("keys")
            .iter()
            .map(|k| {
                (
                    k["ca"].as_str().unwrap_or("").into(),
                    k["slot"].as_str().unwrap_or("").into(),
                    k["fingerprint"].as_str().unwrap_or("").into(),
                )
            })
            .collect()
    };
    assert_eq!(fps(&remote), fps(&local));
    assert_eq!(fps(&remote).len(), 2, "{remote}");

    // Audit search: the same records, in the same export form.
    let search = ["audit", "search", "--serial", &s, "--json"];
    let remote = env.remote("ops-admin", &search);
    let local = env.local(&search);
    assert!(remote.status.success(), "{}", text(&remote));
    assert_eq!(
        String::from_utf8_lossy(&remote.stdout),
        String::from_utf8_lossy(&local.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&remote.stdout).lines().count(), 2);
    // The table, as on the CA host.
    let table = [
        "audit",
        "search",
        "--subject",
        "bot",
        "--event",
        "cert_issued",
    ];
    let remote = env.remote("ops-admin", &table);
    assert!(remote.status.success(), "{}", text(&remote));
    assert_eq!(
        String::from_utf8_lossy(&remote.stdout),
        String::from_utf8_lossy(&env.local(&table).stdout)
    );
    // Nothing found: exit 7, as on the CA host.
    let o = env.remote("ops-admin", &["audit", "search", "--subject", "nobody"]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    // An event name that does not exist is a usage error before any call.
    let o = env.remote("ops-admin", &["audit", "search", "--event", "cert_issue"]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));

    // Replicas: this one, live.
    let v = json_of(&env.remote("ops-admin", &["status", "--json"]));
    assert_eq!(v["status"], "ok", "{v}");
}

#[test]
fn a_bot_token_or_no_token_administers_nothing_remotely() {
    let env = setup();
    let serial = env.bot_cert().expect("bot gets a certificate");
    let s = serial.to_string();

    // The bot's own token is not an admin token: refused (3), audited,
    // nothing revoked.
    let o = env.remote("bot", &["revoke", "--serial", &s, "--reason", "mine"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("not_admin"), "{}", text(&o));
    assert!(!krl_revokes(&env, serial));
    for args in [
        &["identity", "disable", "--issuer", "ci", "--subject", "bot"][..],
        &["identity", "list"][..],
        &["ca", "status"][..],
        &["audit", "search", "--subject", "bot"][..],
        &["status"][..],
    ] {
        let o = env.remote("bot", args);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", text(&o));
    }
    assert_eq!(env.ca.audit_count("admin_denied"), 6);
    assert!(env.ca.audit(&["--event", "disabled"]).is_empty());
    env.bot_cert().expect("the bot is not disabled");

    // No token at all: a token problem (4) before anything is sent.
    let o = mayfly_command()
        .args(["revoke", "--serial", &s, "--server", &env.ca.url()])
        .current_dir(env.dir.path())
        .output()
        .expect("run mayfly");
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    // A forged token (signed by a key the issuer never published): 4.
    let forged = env.dir.path().join("forged.tok");
    std::fs::write(
        &forged,
        env.oidc
            .forge("RS256", json!({"sub": "ops-admin", "groups": ["sre"]})),
    )
    .expect("write");
    let o = mayfly_command()
        .args([
            "revoke",
            "--serial",
            &s,
            "--server",
            &env.ca.url(),
            "--token-file",
        ])
        .arg(&forged)
        .output()
        .expect("run mayfly");
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(!krl_revokes(&env, serial));

    // Usage: one of --config and --server; remote options need --server.
    let cfg = env.ca.config_path().to_str().expect("utf8").to_string();
    for args in [
        vec![
            "revoke",
            "--serial",
            &s,
            "--config",
            &cfg,
            "--server",
            "http://127.0.0.1:1",
        ],
        vec!["revoke", "--serial", &s],
        vec![
            "revoke",
            "--serial",
            &s,
            "--config",
            &cfg,
            "--token-file",
            "/dev/null",
        ],
        vec![
            "hosts",
            "--server",
            "http://127.0.0.1:1",
            "--expect",
            "/dev/null",
        ],
        vec![
            "ca",
            "status",
            "--server",
            "http://127.0.0.1:1",
            "--client-cert",
            "/dev/null",
        ],
    ] {
        let o = support::mayfly(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
    }
    // Plain http to a non-loopback CA would send the token in clear.
    let tok = env.token_file("ops-admin");
    let o = support::mayfly(&[
        "ca",
        "status",
        "--server",
        "http://ca.example.com:8400",
        "--token-file",
        tok.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("in clear"), "{}", text(&o));
    // The CA is down: unavailable (5).
    let port = support::free_port();
    let o = support::mayfly(&[
        "ca",
        "status",
        "--server",
        &format!("http://127.0.0.1:{port}"),
        "--token-file",
        tok.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
}
