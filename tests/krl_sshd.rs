//! KRLs checked against the real OpenSSH: `ssh-keygen -Q` must judge
//! certificates made by `ssh-keygen -s` exactly as our encoder intended,
//! our parser must read what `ssh-keygen -k` writes, and a real `sshd` with
//! `RevokedKeys` pointing at our KRL must refuse revoked certificates and
//! accept the others.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use mayfly::ca::krl::{self, CertSection, KrlError, KrlSpec};
use proptest::prelude::*;
use proptest::test_runner::{TestRng, TestRunner};
use sha2::{Digest as _, Sha256};
use support::keygen::{run_ssh_keygen, ssh_keygen};
use support::{keygen_ed25519, sign_user_cert, temp_dir, Sshd};

/// Where mayfly's serials live: `start_time << 24` and up.
const SERIAL_BASE: u64 = 1_750_000_000 << 24;

/// The SSH wire blob of a public key line (`type base64 comment`).
fn wire_blob(pub_line: &str) -> Vec<u8> {
    let b64 = pub_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no key field in {pub_line:?}"));
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("public key base64")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("path is UTF-8")
}

fn write_krl(path: &Path, spec: &KrlSpec) {
    std::fs::write(path, krl::encode(spec)).expect("write KRL");
}

/// A CA key pair made by ssh-keygen: (private key path, public key blob).
fn new_ca(dir: &Path) -> (PathBuf, Vec<u8>) {
    let (key, pub_line) = keygen_ed25519(dir);
    (key, wire_blob(&pub_line))
}

/// Signs copies of one subject public key, one certificate per
/// `(serial, key_id)`, with real `ssh-keygen -s` (several in parallel).
/// Returns the certificate paths in the same order.
fn sign_many(dir: &Path, ca: &Path, subject_pub: &Path, certs: &[(u64, String)]) -> Vec<PathBuf> {
    let jobs: Vec<(PathBuf, u64, String)> = certs
        .iter()
        .enumerate()
        .map(|(i, (serial, id))| {
            let stem = dir.join(format!("probe_{i}"));
            std::fs::copy(subject_pub, format!("{}.pub", stem.display())).expect("copy pub key");
            (stem, *serial, id.clone())
        })
        .collect();
    std::thread::scope(|scope| {
        for chunk in jobs.chunks(jobs.len().div_ceil(4).max(1)) {
            scope.spawn(move || {
                for (stem, serial, id) in chunk {
                    run_ssh_keygen(&[
                        "-q",
                        "-s",
                        ca.to_str().expect("UTF-8 path"),
                        "-I",
                        id,
                        "-n",
                        "deploy",
                        "-V",
                        "+1h",
                        "-z",
                        &serial.to_string(),
                        &format!("{}.pub", stem.display()),
                    ]);
                }
            });
        }
    });
    jobs.iter()
        .map(|(stem, _, _)| PathBuf::from(format!("{}-cert.pub", stem.display())))
        .collect()
}

/// `ssh-keygen -Q -f krl files...`: which files it calls REVOKED.
fn query_revoked(krl_path: &Path, files: &[PathBuf]) -> Vec<bool> {
    let out = Command::new(ssh_keygen())
        .arg("-Q")
        .arg("-f")
        .arg(krl_path)
        .args(files)
        .output()
        .expect("run ssh-keygen -Q");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    files
        .iter()
        .map(|f| {
            let prefix = format!("{} ", f.display());
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| {
                    panic!(
                        "ssh-keygen -Q said nothing about {} (status {}):\n{stdout}\n{stderr}",
                        f.display(),
                        out.status
                    )
                });
            if line.ends_with(": REVOKED") {
                true
            } else if line.ends_with(": ok") {
                false
            } else {
                panic!("unexpected ssh-keygen -Q line: {line}")
            }
        })
        .collect()
}

