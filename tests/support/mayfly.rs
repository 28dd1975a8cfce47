//! The `mayfly serve` binary under test, on a loopback port with its own
//! data and policy directories.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::http;
use super::process::Proc;
use super::{free_port, temp_dir, wait_for};

/// How long the server may take to answer /healthz.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd server may take to drain before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running `mayfly serve`; killed on drop, its directory removed.
pub struct Mayfly {
    port: u16,
    config_path: PathBuf,
    proc: Option<Proc>,
    dir: tempfile::TempDir,
}

impl Mayfly {
    /// Writes `ca-policy/<role>.toml` for each `(role, toml)` and a
    /// mayfly.toml with `listen`, `data_dir`, `policy_dir` followed by
    /// `config_toml_extra` (e.g. `[[issuer]]` blocks, see
    /// `Oidc::issuer_toml`), then starts the server and waits for
    /// `GET /healthz` to answer 200. Panics with the server's output if it
    /// does not.
    pub fn start(config_toml_extra: &str, policies: &[(&str, &str)]) -> Mayfly {
        let dir = temp_dir("server");
        let policy_dir = dir.path().join("ca-policy");
        std::fs::create_dir_all(&policy_dir).expect("create ca-policy dir");
        for (role, toml) in policies {
            std::fs::write(policy_dir.join(format!("{role}.toml")), toml)
                .unwrap_or_else(|e| panic!("write policy {role}: {e}"));
        }
        let config_path = dir.path().join("mayfly.toml");
        let mut last_failure = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let config = format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = {}\npolicy_dir = {}\n{config_toml_extra}\n",
                toml_string(&dir.path().join("data")),
                toml_string(&policy_dir),
            );
            std::fs::write(&config_path, config).expect("write mayfly.toml");
            match spawn_server(dir.path(), &config_path, port) {
                Ok(proc) => {
                    return Mayfly {
                        port,
                        config_path,
                        proc: Some(proc),
                        dir,
                    }
                }
                Err(report) => {
                    let retry = report.contains("in use");
                    last_failure = report;
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("mayfly serve did not become healthy:\n{last_failure}");
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s) and starts it
    /// again on the same port with the same config and data directory.
    pub fn restart(&mut self) {
        self.stop();
        match spawn_server(self.dir.path(), &self.config_path, self.port) {
            Ok(proc) => self.proc = Some(proc),
            Err(report) => panic!("mayfly serve did not come back after a restart:\n{report}"),
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s); the directory
    /// stays until drop. `restart` starts it again.
    pub fn stop(&mut self) {
        if let Some(proc) = self.proc.as_mut() {
            proc.terminate(STOP_GRACE);
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory (database, CA keys).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The policy directory (`<role>.toml` files).
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("ca-policy")
    }

    /// The mayfly.toml the server runs with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Everything the server wrote on stderr (its logs), across restarts.
    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mayfly.stderr")).unwrap_or_default()
    }

    /// Everything the server wrote on stdout, across restarts.
    pub fn stdout_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mayfly.stdout")).unwrap_or_default()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// The `mayfly` binary under test.
    pub fn bin() -> &'static str {
        env!("CARGO_BIN_EXE_mayfly")
    }
}

/// Starts `mayfly serve --config CONFIG` in `dir` and waits until
/// `GET /healthz` answers 200. On failure returns the server's report.
fn spawn_server(dir: &Path, config_path: &Path, port: u16) -> Result<Proc, String> {
    let mut cmd = Command::new(Mayfly::bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(config_path)
        .current_dir(dir);
    // Hermetic: no MAYFLY_* override from the developer's shell.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MAYFLY_") {
            cmd.env_remove(key);
        }
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    let mut proc = Proc::spawn("mayfly", cmd, dir);
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let outcome = wait_for(START_TIMEOUT, Duration::from_millis(50), || {
        if proc.exited().is_some() {
            return Some(false);
        }
        match http::get(&healthz) {
            Ok(r) if r.status == 200 => Some(true),
            _ => None,
        }
    });
    match outcome {
        Some(true) => Ok(proc),
        Some(false) => Err(proc.report()),
        None => {
            proc.kill();
            Err(format!(
                "GET {healthz} not 200 within {START_TIMEOUT:?}\n{}",
                proc.report()
            ))
        }
    }
}

/// A TOML basic string for a path (JSON string escapes are valid TOML).
fn toml_string(p: &Path) -> String {
    serde_json::to_string(p.to_str().expect("path is UTF-8")).expect("quote path")
}
