//! The `mayfly` binary as a user runs it: one command, its output checked,
//! and the audit log read back through `mayfly audit search --json`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The `mayfly` binary under test, with no stdin and no `MAYFLY_*`
/// override from the developer's shell.
pub fn mayfly_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mayfly"));
    cmd.stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MAYFLY_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs `mayfly ARGS...` and returns what it did.
pub fn mayfly(args: &[&str]) -> Output {
    mayfly_command()
        .args(args)
        .output()
        .expect("run the mayfly binary")
}

/// Standard output of a command that must have succeeded; otherwise a panic
/// with its exit status, stdout and stderr.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Standard output and standard error together, for messages whose stream
/// does not matter to the test.
pub fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The audit records matching `filters` (`--event cert_issued`, ...), oldest
/// first, as `mayfly audit search --json` prints them (the export schema).
/// No match is an empty list.
pub fn audit_search(config: &Path, filters: &[&str]) -> Vec<Value> {
    let out = mayfly_command()
        .args([
            "audit", "search", "--json", "--limit", "1000000", "--config",
        ])
        .arg(config)
        .args(filters)
        .output()
        .expect("run mayfly audit search");
    if out.status.code() == Some(7)
        && String::from_utf8_lossy(&out.stderr).contains("no matching audit records")
    {
        return Vec::new();
    }
    ok(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit JSON line {l:?}: {e}")))
        .collect()
}

/// How many audit records have `event`.
pub fn audit_count(config: &Path, event: &str) -> usize {
    audit_search(config, &["--event", event]).len()
}

/// The `SHA256:` fingerprint of the CA that signed the certificate file
/// `cert`, as `ssh-keygen -L` prints it.
pub fn signing_ca(cert: &Path) -> String {
    let out = ok(Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(cert)
        .output()
        .expect("run ssh-keygen -L"));
    out.lines()
        .find(|l| l.contains("Signing CA:"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("SHA256:")))
        .unwrap_or_else(|| panic!("no Signing CA in ssh-keygen -L output:\n{out}"))
        .to_string()
}
