//! HTTPS with real programs: a test PKI made here with rcgen, the real
//! `mayfly serve` with `[tls]`, the real `mayfly cert`/`mayfly ssh` clients
//! and a real OIDC provider for the token; rustls as an independent TLS
//! client for handshakes, certificate rotation and client certificates.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{json, Value};
use support::process::Proc;
use support::server::{https_get, https_request, tls_client_config, tls_client_config_versions};
use support::{free_port, http, keygen_ed25519, wait_for, ClientSpec, Mayfly, Oidc};

const DEPLOY_POLICY: &str = r#"
description = "Deploy acme services from CI"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
extensions = ["permit-pty"]

[claims]
repository = "acme/*"
"#;

/// A CA that can issue certificates, written as `<name>.pem`.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: PathBuf,
}

impl TestCa {
    fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("mayfly test {name}"));
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("self-sign ca");
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, cert.pem()).expect("write ca pem");
        TestCa {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// Issues a leaf for `sans` with common name `cn`, written atomically
    /// to `<stem>.crt`/`<stem>.key` in `dir`; returns the certificate DER.
    fn issue(&self, dir: &Path, stem: &str, cn: &str, sans: &[&str]) -> Vec<u8> {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        write_atomic(&dir.join(format!("{stem}.crt")), cert.pem().as_bytes());
        write_atomic(
            &dir.join(format!("{stem}.key")),
            key.serialize_pem().as_bytes(),
        );
        cert.der().to_vec()
    }
}

