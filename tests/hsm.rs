//! CA keys in a PKCS#11 token, with real programs: SoftHSM2 holds the keys
//! (tokens made by `softhsm2-util`), mayfly signs through the PKCS#11
//! module, `ssh-keygen -L` reads the certificates and a real `sshd` accepts
//! them for a login. Nothing is mocked; a missing program fails the test.

#[path = "support/softhsm.rs"]
mod softhsm;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use mayfly::ca::keys::{open_ca_signer, Secret};
use mayfly::ca::pkcs11::{Pkcs11Error, Pkcs11Signer};
use mayfly::ca::{Authority, CaSigner, CertKind, CertSpec, Extension, Principal, SubjectKey};
use mayfly::config::{CaKeyConfig, CaKeyType, Pkcs11Config};
use softhsm::{softhsm, IMPORTED_LABEL, PIN, PIN_TEST_TOKEN, SERVE_TOKEN, TOKEN};
use support::now;
use support::{keygen_ed25519, temp_dir, Sshd};
use zeroize::Zeroizing;

fn config(token: &str, key_type: CaKeyType, generate: bool) -> Pkcs11Config {
    Pkcs11Config {
        module: softhsm().module().to_path_buf(),
        token_label: token.into(),
        user_key_label: "mayfly-user-ca".into(),
        host_key_label: "mayfly-host-ca".into(),
        pin_file: None,
        generate_if_missing: generate,
        key_type,
    }
}

fn pin(p: &str) -> Secret {
    Secret::new(Zeroizing::new(p.to_string()), "test PIN")
}

/// Opens (creating on first use) the key `label` of `key_type` in the test token.
fn hsm_key(label: &str, key_type: CaKeyType) -> Pkcs11Signer {
    // Tests run in parallel: two that both find no key would both create one.
    static CREATING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = CREATING.lock().unwrap_or_else(|e| e.into_inner());
    let (signer, _created) = Pkcs11Signer::open(&config(TOKEN, key_type, true), label, &pin(PIN))
        .unwrap_or_else(|e| panic!("open {label}: {e}"));
    signer
}

fn spec(subject_line: &str, serial: u64) -> CertSpec {
    let now = now();
    CertSpec {
        kind: CertKind::User,
        subject: SubjectKey::parse(subject_line).expect("subject key"),
        serial,
        key_id: format!("mayfly:hsm-test:{serial}"),
        principals: vec![Principal::parse("deploy").expect("principal")],
        valid_after: mayfly::time::UnixSecs(now - 60),
        valid_before: mayfly::time::UnixSecs(now + 300),
        extensions: vec![Extension::PermitPty],
        force_command: None,
        source_address: vec![],
    }
}

