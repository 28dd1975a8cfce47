//! Real programs for integration tests: an OIDC provider (node +
//! oidc-provider), OpenSSH's `sshd`/`ssh`/`ssh-keygen`, and the `mayfly`
//! server itself.
//!
//! Use from a test file with `mod support;`. Everything here is blocking std
//! code. Each helper owns a temporary directory and the processes it started;
//! dropping it kills them by pid and removes the directory. A helper that
//! cannot start its program panics with the program's own output: these tests
//! fail, they never skip.

// Each test file uses a different part of the harness.
#![allow(dead_code, unused_imports)]

pub mod browser;
pub mod cli;
pub mod http;
pub mod issuer;
pub mod keygen;
pub mod oidc;
pub mod postgres;
pub mod process;
pub mod replicas;
pub mod server;
pub mod sshd;
pub mod store;

pub use cli::{all_output, audit_count, audit_search, mayfly, mayfly_command, now, ok, signing_ca};
pub use keygen::{keygen_ed25519, sign_user_cert};
pub use oidc::{ClientSpec, Oidc};
pub use postgres::{PgDb, Postgres};
pub use server::Mayfly;
pub use sshd::Sshd;

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A directory under `target/` that survives the test run, for lock files
/// shared by parallel tests and test binaries.
pub fn shared_tmp() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

/// A fresh temporary directory, removed when the returned guard drops.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("mayfly-{prefix}-"))
        .tempdir()
        .expect("create a temporary directory")
}

/// A temporary directory that lives as long as the test binary, for what
/// a `static` holds (statics are never dropped, so a [`temp_dir`] guard
/// in one would leave its directory behind): a watchdog process removes
/// it once the binary has exited.
// The watchdog outlives this process by design: nothing here can wait for it.
#[allow(clippy::zombie_processes)]
pub fn binary_temp_dir(prefix: &str) -> PathBuf {
    let dir = temp_dir(prefix).keep();
    Command::new("sh")
        .args([
            "-c",
            r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done; rm -rf "$2""#,
            "tmp-watchdog",
        ])
        .arg(std::process::id().to_string())
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the watchdog of a temporary directory");
    dir
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is closed again before it is returned, so another process could
/// take it; the helpers that use it retry on "address in use". Within one
/// test binary no port is handed out twice.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0 for a free port");
        let port = listener
            .local_addr()
            .expect("local address of listener")
            .port();
        if given.insert(port) {
            return port;
        }
    }
    panic!("no free TCP port found on 127.0.0.1 after 100 tries");
}

/// Polls `check` every `every` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Panics unless the tests run as root: sshd must switch to the test users.
pub fn require_root(why: &str) {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .expect("Uid line in /proc/self/status");
    assert_eq!(
        uid, "0",
        "{why} needs root (it runs sshd and creates test users); run the tests as root, e.g. scripts/test.sh in CI"
    );
}

/// Runs `script` with `sh -c` while holding an exclusive `flock` on `lock`,
/// so that parallel tests and test binaries do one-time set-up only once.
/// Panics with the script's output if it fails.
pub fn run_locked(lock: &Path, script: &str, cwd: &Path, what: &str) {
    let out = Command::new("flock")
        .arg(lock)
        .args(["sh", "-c", script])
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run flock (util-linux): {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The absolute path of a program, or a panic that says which package has it.
pub fn find_program(name: &str, candidates: &[&str], package: &str) -> PathBuf {
    for c in candidates {
        let p = Path::new(c);
        if p.is_file() {
            return p.to_path_buf();
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("{name} not found: install {package} (scripts/test.sh does this)");
}
