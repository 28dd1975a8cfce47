//! CA key rotation without downtime, walked through with a real sshd whose
//! `TrustedUserCAKeys` file is maintained by `mayfly host sync`: logins work
//! at every step, and the retired key's certificates stop working.

mod support;

use std::path::PathBuf;

use serde_json::json;
use support::{http, keygen_ed25519, mayfly, ok, signing_ca, ClientSpec, Mayfly, Oidc, Sshd};

const DEPLOY_POLICY: &str = r#"
description = "Deploy from CI"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
[claims]
repository = "acme/*"
"#;

#[test]
fn user_ca_rotates_with_logins_working_at_every_step() {
    let oidc = Oidc::start(&[
        ClientSpec::new("deploy-rs", "RS256").claims(json!({"repository": "acme/api"}))
    ]);
    let ca = Mayfly::start(&oidc.issuer_toml("ci"), &[("deploy", DEPLOY_POLICY)]);
    let work = support::temp_dir("rotation");
    let sync_dir = work.path().join("etc-ssh-mayfly");
    std::fs::create_dir_all(&sync_dir).expect("mkdir");
    let cfg = ca.config_path().to_str().expect("utf8").to_string();
    let sync = || {
        ok(mayfly(&[
            "host",
            "sync",
            "--server",
            &ca.url(),
            "--dir",
            sync_dir.to_str().expect("utf8"),
        ]));
    };
    sync();
    let synced_ca = sync_dir.join("user_ca.pub");
    let sshd = Sshd::start_with_revoked_keys(
        &std::fs::read_to_string(&synced_ca).expect("ca"),
        &sync_dir.join("revoked.krl"),
    );
    // sshd reads its TrustedUserCAKeys at every login: point it at the
    // file the sync agent maintains.
    std::fs::remove_file(sshd.trusted_ca_path()).expect("rm");
    std::os::unix::fs::symlink(&synced_ca, sshd.trusted_ca_path()).expect("symlink");

    let cert = || -> (PathBuf, PathBuf) {
        let (key, public) = keygen_ed25519(work.path());
        let auth = format!("Bearer {}", oidc.token("deploy-rs"));
        let r = http::post_json(
            &format!("{}/v1/certs/user", ca.url()),
            &[("Authorization", auth.as_str())],
            &json!({"role": "deploy", "public_key": public}),
        )
        .expect("POST");
        assert_eq!(r.status, 200, "{}", r.text());
        let path = PathBuf::from(format!("{}-cert.pub", key.display()));
        std::fs::write(
            &path,
            format!("{}\n", r.json()["certificate"].as_str().expect("cert")),
        )
        .expect("write");
        (key, path)
    };
    let login = |k: &(PathBuf, PathBuf)| sshd.ssh("deploy", &k.0, &k.1, "true").status.success();
    let status = || ok(mayfly(&["ca", "status", "--config", &cfg]));

    let old = cert();
    assert!(login(&old));
    let old_fp = signing_ca(&old.1);
    assert!(status().contains(&old_fp));

    // 1. Stage: the next key is published and synced; the old one still signs.
    let out = ok(mayfly(&["ca", "rotate", "--stage", "--config", &cfg]));
    assert!(out.contains("staged next key"), "{out}");
    sync();
    assert_eq!(
        std::fs::read_to_string(&synced_ca)
            .expect("ca")
            .lines()
            .count(),
        2
    );
    assert!(login(&old));
    let during = cert();
    assert_eq!(
        signing_ca(&during.1),
        old_fp,
        "staging must not change the signing key"
    );
    assert!(login(&during));
    let st = status();
    assert!(st.contains("next") && st.contains("active"), "{st}");

    // 2. Activate: new certs are signed by the new key, which hosts already trust.
    let out = ok(mayfly(&["ca", "rotate", "--activate", "--config", &cfg]));
    assert!(out.contains("signs now"), "{out}");
    let new = cert();
    let new_fp = signing_ca(&new.1);
    assert_ne!(new_fp, old_fp);
    assert!(login(&new), "new key's cert before any further sync");
    sync();
    assert!(login(&new));
    assert!(
        login(&old),
        "certs of the previous key keep working until retired"
    );

    // 3. Retire: refused while old certs are valid, forced here.
    let out = mayfly(&["ca", "rotate", "--retire", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("are valid for another"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(mayfly(&[
        "ca", "rotate", "--retire", "--force", "--config", &cfg,
    ]));
    sync();
    let published = std::fs::read_to_string(&synced_ca).expect("ca");
    assert_eq!(published.lines().count(), 1, "{published}");
    assert!(login(&new), "logins with the new key keep working");
    assert!(!login(&old), "the retired key is no longer trusted");
    let after = cert();
    assert!(login(&after));
    assert!(!status().contains(&old_fp));

    // Every step is in the audit log.
    assert_eq!(ca.audit_count("ca_key_rotated"), 3);

    // Host CA rotates the same way; known_hosts lines follow.
    ok(mayfly(&[
        "ca", "rotate", "--stage", "--host", "--config", &cfg,
    ]));
    let kh = ok(mayfly(&[
        "known-hosts",
        "--server",
        &ca.url(),
        "--domain",
        "*.example.com",
    ]));
    assert_eq!(
        kh.lines()
            .filter(|l| l.starts_with("@cert-authority"))
            .count(),
        2,
        "{kh}"
    );
}

/// `mayfly ca status --json` as (slot, fingerprint) pairs of one CA.
fn slots(cfg: &str, ca: &str) -> Vec<(String, String)> {
    let out = ok(mayfly(&["ca", "status", "--json", "--config", cfg]));
    let rows: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    rows.as_array()
        .expect("array")
        .iter()
        .filter(|r| r["ca"] == ca)
        .map(|r| {
            (
                r["slot"].as_str().expect("slot").to_string(),
                r["fingerprint"].as_str().expect("fp").to_string(),
            )
        })
        .collect()
}

fn fp_of(rows: &[(String, String)], slot: &str) -> String {
    rows.iter()
        .find(|(s, _)| s == slot)
        .map(|(_, f)| f.clone())
        .unwrap_or_else(|| panic!("no {slot} key in {rows:?}"))
}

#[test]
fn an_activation_stopped_after_keeping_the_old_key_finishes_when_run_again() {
    let ca = Mayfly::start("", &[]);
    let cfg = ca.config_path().to_str().expect("utf8").to_string();
    let published = || {
        http::get(&format!("{}/v1/ca/user.pub", ca.url()))
            .expect("GET")
            .text()
    };
    assert_eq!(published().lines().count(), 1);
    ok(mayfly(&["ca", "rotate", "--stage", "--config", &cfg]));
    let before = slots(&cfg, "user");
    // What a crash between the two file steps of --activate leaves.
    std::fs::hard_link(
        ca.data_dir().join("user_ca"),
        ca.data_dir().join("user_ca.previous"),
    )
    .expect("link");
    let out = ok(mayfly(&["ca", "rotate", "--activate", "--config", &cfg]));
    assert!(out.contains("signs now"), "{out}");
    let after = slots(&cfg, "user");
    assert_eq!(fp_of(&after, "active"), fp_of(&before, "next"));
    assert_eq!(fp_of(&after, "previous"), fp_of(&before, "active"));
    assert_eq!(after.len(), 2, "{after:?}");
    // The running server picks it up and publishes both.
    let lines = published();
    assert_eq!(lines.lines().count(), 2, "{lines}");
    assert_eq!(
        mayfly::ca::signer::fingerprint_of_line(lines.lines().next().expect("active")),
        fp_of(&after, "active")
    );
}

#[test]
fn a_rotation_before_the_servers_first_request_is_picked_up() {
    let ca = Mayfly::start("", &[]);
    let cfg = ca.config_path().to_str().expect("utf8").to_string();
    ok(mayfly(&["ca", "rotate", "--stage", "--config", &cfg]));
    let lines = http::get(&format!("{}/v1/ca/user.pub", ca.url()))
        .expect("GET")
        .text();
    assert_eq!(lines.lines().count(), 2, "{lines}");
}

#[test]
fn rotating_a_ca_group_that_has_no_key_is_refused_and_writes_nothing() {
    let ca = Mayfly::start("", &[]);
    let cfg = ca.config_path().to_str().expect("utf8").to_string();
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(ca.data_dir())
            .expect("data_dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("user_ca"))
            .collect();
        names.sort();
        names
    };
    let files_before = listing();
    for (group, needle) in [
        ("nope", "has no key yet"),
        ("../../escape", "is not a CA name"),
    ] {
        for step in ["--stage", "--activate", "--retire"] {
            let out = mayfly(&["ca", "rotate", step, "--group", group, "--config", &cfg]);
            assert_eq!(out.status.code(), Some(1), "{group} {step}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(needle), "{group} {step}: {err}");
        }
    }
    assert_eq!(listing(), files_before);
    assert_eq!(ca.audit_count("ca_key_rotated"), 0);
}
