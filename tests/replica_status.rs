//! Replica heartbeats and `mayfly status` against a real `mayfly serve`:
//! the server lists itself with its version, policy digest, git commit and
//! address, keeps its replica id across restarts, shows a reloaded policy
//! at once, keeps serving when its heartbeat cannot be stored, and
//! `status`, `GET /v1/admin/replicas` (admins only) and the exit code flag
//! policy drift.
//!
//! With SQLite one server owns a database, so a second replica cannot run
//! on it. The drift tests write the second replica's heartbeat row through
//! the library's store API on the server's database (what that replica's
//! own heartbeat task would write on a shared database); the server, the
//! CLI and the HTTP API under test are the real ones. Drift between real
//! replica processes is tested on PostgreSQL.

mod support;

use std::process::Output;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use mayfly::replica::{Heartbeat, ReplicaId};
use mayfly::time::UnixSecs;
use serde_json::{json, Value};
use support::issuer::TestIssuer;
use support::{http, keygen_ed25519, mayfly, now, wait_for, Mayfly};

const DEPLOY: &str = "description = \"replica tests\"\nowner = \"sre@example.com\"\n\
    issuer = \"ci\"\nprincipals = [\"deploy\"]\nmax_ttl = \"10m\"\n\n[claims]\nsub = \"bot\"\n";

fn start(extra: &str) -> Mayfly {
    Mayfly::start(extra, &[("deploy", DEPLOY)])
}

/// `mayfly status --config CONFIG ARGS...`.
fn status(ca: &Mayfly, args: &[&str]) -> Output {
    let config = ca.config_path().to_str().expect("utf-8 path");
    let mut all = vec!["status", "--config", config];
    all.extend_from_slice(args);
    mayfly(&all)
}