fn write_atomic(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

fn toml_path(p: &Path) -> String {
    serde_json::to_string(p.to_str().expect("UTF-8 path")).expect("quote path")
}

/// Test PKI: a server CA with a server cert for localhost and 127.0.0.1.
struct Pki {
    dir: tempfile::TempDir,
    server_ca: TestCa,
}

impl Pki {
    fn new() -> Pki {
        let dir = support::temp_dir("tls");
        let server_ca = TestCa::new(dir.path(), "server-ca");
        server_ca.issue(
            dir.path(),
            "server",
            "mayfly test server",
            &["localhost", "127.0.0.1"],
        );
        Pki { dir, server_ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `[tls]` section for the server cert, plus `extra` lines.
    fn tls_toml(&self, extra: &str) -> String {
        format!(
            "\n[tls]\ncert_file = {}\nkey_file = {}\n{extra}\n",
            toml_path(&self.path("server.crt")),
            toml_path(&self.path("server.key")),
        )
    }
}

fn run_mayfly(args: &[&str], token: &str) -> std::process::Output {
    Command::new(Mayfly::bin())
        .args(args)
        .env("MAYFLY_TOKEN", token)
        .env_remove("MAYFLY_SERVER")
        .env_remove("MAYFLY_CA_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("run mayfly")
}

#[test]
fn mayfly_cert_over_https_with_ca_file_gets_a_certificate_and_without_it_fails_on_the_certificate()
{
    let pki = Pki::new();
    let oidc = Oidc::start(&[
        ClientSpec::new("deploy-rs", "RS256").claims(json!({"repository": "acme/api"}))
    ]);
    let ca = Mayfly::start_tls(
        &format!("{}{}", oidc.issuer_toml("ci"), pki.tls_toml("")),
        &[("deploy", DEPLOY_POLICY)],
        &pki.server_ca.pem,
    );
    let ca_file = pki.server_ca.pem.display().to_string();

    // By host name and by IP address (both are in the server cert's SANs).
    for server in [ca.https_url(), format!("https://127.0.0.1:{}", ca.port())] {
        let out_dir = pki.path(&format!("out-{}", server.len()));
        let out_dir_s = out_dir.display().to_string();
        let out = run_mayfly(
            &[
                "cert",
                "--server",
                &server,
                "--ca-file",
                &ca_file,
                "--role",
                "deploy",
                "--out",
                &out_dir_s,
            ],
            &oidc.token("deploy-rs"),
        );
        assert!(
            out.status.success(),
            "{server}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            ca.stderr_log()
        );
        let cert = std::fs::read_to_string(out_dir.join("id_ed25519-cert.pub")).expect("cert");
        assert!(
            cert.starts_with("ssh-ed25519-cert-v01@openssh.com "),
            "{cert}"
        );
    }
    // ConnectInfo reached the handler over TLS: the audit row has the peer.
    let addrs: Vec<String> = ca
        .audit(&["--event", "cert_issued"])
        .iter()
        .map(|r| {
            r["source"]["address"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert!(
        addrs.iter().all(|a| a.starts_with("127.0.0.1:")),
        "{addrs:?}"
    );

    // `mayfly ssh` takes --ca-file too (ssh itself replaced by `true`).
    let out = run_mayfly(
        &[
            "ssh",
            "--server",
            &ca.https_url(),
            "--ca-file",
            &ca_file,
            "--role",
            "deploy",
            "--ssh-program",
            "true",
            "--",
            "deploy@host",
        ],
        &oidc.token("deploy-rs"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without --ca-file the built-in roots do not know the test CA.
    let out = run_mayfly(
        &[
            "cert",
            "--server",
            &ca.https_url(),
            "--role",
            "deploy",
            "--out",
            &unused_out(),
        ],
        &oidc.token("deploy-rs"),
    );
    // Exit 5: the CA cannot be reached (its TLS certificate is not trusted).
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("certificate") && err.contains("UnknownIssuer") && err.contains("--ca-file"),
        "{err}"
    );

    // A CA file of another CA is no better.
    let other = TestCa::new(pki.dir.path(), "other-ca");
    let out = run_mayfly(
        &[
            "cert",
            "--server",
            &ca.https_url(),
            "--ca-file",
            &other.pem.display().to_string(),
            "--role",
            "deploy",
            "--out",
            &unused_out(),
        ],
        &oidc.token("deploy-rs"),
    );
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate"), "{err}");

    // --ca-file with plain http is a mistake, said before any token is spent.
    let out = run_mayfly(
        &[
            "cert",
            "--server",
            "http://127.0.0.1:1",
            "--ca-file",
            &ca_file,
            "--role",
            "deploy",
        ],
        "unused",
    );
    // Exit 2: a usage error, said before any token is spent.
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("https://"), "{err}");
}

#[test]
fn https_speaks_tls_1_3_and_1_2_and_offers_http_1_1() {
    let pki = Pki::new();
    let ca = Mayfly::start_tls(&pki.tls_toml(""), &[], &pki.server_ca.pem);
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let config = tls_client_config_versions(&pki.server_ca.pem, None, versions);
        let r = https_get(ca.port(), "localhost", config, "/v1/ca/user.pub").expect("https");
        assert_eq!(r.response.status, 200);
        assert!(
            r.response.text().starts_with("ssh-ed25519 "),
            "{}",
            r.response.text()
        );
    }
    let mut h2_only = (*tls_client_config(&pki.server_ca.pem, None)).clone();
    h2_only.alpn_protocols = vec![b"h2".to_vec()];
    let err = https_get(ca.port(), "localhost", h2_only.into(), "/healthz")
        .expect_err("h2 is not offered");
    assert!(err.to_string().contains("alert"), "{err}");
    let mut h1 = (*tls_client_config(&pki.server_ca.pem, None)).clone();
    h1.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let r = https_get(ca.port(), "localhost", h1.into(), "/healthz").expect("https");
    assert_eq!(r.alpn.as_deref(), Some(&b"http/1.1"[..]));
    // The JSON error shape comes back over TLS too.
    let r = https_get(
        ca.port(),
        "127.0.0.1",
        tls_client_config(&pki.server_ca.pem, None),
        "/nope",
    )
    .expect("https");
    assert_eq!(r.response.status, 404);
    assert_eq!(r.response.json()["error"], json!("not_found"));
}

#[test]
fn rotated_certificate_files_are_served_within_the_reload_interval_and_a_bad_file_keeps_the_old_one(
) {
    let pki = Pki::new();
    let ca = Mayfly::start_tls(
        &pki.tls_toml("reload_interval = \"1s\""),
        &[],
        &pki.server_ca.pem,
    );
    let served = || {
        https_get(
            ca.port(),
            "localhost",
            tls_client_config(&pki.server_ca.pem, None),
            "/healthz",
        )
        .expect("https /healthz")
        .server_cert
    };
    let first = served();

    // A broken certificate file: logged, the old certificate stays.
    write_atomic(
        &pki.path("server.crt"),
        b"-----BEGIN CERTIFICATE-----\nnot base64!\n",
    );
    let logged = wait_for(Duration::from_secs(15), Duration::from_millis(200), || {
        ca.stderr_log()
            .contains("TLS certificate not reloaded")
            .then_some(())
    });
    assert!(logged.is_some(), "{}", ca.stderr_log());
    assert!(
        ca.stderr_log().contains("server.crt"),
        "{}",
        ca.stderr_log()
    );
    assert_eq!(served(), first, "the old certificate is still served");

    // A new valid pair (as cert-manager or certbot would write it).
    let second = pki.server_ca.issue(
        pki.dir.path(),
        "server",
        "mayfly test server (rotated)",
        &["localhost", "127.0.0.1"],
    );
    assert_ne!(second, first);
    let rotated = wait_for(Duration::from_secs(15), Duration::from_millis(200), || {
        (served() == second).then_some(())
    });
    assert!(
        rotated.is_some(),
        "new certificate not served:\n{}",
        ca.stderr_log()
    );
    assert!(
        ca.stderr_log().contains("TLS certificate reloaded"),
        "{}",
        ca.stderr_log()
    );
}

#[test]
fn client_certificates_are_requested_not_required_and_an_unknown_ca_is_refused_at_handshake() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let admin_ca = TestCa::new(dir, "admin-ca");
    admin_ca.issue(dir, "alice", "alice", &[]);
    let rogue_ca = TestCa::new(dir, "rogue-ca");
    rogue_ca.issue(dir, "mallory", "alice", &[]);
    let ca = Mayfly::start_tls(
        &pki.tls_toml(&format!("client_ca_file = {}", toml_path(&admin_ca.pem))),
        &[],
        &pki.server_ca.pem,
    );
    let get = |client: Option<(&Path, &Path)>| {
        https_get(
            ca.port(),
            "localhost",
            tls_client_config(&pki.server_ca.pem, client),
            "/healthz",
        )
    };
    // Bots: no client certificate, still served.
    assert_eq!(get(None).expect("no client cert").response.status, 200);
    // Operators: a certificate from the client CA.
    let alice = (pki.path("alice.crt"), pki.path("alice.key"));
    assert_eq!(
        get(Some((&alice.0, &alice.1)))
            .expect("client cert from the client CA")
            .response
            .status,
        200
    );
    // A certificate from another CA never reaches HTTP.
    let mallory = (pki.path("mallory.crt"), pki.path("mallory.key"));
    let err = get(Some((&mallory.0, &mallory.1))).expect_err("unknown client CA");
    // Usually rustls' "received fatal alert: UnknownCA"; the server may close
    // the socket before the alert is read, which the client sees as a reset.
    let msg = err.to_string();
    assert!(
        ["alert", "UnknownCA", "reset", "Broken pipe"]
            .iter()
            .any(|m| msg.contains(m)),
        "{msg}"
    );
    // The server is unharmed.
    assert_eq!(get(None).expect("still serving").response.status, 200);
}

/// Runs `mayfly serve --config CONFIG ARGS...` and returns the process.
fn spawn_serve(dir: &Path, config: &str, args: &[&str]) -> Proc {
    let config_path = dir.join("mayfly.toml");
    std::fs::write(&config_path, config).expect("write mayfly.toml");
    std::fs::create_dir_all(dir.join("ca-policy")).expect("policy dir");
    let mut cmd = Command::new(Mayfly::bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(&config_path)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MAYFLY_") {
            cmd.env_remove(key);
        }
    }
    Proc::spawn("mayfly", cmd, dir)
}

fn base_config(dir: &Path, listen: &str) -> String {
    format!(
        "listen = \"{listen}\"\ndata_dir = {}\npolicy_dir = {}\n",
        toml_path(&dir.join("data")),
        toml_path(&dir.join("ca-policy")),
    )
}

fn exits(proc: &mut Proc) -> Option<std::process::ExitStatus> {
    wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
        proc.exited()
    })
}

#[test]
fn plain_http_on_a_network_address_is_refused_with_what_to_do_unless_insecure_http() {
    let dir = support::temp_dir("tls-listen");
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let mut proc = spawn_serve(dir.path(), &base_config(dir.path(), &listen), &[]);
    let status = exits(&mut proc).unwrap_or_else(|| panic!("still running:\n{}", proc.report()));
    assert!(!status.success(), "{}", proc.report());
    let err = proc.stderr();
    assert!(err.contains("refusing to serve plain HTTP"), "{err}");
    assert!(err.contains(&listen), "{err}");
    assert!(err.contains("[tls]") && err.contains("cert_file"), "{err}");
    assert!(err.contains("--insecure-http"), "{err}");
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before the refusal"
    );

    // The CLI flag and the config key both allow it, with a loud warning.
    for (config, args) in [
        (base_config(dir.path(), &listen), &["--insecure-http"][..]),
        (
            format!("insecure_http = true\n{}", base_config(dir.path(), &listen)),
            &[][..],
        ),
    ] {
        let run_dir = support::temp_dir("tls-listen-ok");
        let config = config.replace(
            &toml_path(&dir.path().join("data")),
            &toml_path(&run_dir.path().join("data")),
        );
        let mut proc = spawn_serve(run_dir.path(), &config, args);
        let healthz = format!("http://127.0.0.1:{port}/healthz");
        let up = wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
            if proc.exited().is_some() {
                return Some(false);
            }
            http::get(&healthz)
                .ok()
                .filter(|r| r.status == 200)
                .map(|_| true)
        });
        assert_eq!(up, Some(true), "{}", proc.report());
        let log = proc.stderr();
        assert!(
            log.contains("DANGER") && log.contains("insecure_http"),
            "{log}"
        );
        proc.terminate(Duration::from_secs(10));
    }
}

