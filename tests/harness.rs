//! Self-tests of the integration-test harness in `tests/support`: the real
//! OIDC provider, sshd and the mayfly server start, behave as the other
//! tests assume, and fail loudly when they cannot.

mod support;

use std::collections::HashSet;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use support::oidc::{ACCESS_TOKEN_TTL, AUDIENCE, RESOURCE};
use support::{http, keygen_ed25519, sign_user_cert, ClientSpec, Mayfly, Oidc, Sshd};

/// Verifies `token` the way a relying party would: key chosen by the
/// header's kid from the JWKS that discovery points at, then signature,
/// issuer, audience and expiry.
fn verify_with_discovered_jwks(oidc: &Oidc, token: &str, alg: Algorithm) -> Value {
    let discovery = http::get(&oidc.discovery_url())
        .expect("GET discovery")
        .json();
    assert_eq!(discovery["issuer"], json!(oidc.issuer));
    let jwks_uri = discovery["jwks_uri"]
        .as_str()
        .expect("jwks_uri in discovery");
    let jwks: JwkSet =
        serde_json::from_slice(&http::get(jwks_uri).expect("GET jwks").body).expect("JWKS parses");

    let header = decode_header(token).expect("token header decodes");
    assert_eq!(header.alg, alg, "header alg");
    let kid = header.kid.expect("token header has a kid");
    let jwk = jwks
        .find(&kid)
        .unwrap_or_else(|| panic!("kid {kid} not in the JWKS"));
    let key = DecodingKey::from_jwk(jwk).expect("JWK makes a decoding key");

    let mut validation = Validation::new(alg);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[&oidc.issuer]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "sub", "aud"]);
    decode::<Value>(token, &key, &validation)
        .unwrap_or_else(|e| panic!("token does not verify against the JWKS: {e}"))
        .claims
}

fn provider_issues_jwt_signed_with(alg_name: &str, alg: Algorithm) {
    let client = ClientSpec::new(&format!("ci-{}", alg_name.to_lowercase()), alg_name)
        .claims(json!({"repository": "acme/api", "ref": "refs/heads/main"}));
    let oidc = Oidc::start(std::slice::from_ref(&client));
    assert!(
        oidc.issuer.starts_with("http://127.0.0.1:"),
        "issuer {}",
        oidc.issuer
    );

    let token = oidc.token(&client.client_id);
    let header = decode_header(&token).expect("header");
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(
        header.kid.as_deref(),
        Some(oidc.key(alg_name).kid.as_str()),
        "signed by the {alg_name} key"
    );

    let claims = verify_with_discovered_jwks(&oidc, &token, alg);
    assert_eq!(claims["iss"], json!(oidc.issuer));
    assert_eq!(claims["sub"], json!(client.client_id));
    assert_eq!(claims["aud"], json!("mayfly"));
    assert_eq!(claims["repository"], json!("acme/api"));
    assert_eq!(claims["ref"], json!("refs/heads/main"));
    let iat = claims["iat"].as_u64().expect("iat");
    let exp = claims["exp"].as_u64().expect("exp");
    assert_eq!(exp - iat, ACCESS_TOKEN_TTL);
    assert!(!claims["jti"].as_str().expect("jti").is_empty());

    let again = oidc.token(&client.client_id);
    let again = verify_with_discovered_jwks(&oidc, &again, alg);
    assert_ne!(again["jti"], claims["jti"], "every token has its own jti");
}

#[test]
fn oidc_provider_issues_rs256_jwt_access_tokens_that_verify_against_its_jwks() {
    provider_issues_jwt_signed_with("RS256", Algorithm::RS256);
}

#[test]
fn oidc_provider_issues_es256_jwt_access_tokens_that_verify_against_its_jwks() {
    provider_issues_jwt_signed_with("ES256", Algorithm::ES256);
}

#[test]
fn oidc_provider_issues_eddsa_jwt_access_tokens_that_verify_against_its_jwks() {
    provider_issues_jwt_signed_with("EdDSA", Algorithm::EdDSA);
}

