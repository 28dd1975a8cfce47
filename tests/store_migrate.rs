//! `mayfly store migrate` with real programs. A CA run by `mayfly serve`,
//! with tokens from a real OIDC provider, writes its state: certificates, a
//! revocation, a deactivation (which revokes too), an approval granted but
//! not yet used. It is stopped and copied into a fresh store by the real
//! binary; `mayfly audit verify` passes on the copy with the old signed
//! checkpoints, and a server started on the copy serves the same KRL,
//! refuses the disabled identity, redeems the approval granted on the old
//! CA, and issues serials above the old ones. And the refusals: a running
//! source, one database on both sides, a target with anything in it, a
//! tampered source, and a target left by a failed run.

mod support;

use std::path::Path;
use std::process::Output;

use serde_json::{json, Value};
use support::{
    all_output, http, keygen_ed25519, mayfly, ok, ClientSpec, Mayfly, Oidc, PgDb, Postgres,
};

const DEPLOY_POLICY: &str = r#"
description = "Deploy acme services from CI"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
[claims]
repository = "acme/*"
"#;

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
expires = "1h"
"#;

const POLICIES: &[(&str, &str)] = &[("deploy", DEPLOY_POLICY), ("prod-deploy", PROD_POLICY)];

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `mayfly store migrate --from FROM --to TO [--json]`.
fn migrate(from: &Path, to: &Path, json: bool) -> Output {
    let mut args = vec![
        "store",
        "migrate",
        "--from",
        path_str(from),
        "--to",
        path_str(to),
    ];
    if json {
        args.push("--json");
    }
    mayfly(&args)
}

/// `mayfly ARGS... --config CONFIG`, which must succeed.
fn admin(config: &Path, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--config", path_str(config)]);
    ok(mayfly(&all))
}

/// `mayfly audit verify --config CONFIG`: exit code and output.
fn verify(config: &Path) -> (Option<i32>, String) {
    let out = mayfly(&["audit", "verify", "--config", path_str(config)]);
    (out.status.code(), all_output(&out))
}

/// The `head hash:` line of `mayfly audit verify`.
fn head_hash(verify_output: &str) -> String {
    verify_output
        .lines()
        .find_map(|l| l.strip_prefix("head hash: "))
        .unwrap_or_else(|| panic!("no head hash in:\n{verify_output}"))
        .trim()
        .to_string()
}

fn post(ca: &Mayfly, path: &str, token: &str, body: Value) -> http::Response {
    let auth = format!("Bearer {token}");
    http::post_json(
        &format!("{}{path}", ca.url()),
        &[("Authorization", auth.as_str())],
        &body,
    )
    .expect("POST")
}

fn krl(ca: &Mayfly) -> Vec<u8> {
    let r = http::get(&format!("{}/v1/krl", ca.url())).expect("GET /v1/krl");
    assert_eq!(r.status, 200, "{}", r.text());
    r.body
}

/// Which serials the KRL `bytes` revokes, as `ssh-keygen -Q -l` lists
/// them (`serial: N` or `serial: A-B`), and the listing.
fn revoked_serials(bytes: &[u8], dir: &Path) -> (impl Fn(u64) -> bool, String) {
    let file = dir.join("served.krl");
    std::fs::write(&file, bytes).expect("write the KRL");
    let out = support::keygen::run_ssh_keygen(&["-Q", "-l", "-f", path_str(&file)]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let ranges: Vec<(u64, u64)> = listing
        .lines()
        .filter_map(|l| l.strip_prefix("serial: "))
        .map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            (
                a.trim().parse().expect("serial"),
                b.trim().parse().expect("serial"),
            )
        })
        .collect();
    (
        move |s: u64| ranges.iter().any(|&(a, b)| a <= s && s <= b),
        listing,
    )
}

/// Appends, to the stopped CA of `config`, the issuance record of a serial
/// far above the clock-derived floor: the record of a CA whose clock ran
/// ahead. The copy must keep issuing above it.
fn record_serial_ahead_of_the_clock(config: &Path, serial: u64) {
    use mayfly::audit::{AuditRecord, EventKind};
    use mayfly::store::{block_on, open, OpenMode, StoreConfig};
    let cfg = mayfly::config::Config::load(Some(config), &|_| None).expect("config");
    let store = open(&StoreConfig::from_config(&cfg, OpenMode::Existing)).expect("open store");
    let mut r = AuditRecord::new(EventKind::CertIssued, support::now() * 1000, "clock-ahead");
    r.serial = Some(serial);
    r.issuer = Some("ci".into());
    r.subject = Some("deploy-a".into());
    r.role = Some("deploy".into());
    r.key_id = Some(format!("clock-ahead-{serial}"));
    r.valid_before = Some(support::now() - 1);
    block_on(store.issuance().issue(r, None))
        .expect("runtime")
        .expect("store")
        .expect("no guard");
}

