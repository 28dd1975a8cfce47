//! The CLI as scripts see it: one exit code per kind of failure, the same
//! for every command; `--json` facts; files written only where they are
//! safe. Against a real `mayfly serve` and the real OIDC provider.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use support::{ClientSpec, Mayfly, Oidc};

const POLICY: &str = r#"
description = "Deploys"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
identity_rate_limit = "2/m"
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
        ClientSpec::new("limited", "ES256").claims(json!({"repository": "acme/db"})),
        ClientSpec::new("stranger", "ES256").claims(json!({"repository": "evil/x"})),
    ]);
    let ca = Mayfly::start(&oidc.issuer_toml("ci"), &[("deploy", POLICY)]);
    Env {
        oidc,
        ca,
        dir: support::temp_dir("cli-contract"),
    }
}

impl Env {
    /// `mayfly cert` for `who`, stdin closed (as in CI), in `cwd`.
    fn cert(&self, who: &str, extra: &[&str], cwd: &Path) -> Output {
        Command::new(Mayfly::bin())
            .args(["cert", "--server", &self.ca.url(), "--role", "deploy"])
            .args(extra)
            .env("MAYFLY_TOKEN", self.oidc.token(who))
            .current_dir(cwd)
            .stdin(Stdio::null())
            .output()
            .expect("run mayfly cert")
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn private_dir(parent: &Path, name: &str) -> std::path::PathBuf {
    let d = parent.join(name);
    std::fs::create_dir(&d).expect("mkdir");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    d
}

#[test]
fn each_kind_of_failure_has_its_own_exit_code() {
    let env = setup();
    let out = private_dir(env.dir.path(), "out");
    let out_arg = out.to_str().expect("utf8");

    // 3: refused by policy.
    let o = env.cert("stranger", &["--out", out_arg], env.dir.path());
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("403"), "{}", text(&o));

    // 4: the CA rejects the token.
    let o = Command::new(Mayfly::bin())
        .args([
            "cert",
            "--server",
            &env.ca.url(),
            "--role",
            "deploy",
            "--out",
            out_arg,
        ])
        .env("MAYFLY_TOKEN", "not.a.token")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    // 4: no token to be had at all.
    let o = Command::new(Mayfly::bin())
        .args([
            "cert",
            "--server",
            &env.ca.url(),
            "--role",
            "deploy",
            "--out",
            out_arg,
        ])
        .args(["--token-file", "/nonexistent/token"])
        .env_remove("MAYFLY_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));

    // 5: nothing listens where the CA should be.
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    let o = Command::new(Mayfly::bin())
        .args([
            "cert", "--server", &closed, "--role", "deploy", "--out", out_arg,
        ])
        .env("MAYFLY_TOKEN", env.oidc.token("bot"))
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));

    // 6: rate limited (two a minute for one identity).
    for _ in 0..2 {
        let o = env.cert("limited", &["--out", out_arg], env.dir.path());
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let o = env.cert("limited", &["--out", out_arg], env.dir.path());
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("429"), "{}", text(&o));

