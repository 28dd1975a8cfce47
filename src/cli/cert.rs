//! `mayfly cert`, `mayfly ssh` and `mayfly exec`: the bot side. Each
//! presents a workload token to the CA and gets a fresh key certified;
//! `cert` writes the key and certificate to a directory, `ssh` keeps them
//! in memory and runs ssh, `exec` runs a whole job with them in an agent
//! and renews them while it runs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use mayfly::client::{self, token::TokenSource, CertOptions};
use mayfly::config::LogFormat;

use super::exit::{fail, Exit};
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
    /// File holding the workload token (read again for every token, as
    /// Kubernetes rotates projected tokens).
    #[arg(long, conflicts_with = "token_command")]
    token_file: Option<PathBuf>,
    /// Command whose stdout is the workload token, run with `sh -c` for
    /// every token (each renewal of `mayfly exec` needs a fresh one).
    #[arg(long, value_name = "CMD")]
    token_command: Option<String>,
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
                token_command: self.token_command.clone(),
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
    /// Directory for id_ed25519, id_ed25519.pub and id_ed25519-cert.pub:
    /// created 0700 if missing; refused if other users can use it. Without
    /// it, mayfly asks before writing into the current directory (and
    /// refuses when nobody is at a terminal to answer).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the certificate's facts and the paths written as one JSON
    /// object on stdout.
    #[arg(long)]
    json: bool,
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

// Arguments of `mayfly exec`.
#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    req: RequestArgs,
    /// Renew when this fraction of the certificate's lifetime has passed
    /// (0.1 to 0.9).
    #[arg(long, default_value_t = client::exec::DEFAULT_RENEW_AT, value_parser = renew_fraction)]
    renew_at: f64,
    /// Print each certificate's facts (serial, key id, principals,
    /// validity) as a JSON line on stderr.
    #[arg(long)]
    json: bool,
    /// Append the JSON facts to this file instead of stderr.
    #[arg(long, value_name = "FILE")]
    json_file: Option<PathBuf>,
    /// The command to run, and its arguments (after --).
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn renew_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.1..=0.9).contains(&f) => Ok(f),
        _ => Err(format!(
            "{s:?}: give a fraction of the lifetime between 0.1 and 0.9, e.g. 0.66"
        )),
    }
}

/// `mayfly exec`: exits with the command's exit code.
pub fn run_exec(a: ExecArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    init_logging(quiet(verbose), LogFormat::Text);
    let facts = match (a.json_file, a.json) {
        (Some(path), _) => Some(client::exec::FactsOut::File(path)),
        (None, true) => Some(client::exec::FactsOut::Stderr),
        (None, false) => None,
    };
    let opts = client::exec::ExecOptions {
        cert: a.req.options()?,
        renew_at: a.renew_at,
        facts,
    };
    let (program, args) = a.command.split_first().context(
        "give the command to run after --, e.g. mayfly exec ... -- ansible-playbook site.yml",
    )?;
    let code = runtime()?.block_on(client::exec::exec(&opts, program, args))?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// `mayfly cert`: prints the path of the certificate written (or, with
/// `--json`, its facts and every path).
pub fn run_cert(a: CertArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    init_logging(quiet(verbose), LogFormat::Text);
    let opts = a.req.options()?;
    client::check_options(&opts)?;
    let out = match a.out {
        Some(dir) => dir,
        None => current_dir_if_confirmed()?,
    };
    let (answer, path) = runtime()?.block_on(client::cert_to_dir(&opts, &out))?;
    if a.json {
        println!("{}", serde_json::to_string(&cert_facts(&answer, &out))?);
    } else {
        super::print_cert_written("certificate", &answer, &path, verbose);
    }
    Ok(ExitCode::SUCCESS)
}

/// `mayfly cert --json`: what was issued and where it was written.
fn cert_facts(answer: &client::CertAnswer, out: &Path) -> serde_json::Value {
    let at = |name: &str| out.join(name).display().to_string();
    let mut facts = super::issued_facts(answer);
    facts["private_key"] = at(client::KEY_FILE).into();
    facts["public_key"] = at(client::PUB_FILE).into();
    facts["certificate"] = at(client::CERT_FILE).into();
    facts
}

/// No `--out`: the current directory, only if a person at the terminal
/// says so. A script gets a usage error that names the fix, rather than a
/// private key left in whatever directory it ran in.
fn current_dir_if_confirmed() -> anyhow::Result<PathBuf> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let here = std::env::current_dir().context("reading the current directory")?;
    let refuse = || {
        fail(
            Exit::Usage,
            format!(
                "give --out DIR: mayfly does not write a private key into the current directory ({}) unasked; \
                 e.g. --out \"$(mktemp -d)\"",
                here.display()
            ),
        )
    };
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Err(refuse());
    }
    eprint!(
        "write a private key (id_ed25519) into the current directory {}? [y/N] ",
        here.display()
    );
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).ok();
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(here)
    } else {
        Err(refuse())
    }
}

/// `mayfly ssh`: exits with ssh's exit code.
pub fn run_ssh(a: SshArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    init_logging(quiet(verbose), LogFormat::Text);
    let opts = a.req.options()?;
    let code = runtime()?.block_on(client::ssh_with_cert(&opts, &a.ssh_program, &a.args))?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
