//! `mayfly bench`: a load generator that measures certificates per second
//! through the whole path (HTTP or HTTPS, token verification, policy,
//! signing, durable audit) against a CA on loopback.
//!
//! It creates a throw-away data directory, an issuer whose keys it holds
//! (a `jwks_file` issuer), and one token and one fresh Ed25519 key per
//! request (tokens are single use), then fires them from `concurrency`
//! clients over keep-alive connections, opened before the run starts (so
//! a TLS handshake per client is not counted in the latencies or the
//! server's CPU). Every answer is checked: a
//! certificate for the key sent, signed by the CA's user key, with a
//! serial no other answer had.
//!
//! The CA runs in this process by default. With a server binary
//! ([`BenchOptions::server`], the `mayfly` being run) it runs as its own
//! `mayfly serve` process (HTTPS with `tls`), whose CPU time is then
//! measured alone from `/proc/PID/stat`: the figure that says what a
//! certificate costs the server, apart from the load clients sharing the
//! machine.
//!
//! By default the CA stores in SQLite. With a PostgreSQL URL it stores
//! there instead, and can run several replicas on that one database, each
//! with its own data directory, connection pool, group-commit writer and
//! HTTP listener, in this process; the clients are spread over them
//! round-robin. Token ids carry a per-run nonce, so a database can be
//! reused between runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::api::{self, AppState};
use crate::config::Config;

mod process;

/// Token algorithm used by the bench issuer.
#[derive(Debug, Clone, Copy)]
pub enum BenchAlg {
    /// RSA-2048 PKCS#1 v1.5 SHA-256 (GitHub Actions, GitLab).
    Rs256,
    /// ECDSA P-256 SHA-256.
    Es256,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Total certificate requests.
    pub requests: usize,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Token algorithm.
    pub alg: BenchAlg,
    /// PostgreSQL instead of SQLite: the `[store] url` (no password in it).
    pub store_url: Option<String>,
    /// The PostgreSQL password file (`[store] password_file`); else
    /// `PGPASSWORD`.
    pub password_file: Option<std::path::PathBuf>,
    /// Replicas on the one PostgreSQL database (1 on SQLite).
    pub replicas: usize,
    /// Run the CA as `<this binary> serve` in its own process (SQLite
    /// only) instead of in this one, and measure its CPU alone.
    pub server: Option<std::path::PathBuf>,
    /// Serve HTTPS (needs `server`).
    pub tls: bool,
    /// `worker_threads` of the `mayfly serve` process (needs `server`;
    /// `None`: one per CPU).
    pub server_workers: Option<usize>,
}

/// CPU time of a CA that ran in its own process.
#[derive(Debug, Clone)]
pub struct ServerCpu {
    /// Its process id.
    pub pid: u32,
    /// Whether it served HTTPS.
    pub tls: bool,
    /// User plus system CPU time it used during the run.
    pub cpu: Option<Duration>,
    /// What it wrote during the run, where `/proc/PID/io` tells it.
    pub io: Option<ProcessIo>,
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Requests that got a certificate.
    pub ok: usize,
    /// Requests that failed.
    pub failed: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency percentiles (p50, p90, p99, max).
    pub latency: [Duration; 4],
    /// `cert_issued` records added to the database during the run.
    pub audited: u64,
    /// What the CA stored in: `sqlite` or `postgres`.
    pub store: &'static str,
    /// Replicas that served the run.
    pub replicas: usize,
    /// Concurrent clients.
    pub concurrency: usize,
    /// CPU time this process used during the run (the in-process
    /// replicas and the load clients together), where `/proc/self/stat`
    /// tells it.
    pub cpu: Option<Duration>,
    /// The CA's own CPU time, when it ran in its own process.
    pub server: Option<ServerCpu>,
}