/// Serials to probe for a revoked set: each run's ends and neighbours, a
/// sample inside, and some far away.
fn probes(revoked: &BTreeSet<u64>, rng: &mut TestRng, want: usize) -> Vec<u64> {
    let mut out = BTreeSet::new();
    let sorted: Vec<u64> = revoked.iter().copied().collect();
    for (i, &s) in sorted.iter().enumerate() {
        let starts_run = i == 0 || sorted[i - 1] + 1 != s;
        let ends_run = i + 1 == sorted.len() || sorted[i + 1] != s + 1;
        if starts_run {
            out.extend([s - 1, s]);
        }
        if ends_run {
            out.extend([s, s + 1]);
        }
    }
    let mut picked: Vec<u64> = out.into_iter().collect();
    while picked.len() > want * 2 / 3 {
        let i = rng.random_range(0..picked.len());
        picked.swap_remove(i);
    }
    let (lo, hi) = (sorted[0], sorted[sorted.len() - 1]);
    while picked.len() < want {
        picked.push(rng.random_range(lo - 100..hi + 100));
    }
    picked.sort_unstable();
    picked.dedup();
    picked
}

/// A random revoked set shaped like mayfly's: consecutive runs from one
/// server run, scattered singles, and dense stretches (bitmaps).
fn revoked_set(rng: &mut TestRng) -> BTreeSet<u64> {
    let mut set = BTreeSet::new();
    let mut cur = SERIAL_BASE + rng.random_range(0..1u64 << 30);
    for _ in 0..rng.random_range(3..12) {
        match rng.random_range(0..4) {
            0 => {
                let len = rng.random_range(1..5_000);
                set.extend(cur..cur + len);
                cur += len;
            }
            1 => {
                for _ in 0..rng.random_range(1..40) {
                    cur += rng.random_range(1..2_000_000);
                    set.insert(cur);
                }
            }
            _ => {
                // Dense: wider than one 16384-bit bitmap now and then.
                let stride = rng.random_range(2..6);
                for _ in 0..rng.random_range(10..8_000) {
                    cur += rng.random_range(1..=stride);
                    set.insert(cur);
                }
            }
        }
        cur += rng.random_range(2..100_000);
    }
    set
}

#[test]
fn ssh_keygen_agrees_with_our_krl_on_random_serial_sets() {
    let dir = temp_dir("krl-oracle");
    let (ca, ca_blob) = new_ca(dir.path());
    let (subject, _) = keygen_ed25519(dir.path());
    let subject_pub = PathBuf::from(format!("{}.pub", subject.display()));

    // Seeded: the same six sets on every run, so a failure reproduces.
    let mut runner = TestRunner::deterministic();
    let mut totals = krl::KrlStats::default();
    for case in 0..6 {
        let rng = runner.rng();
        let revoked = revoked_set(rng);
        let serial_probes = probes(&revoked, rng, 48);
        let revoked_ids = ["mayfly:deploy:ci:bot:1", "stolen laptop"];

        let mut certs: Vec<(u64, String)> = serial_probes
            .iter()
            .map(|&s| (s, format!("mayfly:probe:{s}")))
            .collect();
        // Key-ID revocations hold whatever the serial, including serial 0.
        certs.push((0, revoked_ids[0].to_string()));
        certs.push((
            *serial_probes.last().expect("probes") + 7_777_777,
            revoked_ids[1].to_string(),
        ));
        certs.push((0, "mayfly:not-revoked".to_string()));

        let spec = KrlSpec {
            krl_version: case,
            generated_date: 1_750_000_000,
            comment: format!("oracle case {case}"),
            certs: vec![CertSection {
                ca_key_blob: ca_blob.clone(),
                serials: revoked.iter().copied().collect(),
                key_ids: revoked_ids.iter().map(|s| s.to_string()).collect(),
            }],
            ..KrlSpec::default()
        };
        let krl_path = dir.path().join(format!("case{case}.krl"));
        write_krl(&krl_path, &spec);
        let st = krl::stats(&std::fs::read(&krl_path).expect("read KRL")).expect("our KRL parses");
        totals.serial_lists += st.serial_lists;
        totals.serial_ranges += st.serial_ranges;
        totals.serial_bitmaps += st.serial_bitmaps;

        let case_dir = dir.path().join(format!("case{case}"));
        std::fs::create_dir(&case_dir).expect("create case dir");
        let paths = sign_many(&case_dir, &ca, &subject_pub, &certs);
        let verdicts = query_revoked(&krl_path, &paths);
        for ((serial, id), revoked_by_ssh_keygen) in certs.iter().zip(verdicts) {
            let expected =
                (*serial != 0 && revoked.contains(serial)) || revoked_ids.contains(&id.as_str());
            assert_eq!(
                revoked_by_ssh_keygen,
                expected,
                "case {case}: serial {serial} key id {id:?} ({st:?}, {} revoked)",
                revoked.len()
            );
        }
        let parsed =
            krl::parse(&std::fs::read(&krl_path).expect("read KRL")).expect("our KRL parses");
        assert_eq!(parsed.serial_count(), revoked.len());
    }
    // The cases exercised every serial encoding against the real reader.
    assert!(
        totals.serial_lists > 0 && totals.serial_ranges > 0 && totals.serial_bitmaps > 0,
        "{totals:?}"
    );
}