#[test]
fn unusable_tls_files_stop_the_server_naming_the_file() {
    let pki = Pki::new();
    let dir = support::temp_dir("tls-bad");
    // The key of another certificate.
    let other = support::temp_dir("tls-other");
    pki.server_ca.issue(other.path(), "x", "x", &["localhost"]);
    let config = format!(
        "{}\n[tls]\ncert_file = {}\nkey_file = {}\n",
        base_config(dir.path(), &format!("127.0.0.1:{}", free_port())),
        toml_path(&pki.path("server.crt")),
        toml_path(&other.path().join("x.key")),
    );
    let mut proc = spawn_serve(dir.path(), &config, &[]);
    let status = exits(&mut proc).unwrap_or_else(|| panic!("still running:\n{}", proc.report()));
    assert!(!status.success());
    let err = proc.stderr();
    assert!(
        err.contains("x.key") && err.contains("is not the private key of the certificate"),
        "{err}"
    );
}

#[test]
fn admin_endpoints_can_require_a_client_certificate_in_addition_to_the_admin_token() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let admin_ca = TestCa::new(dir, "admin-ca");
    admin_ca.issue(dir, "alice", "alice", &[]);
    let oidc = Oidc::start(&[
        ClientSpec::new("sre", "ES256").claims(json!({"groups": ["sre"]})),
        ClientSpec::new("bot", "ES256").claims(json!({"repository": "acme/api"})),
    ]);
    let ca = Mayfly::start_tls(
        &format!(
            "{}\n[[admin]]\nissuer = \"ci\"\n[admin.claims]\ngroups = \"sre\"\n{}",
            oidc.issuer_toml("ci"),
            pki.tls_toml(&format!(
                "client_ca_file = {}\nadmin_requires_client_cert = true",
                toml_path(&admin_ca.pem)
            ))
        ),
        &[("deploy", DEPLOY_POLICY)],
        &pki.server_ca.pem,
    );
    let alice = (pki.path("alice.crt"), pki.path("alice.key"));
    let call = |client: Option<(&Path, &Path)>, method: &str, path: &str, body: Value| {
        let auth = format!("Bearer {}", oidc.token("sre"));
        let body = if method == "GET" {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        https_request(
            ca.port(),
            "localhost",
            tls_client_config(&pki.server_ca.pem, client),
            method,
            path,
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
        .expect("https")
        .response
    };
    // A live certificate of the bot, for revoke to act on.
    let (_, public) = keygen_ed25519(dir);
    let r = https_request(
        ca.port(),
        "localhost",
        tls_client_config(&pki.server_ca.pem, None),
        "POST",
        "/v1/certs/user",
        &[
            ("Authorization", &format!("Bearer {}", oidc.token("bot"))),
            ("Content-Type", "application/json"),
        ],
        json!({"role": "deploy", "public_key": public})
            .to_string()
            .as_bytes(),
    )
    .expect("https")
    .response;
    assert_eq!(r.status, 200, "{}", r.text());
    let serial = r.json()["serial"].as_u64().expect("serial");

    // Every admin endpoint, reading or changing state, refuses a valid
    // admin token that comes without a client certificate.
    let revoke = json!({"serial": serial, "reason": "test"});
    let target = json!({"issuer": "ci", "subject": "bot", "reason": "test"});
    let calls = [
        ("GET", "/v1/admin/disabled", json!(null)),
        ("GET", "/v1/identities", json!(null)),
        ("GET", "/v1/admin/ca", json!(null)),
        ("GET", "/v1/admin/audit?limit=5", json!(null)),
        ("GET", "/v1/admin/replicas", json!(null)),
        ("POST", "/v1/admin/revoke", revoke.clone()),
        ("POST", "/v1/admin/disable", target.clone()),
        ("POST", "/v1/admin/enable", target.clone()),
    ];
    for (method, path, body) in &calls {
        let r = call(None, method, path, body.clone());
        assert_eq!(r.status, 401, "{method} {path}: {}", r.text());
        assert_eq!(
            r.json()["error"],
            "client_certificate_required",
            "{method} {path}"
        );
    }
    // Nothing changed: the certificate is not revoked, the bot not disabled.
    let r = call(
        Some((&alice.0, &alice.1)),
        "GET",
        "/v1/admin/disabled",
        json!(null),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!([]));
    // With a certificate the same token works, and the actor names both.
    let r = call(
        Some((&alice.0, &alice.1)),
        "POST",
        "/v1/admin/revoke",
        revoke,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["revoked"][0]["serial"], json!(serial));
    // With a certificate, the admin token is still required.
    let r = https_request(
        ca.port(),
        "localhost",
        tls_client_config(&pki.server_ca.pem, Some((&alice.0, &alice.1))),
        "POST",
        "/v1/admin/disable",
        &[("Content-Type", "application/json")],
        target.to_string().as_bytes(),
    )
    .expect("https")
    .response;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "missing_token");
    // The CLI from an operator's machine: --server with the admin token
    // is refused without a client certificate (401: exit 4) and works with
    // --client-cert/--client-key.
    let token_file = dir.join("sre.tok");
    std::fs::write(&token_file, oidc.token("sre")).expect("write token");
    let remote = |extra: &[&Path]| {
        let mut c = Command::new(Mayfly::bin());
        c.args([
            "ca",
            "status",
            "--json",
            "--server",
            &ca.https_url(),
            "--ca-file",
        ])
        .arg(&pki.server_ca.pem)
        .arg("--token-file")
        .arg(&token_file);
        if let [cert, key] = extra {
            c.arg("--client-cert")
                .arg(cert)
                .arg("--client-key")
                .arg(key);
        }
        c.output().expect("mayfly ca status --server")
    };
    let o = remote(&[]);
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("client_certificate_required"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = remote(&[&alice.0, &alice.1]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let keys: Value = serde_json::from_slice(&o.stdout).expect("ca status --json");
    assert_eq!(keys.as_array().map(|k| k.len()), Some(2), "{keys}");
    // Bots are unaffected.
    let r = https_get(
        ca.port(),
        "localhost",
        tls_client_config(&pki.server_ca.pem, None),
        "/v1/ca/user.pub",
    )
    .expect("https")
    .response;
    assert_eq!(r.status, 200);
    // Each refusal is audited.
    let out = Command::new(Mayfly::bin())
        .args([
            "audit",
            "search",
            "--json",
            "--event",
            "admin_denied",
            "--limit",
            "1000",
            "--config",
            ca.config_path().to_str().expect("utf8"),
        ])
        .output()
        .expect("audit search");
    let text = String::from_utf8_lossy(&out.stdout);
    let refused = text
        .lines()
        .filter(|l| l.contains("client_certificate_required"))
        .count();
    assert_eq!(refused, calls.len() + 1, "{text}");
}

/// A private directory path for `--out` that a failing request never uses.
fn unused_out() -> String {
    let d = support::binary_temp_dir("tls-out");
    d.join("out").display().to_string()
}
