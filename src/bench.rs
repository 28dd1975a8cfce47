//! `mayfly bench`: a load generator that measures certificates per second
//! through the whole path (HTTP, token verification, policy, signing,
//! durable audit) against an in-process CA on loopback.
//!
//! It creates a throw-away data directory, an issuer whose keys it holds
//! (a `jwks_file` issuer), and one token per request (tokens are single
//! use), then fires them from `concurrency` clients.
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
    /// CPU time this process used during the run (the replicas and the
    /// load clients together), where `/proc/self/stat` tells it.
    pub cpu: Option<Duration>,
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
        if let (Some(cpu), true) = (self.cpu, self.ok > 0) {
            writeln!(
                f,
                "cpu:                 {:.0} us per certificate ({:.2} s in this process: replicas and load clients)",
                cpu.as_secs_f64() * 1e6 / self.ok as f64,
                cpu.as_secs_f64()
            )?;
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the benchmark.
pub async fn run(opts: BenchOptions) -> Result<BenchReport, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let policy_dir = dir.path().join("ca-policy");
    std::fs::create_dir_all(&policy_dir).map_err(|e| e.to_string())?;
    std::fs::write(
        policy_dir.join("bench.toml"),
        "description = \"load test\"\nowner = \"bench@localhost\"\nissuer = \"bench\"\n\
         principals = [\"deploy\"]\nmax_ttl = \"5m\"\n[claims]\nsub = \"bench-*\"\n",
    )
    .map_err(|e| e.to_string())?;
    let (key, alg) = issuer_key(opts.alg)?;
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).map_err(|e| e.to_string())?;
    jwk.common.key_id = Some("bench".into());
    let jwks = serde_json::json!({ "keys": [jwk] });
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).map_err(|e| e.to_string())?;
    let replicas = opts.replicas.max(1);
    if replicas > 1 && opts.store_url.is_none() {
        return Err(format!(
            "--replicas {replicas} needs a database the replicas share: pass --store-url postgres://..."
        ));
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
    let mut services = Vec::new();
    let mut servers = Vec::new();
    let mut urls = Vec::new();
    for r in 0..replicas {
        let cfg_text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\npolicy_dir = {:?}\n\
             [[issuer]]\nname = \"bench\"\nurl = \"https://bench.invalid\"\naudience = \"mayfly\"\njwks_file = {:?}\n{store_toml}",
            dir.path().join(format!("data-{r}")),
            policy_dir,
            jwks_path
        );
        let cfg = Config::parse(&cfg_text).map_err(|e| e.to_string())?;
        let service = Arc::new(
            crate::server::build(&cfg)
                .await
                .map_err(|e| format!("starting replica {r}: {e}"))?,
        );
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
        servers.push(tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await;
        }));
        services.push(service);
        urls.push(format!("http://{addr}/v1/certs/user"));
    }
    let before = services[0]
        .store()
        .reports()
        .count_events("cert_issued")
        .await
        .map_err(|e| e.to_string())?;
    let run = nonce();

    eprintln!("signing {} tokens ({alg:?})...", opts.requests);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut header = Header::new(alg);
    header.kid = Some("bench".into());
    let tokens: Vec<String> = (0..opts.requests)
        .map(|i| {
            let claims = serde_json::json!({
                "iss": "https://bench.invalid", "aud": "mayfly", "sub": format!("bench-{}", i % 100),
                "iat": now, "exp": now + 600, "jti": format!("bench-{run}-{i}"),
            });
            jsonwebtoken::encode(&header, &claims, &key).map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let subject = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)
        .map_err(|e| e.to_string())?
        .public_key()
        .to_openssh()
        .map_err(|e| e.to_string())?;
    let body = serde_json::json!({"role": "bench", "public_key": subject}).to_string();
    let tokens = Arc::new(tokens);
    let next = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.concurrency)
        .build()
        .map_err(|e| e.to_string())?;
    eprintln!(
        "running {} requests with {} clients...",
        opts.requests, opts.concurrency
    );
    let cpu_before = process_cpu();
    let started = Instant::now();
    let mut workers = Vec::new();
    for c in 0..opts.concurrency.max(1) {
        let (tokens, next, http, url, body) = (
            tokens.clone(),
            next.clone(),
            http.clone(),
            urls[c % urls.len()].clone(),
            body.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(tok) = tokens.get(i) else { break };
                let t0 = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(tok)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.bytes().await;
                        lat.push(t0.elapsed());
                    }
                    Ok(resp) => {
                        failed += 1;
                        let status = resp.status();
                        let text = resp.text().await.unwrap_or_default();
                        if failed <= 3 {
                            eprintln!("request failed: {status} {text}");
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        if failed <= 3 {
                            eprintln!("request failed: {e}");
                        }
                    }
                }
            }
            (lat, failed)
        }));
    }
    let mut lat = Vec::new();
    let mut failed = 0;
    for w in workers {
        let (l, f) = w.await.map_err(|e| e.to_string())?;
        lat.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed();
    let cpu = match (cpu_before, process_cpu()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    for s in &servers {
        s.abort();
    }
    lat.sort();
    let audited = services[0]
        .store()
        .reports()
        .count_events("cert_issued")
        .await
        .map_err(|e| e.to_string())?
        .saturating_sub(before);
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
        concurrency: opts.concurrency.max(1),
        cpu,
    })
}

/// User plus system CPU time of this process so far, from
/// `/proc/self/stat` (fields 14 and 15, in USER_HZ ticks: 100 per second
/// on Linux); `None` where there is no procfs.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
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