#[test]
fn oidc_provider_publishes_three_distinct_keys_and_serves_several_clients() {
    let oidc = Oidc::start(&[
        ClientSpec::new("basic", "RS256"),
        ClientSpec::new("post", "ES256").secret_post(),
        ClientSpec::new("github-like", "RS256")
            .claims(json!({"sub": "repo:acme/api:ref:refs/heads/main", "repository": "acme/api"})),
        ClientSpec::new("elsewhere", "EdDSA").audience("not-mayfly"),
    ]);
    let jwks: JwkSet = serde_json::from_value(oidc.jwks()).expect("JWKS parses");
    let kids: HashSet<_> = jwks
        .keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .collect();
    assert_eq!(
        kids.len(),
        3,
        "one key per algorithm with distinct kids: {kids:?}"
    );
    for key in &oidc.keys {
        assert!(
            kids.contains(&key.kid),
            "keys_out kid {} is in the JWKS",
            key.kid
        );
        assert!(
            key.private_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
            "PKCS#8 PEM"
        );
    }

    let post = verify_with_discovered_jwks(&oidc, &oidc.token("post"), Algorithm::ES256);
    assert_eq!(post["sub"], json!("post"));

    let github = verify_with_discovered_jwks(&oidc, &oidc.token("github-like"), Algorithm::RS256);
    assert_eq!(github["sub"], json!("repo:acme/api:ref:refs/heads/main"));

    let elsewhere = oidc.token("elsewhere");
    let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(&elsewhere)
        .expect("decodes")
        .claims;
    assert_eq!(claims["aud"], json!("not-mayfly"));

    // Without a resource indicator the token is still a JWT for mayfly.
    let plain = oidc.token_response("basic", None);
    assert_eq!(plain.status, 200, "{}", plain.text());
    let token = plain.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    verify_with_discovered_jwks(&oidc, &token, Algorithm::RS256);
    let with_resource = oidc.token_response("basic", Some(RESOURCE));
    assert_eq!(with_resource.status, 200);
}

#[test]
fn oidc_provider_refuses_a_wrong_client_secret() {
    let oidc = Oidc::start(&[ClientSpec::new("ci", "RS256")]);
    let resp = http::post_form(
        &oidc.token_endpoint,
        &[("Authorization", "Basic Y2k6d3Jvbmc=")], // ci:wrong
        &[("grant_type", "client_credentials"), ("resource", RESOURCE)],
    )
    .expect("POST token");
    assert_eq!(resp.status, 401, "{}", resp.text());
    assert_eq!(resp.json()["error"], json!("invalid_client"));
}

#[test]
fn forged_tokens_are_signed_by_the_providers_own_keys() {
    let oidc =
        Oidc::start(&[ClientSpec::new("ci", "RS256").claims(json!({"repository": "acme/api"}))]);
    for (name, alg) in [
        ("RS256", Algorithm::RS256),
        ("ES256", Algorithm::ES256),
        ("EdDSA", Algorithm::EdDSA),
    ] {
        let claims = oidc.valid_claims("ci");
        let token = oidc.forge(name, claims.clone());
        let verified = verify_with_discovered_jwks(&oidc, &token, alg);
        assert_eq!(verified, claims);
    }

    let mut expired = oidc.valid_claims("ci");
    let now = expired["iat"].as_u64().expect("iat");
    expired["iat"] = json!(now - 3600);
    expired["exp"] = json!(now - 1800);
    let token = oidc.forge("ES256", expired);
    let jwks: JwkSet = serde_json::from_value(oidc.jwks()).expect("JWKS");
    let kid = decode_header(&token).expect("header").kid.expect("kid");
    let key = DecodingKey::from_jwk(jwks.find(&kid).expect("kid in JWKS")).expect("key");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[AUDIENCE]);
    let err =
        decode::<Value>(&token, &key, &validation).expect_err("expired token must not verify");
    assert_eq!(
        err.kind(),
        &jsonwebtoken::errors::ErrorKind::ExpiredSignature
    );
}

/// A CA made with ssh-keygen, and a user key signed by it for `principals`.
struct Signed {
    _dir: tempfile::TempDir,
    ca_pub: String,
    key: std::path::PathBuf,
    cert: std::path::PathBuf,
}

fn ca_signed_user_key(principals: &[&str]) -> Signed {
    let dir = support::temp_dir("harness-ca");
    let (ca_key, ca_pub) = keygen_ed25519(dir.path());
    let (key, _) = keygen_ed25519(dir.path());
    let cert = sign_user_cert(&ca_key, &key, "harness-test", principals, "-1m:+5m", 42);
    Signed {
        _dir: dir,
        ca_pub,
        key,
        cert,
    }
}

