//! Tamper evidence of the audit log, against a real database written by a
//! real `mayfly serve` (certificates requested with tokens from a real OIDC
//! provider, a revocation by the real `mayfly revoke` while the server
//! runs). The server is stopped, then the SQLite file is edited the way an
//! attacker with write access would — one byte of one field, a deleted row,
//! two swapped rows, a truncated tail — and `mayfly audit verify` must fail
//! and name the record. Checkpoint signatures are also checked with stock
//! OpenSSH (`ssh-keygen -Y verify`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::types::Value as SqlValue;
use rusqlite::Connection;
use serde_json::{json, Value};
use support::{http, keygen_ed25519, ClientSpec, Mayfly, Oidc};

const POLICY: &str = r#"
description = "Deploy acme services from CI"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
default_ttl = "5m"

[claims]
repository = "acme/*"
"#;

/// A log written by a real server, with its files, after a clean stop.
struct Written {
    _oidc: Oidc,
    ca: Mayfly,
    /// Key ids of the issued certificates, in order.
    key_ids: Vec<String>,
    dir: tempfile::TempDir,
}

impl Written {
    fn db(&self) -> PathBuf {
        self.ca.data_dir().join("mayfly.db")
    }

    /// A copy of the database (and the audit public key) in a fresh data
    /// directory with its own mayfly.toml, edited by `edit`.
    fn case(&self, name: &str, edit: impl FnOnce(&Connection)) -> PathBuf {
        let case = self.dir.path().join(name);
        let data = case.join("data");
        std::fs::create_dir_all(&data).expect("case dir");
        std::fs::copy(self.db(), data.join("mayfly.db")).expect("copy db");
        std::fs::copy(
            self.ca.data_dir().join("audit_key.pub"),
            data.join("audit_key.pub"),
        )
        .expect("copy audit_key.pub");
        let cfg = case.join("mayfly.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {}\n",
                serde_json::to_string(&data).expect("path")
            ),
        )
        .expect("write config");
        let conn = Connection::open(data.join("mayfly.db")).expect("open copy");
        edit(&conn);
        drop(conn);
        cfg
    }
}

/// Exit code and all output of `mayfly ARGS...`.
fn mayfly(args: &[&str]) -> (i32, String) {
    let out = support::mayfly(args);
    (out.status.code().unwrap_or(-1), support::all_output(&out))
}

fn verify(cfg: &Path) -> (i32, String) {
    mayfly(&["audit", "verify", "--config", cfg.to_str().expect("utf-8")])
}

fn issue(oidc: &Oidc, ca: &Mayfly, dir: &Path, client: &str) -> http::Response {
    let (_, public) = keygen_ed25519(dir);
    let token = oidc.token(client);
    let auth = format!("Bearer {token}");
    http::post_json(
        &format!("{}/v1/certs/user", ca.url()),
        &[("Authorization", auth.as_str())],
        &json!({"role": "deploy", "public_key": public}),
    )
    .expect("POST /v1/certs/user")
}

/// Six certificates, a refusal, and a revocation from the CLI while the
/// server runs; then a clean stop (which signs the final checkpoint).
fn written() -> Written {
    let oidc = Oidc::start(&[
        ClientSpec::new("deploy-bot", "RS256").claims(json!({"repository": "acme/api"})),
        ClientSpec::new("intruder", "RS256").claims(json!({"repository": "evil/api"})),
    ]);
    let mut ca = Mayfly::start(
        &format!(
            "{}\n[audit]\ncheckpoint_every = 3\n",
            oidc.issuer_toml("ci")
        ),
        &[("deploy", POLICY)],
    );
    let dir = support::temp_dir("audit-tamper");
    let mut key_ids = Vec::new();
    let mut serials = Vec::new();
    for _ in 0..6 {
        let r = issue(&oidc, &ca, dir.path(), "deploy-bot");
        assert_eq!(r.status, 200, "{}\n{}", r.text(), ca.stderr_log());
        let v: Value = r.json();
        key_ids.push(v["key_id"].as_str().expect("key_id").to_string());
        serials.push(v["serial"].as_u64().expect("serial"));
    }
    let r = issue(&oidc, &ca, dir.path(), "intruder");
    assert_eq!(r.status, 403, "{}", r.text());
    // `mayfly revoke` on the CA host writes through its own connection
    // while the server runs: it must extend the same chain.
    let (code, out) = mayfly(&[
        "revoke",
        "--config",
        ca.config_path().to_str().expect("utf-8"),
        "--serial",
        &serials[1].to_string(),
        "--reason",
        "key leaked in a build log",
    ]);
    assert_eq!(code, 0, "{out}");
    let r = issue(&oidc, &ca, dir.path(), "deploy-bot");
    assert_eq!(r.status, 200, "{}", r.text());
    key_ids.push(r.json()["key_id"].as_str().expect("key_id").to_string());
    ca.stop();
    // Fold the WAL into the main file so a plain copy has every row.
    let conn = Connection::open(ca.data_dir().join("mayfly.db")).expect("open db");
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("wal checkpoint");
    drop(conn);
    Written {
        _oidc: oidc,
        ca,
        key_ids,
        dir,
    }
}

