//! Per-role-group CA keys: roles with `ca_group` are signed by their own
//! user CA key, so a host that trusts only that group (`mayfly host sync
//! --ca-group`) refuses certificates of every other role.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;
use support::{http, keygen_ed25519, ok, signing_ca, ClientSpec, Mayfly, Oidc, Sshd};

fn role(group: Option<&str>) -> String {
    format!(
        "description = \"d\"\nowner = \"o@example.com\"\nissuer = \"ci\"\nprincipals = [\"deploy\"]\nmax_ttl = \"10m\"\n{}[claims]\nrepository = \"acme/*\"\n",
        group.map(|g| format!("ca_group = \"{g}\"\n")).unwrap_or_default()
    )
}

fn fingerprint(line: &str) -> String {
    let dir = support::temp_dir("fp");
    let p = dir.path().join("k.pub");
    std::fs::write(&p, line).expect("write");
    let out = ok(Command::new("ssh-keygen")
        .arg("-l")
        .arg("-f")
        .arg(&p)
        .output()
        .expect("ssh-keygen -l"));
    out.split_whitespace().nth(1).expect("fp").to_string()
}

#[test]
fn a_ca_group_has_its_own_key_and_hosts_can_trust_only_that_group() {
    let oidc =
        Oidc::start(&[ClientSpec::new("bot", "ES256").claims(json!({"repository": "acme/api"}))]);
    let r1 = role(None);
    let r2 = role(Some("prod"));
    let ca = Mayfly::start(
        &oidc.issuer_toml("ci"),
        &[("deploy", r1.as_str()), ("prod", r2.as_str())],
    );
    let work = support::temp_dir("groups");
    let cert = |role: &str| -> (PathBuf, PathBuf) {
        let (key, public) = keygen_ed25519(work.path());
        let auth = format!("Bearer {}", oidc.token("bot"));
        let r = http::post_json(
            &format!("{}/v1/certs/user", ca.url()),
            &[("Authorization", auth.as_str())],
            &json!({"role": role, "public_key": public}),
        )
        .expect("POST");
        assert_eq!(r.status, 200, "{}", r.text());
        let p = PathBuf::from(format!("{}-cert.pub", key.display()));
        std::fs::write(
            &p,
            format!("{}\n", r.json()["certificate"].as_str().expect("cert")),
        )
        .expect("write");
        (key, p)
    };
    let get = |q: &str| http::get(&format!("{}/v1/ca/user.pub{q}", ca.url())).expect("get");
    let all = get("").text();
    assert_eq!(all.lines().count(), 2, "{all}");
    let prod_line = get("?group=prod").text();
    let default_line = get("?group=default").text();
    assert_eq!(prod_line.lines().count(), 1);
    assert_ne!(prod_line, default_line);
    assert_eq!(get("?group=nope").status, 404);

    let d = cert("deploy");
    let p = cert("prod");
    assert_eq!(signing_ca(&d.1), fingerprint(&default_line));
    assert_eq!(signing_ca(&p.1), fingerprint(&prod_line));

    // A production host syncs only the prod group's key.
    let sync_dir = work.path().join("sync");
    ok(Command::new(Mayfly::bin())
        .args([
            "host",
            "sync",
            "--server",
            &ca.url(),
            "--ca-group",
            "prod",
            "--dir",
        ])
        .arg(&sync_dir)
        .output()
        .expect("host sync"));
    let synced = std::fs::read_to_string(sync_dir.join("user_ca.pub")).expect("synced");
    assert_eq!(synced, prod_line);
    let sshd = Sshd::start_with_revoked_keys(&synced, &sync_dir.join("revoked.krl"));
    assert!(
        sshd.ssh("deploy", &p.0, &p.1, "true").status.success(),
        "prod cert on a prod host"
    );
    assert!(
        !sshd.ssh("deploy", &d.0, &d.1, "true").status.success(),
        "other roles' certs are refused"
    );

    let status = ok(Command::new(Mayfly::bin())
        .args([
            "ca",
            "status",
            "--config",
            ca.config_path().to_str().expect("utf8"),
        ])
        .output()
        .expect("ca status"));
    assert!(status.contains("user:prod"), "{status}");
}
