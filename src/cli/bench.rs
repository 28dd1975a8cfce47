//! `mayfly bench`: certificates per second through the full path on loopback.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use mayfly::bench::{BenchAlg, BenchOptions};
use mayfly::config::LogFormat;

use super::{init_logging, runtime};

// Arguments of `mayfly bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// One JSON object per run (per --concurrency entry) on stdout: clients,
    /// certificates/s, latency percentiles (ms), CPU per certificate (µs).
    #[arg(long)]
    json: bool,
    /// Total requests.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Concurrent clients; a comma-separated list (`16,64,256`) runs the
    /// bench once per entry, each on a fresh CA.
    #[arg(long, default_value = "32", value_delimiter = ',', num_args = 1..)]
    concurrency: Vec<usize>,
    /// Token signature algorithm: rs256 or es256.
    #[arg(long, default_value = "rs256")]
    alg: String,
    /// Store in PostgreSQL instead of SQLite (`postgres://user@host:port/db`,
    /// no password in it; the schema is created if missing).
    #[arg(long, value_name = "URL")]
    store_url: Option<String>,
    /// File holding the PostgreSQL password (else `PGPASSWORD`).
    #[arg(long, value_name = "FILE", requires = "store_url")]
    pg_password_file: Option<std::path::PathBuf>,
    /// Replicas sharing the PostgreSQL database; clients are spread over
    /// them round-robin.
    #[arg(long, default_value_t = 1, requires = "store_url")]
    replicas: usize,
    /// Serve HTTPS (a throw-away self-signed certificate) from a separate
    /// `mayfly serve` process, and report that process's CPU per
    /// certificate alone. SQLite only.
    #[arg(long, conflicts_with = "store_url")]
    tls: bool,
    /// Run the CA as a separate `mayfly serve` process on plain HTTP and
    /// report its CPU alone (as `--tls` does, without TLS).
    #[arg(long, conflicts_with = "store_url")]
    server_process: bool,
    /// `worker_threads` of the separate `mayfly serve` process (with
    /// --tls or --server-process); default one per CPU.
    #[arg(long, value_name = "N")]
    server_workers: Option<usize>,
}

/// Runs the load generator and prints its report on stdout.
pub fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    init_logging("warn", LogFormat::Text);
    let alg = match a.alg.as_str() {
        "rs256" => BenchAlg::Rs256,
        "es256" => BenchAlg::Es256,
        other => anyhow::bail!("--alg {other:?}: use rs256 or es256"),
    };
    let server = if a.tls || a.server_process {
        Some(std::env::current_exe().context("finding the mayfly binary to serve from")?)
    } else {
        None
    };
    if a.server_workers.is_some() && server.is_none() {
        anyhow::bail!(
            "--server-workers sets the separate server's threads: add --tls or --server-process"
        );
    }
    let rt = runtime()?;
    for (i, &concurrency) in a.concurrency.iter().enumerate() {
        let report = rt
            .block_on(mayfly::bench::run(BenchOptions {
                requests: a.requests,
                concurrency,
                alg,
                store_url: a.store_url.clone(),
                password_file: a.pg_password_file.clone(),
                replicas: a.replicas,
                server: server.clone(),
                tls: a.tls,
                server_workers: a.server_workers,
            }))
            .map_err(anyhow::Error::msg)?;
        if a.json {
            println!("{}", report.to_json());
            continue;
        }
        if i > 0 {
            println!();
        }
        println!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}
