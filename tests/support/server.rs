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
        Mayfly::try_start(config_toml_extra, policies)
            .unwrap_or_else(|report| panic!("mayfly serve did not become healthy:\n{report}"))
    }

    /// Writes the config and policies as [`Mayfly::start`] does, but does
    /// not start the server: for a data directory or store filled before
    /// its first start (`mayfly store migrate`). [`Mayfly::restart`]
    /// starts it.
    pub fn configure(config_toml_extra: &str, policies: &[(&str, &str)]) -> Mayfly {
        let (dir, config_path) = server_dir(policies);
        let port = free_port();
        write_config(dir.path(), &config_path, port, config_toml_extra);
        Mayfly {
            port,
            config_path,
            proc: None,
            dir,
        }
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

    /// Kills the server with SIGKILL (no drain, no clean shutdown), as a
    /// crashed machine would; `restart` starts it again.
    pub fn kill(&mut self) {
        if let Some(proc) = self.proc.as_mut() {
            proc.kill();
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
    /// The per-certificate lines reach it within 10 ms of being logged
    /// (`mayfly serve` writes them in batches): this waits 50 ms first, so
    /// the lines of requests already answered are in it.
    pub fn stderr_log(&self) -> String {
        std::thread::sleep(std::time::Duration::from_millis(50));
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

    /// Audit records matching `filters`, oldest first, through
    /// `mayfly audit search --json` on this server's config.
    pub fn audit(&self, filters: &[&str]) -> Vec<serde_json::Value> {
        super::cli::audit_search(&self.config_path, filters)
    }

    /// How many audit records of this server have `event`.
    pub fn audit_count(&self, event: &str) -> usize {
        self.audit(&["--event", event]).len()
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

/// A temporary server directory with `ca-policy/<role>.toml` for each of
/// `policies`, and where its `mayfly.toml` goes.
fn server_dir(policies: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = temp_dir("server");
    let policy_dir = dir.path().join("ca-policy");
    std::fs::create_dir_all(&policy_dir).expect("create ca-policy dir");
    for (role, toml) in policies {
        std::fs::write(policy_dir.join(format!("{role}.toml")), toml)
            .unwrap_or_else(|e| panic!("write policy {role}: {e}"));
    }
    let config_path = dir.path().join("mayfly.toml");
    (dir, config_path)
}

/// Writes the `mayfly.toml` of a server in `dir` listening on `port`.
fn write_config(dir: &Path, config_path: &Path, port: u16, config_toml_extra: &str) {
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = {}\npolicy_dir = {}\n{config_toml_extra}\n",
        toml_string(&dir.join("data")),
        toml_string(&dir.join("ca-policy")),
    );
    std::fs::write(config_path, config).expect("write mayfly.toml");
}

/// A TOML basic string for a path (JSON string escapes are valid TOML).
fn toml_string(p: &Path) -> String {
    serde_json::to_string(p.to_str().expect("path is UTF-8")).expect("quote path")
}

// ---- HTTPS: `mayfly serve` with `[tls]`, checked with a test CA ----

/// A TLS client's trust and (optional) client certificate, for
/// [`https_request`].
pub fn tls_client_config(
    ca_pem: &Path,
    client_cert: Option<(&Path, &Path)>,
) -> std::sync::Arc<rustls::ClientConfig> {
    tls_client_config_versions(ca_pem, client_cert, rustls::DEFAULT_VERSIONS)
}

/// As [`tls_client_config`], offering only `versions`.
pub fn tls_client_config_versions(
    ca_pem: &Path,
    client_cert: Option<(&Path, &Path)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).expect("read CA PEM") {
        roots
            .add(cert.expect("CA PEM parses"))
            .expect("add CA root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("protocol versions")
    .with_root_certificates(roots);
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .expect("read client cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("client cert PEM parses");
            let key = PrivateKeyDer::from_pem_file(key).expect("client key PEM parses");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client cert and key")
        }
    };
    std::sync::Arc::new(config)
}

/// What one HTTPS request saw.
#[derive(Debug)]
pub struct TlsResponse {
    /// The HTTP answer.
    pub response: http::Response,
    /// DER of the certificate the server presented.
    pub server_cert: Vec<u8>,
    /// The negotiated ALPN protocol, if any.
    pub alpn: Option<Vec<u8>>,
}

/// `GET path` over TLS to `127.0.0.1:port`, verifying the server as
/// `server_name` (`localhost` or `127.0.0.1`). An `Err` carries rustls'
/// reason (handshake failure, alert) in its message.
pub fn https_get(
    port: u16,
    server_name: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
    path: &str,
) -> std::io::Result<TlsResponse> {
    https_request(port, server_name, config, "GET", path, &[], b"")
}

/// Any request over TLS, as [`https_get`]; `headers` are sent as given and
/// a non-empty `body` gets its Content-Length.
pub fn https_request(
    port: u16,
    server_name: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<TlsResponse> {
    use std::io::{Read, Write};
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(std::io::Error::other)?;
    let conn = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let sock = std::net::TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    sock.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let server_cert = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let alpn = tls.conn.alpn_protocol().map(|p| p.to_vec());
    let mut raw = Vec::new();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {server_name}:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let sent = tls
        .write_all(head.as_bytes())
        .and_then(|()| tls.write_all(body))
        .and_then(|()| tls.flush());
    if let Err(e) = sent {
        // A server that refused us after the handshake (TLS 1.3 client
        // auth) sent an alert first: report that rather than the broken pipe.
        return Err(tls.read_to_end(&mut raw).err().unwrap_or(e));
    }
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // A peer that closes without close_notify after a complete answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    let response = parse_http(&raw)?;
    Ok(TlsResponse {
        response,
        server_cert,
        alpn,
    })
}

/// Parses a `Connection: close` HTTP/1.1 answer with a Content-Length body.
fn parse_http(raw: &[u8]) -> std::io::Result<http::Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if let Some(len) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Ok(http::Response {
        status,
        headers,
        body,
    })
}

impl Mayfly {
    /// Like [`Mayfly::start`] for a server with a `[tls]` section in
    /// `config_toml_extra`: ready when `GET https://localhost:PORT/healthz`,
    /// verified against the CA certificates in `ca_pem`, answers 200.
    /// (`restart` polls plain HTTP, so it is not for TLS servers.)
    pub fn start_tls(config_toml_extra: &str, policies: &[(&str, &str)], ca_pem: &Path) -> Mayfly {
        let client = tls_client_config(ca_pem, None);
        let (dir, config_path) = server_dir(policies);
        let mut last_failure = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            write_config(dir.path(), &config_path, port, config_toml_extra);
            let mut cmd = Command::new(Mayfly::bin());
            cmd.arg("serve")
                .arg("--config")
                .arg(&config_path)
                .current_dir(dir.path());
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("MAYFLY_") {
                    cmd.env_remove(key);
                }
            }
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "info");
            }
            let mut proc = Proc::spawn("mayfly", cmd, dir.path());
            let healthy = wait_for(START_TIMEOUT, Duration::from_millis(50), || {
                if proc.exited().is_some() {
                    return Some(false);
                }
                match https_get(port, "localhost", client.clone(), "/healthz") {
                    Ok(r) if r.response.status == 200 => Some(true),
                    _ => None,
                }
            });
            match healthy {
                Some(true) => {
                    return Mayfly {
                        port,
                        config_path,
                        proc: Some(proc),
                        dir,
                    }
                }
                Some(false) => {
                    last_failure = proc.report();
                    if !last_failure.contains("in use") {
                        break;
                    }
                }
                None => {
                    proc.kill();
                    last_failure = format!(
                        "https /healthz not 200 within {START_TIMEOUT:?}\n{}",
                        proc.report()
                    );
                    break;
                }
            }
        }
        panic!("mayfly serve (TLS) did not become healthy:\n{last_failure}");
    }

    /// `https://localhost:PORT`.
    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

// ---- start-up that may fail: `mayfly serve` expected to refuse to start ----

impl Mayfly {
    /// Like [`Mayfly::start`], but a server that does not become healthy
    /// (e.g. it exits because of its config or CA key) is an `Err` carrying
    /// its report (how it exited, stdout, stderr) instead of a panic.
    pub fn try_start(config_toml_extra: &str, policies: &[(&str, &str)]) -> Result<Mayfly, String> {
        let (dir, config_path) = server_dir(policies);
        let mut last_failure = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            write_config(dir.path(), &config_path, port, config_toml_extra);
            match spawn_server(dir.path(), &config_path, port) {
                Ok(proc) => {
                    return Ok(Mayfly {
                        port,
                        config_path,
                        proc: Some(proc),
                        dir,
                    })
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
        Err(last_failure)
    }

    /// Like [`Mayfly::restart`], but a server that does not come back is an
    /// `Err` carrying its report instead of a panic.
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.stop();
        let proc = spawn_server(self.dir.path(), &self.config_path, self.port)?;
        self.proc = Some(proc);
        Ok(())
    }
}