impl BenchReport {
    /// The report as JSON (`mayfly bench --json`, one object per run).
    pub fn to_json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let per_cert = |cpu: Option<Duration>| {
            cpu.filter(|_| self.ok > 0)
                .map(|c| c.as_secs_f64() * 1e6 / self.ok as f64)
        };
        serde_json::json!({
            "store": self.store,
            "replicas": self.replicas,
            "clients": self.concurrency,
            "ok": self.ok,
            "failed": self.failed,
            "audited": self.audited,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "certs_per_s": self.ok as f64 / self.elapsed.as_secs_f64(),
            "latency_ms": {
                "p50": ms(self.latency[0]), "p90": ms(self.latency[1]),
                "p99": ms(self.latency[2]), "max": ms(self.latency[3]),
            },
            "process_cpu_us_per_cert": per_cert(self.cpu),
            "server": self.server.as_ref().map(|s| serde_json::json!({
                "pid": s.pid,
                "tls": s.tls,
                "cpu_us_per_cert": per_cert(s.cpu),
                "write_bytes_per_cert": s.io.filter(|_| self.ok > 0)
                    .map(|io| io.write_bytes as f64 / self.ok as f64),
                "write_calls_per_cert": s.io.filter(|_| self.ok > 0)
                    .map(|io| io.write_calls as f64 / self.ok as f64),
            })),
        })
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.ok as f64 / self.elapsed.as_secs_f64();
        writeln!(
            f,
            "store:               {} ({} replica{}, {} clients)",
            self.store,
            self.replicas,
            if self.replicas == 1 { "" } else { "s" },
            self.concurrency
        )?;
        if let Some(s) = &self.server {
            writeln!(
                f,
                "server:              separate process (pid {}), {}",
                s.pid,
                if s.tls { "HTTPS" } else { "plain HTTP" }
            )?;
        }
        writeln!(
            f,
            "certificates issued: {} (failed: {})",
            self.ok, self.failed
        )?;
        writeln!(
            f,
            "audit records added: {} (read back from the database)",
            self.audited
        )?;
        writeln!(
            f,
            "elapsed:             {:.3} s",
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "throughput:          {rate:.0} certs/s")?;
        let per_cert = |cpu: Duration| cpu.as_secs_f64() * 1e6 / self.ok.max(1) as f64;
        match (&self.server, self.cpu) {
            (Some(s), load) => {
                if let Some(cpu) = s.cpu {
                    writeln!(
                        f,
                        "server cpu:          {:.0} us per certificate ({:.2} s user+system in the server process)",
                        per_cert(cpu),
                        cpu.as_secs_f64()
                    )?;
                }
                if let Some(io) = s.io {
                    let n = self.ok.max(1) as f64;
                    writeln!(
                        f,
                        "server writes:       {:.0} bytes to storage and {:.1} write calls per certificate",
                        io.write_bytes as f64 / n,
                        io.write_calls as f64 / n
                    )?;
                }
                if let Some(cpu) = load {
                    writeln!(
                        f,
                        "load cpu:            {:.0} us per certificate ({:.2} s in the load clients, not counted above)",
                        per_cert(cpu),
                        cpu.as_secs_f64()
                    )?;
                }
            }
            (None, Some(cpu)) => writeln!(
                f,
                "cpu:                 {:.0} us per certificate ({:.2} s in this process: replicas and load clients)",
                per_cert(cpu),
                cpu.as_secs_f64()
            )?,
            (None, None) => {}
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "latency ms:          p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            ms(self.latency[0]),
            ms(self.latency[1]),
            ms(self.latency[2]),
            ms(self.latency[3])
        )
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn issuer_key(alg: BenchAlg) -> Result<(EncodingKey, Algorithm), String> {
    match alg {
        BenchAlg::Rs256 => {
            let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|e| e.to_string())?;
            let der =
                AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp).map_err(|e| e.to_string())?;
            let k = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", der.as_ref()).as_bytes())
                .map_err(|e| e.to_string())?;
            Ok((k, Algorithm::RS256))
        }
        BenchAlg::Es256 => {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let doc = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &rng,
            )
            .map_err(|e| e.to_string())?;
            let k = EncodingKey::from_ec_pem(pem("PRIVATE KEY", doc.as_ref()).as_bytes())
                .map_err(|e| e.to_string())?;
            Ok((k, Algorithm::ES256))
        }
    }
}