/// `ssh-keygen -L -f cert` output; panics if ssh-keygen refuses the file.
fn ssh_keygen_list(cert: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(cert)
        .output()
        .expect("run ssh-keygen -L");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ssh-keygen -L refused the certificate: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Signs a user cert for a fresh key with `signer`, checks it with
/// `ssh-keygen -L` (returned) and logs in to a real sshd with it.
fn cert_logs_in(signer: Pkcs11Signer, serial: u64) -> String {
    let dir = temp_dir("hsm-cert");
    let (key, pub_line) = keygen_ed25519(dir.path());
    let ca = Authority::new(signer);
    let cert = ca
        .mint(&spec(&pub_line, serial))
        .expect("mint with the HSM key");
    let cert_path = PathBuf::from(format!("{}-cert.pub", key.display()));
    std::fs::write(&cert_path, cert.to_openssh().expect("encode cert") + "\n").expect("write cert");
    let listing = ssh_keygen_list(&cert_path);
    assert!(listing.contains(&format!("Serial: {serial}")), "{listing}");
    assert!(listing.contains(&ca.fingerprint()), "{listing}");

    let sshd = Sshd::start(&format!("{}\n", ca.public_key_line()));
    let out = sshd.ssh("deploy", &key, &cert_path, "id -un");
    assert!(
        out.status.success(),
        "ssh with the HSM-signed certificate failed ({}):\n{}\n--- sshd log\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "deploy");
    listing
}

#[test]
fn ed25519_hsm_ca_signs_a_certificate_that_ssh_keygen_reads_and_sshd_accepts() {
    let signer = hsm_key("ed25519-ca", CaKeyType::Ed25519);
    assert!(
        signer.describe().contains("ed25519"),
        "{}",
        signer.describe()
    );
    let listing = cert_logs_in(signer, 101);
    assert!(listing.contains("Signing CA: ED25519 SHA256:"), "{listing}");
}

#[test]
fn ecdsa_p256_hsm_ca_signs_a_certificate_that_ssh_keygen_reads_and_sshd_accepts() {
    let listing = cert_logs_in(hsm_key("p256-ca", CaKeyType::EcdsaP256), 102);
    assert!(listing.contains("Signing CA: ECDSA SHA256:"), "{listing}");
    assert!(listing.contains("(using ecdsa-sha2-nistp256)"), "{listing}");
}

#[test]
fn ecdsa_p384_hsm_ca_signs_a_certificate_that_ssh_keygen_reads_and_sshd_accepts() {
    let listing = cert_logs_in(hsm_key("p384-ca", CaKeyType::EcdsaP384), 103);
    assert!(listing.contains("(using ecdsa-sha2-nistp384)"), "{listing}");
}

#[test]
fn rsa_3072_hsm_ca_signs_with_rsa_sha2_512_and_sshd_accepts() {
    let signer = hsm_key("rsa3072-ca", CaKeyType::Rsa3072);
    let line = mayfly::ca::signer::public_key_line(signer.public_key(), "x");
    let bits = Command::new("sh")
        .args([
            "-c",
            "printf '%s\\n' \"$1\" | ssh-keygen -l -f -",
            "sh",
            &line,
        ])
        .output()
        .expect("ssh-keygen -l");
    assert!(
        String::from_utf8_lossy(&bits.stdout).starts_with("3072 "),
        "{}",
        String::from_utf8_lossy(&bits.stdout)
    );
    let listing = cert_logs_in(signer, 104);
    assert!(listing.contains("Signing CA: RSA SHA256:"), "{listing}");
    assert!(listing.contains("(using rsa-sha2-512)"), "{listing}");
}

#[test]
fn key_imported_with_softhsm2_util_is_found_by_label_and_matches_ssh_keygens_public_key() {
    let hsm = softhsm();
    // generate_if_missing = false: the key must be found, never replaced.
    let (signer, created) = Pkcs11Signer::open(
        &config(TOKEN, CaKeyType::Ed25519, false),
        IMPORTED_LABEL,
        &pin(PIN),
    )
    .expect("open the imported key");
    assert!(!created);
    let ours = mayfly::ca::signer::public_key_line(signer.public_key(), "");
    let theirs = hsm.imported_public_key();
    assert_eq!(
        ours.split_whitespace().take(2).collect::<Vec<_>>(),
        theirs.split_whitespace().take(2).collect::<Vec<_>>()
    );
    cert_logs_in(signer, 105);
}

#[test]
fn generated_key_is_created_once_then_found_again() {
    let cfg = config(TOKEN, CaKeyType::EcdsaP256, true);
    let (a, created_a) = Pkcs11Signer::open(&cfg, "created-once", &pin(PIN)).expect("first open");
    let (b, created_b) = Pkcs11Signer::open(&cfg, "created-once", &pin(PIN)).expect("second open");
    assert!(created_a);
    assert!(!created_b);
    assert_eq!(a.public_key(), b.public_key());
}

#[test]
fn missing_key_without_generate_if_missing_is_an_error_naming_token_and_label() {
    let err = Pkcs11Signer::open(
        &config(TOKEN, CaKeyType::Ed25519, false),
        "no-such-key",
        &pin(PIN),
    )
    .expect_err("a missing key must not be created");
    let msg = err.to_string();
    assert!(matches!(err, Pkcs11Error::Key { .. }), "{msg}");
    assert!(msg.contains(TOKEN) && msg.contains("no-such-key"), "{msg}");
    assert!(msg.contains("generate_if_missing"), "{msg}");
}

#[test]
fn unknown_token_is_an_error_listing_the_tokens_found() {
    let err = Pkcs11Signer::open(
        &config("no-such-token", CaKeyType::Ed25519, true),
        "k",
        &pin(PIN),
    )
    .expect_err("unknown token");
    let msg = err.to_string();
    assert!(msg.contains("no-such-token"), "{msg}");
    assert!(msg.contains(&format!("{TOKEN:?}")), "{msg}");
    assert!(msg.contains("libsofthsm2.so"), "{msg}");
}

#[test]
fn wrong_pin_fails_naming_the_token_and_the_pin_source_but_not_the_pin() {
    let wrong = "not-the-pin-31337";
    let err = Pkcs11Signer::open(
        &config(PIN_TEST_TOKEN, CaKeyType::Ed25519, true),
        "k",
        &Secret::new(Zeroizing::new(wrong.to_string()), "file /etc/mayfly/pin"),
    )
    .expect_err("wrong PIN");
    let msg = err.to_string();
    assert!(matches!(err, Pkcs11Error::Login { .. }), "{msg}");
    assert!(msg.contains(PIN_TEST_TOKEN), "{msg}");
    assert!(msg.contains("file /etc/mayfly/pin"), "{msg}");
    assert!(!msg.contains(wrong), "the PIN leaked into: {msg}");
    assert!(
        !format!("{err:?}").contains(wrong),
        "the PIN leaked into Debug"
    );
}

#[test]
fn open_ca_signer_reads_the_pin_from_pin_file_or_systemd_credential() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("hsm-pin");
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).expect("write pin file");
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut p = config(TOKEN, CaKeyType::Ed25519, true);
    p.pin_file = Some(pin_file);
    let cfg = CaKeyConfig::Pkcs11(p.clone());
    let (user, _) = open_ca_signer(&cfg, dir.path(), "user_ca", &|_| None).expect("user CA");
    let (host, _) = open_ca_signer(&cfg, dir.path(), "host_ca", &|_| None).expect("host CA");
    assert!(
        user.describe().contains("\"mayfly-user-ca\""),
        "{}",
        user.describe()
    );
    assert!(
        host.describe().contains("\"mayfly-host-ca\""),
        "{}",
        host.describe()
    );
    assert_ne!(user.public_key(), host.public_key());
    // Nothing is written to data_dir for a token key.
    assert!(!dir.path().join("user_ca").exists());

    // Without pin_file: $CREDENTIALS_DIRECTORY/mayfly-pkcs11-pin.
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).expect("mkdir creds");
    std::fs::write(creds.join("mayfly-pkcs11-pin"), PIN).expect("write credential");
    // systemd makes credentials 0400.
    std::fs::set_permissions(
        creds.join("mayfly-pkcs11-pin"),
        std::fs::Permissions::from_mode(0o400),
    )
    .expect("chmod credential");
    p.pin_file = None;
    let cfg = CaKeyConfig::Pkcs11(p);
    let creds_s = creds.to_str().expect("utf-8").to_string();
    let env = move |k: &str| (k == "CREDENTIALS_DIRECTORY").then(|| creds_s.clone());
    let (again, created) =
        open_ca_signer(&cfg, dir.path(), "user_ca", &env).expect("via credential");
    assert!(!created);
    assert_eq!(again.public_key(), user.public_key());
    // No source at all names the three places.
    let err = open_ca_signer(&cfg, dir.path(), "user_ca", &|_| None)
        .err()
        .expect("no PIN source");
    let msg = err.to_string();
    for needle in ["pin_file", "mayfly-pkcs11-pin", "MAYFLY_PKCS11_PIN"] {
        assert!(msg.contains(needle), "{msg}");
    }
}

