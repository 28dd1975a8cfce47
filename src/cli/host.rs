//! `mayfly host sync | cert` and `mayfly known-hosts`: the host side, run
//! on the servers bots log in to (and by clients that want to trust host
//! certificates).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use mayfly::client::token::TokenSource;
use mayfly::hostsync::{self, HostCertOptions, ReportOptions, SyncOptions};

/// `mayfly host ...`: commands run on a server that bots log in to.
#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// Install the CA's user keys and KRL for sshd (TrustedUserCAKeys,
    /// RevokedKeys); keeps the last good files on any failure, exit 1.
    Sync(SyncArgs),
    /// Get a host certificate for this host's key (sshd HostCertificate).
    Cert(HostCertArgs),
}

/// Arguments of `mayfly host sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// CA base URL, e.g. https://ca.example.com.
    #[arg(long, env = "MAYFLY_SERVER")]
    server: String,
    /// Directory for user_ca.pub and revoked.krl.
    #[arg(long, default_value = "/etc/ssh/mayfly")]
    dir: PathBuf,
    /// PEM file of the CA(s) that signed the CA server's TLS certificate;
    /// trusted instead of the built-in roots (like curl --cacert).
    #[arg(long, env = "MAYFLY_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Allow plain http to a non-loopback CA (anyone on the path could then
    /// choose which CA this host trusts).
    #[arg(long)]
    insecure_http: bool,
    /// Trust only the user CA keys of this CA group (roles with `ca_group`);
    /// `default` for roles without one. Default: every user CA key.
    #[arg(long)]
    ca_group: Option<String>,
    /// Host private key that signs the report to the CA after the sync;
    /// its certificate (from `mayfly host cert`) proves which host reports.
    #[arg(long)]
    host_key: Option<PathBuf>,
    /// Host certificate (default: <host key>-cert.pub).
    #[arg(long)]
    host_cert: Option<PathBuf>,
    /// Host name to report (default: the certificate's first principal).
    #[arg(long)]
    host_name: Option<String>,
    /// Do not report to the CA (`mayfly hosts` will not list this host).
    #[arg(long, conflicts_with_all = ["host_key", "host_cert", "host_name"])]
    no_report: bool,
    /// One JSON object on stdout: what was installed (KRL version, what
    /// changed, CA keys), the error if the sync failed, and the report.
    #[arg(long)]
    json: bool,
}

/// Default host key that signs sync reports.
const DEFAULT_HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key";

/// Arguments of `mayfly host cert`.
#[derive(Debug, Args)]
pub struct HostCertArgs {
    /// CA base URL, e.g. https://ca.example.com.
    #[arg(long, env = "MAYFLY_SERVER")]
    server: String,
    /// Role (policy file name) to request.
    #[arg(long)]
    role: String,
    /// The host's public key.
    #[arg(long, default_value = "/etc/ssh/ssh_host_ed25519_key.pub")]
    key: PathBuf,
    /// Host name to put in the certificate (repeatable; default: the role's).
    #[arg(long = "hostname")]
    hostnames: Vec<String>,
    /// File holding the workload token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Audience to request from CI token endpoints.
    #[arg(long, default_value = "mayfly")]
    audience: String,
    /// Certificate lifetime, e.g. 30d (default: the role's).
    #[arg(long)]
    ttl: Option<String>,
    /// Where to write the certificate (default: <key without .pub>-cert.pub).
    #[arg(long)]
    out: Option<PathBuf>,
    /// PEM file of the CA(s) that signed the CA server's TLS certificate;
    /// trusted instead of the built-in roots (like curl --cacert).
    #[arg(long, env = "MAYFLY_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Allow plain http to a non-loopback CA (sends the token in clear).
    #[arg(long)]
    insecure_http: bool,
    /// Print what was issued (serial, key id, host names, validity) and the
    /// path written, as one JSON object, instead of the path.
    #[arg(long)]
    json: bool,
}

/// Arguments of `mayfly known-hosts`.
#[derive(Debug, Args)]
pub struct KnownHostsArgs {
    /// CA base URL, e.g. https://ca.example.com.
    #[arg(long, env = "MAYFLY_SERVER")]
    server: String,
    /// Host pattern the host CA vouches for, e.g. '*.example.com'
    /// (repeatable).
    #[arg(long = "domain", required = true)]
    domains: Vec<String>,
    /// PEM file of the CA(s) that signed the CA server's TLS certificate;
    /// trusted instead of the built-in roots (like curl --cacert).
    #[arg(long, env = "MAYFLY_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Allow plain http to a non-loopback CA.
    #[arg(long)]
    insecure_http: bool,
}

/// A single-threaded runtime: the host commands make one request at a time.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs `mayfly host sync|cert`. `host sync` prints its own one-line error
/// (saying what is kept) and returns exit code 1; `host cert` errors are
/// returned.
pub fn run(cmd: HostCmd, verbose: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        HostCmd::Sync(a) => sync(a, verbose),
        HostCmd::Cert(a) => cert(a, verbose),
    }
}