#[test]
fn sshd_accepts_a_certificate_from_the_trusted_ca_for_a_listed_principal() {
    let signed = ca_signed_user_key(&["deploy"]);
    let sshd = Sshd::start(&signed.ca_pub);
    let out = sshd.ssh("deploy", &signed.key, &signed.cert, "id -un");
    assert!(
        out.status.success(),
        "ssh failed: {}\n--- sshd log\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "deploy\n");
    let log = sshd.log();
    assert!(log.contains("Accepted publickey for deploy"), "{log}");
    assert!(log.contains("ID harness-test (serial 42)"), "{log}");
}

#[test]
fn sshd_refuses_a_certificate_for_another_principal() {
    let signed = ca_signed_user_key(&["backup"]);
    let sshd = Sshd::start(&signed.ca_pub);

    let refused = sshd.ssh("deploy", &signed.key, &signed.cert, "id -un");
    assert_eq!(
        refused.status.code(),
        Some(255),
        "ssh must fail: {refused:?}"
    );
    assert!(refused.stdout.is_empty());
    assert!(
        !sshd.log().contains("Accepted publickey for deploy"),
        "{}",
        sshd.log()
    );

    // The same certificate does log in as its own principal, so the refusal
    // above is about the principal, not a broken set-up.
    let accepted = sshd.ssh("backup", &signed.key, &signed.cert, "id -un");
    assert!(accepted.status.success(), "{accepted:?}\n{}", sshd.log());
    assert_eq!(String::from_utf8_lossy(&accepted.stdout), "backup\n");
}

#[test]
fn sshd_refuses_a_certificate_from_an_untrusted_ca() {
    let signed = ca_signed_user_key(&["deploy"]);
    let other = ca_signed_user_key(&["deploy"]);
    let sshd = Sshd::start(&other.ca_pub);
    let out = sshd.ssh("deploy", &signed.key, &signed.cert, "id -un");
    assert_eq!(out.status.code(), Some(255), "{out:?}");
}

#[test]
fn sshd_refuses_a_certificate_listed_in_revoked_keys() {
    let signed = ca_signed_user_key(&["deploy"]);
    let dir = support::temp_dir("harness-krl");
    let krl = dir.path().join("revoked.krl");
    let sshd = Sshd::start_with_revoked_keys(&signed.ca_pub, &krl);

    let before = sshd.ssh("deploy", &signed.key, &signed.cert, "true");
    assert!(
        before.status.success(),
        "empty KRL revokes nothing: {before:?}\n{}",
        sshd.log()
    );

    support::keygen::run_ssh_keygen(&[
        "-k",
        "-f",
        krl.to_str().expect("utf-8"),
        signed.cert.to_str().expect("utf-8"),
    ]);
    let after = sshd.ssh("deploy", &signed.key, &signed.cert, "true");
    assert_eq!(
        after.status.code(),
        Some(255),
        "revoked cert must fail: {after:?}"
    );
    assert!(sshd.log().contains("revoked"), "{}", sshd.log());
}

#[test]
fn mayfly_server_starts_answers_healthz_and_keeps_its_ca_across_restart() {
    let mut mayfly = Mayfly::start("", &[]);
    let health = http::get(&format!("{}/healthz", mayfly.url())).expect("GET /healthz");
    assert_eq!(health.status, 200);

    let user_ca = |m: &Mayfly| {
        let r = http::get(&format!("{}/v1/ca/user.pub", m.url())).expect("GET /v1/ca/user.pub");
        assert_eq!(r.status, 200, "{}\n{}", r.text(), m.stderr_log());
        r.text()
    };
    let before = user_ca(&mayfly);
    assert!(
        before.starts_with("ssh-") || before.starts_with("ecdsa-"),
        "{before}"
    );
    mayfly.restart();
    assert_eq!(user_ca(&mayfly), before, "the CA key survives a restart");
}

#[test]
fn postgres_cluster_serves_fresh_databases_stops_restarts_and_promotes_a_standby() {
    let pg = support::Postgres::start();
    let a = pg.create_database();
    let b = pg.create_database();
    assert_ne!(a.name, b.name);
    a.psql("CREATE TABLE t (v int); INSERT INTO t VALUES (7)");
    assert_eq!(a.psql("SELECT v FROM t").trim(), "7");
    // Databases are separate.
    assert_eq!(
        b.psql("SELECT count(*) FROM pg_tables WHERE tablename = 't'")
            .trim(),
        "0"
    );
    // Password authentication is on: the password file is what mayfly gets.
    let pw = std::fs::read_to_string(&a.password_file).expect("password file");
    assert!(!pw.trim().is_empty());
    assert!(a.store_toml().contains("backend = \"postgres\""));

    // A standby follows the primary, and takes over when promoted.
    let standby = pg.standby();
    assert!(standby.in_recovery());
    a.psql("INSERT INTO t VALUES (8)");
    let seen = support::wait_for(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(100),
        || (standby.db(&a.name).psql("SELECT count(*) FROM t").trim() == "2").then_some(()),
    );
    assert!(seen.is_some(), "the standby did not replay the insert");

    pg.stop();
    assert!(std::net::TcpStream::connect(("127.0.0.1", pg.port())).is_err());
    standby.promote();
    standby.db(&a.name).psql("INSERT INTO t VALUES (9)");
    pg.restart();
    assert_eq!(a.psql("SELECT count(*) FROM t").trim(), "2");
}

#[test]
fn a_running_program_is_described_by_its_state_and_where_it_waits() {
    let dir = support::temp_dir("where-it-waits");
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("30");
    let mut proc = support::process::Proc::spawn("sleeper", cmd, dir.path());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let waits = proc.where_it_waits();
    assert!(waits.contains("State:"), "{waits}");
    assert!(waits.contains("sleep:"), "{waits}");
    proc.kill();
    assert!(
        !proc.where_it_waits().contains("State:"),
        "an exited program has no state"
    );
}