#[test]
fn a_stopped_sqlite_ca_moves_to_a_fresh_sqlite_store_and_the_copy_serves_the_same_state() {
    moves_and_serves_the_same_state(None);
}

#[test]
fn a_stopped_sqlite_ca_moves_to_postgresql_and_the_copy_serves_the_same_state() {
    let db = Postgres::shared().create_database();
    moves_and_serves_the_same_state(Some(&db));
}

/// The whole move, into a fresh SQLite store (`None`) or the PostgreSQL
/// database `pg`.
fn moves_and_serves_the_same_state(pg: Option<&PgDb>) {
    let oidc = Oidc::start(&[
        ClientSpec::new("deploy-a", "ES256").claims(json!({"repository": "acme/api"})),
        ClientSpec::new("deploy-b", "ES256").claims(json!({"repository": "acme/web"})),
        ClientSpec::new("bot", "RS256").claims(json!({"repository": "acme/api"})),
        ClientSpec::new("alice", "ES256").claims(json!({"groups": ["sre"]})),
    ]);
    let extra = oidc.issuer_toml("ci");
    // Into PostgreSQL the keys must be encrypted already.
    let mut src = Mayfly::start(&format!("{extra}\n{}", ca_toml(pg)), POLICIES);
    let src_user_ca = served_user_ca(&src);
    let work = support::temp_dir("migrate");
    let cert =
        |ca: &Mayfly, who: &str, body: Value| post(ca, "/v1/certs/user", &oidc.token(who), body);
    let deploy = |ca: &Mayfly, who: &str| {
        let (_, public) = keygen_ed25519(work.path());
        let r = cert(ca, who, json!({"role": "deploy", "public_key": public}));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["serial"].as_u64().expect("serial")
    };

    // The old CA's life: certificates, one revoked, an identity disabled
    // (its live certificate revoked with it), an approval granted.
    let used = oidc.token("deploy-a");
    let (_, public) = keygen_ed25519(work.path());
    let r = post(
        &src,
        "/v1/certs/user",
        &used,
        json!({"role": "deploy", "public_key": public}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let revoked = deploy(&src, "deploy-a");
    let kept = deploy(&src, "deploy-a");
    deploy(&src, "deploy-b");
    admin(
        src.config_path(),
        &[
            "revoke",
            "--serial",
            &revoked.to_string(),
            "--reason",
            "leaked",
        ],
    );
    admin(
        src.config_path(),
        &[
            "identity",
            "disable",
            "--issuer",
            "ci",
            "--subject",
            "deploy-b",
            "--reason",
            "retired",
        ],
    );
    let (_, approved_key) = keygen_ed25519(work.path());
    let r = cert(
        &src,
        "bot",
        json!({"role": "prod-deploy", "public_key": approved_key}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let approval = r.json()["approval_request"]
        .as_str()
        .expect("id")
        .to_string();
    let r = post(
        &src,
        &format!("/v1/requests/{approval}/approve"),
        &oidc.token("alice"),
        json!({"reason": "change 42"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let old_krl = krl(&src);

    // A migration never copies a CA that is still running.
    let dst_extra = match pg {
        Some(_) => format!("{extra}\n{}", store_toml(pg)),
        None => extra.clone(),
    };
    let dst = Mayfly::configure(&dst_extra, POLICIES);
    let out = migrate(src.config_path(), dst.config_path(), false);
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    assert!(
        all_output(&out).contains("stop the source CA first"),
        "{}",
        all_output(&out)
    );

    src.stop();
    let ahead = (support::now() + 400 * 86_400) << 24;
    record_serial_ahead_of_the_clock(src.config_path(), ahead);
    let (code, src_verify) = verify(src.config_path());
    assert_eq!(code, Some(0), "{src_verify}");
    let records = support::audit_search(src.config_path(), &[]).len() as u64;
    let exported = work.path().join("before-the-move.jsonl");
    admin(
        src.config_path(),
        &["audit", "export", "--out", path_str(&exported)],
    );

    let summary: Value =
        serde_json::from_str(&ok(migrate(src.config_path(), dst.config_path(), true)))
            .expect("--json summary");
    if let Some(db) = pg {
        assert!(
            summary["to"]
                .as_str()
                .expect("to")
                .ends_with(&format!("/{}", db.name)),
            "{summary}"
        );
    }
    let copied = &summary["copied"];
    assert_eq!(copied["audit_records"], json!(records), "{summary}");
    assert_eq!(copied["revocations"], json!(2), "{summary}");
    assert_eq!(copied["disabled"], json!(1), "{summary}");
    assert_eq!(copied["approvals"], json!(1), "{summary}");
    assert!(
        copied["checkpoints"].as_u64().expect("checkpoints") >= 1,
        "{summary}"
    );
    assert_eq!(summary["serial_floor"], json!(ahead), "{summary}");
    assert_eq!(summary["head"]["seq"], json!(records), "{summary}");
    assert_eq!(summary["audit_key"], "copied", "{summary}");
    match pg {
        Some(_) => {
            assert_eq!(
                summary["ca_keys"],
                json!(["host_ca", "user_ca"]),
                "{summary}"
            );
            assert_eq!(summary["audit_key_in_database"], json!(true), "{summary}");
        }
        None => assert_eq!(summary["ca_keys"], json!([]), "{summary}"),
    }

    // The copy verifies on its own, with the old signed checkpoints, and
    // ends where the source ends.
    let (code, dst_verify) = verify(dst.config_path());
    assert_eq!(code, Some(0), "{dst_verify}");
    assert!(
        dst_verify.contains(&format!("{records} records")),
        "{dst_verify}"
    );
    assert!(dst_verify.contains("signatures verified"), "{dst_verify}");
    assert!(
        !dst_verify.contains("(0 signatures verified)"),
        "{dst_verify}"
    );
    assert_eq!(head_hash(&dst_verify), head_hash(&src_verify));
    assert_eq!(summary["head"]["hash"], json!(head_hash(&src_verify)));
    // An export taken on the old CA anchors the new database too.
    let out = mayfly(&[
        "audit",
        "verify",
        "--export",
        path_str(&exported),
        "--config",
        path_str(dst.config_path()),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", all_output(&out));

    // A second run finds the target full and leaves it alone.
    let out = migrate(src.config_path(), dst.config_path(), false);
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    assert!(
        all_output(&out).contains("is not empty"),
        "{}",
        all_output(&out)
    );

    // A server on the copy carries on where the old CA stopped.
    let mut dst = dst;
    dst.restart();
    assert_eq!(krl(&dst), old_krl, "the copy serves another KRL");
    let revoked_now = || revoked_serials(&krl(&dst), work.path());
    let (serials, listing) = revoked_now();
    assert!(serials(revoked), "{listing}");
    assert!(!serials(kept), "{listing}");

    let (_, public) = keygen_ed25519(work.path());
    let r = cert(
        &dst,
        "deploy-b",
        json!({"role": "deploy", "public_key": public}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "disabled");

    let r = cert(
        &dst,
        "bot",
        json!({"role": "prod-deploy", "public_key": approved_key, "approval_request": approval}),
    );
    assert_eq!(
        r.status,
        200,
        "approval granted on the old CA: {}",
        r.text()
    );

    let (_, public) = keygen_ed25519(work.path());
    let r = post(
        &dst,
        "/v1/certs/user",
        &used,
        json!({"role": "deploy", "public_key": public}),
    );
    assert_eq!(r.status, 401, "a token used on the old CA: {}", r.text());
    assert_eq!(r.json()["error"], "token_replayed");

    // Into PostgreSQL the CA keys move too: a replica on the copy
    // publishes and signs with the old CA's key. (A SQLite target keeps
    // keys as files, which the operator copies.)
    if pg.is_some() {
        assert_eq!(served_user_ca(&dst), src_user_ca);
        let (_, public) = keygen_ed25519(work.path());
        let r = cert(
            &dst,
            "deploy-a",
            json!({"role": "deploy", "public_key": public}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let cert_file = work.path().join("after-the-move-cert.pub");
        std::fs::write(&cert_file, r.json()["certificate"].as_str().expect("cert"))
            .expect("write the certificate");
        assert_eq!(
            support::signing_ca(&cert_file),
            fingerprint(&src_user_ca, work.path())
        );
    }

    let next = deploy(&dst, "deploy-a");
    assert!(
        next > ahead,
        "serial {next} is not above the old CA's {ahead}"
    );

    // Revocations recorded on the copy come after the imported ones, and
    // the KRL version goes on up.
    admin(
        dst.config_path(),
        &[
            "revoke",
            "--serial",
            &kept.to_string(),
            "--reason",
            "rotated",
        ],
    );
    let (serials, listing) = revoked_now();
    assert!(serials(revoked) && serials(kept), "{listing}");

    // The copy's chain goes on from the old head, and the checkpoint the
    // server signs when it stops follows the imported ones.
    dst.stop();
    let (code, after) = verify(dst.config_path());
    assert_eq!(code, Some(0), "{after}");
    assert_ne!(head_hash(&after), head_hash(&src_verify), "{after}");
    let checkpoints = copied["checkpoints"].as_u64().expect("checkpoints");
    assert!(
        after.contains(&format!("checkpoints: {} ", checkpoints + 1)),
        "no new checkpoint after the {checkpoints} imported: {after}"
    );
}

/// Where a target keeps its store: SQLite in its data_dir, or a
/// PostgreSQL database (with encrypted CA keys, which it requires).
fn store_toml(pg: Option<&PgDb>) -> String {
    match pg {
        Some(db) => format!("{}\n{}", db.store_toml(), ca_toml(pg)),
        None => String::new(),
    }
}

/// `[ca]` of a CA that moves into `pg`: encrypted keys (none: the default).
fn ca_toml(pg: Option<&PgDb>) -> String {
    match pg {
        Some(_) => support::postgres::encrypted_ca_toml(),
        None => String::new(),
    }
}

/// The user CA key line a CA serves (type and key, no comment).
fn served_user_ca(ca: &Mayfly) -> String {
    let r = http::get(&format!("{}/v1/ca/user.pub", ca.url())).expect("GET /v1/ca/user.pub");
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let line = text.lines().next().expect("a key line");
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `SHA256:` fingerprint of an OpenSSH public key line.
fn fingerprint(line: &str, dir: &Path) -> String {
    let f = dir.join("fingerprint.pub");
    std::fs::write(&f, format!("{line}\n")).expect("write the key line");
    let out = support::keygen::run_ssh_keygen(&["-l", "-f", path_str(&f)]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("no fingerprint of {line}"))
        .to_string()
}

/// Empties the target's store as the refusal says (SQLite: delete the
/// database files; PostgreSQL: drop and create the database).
fn recreate(ca: &Mayfly, pg: Option<&PgDb>) {
    match pg {
        None => {
            for f in ["mayfly.db", "mayfly.db-wal", "mayfly.db-shm"] {
                let _ = std::fs::remove_file(ca.data_dir().join(f));
            }
        }
        Some(db) => {
            let cluster = Postgres::shared();
            cluster.psql(
                "postgres",
                &format!("DROP DATABASE {} WITH (FORCE)", db.name),
            );
            cluster.psql("postgres", &format!("CREATE DATABASE {}", db.name));
        }
    }
}

/// A CA with no issuer, started and stopped, whose log holds `roles`
/// disabled by `mayfly identity disable`.
fn quiet_ca(roles: &[&str]) -> Mayfly {
    quiet_ca_with(roles, "")
}

/// As [`quiet_ca`], with its store in `pg` when given.
fn quiet_ca_on(roles: &[&str], pg: Option<&PgDb>) -> Mayfly {
    quiet_ca_with(roles, &store_toml(pg))
}

/// As [`quiet_ca`], with `extra` config.
fn quiet_ca_with(roles: &[&str], extra: &str) -> Mayfly {
    let mut ca = Mayfly::start(extra, &[]);
    for role in roles {
        admin(ca.config_path(), &["identity", "disable", "--role", role]);
    }
    ca.stop();
    ca
}

#[test]
fn migrate_refuses_one_database_on_both_sides_and_a_target_with_anything_in_it() {
    refuses_the_same_database_and_a_full_target(None);
}

#[test]
fn migrate_refuses_a_postgresql_target_with_anything_in_it() {
    let db = Postgres::shared().create_database();
    refuses_the_same_database_and_a_full_target(Some(&db));
}

fn refuses_the_same_database_and_a_full_target(pg: Option<&PgDb>) {
    let src = quiet_ca(&["deploy"]);
    let out = migrate(src.config_path(), src.config_path(), false);
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    assert!(
        all_output(&out).contains("name the same database"),
        "{}",
        all_output(&out)
    );

    let dst = quiet_ca_on(&["other"], pg);
    let out = migrate(dst.config_path(), dst.config_path(), false);
    assert!(
        all_output(&out).contains("name the same database"),
        "{}",
        all_output(&out)
    );
    let out = migrate(src.config_path(), dst.config_path(), false);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("is not empty (it holds 1 audit record, ")
            && text.contains("1 deactivation)")
            && text.contains("never merges"),
        "{text}"
    );
    let disabled = admin(dst.config_path(), &["identity", "disabled"]);
    assert!(
        disabled.contains("other") && !disabled.contains("deploy"),
        "{disabled}"
    );
    let (code, report) = verify(dst.config_path());
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains(" 1 records"), "{report}");
}

#[test]
fn a_tampered_source_is_refused_and_nothing_is_copied() {
    let src = quiet_ca(&["a", "b", "c"]);
    let db = src.data_dir().join("mayfly.db");
    let edit = |reason: &str| {
        let conn = rusqlite::Connection::open(&db).expect("open the source database");
        conn.execute("UPDATE audit SET reason = ?1 WHERE seq = 2", [reason])
            .expect("edit record 2");
    };
    let original: String = rusqlite::Connection::open(&db)
        .expect("open")
        .query_row("SELECT reason FROM audit WHERE seq = 2", [], |r| r.get(0))
        .expect("record 2");
    edit("nothing to see");

    let dst = Mayfly::configure("", &[]);
    let out = migrate(src.config_path(), dst.config_path(), false);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(8), "{text}");
    assert!(
        text.contains("does not verify")
            && text.contains("seq 2")
            && text.contains("nothing was copied"),
        "{text}"
    );

    // Untouched: once the source is put right, the same target takes it.
    edit(&original);
    let summary: Value =
        serde_json::from_str(&ok(migrate(src.config_path(), dst.config_path(), true)))
            .expect("--json summary");
    assert_eq!(summary["copied"]["audit_records"], json!(3), "{summary}");
}

#[test]
fn a_failed_run_leaves_a_target_that_serve_and_migrate_refuse_until_it_is_recreated() {
    refused_until_recreated(None);
}

#[test]
fn a_failed_run_into_postgresql_is_refused_until_the_database_is_recreated() {
    let db = Postgres::shared().create_database();
    refused_until_recreated(Some(&db));
}

fn refused_until_recreated(pg: Option<&PgDb>) {
    let src = quiet_ca_with(&["deploy"], &ca_toml(pg));
    let mut dst = Mayfly::configure(&store_toml(pg), &[]);
    // The last step (the audit key's public half) cannot be written.
    let blocker = dst.data_dir().join("audit_key.pub");
    std::fs::create_dir_all(blocker.join("in-the-way")).expect("mkdir");

    let out = migrate(src.config_path(), dst.config_path(), false);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("now holds an unfinished import") && text.contains("recreate it empty"),
        "{text}"
    );

    // Nothing in the way any more, but the target holds half a copy: the
    // next run and a server on it refuse it.
    std::fs::remove_dir_all(&blocker).expect("rm");
    let out = migrate(src.config_path(), dst.config_path(), false);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("holds an unfinished import from"), "{text}");

    let report = dst
        .try_restart()
        .expect_err("a server started on half a CA");
    assert!(report.contains("unfinished import"), "{report}");

    // Recreated empty, as the message says, it takes the copy.
    recreate(&dst, pg);
    let summary: Value =
        serde_json::from_str(&ok(migrate(src.config_path(), dst.config_path(), true)))
            .expect("--json summary");
    assert_eq!(summary["audit_key"], "already_there", "{summary}");
    dst.restart();
    let disabled = admin(dst.config_path(), &["identity", "disabled"]);
    assert!(disabled.contains("deploy"), "{disabled}");
}

#[test]
fn plain_ca_keys_are_refused_for_a_postgresql_target_before_anything_is_copied() {
    let db = Postgres::shared().create_database();
    let src = quiet_ca(&["deploy"]);
    let dst = Mayfly::configure(&store_toml(Some(&db)), &[]);
    let out = migrate(src.config_path(), dst.config_path(), false);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("is not passphrase-encrypted")
            && text.contains("ssh-keygen -p -f")
            && text.contains("key_protection = \"passphrase\""),
        "{text}"
    );
    assert!(!text.contains("unfinished import"), "{text}");
    assert_eq!(db.psql("SELECT count(*) FROM ca_keys").trim(), "0");

    // Encrypted as the message says, the same target takes the keys.
    for key in ["user_ca", "host_ca"] {
        let f = src.data_dir().join(key);
        let out = support::keygen::run_ssh_keygen(&[
            "-p",
            "-q",
            "-P",
            "",
            "-N",
            support::postgres::CA_PASSPHRASE,
            "-f",
            path_str(&f),
        ]);
        assert!(out.status.success(), "{}", all_output(&out));
    }
    let summary: Value =
        serde_json::from_str(&ok(migrate(src.config_path(), dst.config_path(), true)))
            .expect("--json summary");
    assert_eq!(
        summary["ca_keys"],
        json!(["host_ca", "user_ca"]),
        "{summary}"
    );
    let mut dst = dst;
    dst.restart();
    let (code, report) = verify(dst.config_path());
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("stored in the database"), "{report}");
}
