//! The command groups of the `mayfly` binary, one file each. A file holds
//! the clap arguments of its group, turns them into calls into the library,
//! and prints what comes back: tables and JSON on stdout, messages on
//! stderr, and the exit code. The library returns data and typed errors;
//! clap, anyhow and printing live only here and in `main.rs`.
//!
//! Exit codes are one table for every command: see [`exit`]. An error is
//! printed as `mayfly: ...` and its exit code comes from its kind.

pub mod audit;
pub mod bench;
pub mod ca;
pub mod cert;
pub mod exit;
pub mod host;
pub mod hosts;
pub mod identity;
pub mod log_sink;
pub mod policy;
pub mod remote;
pub mod report;
pub mod request;
pub mod revoke;
pub mod serve;
pub mod status;
pub mod store;

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use mayfly::config::{Config, LogFormat};

/// The process environment, as the library's config and actor lookups take it.
pub fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// Now in unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Loads the CA's `mayfly.toml` named by `--config`, with `MAYFLY_*`
/// overrides from the environment.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(Some(path), &env)?)
}

/// Why `issuer` (an `--issuer` argument) names no `[[issuer]]` of `cfg`,
/// listing the ones it has; `None` when it does.
pub fn unknown_issuer(cfg: &Config, issuer: &str) -> Option<String> {
    mayfly::config::unknown_issuer(&cfg.issuer_names(), issuer).map(|why| format!("--issuer {why}"))
}

/// Refuses to run `command` as root on a data dir another user owns (the
/// service user): files it writes (CA keys) would be root's, and the
/// service could no longer read them. Names the command to use instead.
pub fn as_data_dir_owner(data_dir: &Path, command: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let me = rustix::process::geteuid().as_raw();
    let Ok(meta) = std::fs::metadata(data_dir) else {
        return Ok(());
    };
    if me == 0 && meta.uid() != 0 {
        let owner = mayfly::revocation::user_name(meta.uid());
        return Err(exit::fail(
            exit::Exit::Error,
            format!(
                "data_dir {} belongs to {owner} (uid {}), but this runs as root: the files `{command}` \
                 writes would be root's and the CA could not read them; run it as the CA's user: \
                 sudo -u {owner} mayfly {command} ...",
                data_dir.display(),
                meta.uid()
            ),
        ));
    }
    Ok(())
}

/// Sends `tracing` output to stderr: `RUST_LOG` if set, else `default`.
pub fn init_logging(default: &str, format: LogFormat) {
    init_logging_to(default, format, std::io::stderr);
}

/// As [`init_logging`], for `mayfly serve`: lines are written by a thread
/// of their own, many per write (see [`log_sink`]). Keep the returned
/// value until the server returns; dropping it writes what is left.
pub fn init_server_logging(default: &str, format: LogFormat) -> log_sink::Flush {
    let (sink, flush) = log_sink::LogSink::start();
    init_logging_to(default, format, sink);
    flush
}

fn init_logging_to<W>(default: &str, format: LogFormat, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only for a person at a terminal: journald, CI logs and log
    // shippers get plain text, without escape codes to strip.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

/// The log filter for commands that are quiet unless `-v` is given.
pub fn quiet(verbose: bool) -> &'static str {
    if verbose {
        "debug"
    } else {
        "warn"
    }
}

/// A multi-threaded async runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    server_runtime(None)
}

/// The runtime of `mayfly serve`: `workers` threads serve requests
/// (`worker_threads` in mayfly.toml; `None`: one per CPU).
pub fn server_runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    b.build().context("starting the async runtime")
}

/// Parses `--ttl` (e.g. `5m`).
pub fn parse_ttl(s: &Option<String>) -> anyhow::Result<Option<Duration>> {
    s.as_deref()
        .map(|t| {
            humantime::parse_duration(t).with_context(|| format!("--ttl {t:?}: write e.g. 5m"))
        })
        .transpose()
}

/// What a certificate answer says, for `--json` (`cert`, `host cert`):
/// serial, key id, principals and validity in RFC 3339; each command adds
/// the paths it wrote.
pub fn issued_facts(answer: &mayfly::client::CertAnswer) -> serde_json::Value {
    serde_json::json!({
        "serial": answer.serial,
        "key_id": answer.key_id,
        "principals": answer.principals,
        "valid_after": mayfly::time::rfc3339(answer.valid_after),
        "valid_before": mayfly::time::rfc3339(answer.valid_before),
    })
}

/// Prints where a certificate was written (stdout) and, with `--verbose`,
/// what it holds (stderr): the output of `mayfly cert` and `host cert`.
pub fn print_cert_written(
    what: &str,
    answer: &mayfly::client::CertAnswer,
    path: &std::path::Path,
    verbose: bool,
) {
    if verbose {
        eprintln!(
            "{what} serial {} key_id {} principals {:?}, valid for {}s",
            answer.serial,
            answer.key_id,
            answer.principals,
            mayfly::client::remaining(answer.valid_before)
        );
    }
    println!("{}", path.display());
}
