//! `mayfly bench`: certificates per second through the full path on loopback.

use std::process::ExitCode;

use clap::Args;

use mayfly::bench::{BenchAlg, BenchOptions};
use mayfly::config::LogFormat;

use super::{init_logging, runtime};

// Arguments of `mayfly bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Total requests.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
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
}

/// Runs the load generator and prints its report on stdout.
pub fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    init_logging("warn", LogFormat::Text);
    let alg = match a.alg.as_str() {
        "rs256" => BenchAlg::Rs256,
        "es256" => BenchAlg::Es256,
        other => anyhow::bail!("--alg {other:?}: use rs256 or es256"),
    };
    let report = runtime()?
        .block_on(mayfly::bench::run(BenchOptions {
            requests: a.requests,
            concurrency: a.concurrency,
            alg,
            store_url: a.store_url,
            password_file: a.pg_password_file,
            replicas: a.replicas,
        }))
        .map_err(anyhow::Error::msg)?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}
