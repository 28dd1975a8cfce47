//! The file-backed CA key encrypted at rest in OpenSSH's own format, checked
//! with the real `ssh-keygen` (which must read what mayfly writes, and
//! whose `ssh-keygen -p` output mayfly must read) and the real `mayfly
//! serve` (which must start with the passphrase and refuse to start without
//! the right one). Run with `--release`: bcrypt-pbkdf is slow in debug builds.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use mayfly::ca::keys::open_ca_signer;
use mayfly::ca::KeyFileError;
use mayfly::config::{CaKeyConfig, KeyProtection};
use support::{http, temp_dir, Mayfly};

const PASSPHRASE: &str = "correct horse battery staple";

fn protected(passphrase_file: Option<PathBuf>) -> CaKeyConfig {
    CaKeyConfig::File {
        protection: KeyProtection::Passphrase,
        passphrase_file,
    }
}

fn plain() -> CaKeyConfig {
    CaKeyConfig::File {
        protection: KeyProtection::None,
        passphrase_file: None,
    }
}

fn secret_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).expect("write secret file");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    p
}

/// `ssh-keygen -y -P <passphrase> -f <key>`: the public key line, or `Err(stderr)`.
fn ssh_keygen_public(key: &Path, passphrase: &str) -> Result<String, String> {
    let out = Command::new("ssh-keygen")
        .args(["-y", "-P", passphrase, "-f"])
        .arg(key)
        .output()
        .expect("run ssh-keygen -y");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The first two fields (type, base64) of an OpenSSH public key line.
fn key_fields(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn line_of(signer: &dyn mayfly::ca::CaSigner) -> String {
    key_fields(&mayfly::ca::signer::public_key_line(
        signer.public_key(),
        "",
    ))
}

#[test]
fn encrypted_key_round_trips_and_ssh_keygen_reads_it_only_with_the_passphrase() {
    let dir = temp_dir("enc-roundtrip");
    let pass = secret_file(dir.path(), "pass", &format!("{PASSPHRASE}\n"));
    let cfg = protected(Some(pass));
    let (k1, created) = open_ca_signer(&cfg, dir.path(), "user_ca", &|_| None).expect("create");
    assert!(created);
    let key_path = dir.path().join("user_ca");
    let mode = std::fs::metadata(&key_path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&key_path).expect("read key");
    let on_disk = ssh_key::PrivateKey::from_openssh(&text).expect("OpenSSH key format");
    assert!(on_disk.is_encrypted());
    assert_eq!(on_disk.cipher().as_str(), "aes256-ctr");
    assert!(
        matches!(on_disk.kdf(), ssh_key::Kdf::Bcrypt { rounds: 16, .. }),
        "{:?}",
        on_disk.kdf()
    );
    assert!(
        k1.describe()
            .contains("(encrypted: bcrypt-pbkdf 16 rounds, aes256-ctr)"),
        "{}",
        k1.describe()
    );

    // The trailing newline of the file is not part of the passphrase.
    let theirs = ssh_keygen_public(&key_path, PASSPHRASE).expect("ssh-keygen decrypts it");
    assert_eq!(key_fields(&theirs), line_of(k1.as_ref()));
    assert!(ssh_keygen_public(&key_path, "wrong").is_err());
    assert!(ssh_keygen_public(&key_path, "").is_err());

    let (k2, created) = open_ca_signer(&cfg, dir.path(), "user_ca", &|_| None).expect("reopen");
    assert!(!created);
    assert_eq!(line_of(k2.as_ref()), line_of(k1.as_ref()));
}

#[test]
fn plain_key_is_refused_with_how_to_encrypt_it_and_ssh_keygen_p_output_is_read() {
    let dir = temp_dir("enc-migrate");
    let (k_plain, _) = open_ca_signer(&plain(), dir.path(), "user_ca", &|_| None).expect("plain");
    assert!(
        k_plain.describe().ends_with("(unencrypted)"),
        "{}",
        k_plain.describe()
    );
    let key_path = dir.path().join("user_ca");
    let pass = secret_file(dir.path(), "pass", PASSPHRASE);
    let err = open_ca_signer(
        &protected(Some(pass.clone())),
        dir.path(),
        "user_ca",
        &|_| None,
    )
    .err()
    .expect("a plain key must be refused under key_protection = passphrase");
    let msg = err.to_string();
    assert!(matches!(err, KeyFileError::NotEncrypted { .. }), "{msg}");
    assert!(
        msg.contains(&format!("ssh-keygen -p -f {}", key_path.display())),
        "{msg}"
    );
    // The file is left alone.
    assert!(!std::fs::read_to_string(&key_path).expect("read").is_empty());

    // Do what the message says, with the real ssh-keygen.
    let out = Command::new("ssh-keygen")
        .args(["-q", "-p", "-P", "", "-N", PASSPHRASE, "-f"])
        .arg(&key_path)
        .output()
        .expect("run ssh-keygen -p");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (k_enc, created) = open_ca_signer(&protected(Some(pass)), dir.path(), "user_ca", &|_| None)
        .expect("encrypted");
    assert!(!created);
    assert_eq!(line_of(k_enc.as_ref()), line_of(k_plain.as_ref()));
    assert!(
        k_enc.describe().contains("(encrypted"),
        "{}",
        k_enc.describe()
    );
}

#[test]
fn wrong_passphrase_is_an_error_naming_the_file_and_source_but_not_the_passphrase() {
    let dir = temp_dir("enc-wrong");
    let good = secret_file(dir.path(), "good", PASSPHRASE);
    open_ca_signer(&protected(Some(good)), dir.path(), "user_ca", &|_| None).expect("create");
    let wrong = "hunter2-not-it";
    let bad = secret_file(dir.path(), "bad", wrong);
    let err = open_ca_signer(
        &protected(Some(bad.clone())),
        dir.path(),
        "user_ca",
        &|_| None,
    )
    .err()
    .expect("wrong passphrase");
    let msg = err.to_string();
    assert!(matches!(err, KeyFileError::WrongPassphrase { .. }), "{msg}");
    assert!(
        msg.contains(&dir.path().join("user_ca").display().to_string()),
        "{msg}"
    );
    assert!(msg.contains(&bad.display().to_string()), "{msg}");
    assert!(
        !msg.contains(wrong) && !format!("{err:?}").contains(wrong),
        "{msg}"
    );
}

#[test]
fn missing_passphrase_names_all_three_places() {
    let dir = temp_dir("enc-missing");
    let err = open_ca_signer(&protected(None), dir.path(), "user_ca", &|_| None)
        .err()
        .expect("no passphrase source");
    let msg = err.to_string();
    for needle in [
        "passphrase_file",
        "$CREDENTIALS_DIRECTORY/mayfly-ca-passphrase",
        "MAYFLY_CA_PASSPHRASE",
    ] {
        assert!(msg.contains(needle), "{needle} missing from: {msg}");
    }
    assert!(
        !dir.path().join("user_ca").exists(),
        "no key without a passphrase"
    );
}

#[test]
fn passphrase_comes_from_the_systemd_credential_then_the_environment() {
    let dir = temp_dir("enc-sources");
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).expect("mkdir creds");
    let cred = secret_file(&creds, "mayfly-ca-passphrase", PASSPHRASE);
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o400)).expect("chmod 400");
    let creds_s = creds.display().to_string();
    let from_cred = move |k: &str| match k {
        "CREDENTIALS_DIRECTORY" => Some(creds_s.clone()),
        "MAYFLY_CA_PASSPHRASE" => Some("not used: the credential comes first".into()),
        _ => None,
    };
    let (k1, created) =
        open_ca_signer(&protected(None), dir.path(), "host_ca", &from_cred).expect("credential");
    assert!(created);
    let from_env = |k: &str| (k == "MAYFLY_CA_PASSPHRASE").then(|| PASSPHRASE.to_string());
    let (k2, _) = open_ca_signer(&protected(None), dir.path(), "host_ca", &from_env).expect("env");
    assert_eq!(line_of(k1.as_ref()), line_of(k2.as_ref()));
    assert!(ssh_keygen_public(&dir.path().join("host_ca"), PASSPHRASE).is_ok());
}