/// Changes one byte of `column` at `seq`, whatever its type.
fn flip_one_byte(conn: &Connection, seq: i64, column: &str) {
    let v: SqlValue = conn
        .query_row(
            &format!("SELECT {column} FROM audit WHERE seq = ?1"),
            [seq],
            |r| r.get(0),
        )
        .expect("read column");
    let changed = match v {
        // One bit of one byte, far from any neighbouring serial.
        SqlValue::Integer(n) => SqlValue::Integer(n ^ (1 << 40)),
        SqlValue::Text(t) => {
            let mut b = t.into_bytes();
            let i = b.len() / 2;
            b[i] ^= 0x01;
            SqlValue::Text(String::from_utf8(b).expect("ascii stays utf-8"))
        }
        SqlValue::Blob(mut b) => {
            b[5] ^= 0x01;
            SqlValue::Blob(b)
        }
        other => panic!("column {column} of seq {seq} is {other:?}; pick a non-null one"),
    };
    conn.execute(
        &format!("UPDATE audit SET {column} = ?1 WHERE seq = ?2"),
        rusqlite::params![changed, seq],
    )
    .expect("tamper");
}

#[test]
fn real_log_verifies_and_every_kind_of_tampering_is_named_by_seq() {
    let w = written();
    // Which records to tamper with, found as an operator would.
    let records = w.ca.audit(&[]);
    assert_eq!(
        records.len(),
        9,
        "6 issued + 1 denied + 1 revoked + 1 issued"
    );
    let seq_of = |event: &str, nth: usize| -> i64 {
        records
            .iter()
            .filter(|r| r["event"]["action"] == event)
            .nth(nth)
            .and_then(|r| r["mayfly"]["audit"]["seq"].as_i64())
            .unwrap_or_else(|| panic!("record {nth} of {event}"))
    };
    let issued_seq = seq_of("cert_issued", 2);
    let denied_seq = seq_of("cert_denied", 0);
    let revoked_seq = seq_of("cert_revoked", 0);

    // Untouched: OK, with every checkpoint signature verified.
    let cfg = w.case("untouched", |_| {});
    let (code, out) = verify(&cfg);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("OK: "), "{out}");
    assert!(
        out.contains("9 records (seq 1..9), hash chain intact"),
        "{out}"
    );
    assert!(
        out.contains("; last signed at seq 9, "),
        "clean shutdown signs a checkpoint of the final head: {out}"
    );
    assert!(
        !out.contains("note: checkpoint signatures not checked"),
        "{out}"
    );

    // One byte of any column of a record, whichever column it is.
    let mut cases: Vec<(i64, &str)> = [
        "time_ms",
        "event",
        "request_id",
        "client_addr",
        "issuer",
        "subject",
        "role",
        "serial",
        "key_id",
        "principals",
        "valid_after",
        "valid_before",
        "key_fingerprint",
        "token_id",
        "token_exp",
        "policy_digest",
        "cert_type",
        "ca_key",
        "prev_hash",
        "hash",
    ]
    .into_iter()
    .map(|c| (issued_seq, c))
    .collect();
    cases.extend([
        (denied_seq, "reason_code"),
        (denied_seq, "reason"),
        (revoked_seq, "actor"),
    ]);
    for (seq, column) in cases {
        let cfg = w.case(&format!("byte-{column}"), |c| flip_one_byte(c, seq, column));
        let (code, out) = verify(&cfg);
        assert_eq!(code, 8, "one byte of {column} changed, yet:\n{out}");
        assert!(
            out.contains("TAMPERED: ") && out.contains(&format!("first problem at seq {seq}: ")),
            "one byte of {column} at seq {seq}:\n{out}"
        );
    }

    // A deleted record in the middle.
    let cfg = w.case("deleted", |c| {
        c.execute("DELETE FROM audit WHERE seq = 4", [])
            .expect("delete");
    });
    let (code, out) = verify(&cfg);
    assert_eq!(code, 8, "{out}");
    assert!(
        out.contains("first problem at seq 4: record missing (deleted)"),
        "{out}"
    );

    // Two records swapped: every column but the position exchanged.
    let cfg = w.case("swapped", |c| {
        c.execute_batch(
            "CREATE TEMP TABLE t AS SELECT * FROM audit WHERE seq IN (5, 6);
             UPDATE t SET seq = 11 - seq;
             DELETE FROM audit WHERE seq IN (5, 6);
             INSERT INTO audit SELECT * FROM t;",
        )
        .expect("swap");
    });
    let (code, out) = verify(&cfg);
    assert_eq!(code, 8, "{out}");
    assert!(
        out.contains("first problem at seq 5: record out of place"),
        "{out}"
    );

    // The tail cut off; even with SQLite's counter reset, the final signed
    // checkpoint still remembers how far the log went.
    for (name, reset_counter) in [("truncated", false), ("truncated-counter-reset", true)] {
        let cfg = w.case(name, |c| {
            c.execute("DELETE FROM audit WHERE seq >= 8", [])
                .expect("truncate");
            if reset_counter {
                c.execute(
                    "UPDATE sqlite_sequence SET seq = 7 WHERE name = 'audit'",
                    [],
                )
                .expect("reset counter");
            }
        });
        let (code, out) = verify(&cfg);
        assert_eq!(code, 8, "{name}: {out}");
        assert!(
            out.contains(
                "first problem at seq 8: log truncated: it ends at seq 7 but reached seq 9"
            ),
            "{name}: {out}"
        );
    }

    // History rewritten with every later hash recomputed (the chain alone
    // would accept it): the signed checkpoints do not.
    let cfg = w.case("rewritten", |c| {
        c.execute(
            "UPDATE audit SET subject = 'someone-else' WHERE seq = ?1",
            [issued_seq],
        )
        .expect("rewrite");
        rehash_from(c, issued_seq);
    });
    let (code, out) = verify(&cfg);
    assert_eq!(code, 8, "{out}");
    assert!(out.contains("history rewritten"), "{out}");

    // The default key is data_dir/audit_key.pub; a copy kept elsewhere can
    // be given, and a different key is refused.
    let untouched = w.case("untouched-2", |_| {});
    let safe_copy = w.dir.path().join("audit_key.pub.safe");
    std::fs::copy(w.ca.data_dir().join("audit_key.pub"), &safe_copy).expect("copy key");
    let (code, out) = mayfly(&[
        "audit",
        "verify",
        "--config",
        untouched.to_str().expect("utf-8"),
        "--key",
        safe_copy.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{out}");
    let (other, _) = keygen_ed25519(w.dir.path());
    let (code, out) = mayfly(&[
        "audit",
        "verify",
        "--config",
        untouched.to_str().expect("utf-8"),
        "--key",
        &format!("{}.pub", other.display()),
    ]);
    assert_eq!(code, 8, "{out}");
    assert!(out.contains("not by the audit key"), "{out}");

    // `audit search --key-id` answers which job a login was.
    let (code, out) = mayfly(&[
        "audit",
        "search",
        "--config",
        w.ca.config_path().to_str().expect("utf-8"),
        "--key-id",
        &w.key_ids[1],
    ]);
    assert_eq!(code, 0, "{out}");
    for needle in [
        "cert_issued (success)",
        "cert_revoked (success)",
        "subject      deploy-bot",
        "issuer       ci",
        "role         deploy",
        "client       127.0.0.1:",
        "principals   deploy",
        "reason       serial ",
        "key leaked in a build log",
    ] {
        assert!(out.contains(needle), "{needle:?} not in:\n{out}");
    }
}

/// Recomputes prev_hash/hash from `seq` on, as an attacker without the
/// audit key would after rewriting a record.
fn rehash_from(c: &Connection, seq: i64) {
    use mayfly::audit::chain;
    let db_path: String = c
        .query_row("PRAGMA database_list", [], |r| r.get(2))
        .expect("db path");
    let mut prev: [u8; 32] = c
        .query_row("SELECT prev_hash FROM audit WHERE seq = ?1", [seq], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .expect("prev")
        .try_into()
        .expect("32 bytes");
    let db = mayfly::store::sqlite::Sqlite::open_read_only(
        Path::new(&db_path),
        std::time::Duration::from_secs(1),
    )
    .expect("open");
    let mut all = Vec::new();
    db.scan_audit(seq as u64, None, &mut |r| {
        all.push(r.expect("readable"));
        true
    })
    .expect("scan");
    drop(db);
    for r in all {
        let h = chain::record_hash(&r, &prev);
        c.execute(
            "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![&prev[..], &h[..], r.seq as i64],
        )
        .expect("rehash");
        prev = h;
    }
}

#[test]
fn checkpoint_signature_verifies_with_stock_openssh() {
    let w = written();
    let conn = Connection::open(w.db()).expect("open");
    let (seq, hash, time_ms, sig): (i64, Vec<u8>, i64, String) = conn
        .query_row(
            "SELECT seq, hash, time_ms, signature FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .expect("checkpoint");
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let dir = w.dir.path();
    let msg = dir.join("msg");
    std::fs::write(
        &msg,
        format!("mayfly-audit-checkpoint v1 seq={seq} hash={hex} time_ms={time_ms}\n"),
    )
    .expect("msg");
    std::fs::write(dir.join("msg.sig"), &sig).expect("sig");
    let public = std::fs::read_to_string(w.ca.data_dir().join("audit_key.pub")).expect("pub");
    std::fs::write(
        dir.join("allowed"),
        format!("mayfly-audit namespaces=\"mayfly-audit-checkpoint\" {public}"),
    )
    .expect("allowed signers");
    let check = |msg_text: &str| {
        std::fs::write(dir.join("msg"), msg_text).expect("msg");
        Command::new(support::keygen::ssh_keygen())
            .args(["-Y", "verify", "-f"])
            .arg(dir.join("allowed"))
            .args(["-I", "mayfly-audit", "-n", "mayfly-audit-checkpoint", "-s"])
            .arg(dir.join("msg.sig"))
            .stdin(std::fs::File::open(dir.join("msg")).expect("stdin"))
            .output()
            .expect("run ssh-keygen -Y verify")
    };
    let good = format!("mayfly-audit-checkpoint v1 seq={seq} hash={hex} time_ms={time_ms}\n");
    let out = check(&good);
    assert!(
        out.status.success(),
        "ssh-keygen -Y verify refused a mayfly checkpoint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = check(&good.replace(&format!("seq={seq}"), &format!("seq={}", seq + 1)));
    assert!(!out.status.success(), "a changed seq must not verify");
}

/// A stored time that no timestamp can show (after year 9999) is reported
/// as tampering at its seq, and export and search still print the log: a
/// hostile row must not crash the tools that look at it.
#[test]
fn a_time_after_year_9999_is_reported_not_a_crash() {
    let w = written();
    let seq = w.ca.audit(&["--event", "cert_issued"])[2]["mayfly"]["audit"]["seq"]
        .as_i64()
        .expect("seq of the third issuance");
    let cfg = w.case("far-future", |c| {
        c.execute(
            "UPDATE audit SET time_ms = ?1 WHERE seq = ?2",
            [i64::MAX, seq],
        )
        .expect("update");
    });
    let (code, out) = verify(&cfg);
    assert_eq!(code, 8, "{out}");
    assert!(
        out.contains(&format!("first problem at seq {seq}: record altered")),
        "{out}"
    );
    let c = cfg.to_str().expect("utf-8");
    let (code, out) = mayfly(&["audit", "export", "--config", c]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\"@timestamp\":\"9999-12-31T23:59:59.999Z\""),
        "{out}"
    );
    let (code, out) = mayfly(&["audit", "search", "--config", c, "--event", "cert_issued"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("9999-12-31T23:59:59"), "{out}");
}