#[test]
fn concurrent_signatures_from_many_threads_all_verify() {
    use signature::Verifier;
    for (label, kt) in [
        ("ed25519-ca", CaKeyType::Ed25519),
        ("p256-ca", CaKeyType::EcdsaP256),
    ] {
        let signer = Arc::new(hsm_key(label, kt));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = signer.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let msg = format!("thread {t} message {i}");
                        let sig = s.sign(msg.as_bytes()).expect("sign");
                        s.public_key()
                            .verify(msg.as_bytes(), &sig)
                            .expect("signature verifies");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("signing thread");
        }
        assert!(
            signer.idle_sessions() >= 1,
            "the login session must stay open"
        );
    }
}

#[test]
fn ec_key_without_a_public_key_object_is_an_error_that_says_so() {
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;
    let label = "no-public-object";
    drop(hsm_key(label, CaKeyType::EcdsaP256));
    // Remove the public half, as when only a private key was imported.
    let ctx = mayfly::ca::pkcs11::shared_context(softhsm().module()).expect("module");
    let slot = ctx
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|i| i.label().trim_end() == TOKEN)
                .unwrap_or(false)
        })
        .expect("test token");
    let rw = ctx.open_rw_session(slot).expect("rw session");
    match rw.login(UserType::User, Some(&cryptoki::types::AuthPin::from(PIN))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => panic!("login: {e}"),
    }
    let public = rw
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .expect("find public key");
    assert_eq!(public.len(), 1);
    rw.destroy_object(public[0]).expect("destroy public key");

    let err = Pkcs11Signer::open(
        &config(TOKEN, CaKeyType::EcdsaP256, false),
        label,
        &pin(PIN),
    )
    .expect_err("no public key to read");
    let msg = err.to_string();
    assert!(
        msg.contains(label) && msg.contains("public key object"),
        "{msg}"
    );
}