/// `mayfly status --json`, which must exit with `code`.
fn status_json(ca: &Mayfly, code: i32) -> Value {
    let out = status(ca, &["--json"]);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

/// `mayfly status` as text, which must exit with `code`.
fn status_text(ca: &Mayfly, code: i32) -> String {
    let out = status(ca, &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {text}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn replica_id(ca: &Mayfly) -> String {
    std::fs::read_to_string(ca.data_dir().join("replica_id"))
        .expect("data_dir/replica_id")
        .trim()
        .to_string()
}

/// The digest of the policy the server enforces, from `/metrics`.
fn served_digest(ca: &Mayfly) -> String {
    let text = http::get(&format!("{}/metrics", ca.url()))
        .expect("GET /metrics")
        .text();
    text.lines()
        .find_map(|l| l.strip_prefix("mayfly_policy_info{digest=\""))
        .and_then(|l| l.split('"').next())
        .expect("mayfly_policy_info")
        .to_string()
}

/// A heartbeat of another replica named `id`, enforcing `digest`, last
/// seen `age` seconds ago.
fn other_replica(id: &str, digest: &str, age: u64) -> Heartbeat {
    Heartbeat {
        replica: ReplicaId::parse(id).expect("id"),
        version: "0.0.9".into(),
        policy_digest: digest.into(),
        git_commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        listen: "10.0.0.2:8400".into(),
        started_at: UnixSecs(now() - age - 60),
        last_seen: UnixSecs(now() - age),
        interval_secs: 10,
    }
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=mayfly test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn status_lists_the_running_server_and_its_id_survives_a_restart() {
    let mut ca = start("heartbeat_interval = \"1s\"\n");
    let id = replica_id(&ca);
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    let meta = std::fs::metadata(ca.data_dir().join("replica_id")).expect("stat");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );

    // Listed as soon as it answers: the first heartbeat precedes serving.
    let s = status_json(&ca, 0);
    assert_eq!(s["status"], "ok");
    assert_eq!(s["policy_drift"], false);
    assert_eq!(s["live_replicas"], 1);
    let r = &s["replicas"][0];
    assert_eq!(s["replicas"].as_array().map(Vec::len), Some(1), "{s}");
    assert_eq!(r["replica"], id.as_str());
    assert_eq!(r["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(r["policy_digest"], served_digest(&ca).as_str());
    assert_eq!(s["policy_digests"], json!([served_digest(&ca)]));
    assert_eq!(
        r["git_commit"],
        Value::Null,
        "policy_dir is no git checkout"
    );
    assert_eq!(r["listen"], format!("127.0.0.1:{}", ca.port()));
    assert_eq!(r["interval_secs"], 1);
    assert_eq!(r["live"], true);
    let first_start = r["started_at"].as_u64().expect("started_at");

    // It keeps beating: last_seen moves on.
    let seen = r["last_seen"].as_u64().expect("last_seen");
    wait_for(Duration::from_secs(10), Duration::from_millis(200), || {
        let s = status_json(&ca, 0);
        (s["replicas"][0]["last_seen"].as_u64() > Some(seen)).then_some(())
    })
    .expect("a periodic heartbeat moves last_seen");

    let text = status_text(&ca, 0);
    let row = text
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("no row for {id}:\n{text}"));
    assert!(row.contains(" live "), "{row}");
    assert!(row.contains(&format!("127.0.0.1:{}", ca.port())), "{row}");
    assert!(row.contains(&served_digest(&ca)[..12]), "{row}");
    assert!(
        text.contains(&format!(
            "ok: 1 live replica(s), all enforcing policy {}",
            served_digest(&ca)
        )),
        "{text}"
    );

    // Stopped: stale after three intervals, and status says nobody is live.
    ca.stop();
    wait_for(Duration::from_secs(15), Duration::from_millis(500), || {
        let out = status(&ca, &["--json"]);
        (out.status.code() == Some(5)).then_some(())
    })
    .expect("status exits 3 once the only replica is stale");
    let s = status_json(&ca, 5);
    assert_eq!(s["status"], "no_live_replica");
    assert_eq!(s["replicas"][0]["live"], false);
    let text = status_text(&ca, 5);
    assert!(text.contains(" stale "), "{text}");
    assert!(text.contains("NO LIVE REPLICA"), "{text}");

    // A restart keeps the id: still one replica, started again.
    std::thread::sleep(Duration::from_secs(1));
    ca.restart();
    assert_eq!(replica_id(&ca), id);
    let s = status_json(&ca, 0);
    assert_eq!(s["replicas"].as_array().map(Vec::len), Some(1), "{s}");
    assert_eq!(s["replicas"][0]["replica"], id.as_str());
    assert!(s["replicas"][0]["started_at"].as_u64() > Some(first_start));
}

#[test]
fn a_policy_reload_shows_its_digest_and_git_commit_at_once() {
    // An hour between heartbeats and between policy polls: only the start
    // and the reload (on SIGHUP) can send one during this test.
    let ca = start("heartbeat_interval = \"1h\"\npolicy_poll_interval = \"1h\"\n");
    let before = status_json(&ca, 0)["replicas"][0].clone();
    assert_eq!(before["git_commit"], Value::Null);

    let dir = ca.policy_dir();
    std::fs::write(
        dir.join("deploy.toml"),
        DEPLOY.replace("max_ttl = \"10m\"", "max_ttl = \"5m\""),
    )
    .expect("edit the policy");
    git(&dir, &["init", "-q"]);
    git(&dir, &["add", "deploy.toml"]);
    git(&dir, &["commit", "-q", "-m", "shorter certificates"]);
    let head = git(&dir, &["rev-parse", "HEAD"]);
    let pid = ca.pid().expect("running").to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());

    let after = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        let r = status_json(&ca, 0)["replicas"][0].clone();
        (r["policy_digest"] != before["policy_digest"]).then_some(r)
    })
    .expect("the reloaded policy's digest shows without waiting for the interval");
    assert_eq!(after["policy_digest"], served_digest(&ca).as_str());
    let reload = ca
        .audit(&["--event", "policy_reloaded"])
        .pop()
        .expect("policy_reloaded record");
    assert_eq!(
        reload["mayfly"]["policy"]["digest"], after["policy_digest"],
        "{reload}"
    );
    assert_eq!(after["git_commit"], head.as_str());
    assert_eq!(after["started_at"], before["started_at"]);
}

#[test]
fn policy_drift_between_live_replicas_is_flagged_in_text_json_and_exit_code() {
    let ca = start("");
    let ours = served_digest(&ca);
    let id = replica_id(&ca);
    let theirs = "f".repeat(64);

    // A second live replica on another policy.
    assert_eq!(
        ca.write_heartbeat(other_replica("ca-eu-2", &theirs, 2)),
        None
    );
    let s = status_json(&ca, 9);
    assert_eq!(s["status"], "policy_drift");
    assert_eq!(s["policy_drift"], true);
    assert_eq!(s["live_replicas"], 2);
    let mut want = vec![ours.clone(), theirs.clone()];
    want.sort();
    assert_eq!(s["policy_digests"], json!(want));
    let text = status_text(&ca, 9);
    assert!(
        text.contains("POLICY DRIFT: the 2 live replicas enforce 2 different policies"),
        "{text}"
    );
    assert!(text.contains(&format!("  {ours}  {id}\n")), "{text}");
    assert!(text.contains(&format!("  {theirs}  ca-eu-2\n")), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("ca-eu-2"))
        .expect("row of the second replica");
    assert!(
        row.contains(" live ") && row.contains("0.0.9") && row.contains("10.0.0.2:8400"),
        "{row}"
    );
    assert!(row.contains("0123456789ab"), "{row}");

    // The same replica on the same policy: no drift.
    ca.write_heartbeat(other_replica("ca-eu-2", &ours, 1));
    let s = status_json(&ca, 0);
    assert_eq!(s["policy_drift"], false);
    assert_eq!(s["live_replicas"], 2);

    // On another policy but stale (gone for a while): not drift either.
    ca.write_heartbeat(other_replica("ca-eu-2", &theirs, 31));
    let s = status_json(&ca, 0);
    assert_eq!(s["policy_drift"], false);
    assert_eq!(s["live_replicas"], 1);
    assert_eq!(s["policy_digests"], json!([ours]));
    let text = status_text(&ca, 0);
    let row = text
        .lines()
        .find(|l| l.starts_with("ca-eu-2"))
        .expect("the stale replica is still listed");
    assert!(row.contains(" stale "), "{row}");
}

#[test]
fn admin_replicas_endpoint_needs_an_admin_token_and_answers_as_status_json() {
    let issuer = TestIssuer::start();
    let extra = format!(
        "{}\n[[admin]]\nissuer = \"ci\"\n[admin.claims]\nsub = \"ops\"\n",
        issuer.issuer_toml("ci", "")
    );
    let ca = start(&extra);
    ca.write_heartbeat(other_replica("ca-eu-2", &"f".repeat(64), 2));
    let url = format!("{}/v1/admin/replicas", ca.url());
    let get = |token: Option<String>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        http::request("GET", &url, &headers, b"").expect("GET /v1/admin/replicas")
    };

    let r = get(None);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "missing_token");
    let r = get(Some(issuer.sign(Algorithm::ES256, &issuer.claims("bot"))));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "not_admin");
    let denied = ca.audit(&["--event", "admin_denied"]);
    assert_eq!(denied.len(), 2, "both refusals audited: {denied:?}");

    let r = get(Some(issuer.sign(Algorithm::ES256, &issuer.claims("ops"))));
    assert_eq!(r.status, 200, "{}", r.text());
    // The same document as `mayfly status --json`, but for the clock.
    let strip = |mut v: Value| {
        v["now"] = Value::Null;
        for r in v["replicas"].as_array_mut().expect("replicas") {
            r["age_secs"] = Value::Null;
        }
        v
    };
    assert_eq!(strip(r.json()), strip(status_json(&ca, 9)));
    assert_eq!(r.json()["policy_drift"], true);
}