/// The body of a successful `GET url`; the error names the URL.
async fn get_text(http: &reqwest::Client, url: &str) -> Result<String, String> {
    http.get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("GET {url}: {e}"))?
        .text()
        .await
        .map_err(|e| format!("GET {url}: {e}"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The policy directory, the issuer's JWKS and the token key of a run,
/// in `dir`.
struct Fixtures {
    policy_dir: std::path::PathBuf,
    jwks_path: std::path::PathBuf,
    key: EncodingKey,
    alg: Algorithm,
}

fn fixtures(dir: &std::path::Path, alg: BenchAlg) -> Result<Fixtures, String> {
    let policy_dir = dir.join("ca-policy");
    std::fs::create_dir_all(&policy_dir).map_err(|e| e.to_string())?;
    std::fs::write(
        policy_dir.join("bench.toml"),
        "description = \"load test\"\nowner = \"bench@localhost\"\nissuer = \"bench\"\n\
         principals = [\"deploy\"]\nmax_ttl = \"5m\"\n[claims]\nsub = \"bench-*\"\n",
    )
    .map_err(|e| e.to_string())?;
    let (key, alg) = issuer_key(alg)?;
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).map_err(|e| e.to_string())?;
    jwk.common.key_id = Some("bench".into());
    let jwks = serde_json::json!({ "keys": [jwk] });
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).map_err(|e| e.to_string())?;
    Ok(Fixtures {
        policy_dir,
        jwks_path,
        key,
        alg,
    })
}

/// The `mayfly.toml` of a bench CA, without `listen`.
fn config_body(data_dir: &std::path::Path, f: &Fixtures, store_toml: &str) -> String {
    format!(
        "data_dir = {:?}\npolicy_dir = {:?}\n\
         [[issuer]]\nname = \"bench\"\nurl = \"https://bench.invalid\"\naudience = \"mayfly\"\njwks_file = {:?}\n{store_toml}",
        data_dir, f.policy_dir, f.jwks_path
    )
}

/// The CAs a run sends its requests to.
enum Servers {
    /// Replicas in this process, on plain HTTP.
    InProcess {
        services: Vec<Arc<crate::service::Service>>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
        /// Each replica's audit stream, stopped at the end (as `serve`
        /// does) rather than left to fail once the runtime is gone.
        audits: Vec<crate::evidence::stream::AuditStream>,
    },
    /// One `mayfly serve` child process; its store is opened here only to
    /// count the audit records.
    Process {
        server: process::ServerProcess,
        // Boxed: a store handle is ten trait objects, far larger than the
        // other variant.
        store: Box<crate::store::Store>,
    },
}

impl Servers {
    async fn count_issued(&self) -> Result<u64, String> {
        let store = match self {
            Servers::InProcess { services, .. } => services[0].store(),
            Servers::Process { store, .. } => store,
        };
        store
            .reports()
            .count_events("cert_issued")
            .await
            .map_err(|e| e.to_string())
    }
}

/// One request of the load: its token, its body, and the public key the
/// certificate must be for (a fresh Ed25519 key per request).
struct Shot {
    token: String,
    body: String,
    key: ssh_key::public::KeyData,
}

