//! `mayfly serve`: run the CA.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use mayfly::config::Config;

use super::{env, init_server_logging, server_runtime};

// Arguments of `mayfly serve` (its help text is the doc comment of
// `Cmd::Serve` in main.rs).
#[derive(Args)]
pub struct ServeArgs {
    /// Path to mayfly.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Dangerous: allow plain HTTP on a non-loopback address (bearer
    /// tokens cross the network in clear); prefer [tls] in mayfly.toml.
    #[arg(long)]
    insecure_http: bool,
}

/// Runs the CA until it is told to stop.
pub fn run(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = Config::load(a.config.as_deref(), &env)?;
    cfg.insecure_http |= a.insecure_http;
    let _flush = init_server_logging("info", cfg.log_format);
    if a.config.is_none() {
        tracing::info!("no --config given: using embedded defaults (listen 127.0.0.1:8400, data ./mayfly-data, policies ./ca-policy)");
    }
    let rt = server_runtime(cfg.worker_threads)?;
    tracing::info!(
        worker_threads = rt.metrics().num_workers(),
        "threads serving requests"
    );
    rt.block_on(mayfly::server::serve(cfg))?;
    Ok(ExitCode::SUCCESS)
}