#[test]
fn encrypted_key_without_key_protection_is_refused_not_replaced() {
    let dir = temp_dir("enc-none");
    let pass = secret_file(dir.path(), "pass", PASSPHRASE);
    open_ca_signer(&protected(Some(pass)), dir.path(), "user_ca", &|_| None).expect("create");
    let before = std::fs::read(dir.path().join("user_ca")).expect("read");
    let err = open_ca_signer(&plain(), dir.path(), "user_ca", &|_| None)
        .err()
        .expect("encrypted key under key_protection = none");
    assert!(matches!(err, KeyFileError::Encrypted { .. }), "{err}");
    assert!(
        err.to_string().contains("key_protection = \"passphrase\""),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("user_ca")).expect("read"),
        before
    );
}

#[test]
fn mayfly_serve_starts_with_an_encrypted_key_and_refuses_a_wrong_passphrase() {
    let secrets = temp_dir("enc-serve-secrets");
    let pass = secret_file(secrets.path(), "pass", PASSPHRASE);
    let extra = format!(
        "[ca]\nkey_protection = \"passphrase\"\npassphrase_file = {:?}\n",
        pass.display().to_string()
    );
    let mut ca = Mayfly::start(&extra, &[]);
    let key_path = ca.data_dir().join("user_ca");
    let served = http::get(&format!("{}/v1/ca/user.pub", ca.url())).expect("GET user.pub");
    assert_eq!(served.status, 200);
    let on_disk = ssh_keygen_public(&key_path, PASSPHRASE).expect("ssh-keygen decrypts the CA key");
    assert_eq!(key_fields(&served.text()), key_fields(&on_disk));
    assert!(ssh_keygen_public(&ca.data_dir().join("host_ca"), PASSPHRASE).is_ok());
    let text = std::fs::read_to_string(&key_path).expect("read the CA key");
    let on_disk_key = ssh_key::PrivateKey::from_openssh(&text).expect("OpenSSH key format");
    assert!(
        on_disk_key.is_encrypted(),
        "mayfly serve wrote an unencrypted key"
    );
    let log = ca.stderr_log();
    assert!(log.contains("(encrypted: bcrypt-pbkdf"), "{log}");
    assert!(!log.contains(PASSPHRASE), "passphrase in the log: {log}");

    let wrong = "hunter2-not-it";
    std::fs::write(&pass, wrong).expect("rewrite passphrase file");
    let report = ca
        .try_restart()
        .expect_err("a wrong passphrase must stop the server from starting");
    assert!(report.contains("exited with exit status: 1"), "{report}");
    assert!(report.contains("wrong passphrase"), "{report}");
    assert!(report.contains(&key_path.display().to_string()), "{report}");
    assert!(
        !report.contains(wrong),
        "passphrase in the output: {report}"
    );
    assert!(!report.contains("panicked"), "{report}");
}

#[test]
fn mayfly_serve_without_a_passphrase_source_exits_naming_the_three_places() {
    let report = Mayfly::try_start("[ca]\nkey_protection = \"passphrase\"\n", &[])
        .err()
        .expect("no passphrase: the server must not start");
    assert!(report.contains("exited with exit status: 1"), "{report}");
    for needle in [
        "passphrase_file",
        "mayfly-ca-passphrase",
        "MAYFLY_CA_PASSPHRASE",
    ] {
        assert!(report.contains(needle), "{needle} missing from: {report}");
    }
}

#[test]
fn mayfly_serve_on_defaults_warns_that_the_ca_key_is_unencrypted() {
    let ca = Mayfly::start("", &[]);
    let log = ca.stderr_log();
    assert!(log.contains("unencrypted"), "{log}");
    assert!(log.contains("key_protection"), "{log}");
}