#[test]
fn ssh_keygen_honours_explicit_keys_fingerprints_and_any_ca_key_ids() {
    let dir = temp_dir("krl-keys");
    let (ca, ca_blob) = new_ca(dir.path());
    let (other_ca, _) = new_ca(dir.path());
    let (by_blob, by_blob_pub) = keygen_ed25519(dir.path());
    let (by_hash, by_hash_pub) = keygen_ed25519(dir.path());
    let (fine, _) = keygen_ed25519(dir.path());

    let spec = KrlSpec {
        krl_version: 1,
        generated_date: 1_750_000_000,
        comment: String::new(),
        certs: vec![
            CertSection {
                ca_key_blob: ca_blob,
                serials: vec![SERIAL_BASE + 1],
                key_ids: vec![],
            },
            CertSection {
                ca_key_blob: vec![],
                serials: vec![],
                key_ids: vec!["revoked everywhere".into()],
            },
        ],
        explicit_keys: vec![wire_blob(&by_blob_pub)],
        sha256_fingerprints: vec![Sha256::digest(wire_blob(&by_hash_pub)).into()],
    };
    let krl_path = dir.path().join("keys.krl");
    write_krl(&krl_path, &spec);

    let pub_of = |k: &Path| PathBuf::from(format!("{}.pub", k.display()));
    let cert = |ca: &Path, key: &Path, id: &str, serial: u64| {
        sign_user_cert(ca, key, id, &["deploy"], "+1h", serial)
    };
    let cases = [
        (pub_of(&by_blob), true),
        (pub_of(&by_hash), true),
        (pub_of(&fine), false),
        // A certificate for a revoked key is revoked too.
        (cert(&ca, &by_blob, "blob", SERIAL_BASE + 50), true),
        (cert(&ca, &fine, "serial", SERIAL_BASE + 1), true),
    ];
    let files: Vec<PathBuf> = cases.iter().map(|(p, _)| p.clone()).collect();
    let expected: Vec<bool> = cases.iter().map(|(_, r)| *r).collect();
    assert_eq!(query_revoked(&krl_path, &files), expected);

    // Signed by another CA: the serial is that CA's business, the any-CA
    // key ID is not.
    let (other1, _) = keygen_ed25519(dir.path());
    let (other2, _) = keygen_ed25519(dir.path());
    let files = [
        cert(&other_ca, &other1, "other", SERIAL_BASE + 1),
        cert(&other_ca, &other2, "revoked everywhere", SERIAL_BASE + 2),
    ];
    assert_eq!(query_revoked(&krl_path, &files), vec![false, true]);
}

