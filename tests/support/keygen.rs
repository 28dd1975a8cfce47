//! Keys and certificates made with the real `ssh-keygen`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::find_program;

/// The `ssh-keygen` binary.
pub fn ssh_keygen() -> PathBuf {
    find_program("ssh-keygen", &["/usr/bin/ssh-keygen"], "openssh-client")
}

/// Runs ssh-keygen with `args`; panics with its output on failure.
pub fn run_ssh_keygen(args: &[&str]) -> std::process::Output {
    let out = Command::new(ssh_keygen())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ssh-keygen: {e}"));
    assert!(
        out.status.success(),
        "ssh-keygen {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Makes a new Ed25519 key pair in `dir` (no passphrase). Returns the
/// private key's path and the public key line (`ssh-ed25519 AAAA... comment`).
/// The public key is also at `<priv_path>.pub`.
pub fn keygen_ed25519(dir: &Path) -> (PathBuf, String) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = dir.join(format!("id_ed25519_{}", N.fetch_add(1, Ordering::Relaxed)));
    let path_str = path.to_str().expect("key path is UTF-8");
    run_ssh_keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "mayfly-test",
        "-f",
        path_str,
    ]);
    let pub_line =
        std::fs::read_to_string(format!("{path_str}.pub")).expect("read the new public key");
    (path, pub_line.trim().to_string())
}

/// Signs `<key_path>.pub` into a user certificate with the CA private key
/// `ca_key` (`ssh-keygen -s`), valid for the next `validity` (e.g. "+5m")
/// for `principals`. Returns the certificate's path (`<key_path>-cert.pub`).
pub fn sign_user_cert(
    ca_key: &Path,
    key_path: &Path,
    key_id: &str,
    principals: &[&str],
    validity: &str,
    serial: u64,
) -> PathBuf {
    let pub_path = PathBuf::from(format!("{}.pub", key_path.display()));
    let principals = principals.join(",");
    let serial = serial.to_string();
    run_ssh_keygen(&[
        "-q",
        "-s",
        ca_key.to_str().expect("CA key path is UTF-8"),
        "-I",
        key_id,
        "-n",
        &principals,
        "-V",
        validity,
        "-z",
        &serial,
        pub_path.to_str().expect("public key path is UTF-8"),
    ]);
    let cert = PathBuf::from(format!("{}-cert.pub", key_path.display()));
    assert!(
        cert.is_file(),
        "ssh-keygen -s did not write {}",
        cert.display()
    );
    cert
}
