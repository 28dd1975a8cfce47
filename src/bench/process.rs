//! The CA of a `mayfly bench` run as its own `mayfly serve` process, so
//! that its CPU time is measured apart from the load clients', and so
//! that it serves exactly as in production: the real serve loop, its
//! logging, and HTTPS with `--tls`.
//!
//! The bench writes the server's `mayfly.toml` (and, for HTTPS, a
//! throw-away self-signed certificate for `localhost`/`127.0.0.1`) into
//! its temporary directory, starts the binary it was given (the running
//! `mayfly`), waits until `/healthz` answers, and reads the child's
//! `/proc/PID/stat` around the run. The child is killed, by its pid, when
//! the handle is dropped; its log stays in the temporary directory until
//! then and is shown if it does not start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for the server to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `mayfly serve` child.
pub struct ServerProcess {
    child: Child,
    /// Base URL (`https://localhost:PORT` or `http://127.0.0.1:PORT`).
    pub base: String,
    /// PEM of the server's certificate, to trust (HTTPS only).
    pub ca_pem: Option<Vec<u8>>,
    log: PathBuf,
}

/// The server's TLS certificate and key, self-signed, for the names the
/// load clients use.
fn write_tls_files(dir: &Path) -> Result<(PathBuf, PathBuf, Vec<u8>), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let cert_file = dir.join("tls.crt");
    let key_file = dir.join("tls.key");
    std::fs::write(&cert_file, cert.pem()).map_err(|e| e.to_string())?;
    crate::ca::keys::write_atomic(&key_file, key.serialize_pem().as_bytes(), 0o600)
        .map_err(|e| e.to_string())?;
    Ok((cert_file, key_file, cert.pem().into_bytes()))
}

/// A loopback port nobody listens on now (the server binds it next).
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl ServerProcess {
    /// Starts `exe serve` with `config_body` (everything but `listen` and
    /// `[tls]`) in `dir`, over HTTPS when `tls`.
    pub async fn start(
        exe: &Path,
        dir: &Path,
        config_body: &str,
        tls: bool,
    ) -> Result<ServerProcess, String> {
        let port = free_port()?;
        let mut config = format!("listen = \"127.0.0.1:{port}\"\n{config_body}");
        let (base, ca_pem) = if tls {
            let (cert_file, key_file, pem) = write_tls_files(dir)?;
            // A table of its own, after every top-level key.
            config =
                format!("{config}\n[tls]\ncert_file = {cert_file:?}\nkey_file = {key_file:?}\n");
            (format!("https://localhost:{port}"), Some(pem))
        } else {
            (format!("http://127.0.0.1:{port}"), None)
        };
        let config_path = dir.join("mayfly.toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log = dir.join("server.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        // The server runs as written above, not as the shell's MAYFLY_*
        // variables would change it.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MAYFLY_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {} serve: {e}", exe.display()))?;
        let mut server = ServerProcess {
            child,
            base,
            ca_pem,
            log,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// The process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An HTTP client that trusts this server's certificate.
    pub fn client_builder(&self) -> Result<reqwest::ClientBuilder, String> {
        let mut b = reqwest::Client::builder();
        if let Some(pem) = &self.ca_pem {
            b = b.add_root_certificate(
                reqwest::Certificate::from_pem(pem).map_err(|e| e.to_string())?,
            );
        }
        Ok(b)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let http = self
            .client_builder()?
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| e.to_string())?;
        let url = format!("{}/healthz", self.base);
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "the server exited ({status}):\n{}",
                    self.log_tail()
                ));
            }
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "GET {url} did not answer 200 within {START_TIMEOUT:?}:\n{}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the server's log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
