//! `mayfly cert` and `mayfly ssh`: the bot side. Both present a workload
//! token to the CA and get a fresh key certified; `cert` writes the key and
//! certificate to a directory, `ssh` keeps them in memory and runs ssh.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use mayfly::client::{self, token::TokenSource, CertOptions};
use mayfly::config::LogFormat;

use super::{init_logging, parse_ttl, quiet, runtime};

// What to ask the CA for, shared by `cert` and `ssh`.
#[derive(Args)]
pub struct RequestArgs {
    /// CA base URL, e.g. https://ca.example.com.
    #[arg(long, env = "MAYFLY_SERVER")]
    server: String,
    /// Role (policy file name) to request.
    #[arg(long)]
    role: String,
    /// File holding the workload token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Audience to request from CI token endpoints.
    #[arg(long, default_value = "mayfly")]
    audience: String,
    /// Certificate lifetime, e.g. 5m (default: the role's).
    #[arg(long)]
    ttl: Option<String>,
    /// Principal to request (repeatable; default: all the role grants).
    #[arg(long = "principal")]
    principals: Vec<String>,
    /// Allow plain http to a non-loopback CA (sends the token in clear).
    #[arg(long)]
    insecure_http: bool,
    /// PEM file of the CA(s) that signed the CA server's TLS certificate;
    /// trusted instead of the built-in roots (like curl --cacert).
    #[arg(long, env = "MAYFLY_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// How long to wait for a human approval when the role needs one.
    #[arg(long)]
    approval_timeout: Option<String>,
}

impl RequestArgs {
    fn options(&self) -> anyhow::Result<CertOptions> {
        Ok(CertOptions {
            server: self.server.clone(),
            role: self.role.clone(),
            ttl: parse_ttl(&self.ttl)?,
            principals: (!self.principals.is_empty()).then(|| self.principals.clone()),
            token: TokenSource {
                token_file: self.token_file.clone(),
                audience: self.audience.clone(),
            },
            insecure_http: self.insecure_http,
            ca_file: self.ca_file.clone(),
            approval_timeout: match &self.approval_timeout {
                Some(t) => humantime::parse_duration(t)
                    .with_context(|| format!("--approval-timeout {t:?}: write e.g. 15m"))?,
                None => client::DEFAULT_APPROVAL_TIMEOUT,
            },
        })
    }
}

// Arguments of `mayfly cert`.
#[derive(Args)]
pub struct CertArgs {
    #[command(flatten)]
    req: RequestArgs,
    /// Directory for id_ed25519, id_ed25519.pub and id_ed25519-cert.pub.
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

// Arguments of `mayfly ssh`.
#[derive(Args)]
pub struct SshArgs {
    #[command(flatten)]
    req: RequestArgs,
    /// The ssh program to run.
    #[arg(long, default_value = "ssh")]
    ssh_program: String,
    /// Arguments for ssh (after --).
    #[arg(last = true, required = true)]
    args: Vec<String>,
}

/// `mayfly cert`: prints the path of the certificate written.
pub fn run_cert(a: CertArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    init_logging(quiet(verbose), LogFormat::Text);
    let opts = a.req.options()?;
    let (answer, path) = runtime()?.block_on(client::cert_to_dir(&opts, &a.out))?;
    super::print_cert_written("certificate", &answer, &path, verbose);
    Ok(ExitCode::SUCCESS)
}

/// `mayfly ssh`: exits with ssh's exit code.
pub fn run_ssh(a: SshArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    init_logging(quiet(verbose), LogFormat::Text);
    let opts = a.req.options()?;
    let code = runtime()?.block_on(client::ssh_with_cert(&opts, &a.ssh_program, &a.args))?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