#[test]
fn a_failing_heartbeat_is_logged_and_the_server_keeps_issuing() {
    let issuer = TestIssuer::start();
    let ca = start(&format!(
        "heartbeat_interval = \"1s\"\n{}",
        issuer.issuer_toml("ci", "")
    ));
    let db = rusqlite::Connection::open(ca.data_dir().join("mayfly.db")).expect("open db");
    db.busy_timeout(Duration::from_secs(10)).expect("busy");
    db.execute_batch(
        "CREATE TRIGGER refuse_heartbeats BEFORE INSERT ON replicas
         BEGIN SELECT RAISE(ABORT, 'heartbeats refused by the test'); END;",
    )
    .expect("trigger");
    wait_for(Duration::from_secs(15), Duration::from_millis(200), || {
        ca.stderr_log()
            .contains("heartbeat not stored")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no warning about the heartbeat:\n{}", ca.stderr_log()));
    assert!(ca.stderr_log().contains("heartbeats refused by the test"));

    // Serving goes on: health and a certificate.
    assert_eq!(
        http::get(&format!("{}/healthz", ca.url()))
            .expect("healthz")
            .status,
        200
    );
    let work = support::temp_dir("replicas");
    let (_, public) = keygen_ed25519(work.path());
    let auth = format!(
        "Bearer {}",
        issuer.sign(Algorithm::ES256, &issuer.claims("bot"))
    );
    let r = http::post_json(
        &format!("{}/v1/certs/user", ca.url()),
        &[("Authorization", auth.as_str())],
        &json!({"role": "deploy", "public_key": public}),
    )
    .expect("POST /v1/certs/user");
    assert_eq!(r.status, 200, "{}", r.text());

    // Once the store takes heartbeats again, the replica is live again.
    let seen = status_json(&ca, 0)["replicas"][0]["last_seen"]
        .as_u64()
        .expect("last_seen");
    db.execute_batch("DROP TRIGGER refuse_heartbeats")
        .expect("drop trigger");
    wait_for(Duration::from_secs(15), Duration::from_millis(200), || {
        ca.stderr_log()
            .contains("heartbeat stored again")
            .then_some(())
    })
    .expect("the recovery is logged");
    assert!(status_json(&ca, 0)["replicas"][0]["last_seen"].as_u64() > Some(seen));
}

#[test]
fn status_without_a_database_fails_with_exit_1_and_says_where_it_looked() {
    let dir = support::temp_dir("replicas-nodb");
    let config = dir.path().join("mayfly.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n",
            dir.path().join("data").to_str().expect("utf-8")
        ),
    )
    .expect("write config");
    let out = mayfly(&["status", "--config", config.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no database at") && err.contains("mayfly.db"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}