    // 7: not found (a serial this CA never issued).
    let cfg = env.ca.config_path().to_str().expect("utf8").to_string();
    let o = support::mayfly(&["revoke", "--config", &cfg, "--serial", "424242"]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));

    // 2: usage, from clap and from mayfly's own argument checks.
    let o = support::mayfly(&["revoke", "--config", &cfg, "--serial", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = support::mayfly(&["revoke", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // 1: anything else, e.g. a config that is not there.
    let o = support::mayfly(&["revoke", "--config", "/nonexistent.toml", "--serial", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn cert_writes_only_into_a_private_directory_and_prints_json_facts() {
    let env = setup();
    let base = env.dir.path();

    // No --out and nobody at a terminal: a usage error naming the fix, and
    // no key in the current directory; the token is not spent either.
    let cwd = private_dir(base, "cwd");
    let o = env.cert("bot", &[], &cwd);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("give --out DIR"), "{}", text(&o));
    assert_eq!(std::fs::read_dir(&cwd).expect("ls").count(), 0);

    // A directory other users can list is refused before a certificate is
    // issued.
    let open = base.join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let before = env.ca.audit_count("cert_issued");
    let o = env.cert("bot", &["--out", open.to_str().expect("utf8")], base);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("is open to other users (mode 0755)"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read_dir(&open).expect("ls").count(), 0);
    assert_eq!(
        env.ca.audit_count("cert_issued"),
        before,
        "a certificate was issued anyway"
    );

    // A missing directory is created 0700; --json gives the facts and paths.
    let fresh = base.join("new/deeper");
    let o = env.cert(
        "bot",
        &["--out", fresh.to_str().expect("utf8"), "--json"],
        base,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let mode = std::fs::metadata(&fresh).expect("dir").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let facts: Value = serde_json::from_slice(&o.stdout).expect("one JSON object on stdout");
    assert!(facts["serial"].as_u64().is_some(), "{facts}");
    assert_eq!(facts["principals"], json!(["deploy"]));
    assert!(facts["key_id"]
        .as_str()
        .expect("key id")
        .starts_with("mayfly:deploy:ci:"));
    for (field, name) in [
        ("private_key", "id_ed25519"),
        ("public_key", "id_ed25519.pub"),
        ("certificate", "id_ed25519-cert.pub"),
    ] {
        let p = facts[field].as_str().expect("path");
        assert_eq!(Path::new(p), fresh.join(name));
        assert!(Path::new(p).exists(), "{p}");
    }
    // RFC 3339, as every time mayfly prints.
    let vb = facts["valid_before"].as_str().expect("valid_before");
    assert!(
        vb.starts_with("20") && vb.contains('T') && vb.ends_with('Z'),
        "{vb}"
    );
    // The certificate in the file is the one the facts describe.
    let shown = Command::new("ssh-keygen")
        .args(["-L", "-f"])
        .arg(fresh.join("id_ed25519-cert.pub"))
        .output()
        .expect("ssh-keygen");
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains(&format!("Serial: {}", facts["serial"])),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );
}

#[test]
fn out_takes_a_bare_file_name() {
    let env = setup();
    let cwd = private_dir(env.dir.path(), "reports");
    let o = Command::new(Mayfly::bin())
        .args(["report", "compliance", "--config"])
        .arg(env.ca.config_path())
        .args(["--out", "evidence.md"])
        .current_dir(&cwd)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let written = std::fs::read_to_string(cwd.join("evidence.md")).expect("report written");
    assert!(written.contains('#'), "{written}");
}

#[test]
fn policy_check_prints_the_digest_the_server_reports_and_points_at_an_unknown_issuer() {
    let env = setup();
    let dir = env.ca.policy_dir();
    let o = support::mayfly(&["policy", "check", dir.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let digest = stdout
        .lines()
        .find_map(|l| l.strip_prefix("digest "))
        .unwrap_or_else(|| panic!("no digest line in {stdout}"));
    let metrics = support::http::get(&format!("{}/metrics", env.ca.url()))
        .expect("metrics")
        .text();
    assert!(
        metrics.contains(&format!("mayfly_policy_info{{digest=\"{digest}\"}} 1")),
        "policy check says {digest}, the server:\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("mayfly_policy_info"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Against a config without the role's issuer: the error points at the
    // `issuer` line of the role file and the count follows.
    let cfg = env.dir.path().join("other.toml");
    std::fs::write(&cfg, "[[issuer]]\nname = \"gitlab\"\nurl = \"https://gitlab.example.com\"\naudience = \"mayfly\"\n")
        .expect("config");
    let o = support::mayfly(&[
        "policy",
        "check",
        dir.to_str().expect("utf8"),
        "--config",
        cfg.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let line = POLICY
        .lines()
        .position(|l| l.starts_with("issuer ="))
        .expect("issuer line")
        + 1;
    assert!(
        err.contains(&format!(
            "deploy.toml:{line}: issuer \"ci\" is not an [[issuer]] of the config"
        )),
        "{err}"
    );
    assert!(err.contains("1 error(s) in "), "{err}");
}

#[test]
fn terse_error_detail_hides_what_the_policy_allows_but_the_audit_keeps_it() {
    let oidc =
        Oidc::start(
            &[ClientSpec::new("stranger", "ES256").claims(json!({"repository": "evil/x"}))],
        );
    let full = Mayfly::start(&oidc.issuer_toml("ci"), &[("deploy", POLICY)]);
    let terse = Mayfly::start(
        &format!("error_detail = \"terse\"\n{}", oidc.issuer_toml("ci")),
        &[("deploy", POLICY)],
    );
    let dir = support::temp_dir("terse");
    let (_, public) = support::keygen_ed25519(dir.path());
    let ask = |ca: &Mayfly, body: Value| {
        let auth = format!("Bearer {}", oidc.token("stranger"));
        support::http::post_json(
            &format!("{}/v1/certs/user", ca.url()),
            &[("Authorization", auth.as_str())],
            &body,
        )
        .expect("POST")
    };
    let body = json!({"role": "deploy", "public_key": public});
    let f = ask(&full, body.clone());
    assert_eq!(f.status, 403);
    assert!(
        f.json()["message"].as_str().expect("m").contains("acme/*"),
        "{}",
        f.text()
    );

    let t = ask(&terse, body);
    assert_eq!(t.status, 403, "{}", t.text());
    assert_eq!(t.json()["error"], "claim_mismatch");
    let m = t.json()["message"].as_str().expect("m").to_string();
    assert!(!m.contains("acme") && !m.contains("repository"), "{m}");
    assert!(m.contains("request_id"), "{m}");
    let rid = t.json()["request_id"].as_str().expect("rid").to_string();
    // The operator still finds the whole reason under that request id.
    let denied = terse.audit(&["--event", "cert_denied"]);
    let rec = denied
        .iter()
        .find(|r| r["mayfly"]["request_id"] == rid.as_str())
        .unwrap_or_else(|| panic!("no audit record for {rid}: {denied:?}"));
    assert!(
        rec["event"]["reason"]
            .as_str()
            .expect("reason")
            .contains("acme/*"),
        "{rec}"
    );

    // Errors that are not policy refusals keep their message.
    let r = support::http::post_json(
        &format!("{}/v1/certs/user", terse.url()),
        &[("Authorization", "Bearer not.a.token")],
        &json!({"role": "deploy", "public_key": "x"}),
    )
    .expect("POST");
    assert_eq!(r.status, 401);
    assert!(
        !r.json()["message"]
            .as_str()
            .expect("m")
            .contains("refused ("),
        "{}",
        r.text()
    );

    // A typo in the knob is refused at start with the accepted values.
    let bad = Mayfly::try_start(
        &format!("error_detail = \"short\"\n{}", oidc.issuer_toml("ci")),
        &[("deploy", POLICY)],
    );
    let err = bad.err().expect("error_detail = \"short\" must not start");
    assert!(
        err.contains("error_detail = \"short\"") && err.contains("\"terse\""),
        "{err}"
    );
}

const PROD_POLICY: &str = r#"
description = "Production deploys need a human"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
max_active_certs = 1
[claims]
repository = "acme/*"
[approval]
required = 1
issuer = "ci"
approvers = ["groups:sre"]
expires = "15m"
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

/// `policy explain` and `policy test` give the answer the server gives:
/// pending for approval roles, host roles evaluated as host requests, the
/// limits that apply, and (with --config) the CA's deactivations.
#[test]
fn policy_explain_and_test_tell_what_the_server_answers() {
    let oidc = Oidc::start(&[
        ClientSpec::new("bot", "ES256").claims(json!({"repository": "acme/api"})),
        ClientSpec::new("node1", "ES256").claims(json!({"node": "node1"})),
    ]);
    let ca = Mayfly::start(
        &oidc.issuer_toml("ci"),
        &[
            ("deploy", POLICY),
            ("prod", PROD_POLICY),
            ("nodes", NODES_POLICY),
        ],
    );
    let dir = support::temp_dir("explain-truth");
    let policy_dir = ca.policy_dir();
    let pd = policy_dir.to_str().expect("utf8");
    let cfg = ca.config_path().to_str().expect("utf8").to_string();
    let claims = |name: &str, v: Value| {
        let p = dir.path().join(name);
        std::fs::write(&p, v.to_string()).expect("claims");
        p.to_str().expect("utf8").to_string()
    };
    let bot = claims("bot.json", json!({"sub": "bot", "repository": "acme/api"}));
    let node = claims("node.json", json!({"sub": "node1", "node": "node1"}));
    let run = |args: &[&str]| {
        let o = support::mayfly(args);
        (o.status.code(), text(&o))
    };

    // The server: the approval role answers 202 pending.
    let (_, public) = support::keygen_ed25519(dir.path());
    let auth = format!("Bearer {}", oidc.token("bot"));
    let r = support::http::post_json(
        &format!("{}/v1/certs/user", ca.url()),
        &[("Authorization", auth.as_str())],
        &json!({"role": "prod", "public_key": public}),
    )
    .expect("POST");
    assert_eq!(r.status, 202, "{}", r.text());
    // ... and so do explain and test.
    let (code, out) = run(&[
        "policy", "explain", "--dir", pd, "--role", "prod", "--issuer", "ci", "--claims", &bot,
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("decision: pending approval (1 approval(s) from issuer \"ci\" by groups:sre"),
        "{out}"
    );
    assert!(
        out.contains("max_active_certs 1 valid at once per identity"),
        "{out}"
    );
    assert!(
        out.contains("deactivation") && out.contains("not checked: give --config"),
        "{out}"
    );
    let (code, out) = run(&[
        "policy", "test", pd, "--role", "prod", "--issuer", "ci", "--claims", &bot,
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("pending approval ("), "{out}");

    // A host role is evaluated as the host request the server takes.
    let (code, out) = run(&[
        "policy", "test", pd, "--role", "nodes", "--issuer", "ci", "--claims", &node,
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("principals=[\"node1.test.example\"]"), "{out}");
    let (code, out) = run(&[
        "policy",
        "test",
        pd,
        "--role",
        "nodes",
        "--issuer",
        "ci",
        "--claims",
        &node,
        "--hostname",
        "node2.test.example",
    ]);
    assert_eq!(code, Some(3), "{out}");
    // The server agrees.
    let host_pub = public.clone();
    let auth = format!("Bearer {}", oidc.token("node1"));
    let r = support::http::post_json(
        &format!("{}/v1/certs/host", ca.url()),
        &[("Authorization", auth.as_str())],
        &json!({"role": "nodes", "public_key": host_pub, "hostnames": ["node2.test.example"]}),
    )
    .expect("POST");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        out.contains(r.json()["error"].as_str().expect("code")),
        "{out}\n{}",
        r.text()
    );

    // Cases: "pending" is an expectation of its own; "allow" for an
    // approval role fails, naming what the server does.
    let cases = dir.path().join("cases.toml");
    std::fs::write(
        &cases,
        r#"
[[case]]
name = "prod waits for a person"
role = "prod"
issuer = "ci"
claims = { sub = "bot", repository = "acme/api" }
expect = "pending"
expect_principals = ["deploy"]

[[case]]
name = "node1 gets its own name"
role = "nodes"
issuer = "ci"
claims = { sub = "node1", node = "node1" }
hostnames = ["node1.test.example"]
expect = "allow"
expect_principals = ["node1.test.example"]

[[case]]
name = "deploy is allowed for the bot"
role = "deploy"
issuer = "ci"
claims = { sub = "bot", repository = "acme/api" }
expect = "allow"
"#,
    )
    .expect("cases");
    let c = cases.to_str().expect("utf8");
    let (code, out) = run(&["policy", "test", pd, "--cases", c]);
    assert_eq!(code, Some(0), "{out}");
    let wrong = std::fs::read_to_string(&cases).expect("read").replacen(
        "expect = \"pending\"",
        "expect = \"allow\"",
        1,
    );
    std::fs::write(&cases, wrong).expect("write");
    let (code, out) = run(&["policy", "test", pd, "--cases", c]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("+ got:      pending approval ("), "{out}");

    // With --config, the CA's deactivations count: the server refuses the
    // disabled identity, and so do test, explain and the cases.
    let o = support::mayfly(&[
        "identity",
        "disable",
        "--config",
        &cfg,
        "--issuer",
        "ci",
        "--subject",
        "bot",
        "--reason",
        "leaked token",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (code, out) = run(&[
        "policy", "test", pd, "--role", "deploy", "--issuer", "ci", "--claims", &bot, "--config",
        &cfg,
    ]);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.starts_with("deny disabled:") && out.contains("identity ci/bot is disabled"),
        "{out}"
    );
    let (code, out) = run(&[
        "policy", "explain", "--dir", pd, "--role", "deploy", "--issuer", "ci", "--claims", &bot,
        "--config", &cfg,
    ]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("FAIL  deactivation"), "{out}");
    let (code, out) = run(&["policy", "test", pd, "--cases", c, "--config", &cfg]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL deploy is allowed for the bot"), "{out}");
    // Without --config the same request is allowed (and explain says the
    // deactivations were not checked).
    let (code, out) = run(&[
        "policy", "test", pd, "--role", "deploy", "--issuer", "ci", "--claims", &bot,
    ]);
    assert_eq!(code, Some(0), "{out}");
    // The server refuses it with the same code.
    let auth = format!("Bearer {}", oidc.token("bot"));
    let r = support::http::post_json(
        &format!("{}/v1/certs/user", ca.url()),
        &[("Authorization", auth.as_str())],
        &json!({"role": "deploy", "public_key": public}),
    )
    .expect("POST");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "disabled");
}

#[test]
fn identity_disable_and_enable_print_json_facts() {
    let env = setup();
    let out = private_dir(env.dir.path(), "out");
    let o = env.cert(
        "bot",
        &["--out", out.to_str().expect("utf8"), "--json"],
        env.dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let facts: Value = serde_json::from_slice(&o.stdout).expect("json");
    let cfg = env.ca.config_path().to_str().expect("utf8").to_string();
    let o = support::mayfly(&[
        "identity",
        "disable",
        "--config",
        &cfg,
        "--issuer",
        "ci",
        "--subject",
        "bot",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let j: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(j["changed"], true, "{j}");
    assert_eq!(j["revoked"][0]["serial"], facts["serial"], "{j}");
    let o = support::mayfly(&[
        "identity",
        "enable",
        "--config",
        &cfg,
        "--issuer",
        "ci",
        "--subject",
        "bot",
        "--json",
    ]);
    let j: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(j["changed"], true, "{j}");
    assert_eq!(j["revoked"], json!([]), "{j}");
}

/// `ca rotate` as root on a data dir the CA's own user owns would leave
/// root-owned key files the CA cannot read: it is refused, naming the
/// command to use.
#[test]
fn ca_rotate_as_root_on_a_service_owned_data_dir_is_refused() {
    support::require_root("chown the data dir to another user");
    let dir = support::temp_dir("rotate-owner");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::os::unix::fs::chown(&data, Some(65534), Some(65534)).expect("chown");
    let cfg = dir.path().join("mayfly.toml");
    std::fs::write(
        &cfg,
        format!("data_dir = {:?}\npolicy_dir = {:?}\n", data, dir.path()),
    )
    .expect("config");
    let o = support::mayfly(&[
        "ca",
        "rotate",
        "--stage",
        "--config",
        cfg.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("belongs to") && err.contains("(uid 65534)"),
        "{err}"
    );
    assert!(err.contains("sudo -u "), "{err}");
    assert_eq!(
        std::fs::read_dir(&data).expect("ls").count(),
        0,
        "nothing written"
    );
}
