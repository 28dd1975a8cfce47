//! Rate limits and the cap on concurrently valid certificates (and revoking
//! to make room under it), against a real `mayfly serve` with tokens from
//! the real OIDC provider.

mod support;

use serde_json::json;
use support::{http, keygen_ed25519, ClientSpec, Mayfly, Oidc};

const POLICY: &str = r#"
description = "Backups, few and far between"
owner = "storage@example.com"
issuer = "ci"
principals = ["backup"]
max_ttl = "10m"
identity_rate_limit = "3/m"
max_active_certs = 2
[claims]
repository = "acme/*"
"#;

#[test]
fn identity_rate_limit_gives_429_and_active_cert_cap_gives_403() {
    let oidc = Oidc::start(&[
        ClientSpec::new("a", "ES256").claims(json!({"repository": "acme/a"})),
        ClientSpec::new("b", "ES256").claims(json!({"repository": "acme/b"})),
    ]);
    let ca = Mayfly::start(&oidc.issuer_toml("ci"), &[("backup", POLICY)]);
    let dir = support::temp_dir("limits");
    let (_, public) = keygen_ed25519(dir.path());
    let ask = |who: &str| {
        let auth = format!("Bearer {}", oidc.token(who));
        http::post_json(
            &format!("{}/v1/certs/user", ca.url()),
            &[("Authorization", auth.as_str())],
            &json!({"role": "backup", "public_key": public}),
        )
        .expect("POST")
    };
    assert_eq!(ask("a").status, 200);
    assert_eq!(ask("a").status, 200);
    // Two valid certificates: the cap says no, naming the rule.
    let r = ask("a");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "too_many_active_certs");
    assert!(r.json()["message"]
        .as_str()
        .expect("m")
        .contains("allows 2"));
    // That was the third request this minute: the fourth is rate limited.
    let r = ask("a");
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"], "rate_limited");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=20).contains(&retry), "{retry}");
    // Limits are per identity: b is unaffected.
    assert_eq!(ask("b").status, 200);
}

const ONE_AT_A_TIME: &str = r#"
description = "Backups, one certificate at a time"
owner = "storage@example.com"
issuer = "ci"
principals = ["backup"]
max_ttl = "10m"
max_active_certs = 1
[claims]
repository = "acme/*"
"#;

#[test]
fn revoking_a_certificate_makes_room_under_max_active_certs() {
    let oidc =
        Oidc::start(&[ClientSpec::new("a", "ES256").claims(json!({"repository": "acme/a"}))]);
    let ca = Mayfly::start(&oidc.issuer_toml("ci"), &[("backup", ONE_AT_A_TIME)]);
    let dir = support::temp_dir("limits-room");
    let (_, public) = keygen_ed25519(dir.path());
    let ask = || {
        let auth = format!("Bearer {}", oidc.token("a"));
        http::post_json(
            &format!("{}/v1/certs/user", ca.url()),
            &[("Authorization", auth.as_str())],
            &json!({"role": "backup", "public_key": public}),
        )
        .expect("POST")
    };
    let first = ask();
    assert_eq!(first.status, 200, "{}", first.text());
    let serial = first.json()["serial"].as_u64().expect("serial");
    // One valid certificate: the cap refuses a second, naming the rule.
    let r = ask();
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "too_many_active_certs");
    assert!(r.json()["message"]
        .as_str()
        .expect("m")
        .contains("allows 1"));

    // Revoke that one certificate by its serial, as an operator would.
    let out = std::process::Command::new(Mayfly::bin())
        .args(["revoke", "--serial", &serial.to_string(), "--config"])
        .arg(ca.config_path())
        .output()
        .expect("revoke");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("revoked serial {serial} ")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Now there is room: a new certificate is really issued...
    let r = ask();
    assert_eq!(r.status, 200, "{}", r.text());
    let again = r.json();
    assert_ne!(again["serial"].as_u64().expect("serial"), serial);
    assert!(again["certificate"]
        .as_str()
        .expect("certificate")
        .starts_with("ssh-ed25519-cert-v01@openssh.com "));
    // ...and it counts: the cap is full again.
    let r = ask();
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "too_many_active_certs");
}