/// Signs one token and makes one fresh subject key per request, spread
/// over the cores (RS256 signing is the slow part of a bench's set-up).
fn shots(f: &Fixtures, requests: usize, run: &str) -> Result<Vec<Shot>, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut header = Header::new(f.alg);
    header.kid = Some("bench".into());
    let one = |i: usize| -> Result<Shot, String> {
        let claims = serde_json::json!({
            "iss": "https://bench.invalid", "aud": "mayfly", "sub": format!("bench-{}", i % 100),
            "iat": now, "exp": now + 600, "jti": format!("bench-{run}-{i}"),
        });
        let token = jsonwebtoken::encode(&header, &claims, &f.key).map_err(|e| e.to_string())?;
        let subject =
            ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)
                .map_err(|e| e.to_string())?;
        let line = subject
            .public_key()
            .to_openssh()
            .map_err(|e| e.to_string())?;
        let body = serde_json::json!({"role": "bench", "public_key": line}).to_string();
        Ok(Shot {
            token,
            body,
            key: subject.public_key().key_data().clone(),
        })
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let per = requests.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = (0..requests)
            .step_by(per)
            .map(|first| {
                let one = &one;
                s.spawn(move || {
                    (first..(first + per).min(requests))
                        .map(one)
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(requests);
        for p in parts {
            all.extend(
                p.join()
                    .map_err(|_| "a token-signing thread panicked".to_string())??,
            );
        }
        Ok(all)
    })
}

/// Checks an answer as a bot would use it: a certificate for the key it
/// sent, signed by the CA's user key, for the role's principal. Returns
/// the serial.
fn check_answer(body: &[u8], shot: &Shot, ca: &ssh_key::public::KeyData) -> Result<u64, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        certificate: String,
        serial: u64,
    }
    let a: Answer = serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let cert = ssh_key::Certificate::from_openssh(&a.certificate)
        .map_err(|e| format!("answer holds no certificate: {e}"))?;
    if cert.public_key() != &shot.key {
        return Err("certificate is for another key".into());
    }
    if cert.signature_key() != ca {
        return Err("certificate is not signed by the CA's user key".into());
    }
    if cert.serial() != a.serial || cert.valid_principals() != ["deploy"] {
        return Err("certificate serial or principals differ from the answer".into());
    }
    Ok(a.serial)
}