#[test]
fn we_read_what_ssh_keygen_writes() {
    let dir = temp_dir("krl-reverse");
    let (ca, ca_blob) = new_ca(dir.path());
    let ca_pub = format!("{}.pub", ca.display());
    let (_, plain_pub) = keygen_ed25519(dir.path());
    let (_, hashed_pub) = keygen_ed25519(dir.path());
    let (_, sha1_pub) = keygen_ed25519(dir.path());

    let b = SERIAL_BASE;
    let mut expected: BTreeSet<u64> = (5..=9).collect();
    expected.extend(b..=b + 100_000);
    // Every other serial: ssh-keygen writes a bitmap.
    expected.extend((0..200).map(|i| b + 200_000 + 2 * i));
    // Far apart: a list.
    expected.extend((1..20).map(|i| b + 10_000_000 * i));
    let mut spec = String::from("# made by the mayfly test\nserial: 5-9\n");
    spec.push_str(&format!("serial: {b}-{}\n", b + 100_000));
    for s in expected.iter().filter(|&&s| s > b + 100_000) {
        spec.push_str(&format!("serial: {s}\n"));
    }
    spec.push_str("id: foo\nid: mayfly:deploy:ci:repo:acme/api:42\n");
    spec.push_str(&format!("key: {plain_pub}\n"));
    spec.push_str(&format!("sha256: {hashed_pub}\n"));
    spec.push_str(&format!("sha1: {sha1_pub}\n"));
    let spec_path = dir.path().join("spec");
    std::fs::write(&spec_path, spec).expect("write spec");
    let krl_path = dir.path().join("made-by-ssh-keygen.krl");
    run_ssh_keygen(&[
        "-k",
        "-f",
        path_str(&krl_path),
        "-z",
        "42",
        "-s",
        &ca_pub,
        path_str(&spec_path),
    ]);

    let bytes = std::fs::read(&krl_path).expect("read ssh-keygen's KRL");
    let (version, date) = krl::parse_header(&bytes).expect("header of ssh-keygen's KRL");
    assert_eq!(version, 42);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    assert!(date.abs_diff(now) < 600, "generated_date {date}, now {now}");

    let st = krl::stats(&bytes).expect("ssh-keygen's KRL parses");
    assert!(
        st.serial_ranges > 0 && st.serial_bitmaps > 0 && st.serial_lists > 0,
        "ssh-keygen used every serial encoding: {st:?}"
    );
    let parsed = krl::parse(&bytes).expect("ssh-keygen's KRL parses");
    assert_eq!(parsed.krl_version, 42);
    assert_eq!(parsed.certs.len(), 1);
    assert_eq!(parsed.certs[0].ca_key_blob, ca_blob);
    assert_eq!(
        parsed.certs[0].serials,
        expected.iter().copied().collect::<Vec<_>>()
    );
    assert_eq!(
        parsed.certs[0].key_ids,
        vec!["foo", "mayfly:deploy:ci:repo:acme/api:42"]
    );
    assert!(parsed.is_serial_revoked(&ca_blob, b + 100_000));
    assert!(!parsed.is_serial_revoked(&ca_blob, b + 100_001));
    assert_eq!(parsed.explicit_keys, vec![wire_blob(&plain_pub)]);
    let sha256: [u8; 32] = Sha256::digest(wire_blob(&hashed_pub)).into();
    assert_eq!(parsed.sha256_fingerprints, vec![sha256]);
    assert_eq!(
        parsed.sha1_fingerprints,
        vec![sha1_of(&dir.path().join("sha1.pub"), &sha1_pub)]
    );

    // Re-encoded with our encoder, ssh-keygen lists the same revocations.
    let ours = dir.path().join("ours.krl");
    write_krl(
        &ours,
        &KrlSpec {
            krl_version: parsed.krl_version,
            generated_date: parsed.generated_date,
            comment: parsed.comment.clone(),
            certs: parsed.certs.clone(),
            explicit_keys: parsed.explicit_keys.clone(),
            sha256_fingerprints: parsed.sha256_fingerprints.clone(),
        },
    );
    let listing = |path: &Path| {
        let out = Command::new(ssh_keygen())
            .args(["-Q", "-l", "-f"])
            .arg(path)
            .output()
            .expect("run ssh-keygen -Q -l");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(str::to_string)
            .filter(|l| !l.contains("SHA1"))
            .collect::<Vec<_>>()
    };
    assert_eq!(listing(&ours), listing(&krl_path));
}

/// The raw SHA-1 of a public key, from `ssh-keygen -l -E sha1`.
fn sha1_of(scratch: &Path, pub_line: &str) -> [u8; 20] {
    std::fs::write(scratch, format!("{pub_line}\n")).expect("write scratch key");
    let out = run_ssh_keygen(&["-l", "-E", "sha1", "-f", path_str(scratch)]);
    let text = String::from_utf8_lossy(&out.stdout);
    let b64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.strip_prefix("SHA1:"))
        .unwrap_or_else(|| panic!("no SHA1 fingerprint in {text:?}"));
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(b64)
        .expect("SHA1 fingerprint base64")
        .try_into()
        .expect("SHA1 fingerprint is 20 bytes")
}