fn sync(a: SyncArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    let explicit = a.host_key.is_some() || a.host_cert.is_some() || a.host_name.is_some();
    let report = (!a.no_report).then(|| {
        let host_key = a
            .host_key
            .unwrap_or_else(|| PathBuf::from(DEFAULT_HOST_KEY));
        let certificate = a.host_cert.unwrap_or_else(|| {
            let mut c = host_key.clone().into_os_string();
            c.push("-cert.pub");
            PathBuf::from(c)
        });
        ReportOptions {
            host_key,
            certificate,
            host_name: a.host_name,
        }
    });
    let opts = SyncOptions {
        server: a.server,
        dir: a.dir,
        ca_file: a.ca_file,
        insecure_http: a.insecure_http,
        ca_group: a.ca_group,
    };
    let rt = runtime()?;
    let mut facts = serde_json::json!({"ok": true, "dir": opts.dir.display().to_string()});
    let (mut code, last_error) = match rt.block_on(hostsync::sync(&opts)) {
        Ok(outcome) => {
            if verbose {
                eprintln!("mayfly host sync: {}", outcome.summary());
            }
            facts["krl_version"] = outcome.krl_version.into();
            facts["krl_updated"] = outcome.krl_updated.into();
            facts["ca_updated"] = outcome.ca_updated.into();
            facts["ca_keys"] = outcome.ca_keys.into();
            (ExitCode::SUCCESS, None)
        }
        Err(e) => {
            let line = format!(
                "mayfly host sync: {e}; {}",
                hostsync::describe_installed(&opts.dir)
            );
            let line = line.replace(['\n', '\r'], " ");
            eprintln!("{line}");
            let message = e.to_string();
            facts["ok"] = false.into();
            facts["error"] = message.clone().into();
            let code: ExitCode = super::exit::classify(&anyhow::Error::new(e)).into();
            (code, Some(message))
        }
    };
    let print = |facts: &serde_json::Value| {
        if a.json {
            println!(
                "{}",
                serde_json::to_string_pretty(facts).unwrap_or_default()
            );
        }
    };
    // The report goes after every run, failed ones too, so the CA sees the
    // error and what is still installed.
    if let Some(r) = report {
        if !explicit && !r.certificate.exists() {
            // No host certificate at the default place: the host syncs as
            // before, quietly (`mayfly hosts` does not list it; README).
            facts["reported"] = false.into();
            print(&facts);
            return Ok(code);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match rt.block_on(hostsync::report(&opts, &r, last_error, now)) {
            Ok(ca_version) => {
                if verbose {
                    eprintln!("mayfly host sync: reported to the CA (CA KRL version {ca_version})");
                }
                facts["reported"] = true.into();
                facts["ca_krl_version"] = ca_version.into();
            }
            Err(e) => {
                let line = format!("mayfly host sync: reporting to the CA failed: {e}");
                eprintln!("{}", line.replace(['\n', '\r'], " "));
                facts["reported"] = false.into();
                facts["report_error"] = e.to_string().into();
                code = ExitCode::from(1);
            }
        }
    } else {
        facts["reported"] = false.into();
    }
    print(&facts);
    Ok(code)
}

fn cert(a: HostCertArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    let ttl = a
        .ttl
        .as_deref()
        .map(|t| {
            humantime::parse_duration(t).with_context(|| format!("--ttl {t:?}: write e.g. 30d"))
        })
        .transpose()?;
    let opts = HostCertOptions {
        server: a.server,
        role: a.role,
        key: a.key,
        hostnames: a.hostnames,
        ttl,
        token: TokenSource {
            token_file: a.token_file,
            token_command: None,
            audience: a.audience,
        },
        out: a.out,
        ca_file: a.ca_file,
        insecure_http: a.insecure_http,
    };
    let (answer, path) = runtime()?.block_on(hostsync::host_cert(&opts))?;
    if a.json {
        let mut facts = super::issued_facts(&answer);
        facts["certificate"] = path.display().to_string().into();
        println!("{facts}");
    } else {
        super::print_cert_written("host certificate", &answer, &path, verbose);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `mayfly known-hosts`: prints one `@cert-authority` line per host-CA key.
pub fn run_known_hosts(a: KnownHostsArgs) -> anyhow::Result<ExitCode> {
    for d in &a.domains {
        hostsync::check_host_pattern(d).map_err(|e| anyhow::anyhow!("--domain {d:?} {e}"))?;
    }
    let lines = runtime()?.block_on(hostsync::known_hosts(
        &a.server,
        &a.domains,
        a.ca_file.as_deref(),
        a.insecure_http,
    ))?;
    for l in lines {
        println!("{l}");
    }
    Ok(ExitCode::SUCCESS)
}