#[test]
fn mayfly_serve_signs_with_the_token_key_and_rotation_of_it_is_refused() {
    let secrets = temp_dir("hsm-serve-secrets");
    let pin_file = secrets.path().join("pin");
    std::fs::write(&pin_file, PIN).expect("write PIN file");
    std::fs::set_permissions(
        &pin_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod PIN file");
    let extra = format!(
        "[ca]\nbackend = \"pkcs11\"\npkcs11_module = {:?}\ntoken_label = {SERVE_TOKEN:?}\n\
         user_key_label = \"serve-user-ca\"\nhost_key_label = \"serve-host-ca\"\n\
         pin_file = {:?}\ngenerate_if_missing = true\n",
        softhsm().module().display().to_string(),
        pin_file.display().to_string(),
    );
    let ca = support::Mayfly::start(&extra, &[]);
    let cfg = ca.config_path().to_str().expect("utf8").to_string();
    let served = support::http::get(&format!("{}/v1/ca/user.pub", ca.url())).expect("GET");
    assert_eq!(served.status, 200);
    let fp = mayfly::ca::signer::fingerprint_of_line(served.text().trim());
    assert!(fp.starts_with("SHA256:"), "{fp}");

    // `ca status` opens the same key in the token; nothing is on disk.
    let status = support::ok(support::mayfly(&["ca", "status", "--config", &cfg]));
    let user_row = status
        .lines()
        .find(|l| l.starts_with("user "))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(user_row.contains(&fp), "{status}");
    assert!(user_row.contains("PKCS#11 token"), "{status}");
    assert!(!ca.data_dir().join("user_ca").exists());
    assert!(!ca.data_dir().join("host_ca").exists());

    let out = support::mayfly(&["ca", "rotate", "--stage", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rotation of PKCS#11 keys is not supported"),
        "{err}"
    );
    assert!(!ca.data_dir().join("user_ca.next").exists());
    assert_eq!(ca.audit_count("ca_key_rotated"), 0);
}