#[test]
fn we_refuse_an_ssh_keygen_range_too_large_to_expand() {
    let dir = temp_dir("krl-huge");
    let (ca, _) = new_ca(dir.path());
    let spec_path = dir.path().join("spec");
    std::fs::write(&spec_path, "serial: 1-100000000\n").expect("write spec");
    let krl_path = dir.path().join("huge.krl");
    run_ssh_keygen(&[
        "-k",
        "-f",
        path_str(&krl_path),
        "-s",
        &format!("{}.pub", ca.display()),
        path_str(&spec_path),
    ]);
    let bytes = std::fs::read(&krl_path).expect("read ssh-keygen's KRL");
    assert!(matches!(
        krl::parse(&bytes),
        Err(KrlError::TooManySerials { .. })
    ));
    assert!(krl::parse_header(&bytes).is_ok());
}

#[test]
fn sshd_refuses_revoked_certificates_and_accepts_the_rest() {
    let dir = temp_dir("krl-sshd");
    let (ca, ca_pub_line) = keygen_ed25519(dir.path());
    let ca_blob = wire_blob(&ca_pub_line);
    let (user, _) = keygen_ed25519(dir.path());
    let serial = SERIAL_BASE + 123_456;

    // One certificate per case, all for the same key: copy the key so each
    // certificate sits beside its own private key file.
    let cert_for = |name: &str, id: &str, serial: u64| -> (PathBuf, PathBuf) {
        let key = dir.path().join(name);
        std::fs::copy(&user, &key).expect("copy key");
        std::fs::copy(
            format!("{}.pub", user.display()),
            format!("{}.pub", key.display()),
        )
        .expect("copy public key");
        let cert = sign_user_cert(&ca, &key, id, &["deploy"], "+10m", serial);
        (key, cert)
    };
    let revoked_serial = cert_for("revoked_serial", "mayfly:deploy:ci:bot:1", serial);
    let revoked_in_bitmap = cert_for("in_bitmap", "mayfly:deploy:ci:bot:2", serial + 1_002);
    let revoked_id = cert_for("revoked_id", "mayfly:deploy:ci:stolen", serial + 5);
    let good = cert_for("good", "mayfly:deploy:ci:bot:3", serial + 1);

    // Revoke a realistic mix around the serials under test: a run, a dense
    // stretch (bitmap) and singles, but not `serial + 1` or `serial + 5`.
    let mut serials: Vec<u64> = (serial - 5_000..=serial).collect();
    serials.extend((0..400).map(|i| serial + 1_000 + 2 * i));
    serials.extend((1..30).map(|i| serial + 1_000_000 * i));
    let spec = KrlSpec {
        krl_version: 1,
        generated_date: 1_750_000_000,
        comment: "mayfly sshd test".into(),
        certs: vec![CertSection {
            ca_key_blob: ca_blob,
            serials,
            key_ids: vec!["mayfly:deploy:ci:stolen".into()],
        }],
        ..KrlSpec::default()
    };
    let st = krl::stats(&krl::encode(&spec)).expect("our KRL parses");
    assert!(
        st.serial_ranges > 0 && st.serial_bitmaps > 0 && st.serial_lists > 0,
        "{st:?}"
    );
    let krl_path = dir.path().join("revoked.krl");
    write_krl(&krl_path, &spec);
    let sshd = Sshd::start_with_revoked_keys(&format!("{ca_pub_line}\n"), &krl_path);

    let login = |(key, cert): &(PathBuf, PathBuf)| sshd.ssh("deploy", key, cert, "id -un");
    let out = login(&good);
    assert!(
        out.status.success(),
        "non-revoked certificate refused: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "deploy");
    for (what, case) in [
        ("by serial (range)", &revoked_serial),
        ("by serial (bitmap)", &revoked_in_bitmap),
        ("by key ID", &revoked_id),
    ] {
        let out = login(case);
        assert_eq!(
            out.status.code(),
            Some(255),
            "certificate revoked {what} was accepted: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(
        sshd.log().contains("revoked"),
        "sshd log does not mention the revocation:\n{}",
        sshd.log()
    );

    // sshd re-reads RevokedKeys at each login: with an empty KRL the same
    // certificate gets in, so it was our KRL that kept it out.
    std::fs::write(&krl_path, krl::encode_empty(2, 1_750_000_100, "mayfly")).expect("write KRL");
    assert!(login(&revoked_serial).status.success(), "{}", sshd.log());

    // A KRL sshd cannot read locks everyone out (fail closed).
    let mut broken = krl::encode(&spec);
    broken.push(0x77);
    std::fs::write(&krl_path, broken).expect("write KRL");
    assert_eq!(login(&good).status.code(), Some(255));
}
