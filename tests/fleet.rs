//! The CA sees its fleet: `mayfly host sync` reports after each run, signed
//! with the host key whose certificate the CA issued (`mayfly host cert`);
//! `mayfly hosts` and `/metrics` show lag and stale hosts; `ca rotate`
//! waits for the hosts to trust the next key; `revoke --wait` follows a
//! revocation until every host has it. Everything through the real CLI and
//! HTTP API, with a real `mayfly serve` on SQLite and on PostgreSQL, host
//! keys and signatures made by the real `ssh-keygen`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use support::issuer::TestIssuer;
use support::keygen::run_ssh_keygen;
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

const NODES: &str = r#"
description = "Nodes get host certificates for their own name"
owner = "infra@example.com"
issuer = "ci"
cert_type = "host"
hostnames = ["{node}.test.example"]
max_ttl = "7d"
default_ttl = "1d"
[claims]
node = "node*"
"#;

/// Hosts are stale after three 10 s intervals without a report.
const HOSTS_TOML: &str = "[hosts]\nsync_interval = \"10s\"\nstale_intervals = 3\n";

struct Env {
    issuer: TestIssuer,
    ca: Mayfly,
    dir: tempfile::TempDir,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn env_on(store_toml: &str) -> Env {
    env_with(HOSTS_TOML, store_toml)
}

fn env_with(hosts_toml: &str, store_toml: &str) -> Env {
    let issuer = TestIssuer::start();
    let ca = Mayfly::start(
        &format!("{hosts_toml}{}\n{store_toml}", issuer.issuer_toml("ci", "")),
        &[("deploy", DEPLOY), ("nodes", NODES)],
    );
    Env {
        issuer,
        ca,
        dir: support::temp_dir("fleet"),
    }
}

fn env() -> Env {
    env_on("")
}

/// One host: its key, the certificate the CA issued for it, its sync dir.
struct Host {
    key: PathBuf,
    sync_dir: PathBuf,
    name: String,
}

impl Env {
    fn token(&self, sub: &str, extra: Value) -> String {
        let mut claims = self.issuer.claims(sub);
        for (k, v) in extra.as_object().expect("object") {
            claims[k] = v.clone();
        }
        self.issuer.sign(Algorithm::ES256, &claims)
    }

    fn config(&self) -> String {
        self.ca.config_path().display().to_string()
    }

    /// A host key certified by the CA through `mayfly host cert`.
    fn host(&self, node: &str) -> Host {
        let d = self.dir.path().join(node);
        std::fs::create_dir_all(&d).expect("host dir");
        let key = d.join("ssh_host_ed25519_key");
        run_ssh_keygen(&[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            key.to_str().expect("utf-8"),
        ]);
        let token = d.join("token");
        std::fs::write(&token, self.token(node, json!({"node": node}))).expect("token");
        let pub_path = d.join("ssh_host_ed25519_key.pub");
        let out = mayfly(&[
            "host",
            "cert",
            "--server",
            &self.ca.url(),
            "--role",
            "nodes",
            "--key",
            pub_path.to_str().expect("utf-8"),
            "--token-file",
            token.to_str().expect("utf-8"),
        ]);
        ok(out);
        Host {
            key,
            sync_dir: d.join("sync"),
            name: format!("{node}.test.example"),
        }
    }

    fn sync(&self, h: &Host) -> Output {
        mayfly(&[
            "host",
            "sync",
            "--server",
            &self.ca.url(),
            "--dir",
            h.sync_dir.to_str().expect("utf-8"),
            "--host-key",
            h.key.to_str().expect("utf-8"),
        ])
    }

    fn hosts_json(&self) -> Value {
        let out = mayfly(&["hosts", "--config", &self.config(), "--json"]);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("hosts --json: {e}\n{}", all_output(&out)))
    }

    fn metrics(&self) -> String {
        http::get(&format!("{}/metrics", self.ca.url()))
            .expect("metrics")
            .text()
    }