/// Runs the benchmark.
pub async fn run(opts: BenchOptions) -> Result<BenchReport, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let f = fixtures(dir.path(), opts.alg)?;
    let replicas = opts.replicas.max(1);
    if replicas > 1 && opts.store_url.is_none() {
        return Err(format!(
            "--replicas {replicas} needs a database the replicas share: pass --store-url postgres://..."
        ));
    }
    if opts.server.is_some() && (opts.store_url.is_some() || replicas > 1) {
        return Err(
            "a server process (--tls, --server-process) runs on SQLite: drop --store-url and --replicas"
                .into(),
        );
    }
    if opts.tls && opts.server.is_none() {
        return Err("--tls needs the server in its own process".into());
    }
    let store_toml = match &opts.store_url {
        None => String::new(),
        Some(url) => {
            // Keys in a shared database are stored encrypted, and stay
            // there: every bench run on one database must open the keys
            // the first run stored, so the passphrase is the bench's own
            // fixed one (a bench database holds throw-away keys only).
            let pass = dir.path().join("ca-passphrase");
            crate::ca::keys::write_atomic(&pass, BENCH_CA_PASSPHRASE.as_bytes(), 0o600)
                .map_err(|e| e.to_string())?;
            let mut t = format!(
                "[ca]\nkey_protection = \"passphrase\"\npassphrase_file = {pass:?}\n\
                 [store]\nbackend = \"postgres\"\nurl = {url:?}\n"
            );
            if let Some(pw) = &opts.password_file {
                t.push_str(&format!("password_file = {pw:?}\n"));
            }
            t
        }
    };
    let mut urls = Vec::new();
    let mut http = reqwest::Client::builder();
    let mut servers = match &opts.server {
        Some(exe) => {
            let mut body = config_body(&dir.path().join("data"), &f, &store_toml);
            if let Some(n) = opts.server_workers {
                body = format!("worker_threads = {n}\n{body}");
            }
            let server = process::ServerProcess::start(exe, dir.path(), &body, opts.tls).await?;
            http = server.client_builder()?;
            urls.push(format!("{}/v1/certs/user", server.base));
            let cfg = Config::parse(&format!("listen = \"127.0.0.1:0\"\n{body}"))
                .map_err(|e| e.to_string())?;
            let store = crate::store::open(&crate::store::StoreConfig::from_config(
                &cfg,
                crate::store::OpenMode::ReadOnly,
            ))
            .map_err(|e| e.to_string())?;
            Servers::Process {
                server,
                store: Box::new(store),
            }
        }
        None => {
            let mut services = Vec::new();
            let mut tasks = Vec::new();
            let mut audits = Vec::new();
            for r in 0..replicas {
                let body = config_body(&dir.path().join(format!("data-{r}")), &f, &store_toml);
                let cfg = Config::parse(&format!("listen = \"127.0.0.1:0\"\n{body}"))
                    .map_err(|e| e.to_string())?;
                let (service, audit) = crate::server::build_with_audit(&cfg)
                    .await
                    .map_err(|e| format!("starting replica {r}: {e}"))?;
                let service = Arc::new(service);
                audits.push(audit);
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(|e| e.to_string())?;
                let addr = listener.local_addr().map_err(|e| e.to_string())?;
                let app = api::router(
                    AppState {
                        service: service.clone(),
                        request_timeout: cfg.request_timeout,
                        admin_requires_client_cert: false,
                    },
                    cfg.max_body_bytes,
                );
                tasks.push(tokio::spawn(async move {
                    let _ = axum::serve(
                        listener,
                        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
                    )
                    .await;
                }));
                services.push(service);
                urls.push(format!("http://{addr}/v1/certs/user"));
            }
            Servers::InProcess {
                services,
                tasks,
                audits,
            }
        }
    };
    let concurrency = opts.concurrency.max(1);
    let http = http
        .pool_max_idle_per_host(concurrency)
        .build()
        .map_err(|e| e.to_string())?;
    let ca_url = urls[0].replace("/v1/certs/user", "/v1/ca/user.pub");
    let ca_line = get_text(&http, &ca_url).await?;
    let ca = ssh_key::PublicKey::from_openssh(ca_line.trim())
        .map_err(|e| format!("GET {ca_url}: {e}"))?
        .key_data()
        .clone();
    let before = servers.count_issued().await?;
    let run = nonce();

    eprintln!(
        "signing {} tokens ({:?}) and making a key for each...",
        opts.requests, f.alg
    );
    let shots = Arc::new(shots(&f, opts.requests, &run)?);
    let ca = Arc::new(ca);
    let next = Arc::new(AtomicUsize::new(0));
    // The clients' connections are opened (and with TLS, handshaken)
    // before the clock and the CPU counters start: the run measures
    // certificates over keep-alive connections, not a burst of
    // `concurrency` handshakes at once, which would otherwise be the
    // first answer of every client and, at 256 clients, over 1% of them.
    eprintln!("opening {concurrency} connections...");
    futures_util::future::try_join_all((0..concurrency).map(|c| {
        let url = urls[c % urls.len()].replace("/v1/certs/user", "/v1/ca/user.pub");
        let http = http.clone();
        async move { get_text(&http, &url).await }
    }))
    .await?;
    eprintln!(
        "running {} requests with {concurrency} clients...",
        opts.requests
    );
    let server_pid = match &servers {
        Servers::Process { server, .. } => Some(server.pid()),
        Servers::InProcess { .. } => None,
    };
    let server_before = server_pid.and_then(|p| process_cpu(Some(p)));
    let io_before = server_pid.and_then(process_io);
    let cpu_before = process_cpu(None);
    let started = Instant::now();
    let mut workers = Vec::new();
    for c in 0..concurrency {
        let (shots, next, http, url, ca) = (
            shots.clone(),
            next.clone(),
            http.clone(),
            urls[c % urls.len()].clone(),
            ca.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut serials = Vec::new();
            let mut failed = 0usize;
            let mut fail = |why: String| {
                failed += 1;
                if failed <= 3 {
                    eprintln!("request failed: {why}");
                }
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(shot) = shots.get(i) else { break };
                let t0 = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(&shot.token)
                    .header("content-type", "application/json")
                    .body(shot.body.clone())
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                        Ok(body) => {
                            let took = t0.elapsed();
                            match check_answer(&body, shot, &ca) {
                                Ok(serial) => {
                                    lat.push(took);
                                    serials.push(serial);
                                }
                                Err(e) => fail(e),
                            }
                        }
                        Err(e) => fail(e.to_string()),
                    },
                    Ok(resp) => {
                        let status = resp.status();
                        let text = resp.text().await.unwrap_or_default();
                        fail(format!("{status} {text}"));
                    }
                    Err(e) => fail(e.to_string()),
                }
            }
            (lat, serials, failed)
        }));
    }
    let mut lat = Vec::new();
    let mut serials = Vec::new();
    let mut failed = 0;
    for w in workers {
        let (l, s, f) = w.await.map_err(|e| e.to_string())?;
        lat.extend(l);
        serials.extend(s);
        failed += f;
    }
    let elapsed = started.elapsed();
    let since = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let cpu = since(cpu_before, process_cpu(None));
    let server_cpu = since(server_before, server_pid.and_then(|p| process_cpu(Some(p))));
    let server_io = io_before
        .zip(server_pid.and_then(process_io))
        .map(|(before, after)| after.since(before));
    serials.sort_unstable();
    serials.dedup();
    if serials.len() != lat.len() {
        return Err(format!(
            "{} certificates carried {} distinct serials",
            lat.len(),
            serials.len()
        ));
    }
    lat.sort();
    let audited = servers.count_issued().await?.saturating_sub(before);
    if let Servers::InProcess { tasks, audits, .. } = &mut servers {
        for t in tasks.iter() {
            t.abort();
        }
        for a in audits.drain(..) {
            let _ = tokio::task::spawn_blocking(move || a.shutdown()).await;
        }
    }
    Ok(BenchReport {
        ok: lat.len(),
        failed,
        elapsed,
        latency: [
            percentile(&lat, 0.5),
            percentile(&lat, 0.9),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or_default(),
        ],
        audited,
        store: if opts.store_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        },
        replicas,
        concurrency,
        cpu,
        server: server_pid.map(|pid| ServerCpu {
            pid,
            tls: opts.tls,
            cpu: server_cpu,
            io: server_io,
        }),
    })
}