    /// Issues a user certificate and returns its serial.
    fn issue(&self) -> u64 {
        let (_, public) = keygen_ed25519(self.dir.path());
        let auth = format!(
            "Bearer {}",
            self.token("repo:acme/api", json!({"repository": "acme/api"}))
        );
        let r = http::post_json(
            &format!("{}/v1/certs/user", self.ca.url()),
            &[("Authorization", auth.as_str())],
            &json!({"role": "deploy", "public_key": public}),
        )
        .expect("POST");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["serial"].as_u64().expect("serial")
    }

    fn post_report(&self, body: &Value) -> http::Response {
        http::post_json(&format!("{}/v1/hosts/report", self.ca.url()), &[], body)
            .expect("POST /v1/hosts/report")
    }
}

fn host_state<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .find(|h| h["host"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {view}"))
}

/// A report signed by `key` with `ssh-keygen -Y sign`, as a request body.
fn signed_report(dir: &Path, key: &Path, cert: &str, report: &Value) -> Value {
    let text = report.to_string();
    let file = dir.join(format!("report-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, &text).expect("report");
    run_ssh_keygen(&[
        "-Y",
        "sign",
        "-q",
        "-n",
        "host-report@mayfly",
        "-f",
        key.to_str().expect("utf-8"),
        file.to_str().expect("utf-8"),
    ]);
    let sig = std::fs::read_to_string(format!("{}.sig", file.display())).expect("sig");
    json!({"report": text, "certificate": cert, "signature": sig})
}

fn report_for(host: &str, time: u64) -> Value {
    json!({"host": host, "time": time, "krl_version": 0, "ca_fingerprints": ["SHA256:x"]})
}

fn cert_of(h: &Host) -> String {
    std::fs::read_to_string(format!("{}-cert.pub", h.key.display()))
        .expect("host cert")
        .trim()
        .to_string()
}

fn lists_and_lags(env: &Env) {
    let h = env.host("node1");
    let out = env.sync(&h);
    assert!(out.status.success(), "{}", all_output(&out));
    let view = env.hosts_json();
    let s = host_state(&view, &h.name);
    assert_eq!(s["lagging"], false, "{view}");
    assert_eq!(s["stale"], false, "{view}");
    assert_eq!(s["krl_version"], view["ca_krl_version"], "{view}");
    assert_eq!(
        s["ca_fingerprints"].as_array().map(Vec::len),
        Some(1),
        "{view}"
    );
    let m = env.metrics();
    assert!(m.contains("mayfly_hosts 1\n"), "{m}");
    assert!(m.contains("mayfly_hosts_lagging 0\n"), "{m}");

    // A revocation moves the CA's KRL ahead of the host's.
    let serial = env.issue();
    ok(mayfly(&[
        "revoke",
        "--config",
        &env.config(),
        "--serial",
        &serial.to_string(),
    ]));
    let out = mayfly(&["hosts", "--config", &env.config()]);
    assert_eq!(out.status.code(), Some(9), "{}", all_output(&out));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        table.contains(&h.name) && table.contains("lagging"),
        "{table}"
    );
    assert!(env.metrics().contains("mayfly_hosts_lagging 1\n"));

    // It syncs again: current.
    assert!(env.sync(&h).status.success());
    let view = env.hosts_json();
    let s = host_state(&view, &h.name);
    assert_eq!(
        (s["stale"].clone(), s["lagging"].clone()),
        (json!(false), json!(false)),
        "{view}"
    );
    ok(mayfly(&["hosts", "--config", &env.config()]));
}

#[test]
fn a_host_reports_after_sync_and_hosts_shows_lag_and_staleness_on_sqlite() {
    lists_and_lags(&env());
}

#[test]
fn a_host_reports_after_sync_and_hosts_shows_lag_and_staleness_on_postgres() {
    let db = Postgres::shared().create_database();
    let env = env_on(&format!(
        "{}\n{}",
        db.store_toml(),
        support::postgres::encrypted_ca_toml()
    ));
    lists_and_lags(&env);
    assert_eq!(db.psql("SELECT count(*) FROM host_reports").trim(), "1");
}

#[test]
fn a_host_that_stops_reporting_is_stale_in_hosts_and_metrics() {
    let env = env_with(
        "[hosts]\nsync_interval = \"10s\"\nstale_intervals = 1\n",
        "",
    );
    let h = env.host("node1");
    assert!(env.sync(&h).status.success());
    std::thread::sleep(Duration::from_secs(11));
    let view = env.hosts_json();
    assert_eq!(host_state(&view, &h.name)["stale"], true, "{view}");
    // `--stale-intervals` overrides `[hosts] stale_intervals`: five
    // missed 10 s intervals have not passed yet.
    let out = mayfly(&[
        "hosts",
        "--config",
        &env.config(),
        "--json",
        "--stale-intervals",
        "5",
    ]);
    let view: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("hosts --json: {e}\n{}", all_output(&out)));
    assert_eq!(host_state(&view, &h.name)["stale"], false, "{view}");
    assert_eq!(out.status.code(), Some(0), "{}", all_output(&out));
    let out = mayfly(&["hosts", "--config", &env.config(), "--stale-intervals", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));
    let m = env.metrics();
    assert!(m.contains("mayfly_hosts_stale 1\n"), "{m}");
    let out = mayfly(&["hosts", "--config", &env.config()]);
    assert_eq!(out.status.code(), Some(9), "{}", all_output(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stale"));
    // A stale host is not waited for by revoke --wait.
    let serial = env.issue();
    let out = mayfly(&[
        "revoke",
        "--config",
        &env.config(),
        "--serial",
        &serial.to_string(),
        "--wait",
        "--wait-timeout",
        "5s",
    ]);
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("stale") && text.contains("not waited for"),
        "{text}"
    );
}

#[test]
fn forged_absent_other_hosts_and_stale_reports_are_refused() {
    let env = env();
    let h1 = env.host("node1");
    let h2 = env.host("node2");
    let cert1 = cert_of(&h1);
    let dir = env.dir.path();

    // No signature at all, or an empty one.
    let r = env.post_report(
        &json!({"report": report_for(&h1.name, now()).to_string(), "certificate": cert1}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = env.post_report(&json!({"report": report_for(&h1.name, now()).to_string(),
        "certificate": cert1, "signature": ""}));
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_host_proof");

    // Signed by a key that is not the certified one.
    let (other_key, _) = keygen_ed25519(dir);
    let r = env.post_report(&signed_report(
        dir,
        &other_key,
        &cert1,
        &report_for(&h1.name, now()),
    ));
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_host_proof");

    // A host certificate from another CA.
    let (rogue_ca, _) = keygen_ed25519(dir);
    let pub1 = format!("{}.pub", h1.key.display());
    let rogue_dir = dir.join("rogue");
    std::fs::create_dir_all(&rogue_dir).expect("dir");
    let rogue_pub = rogue_dir.join("k.pub");
    std::fs::copy(&pub1, &rogue_pub).expect("copy");
    run_ssh_keygen(&[
        "-q",
        "-s",
        rogue_ca.to_str().expect("utf-8"),
        "-h",
        "-I",
        "rogue",
        "-n",
        &h1.name,
        "-V",
        "+1d",
        rogue_pub.to_str().expect("utf-8"),
    ]);
    let rogue_cert = std::fs::read_to_string(rogue_dir.join("k-cert.pub")).expect("cert");
    let r = env.post_report(&signed_report(
        dir,
        &h1.key,
        rogue_cert.trim(),
        &report_for(&h1.name, now()),
    ));
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap_or("")
            .contains("host CA"),
        "{}",
        r.text()
    );

    // node2 reporting as node1.
    let r = env.post_report(&signed_report(
        dir,
        &h2.key,
        &cert_of(&h2),
        &report_for(&h1.name, now()),
    ));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "other_host");

    // A report ten minutes old (a replay), properly signed.
    let r = env.post_report(&signed_report(
        dir,
        &h1.key,
        &cert1,
        &report_for(&h1.name, now() - 600),
    ));
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "stale_report");

    // None of them was stored.
    assert_eq!(env.hosts_json()["total"], 0);

    // The genuine one is; an older genuine one cannot replace it.
    let t = now();
    let r = env.post_report(&signed_report(
        dir,
        &h1.key,
        &cert1,
        &report_for(&h1.name, t),
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = env.post_report(&signed_report(
        dir,
        &h1.key,
        &cert1,
        &report_for(&h1.name, t - 5),
    ));
    assert_eq!(r.status, 409, "{}", r.text());
    let view = env.hosts_json();
    assert_eq!(view["total"], 1, "{view}");
    assert_eq!(
        host_state(&view, &h1.name)["ca_fingerprints"],
        json!(["SHA256:x"])
    );
}

#[test]
fn activate_and_retire_wait_for_hosts_to_trust_the_key_and_force_is_audited() {
    let env = env();
    let h = env.host("node1");
    assert!(env.sync(&h).status.success());
    let rotate =
        |step: &[&str]| mayfly(&[&["ca", "rotate", "--config", &env.config()][..], step].concat());
    ok(rotate(&["--stage"]));

    // The host has not synced since: it does not trust the staged key.
    let out = rotate(&["--activate"]);
    let text = all_output(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("refusing to activate") && text.contains(&h.name),
        "{text}"
    );
    let out = rotate(&["--activate", "--force"]);
    assert!(out.status.success(), "{}", all_output(&out));
    let rec = support::audit_search(env.ca.config_path(), &["--event", "ca_key_rotated"]);
    let reason = rec.last().expect("record")["event"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        reason.contains("forced") && reason.contains(&h.name),
        "{reason}"
    );

    // Retiring the old key needs the host to trust the active one.
    let out = rotate(&["--retire"]);
    let text = all_output(&out);
    assert!(!out.status.success() && text.contains(&h.name), "{text}");
    assert!(env.sync(&h).status.success());
    let out = rotate(&["--retire"]);
    assert!(out.status.success(), "{}", all_output(&out));

    // For the host CA the side that must have the key is the bots' known_hosts.
    ok(rotate(&["--host", "--stage"]));
    let out = rotate(&["--host", "--activate"]);
    assert!(
        all_output(&out).contains("known_hosts"),
        "{}",
        all_output(&out)
    );
}

/// An `[[admin]]` rule: operators with `groups: ["sre"]` (remote `--server` commands).
const ADMIN_TOML: &str = "[[admin]]\nissuer = \"ci\"\n[admin.claims]\ngroups = \"sre\"\n";

#[test]
fn revoke_wait_returns_once_the_host_synced_and_times_out_otherwise() {
    let env = env_on(ADMIN_TOML);
    let h = env.host("node1");
    assert!(env.sync(&h).status.success());

    // Nobody syncs: it times out with exit code 3 and names the host.
    let serial = env.issue();
    let out = mayfly(&[
        "revoke",
        "--config",
        &env.config(),
        "--serial",
        &serial.to_string(),
        "--wait",
        "--wait-timeout",
        "3s",
    ]);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(9), "{text}");
    assert!(
        text.contains("timed out") && text.contains(&h.name),
        "{text}"
    );

    // The host syncs while revoke waits: it returns 0.
    let serial = env.issue();
    let child = Command::new(Mayfly::bin())
        .args([
            "revoke",
            "--config",
            &env.config(),
            "--serial",
            &serial.to_string(),
            "--wait",
            "--wait-timeout",
            "60s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("revoke --wait");
    std::thread::sleep(Duration::from_secs(2));
    assert!(env.sync(&h).status.success());
    let out = child.wait_with_output().expect("revoke --wait ends");
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    let waiting = text.find(&format!("{}: waiting", h.name));
    let has = text.find(&format!("{}: has the revocation", h.name));
    assert!(
        matches!((waiting, has), (Some(w), Some(h)) if w < h),
        "{text}"
    );
    // One line per change, not a line per poll.
    assert_eq!(text.matches(": waiting").count(), 1, "{text}");

    // The same from an operator's machine, through the admin API: `hosts
    // --server` shows what `hosts --config` shows, and `revoke --server
    // --wait` follows the hosts' reports as the CA judges them.
    let token = env.dir.path().join("sre.tok");
    std::fs::write(&token, env.token("ops", json!({"groups": ["sre"]}))).expect("token");
    let token = token.to_str().expect("utf8").to_string();
    let url = env.ca.url();
    let remote = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--server", &url, "--token-file", &token]);
        mayfly(&all)
    };
    let out = remote(&["hosts", "--json"]);
    assert!(out.status.success(), "{}", all_output(&out));
    let view: Value = serde_json::from_slice(&out.stdout).expect("hosts --json");
    assert_eq!(
        host_state(&view, &h.name)["krl_version"],
        env.hosts_json()["hosts"][0]["krl_version"]
    );
    let serial = env.issue();
    let out = remote(&[
        "revoke",
        "--serial",
        &serial.to_string(),
        "--wait",
        "--wait-timeout",
        "3s",
    ]);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(9), "{text}");
    assert!(
        text.contains("timed out") && text.contains(&h.name),
        "{text}"
    );
    assert!(env.sync(&h).status.success());
    let out = remote(&["hosts"]);
    assert!(out.status.success(), "{}", all_output(&out));
}

#[test]
fn expected_hosts_that_never_reported_are_listed_counted_and_exported() {
    let lists = support::temp_dir("fleet-expected");
    let expected = lists.path().join("expected-hosts");
    std::fs::write(
        &expected,
        "# hosts that run mayfly host sync\nnode1.test.example\n\n  NODE2.test.example  \nnode1.test.example\n",
    )
    .expect("expected hosts");
    let env = env_with(
        &format!(
            "[hosts]\nsync_interval = \"10s\"\nstale_intervals = 3\nexpected_file = \"{}\"\n",
            expected.display()
        ),
        "",
    );
    // Before any report, both are listed: the CA knows them by the list only.
    let view = env.hosts_json();
    assert_eq!(
        (&view["expected"], &view["never_reported"]),
        (&json!(2), &json!(2)),
        "{view}"
    );
    let h = env.host("node1");
    assert!(env.sync(&h).status.success());

    let view = env.hosts_json();
    assert_eq!(view["total"], 1, "{view}");
    assert_eq!(view["never_reported"], 1, "{view}");
    assert_eq!(view["never_reported_hosts"], json!(["NODE2.test.example"]));
    assert_eq!(host_state(&view, &h.name)["lagging"], false);
    let out = mayfly(&["hosts", "--config", &env.config()]);
    assert_eq!(out.status.code(), Some(9), "{}", all_output(&out));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let row = table
        .lines()
        .find(|l| l.starts_with("NODE2.test.example"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains(" never_reported "), "{row}");
    assert!(
        table.contains(
            "1 host(s): 0 lagging, 0 stale (no report for 30s), 1 of 2 expected never reported"
        ),
        "{table}"
    );
    assert!(
        env.metrics().contains("mayfly_hosts_never_reported 1\n"),
        "{}",
        env.metrics()
    );

    // --expect overrides the config's list: every host on it reported.
    let only_node1 = lists.path().join("only-node1");
    std::fs::write(&only_node1, "node1.test.example\n").expect("list");
    let out = mayfly(&[
        "hosts",
        "--config",
        &env.config(),
        "--expect",
        only_node1.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", all_output(&out));

    // A list that is not one host name per line is refused, naming the line.
    let bad = lists.path().join("bad");
    std::fs::write(&bad, "node1.test.example\nnode2 node3\n").expect("list");
    let out = mayfly(&[
        "hosts",
        "--config",
        &env.config(),
        "--expect",
        bad.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    assert!(
        all_output(&out).contains("line 2: \"node2 node3\" is not a host name"),
        "{}",
        all_output(&out)
    );
}

#[test]
fn serve_refuses_to_start_with_an_unreadable_expected_hosts_file() {
    let issuer = TestIssuer::start();
    let missing = support::temp_dir("fleet-missing").path().join("nope");
    let err = match Mayfly::try_start(
        &format!(
            "[hosts]\nexpected_file = \"{}\"\n{}",
            missing.display(),
            issuer.issuer_toml("ci", "")
        ),
        &[("deploy", DEPLOY)],
    ) {
        Ok(_) => panic!("serve started without its expected hosts file"),
        Err(e) => e,
    };
    assert!(
        err.contains("[hosts] expected hosts file") && err.contains("refusing to start"),
        "{err}"
    );
}