/// What a process wrote, from `/proc/PID/io`: the storage figures behind
/// the durable audit append (the database and its WAL, the log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessIo {
    /// Bytes sent towards storage (`write_bytes`: pages dirtied in files).
    pub write_bytes: u64,
    /// Write system calls of any kind, sockets included (`syscw`).
    pub write_calls: u64,
}

impl ProcessIo {
    fn since(self, before: ProcessIo) -> ProcessIo {
        ProcessIo {
            write_bytes: self.write_bytes.saturating_sub(before.write_bytes),
            write_calls: self.write_calls.saturating_sub(before.write_calls),
        }
    }
}

/// [`ProcessIo`] of process `pid` so far; `None` where there is no procfs
/// (or it is not readable).
fn process_io(pid: u32) -> Option<ProcessIo> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        })
    };
    Some(ProcessIo {
        write_bytes: field("write_bytes")?,
        write_calls: field("syscw")?,
    })
}

/// User plus system CPU time so far of process `pid` (this process if
/// `None`), from `/proc/PID/stat` (fields 14 and 15, in USER_HZ ticks: 100
/// per second on Linux); `None` where there is no procfs.
fn process_cpu(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field N is fields[N - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// The passphrase of the CA keys a bench on PostgreSQL stores.
const BENCH_CA_PASSPHRASE: &str = "mayfly bench: throw-away CA keys\n";

/// A per-run random tag for token ids.
fn nonce() -> String {
    use rand_core::RngCore as _;
    let mut b = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
