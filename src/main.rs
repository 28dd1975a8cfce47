//! The `mayfly` command: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use mayfly::client::{self, token::TokenSource, CertOptions};
use mayfly::config::{Config, LogFormat};
use mayfly::revocation;
use mayfly::store::{CertFilter, DisabledKey};

use mayfly::clock::now_secs as unix_now;

/// Ephemeral SSH certificate authority for machines.
#[derive(Parser)]
#[command(name = "mayfly", version, about)]
struct Cli {
    /// More output on stderr (bot commands are quiet by default).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the CA (embedded defaults without --config).
    Serve {
        /// Path to mayfly.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Dangerous: allow plain HTTP on a non-loopback address (bearer
        /// tokens cross the network in clear); prefer [tls] in mayfly.toml.
        #[arg(long)]
        insecure_http: bool,
    },
    /// Validate or try out policy files.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Get a fresh key and certificate into a directory.
    Cert {
        #[command(flatten)]
        req: RequestArgs,
        /// Directory for id_ed25519, id_ed25519.pub and id_ed25519-cert.pub.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Get an in-memory key and certificate and run ssh with them.
    Ssh {
        #[command(flatten)]
        req: RequestArgs,
        /// The ssh program to run.
        #[arg(long, default_value = "ssh")]
        ssh_program: String,
        /// Arguments for ssh (after --).
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
    /// Revoke certificates on the CA host; the next /v1/krl includes them.
    Revoke {
        /// The CA's mayfly.toml.
        #[arg(long)]
        config: PathBuf,
        /// Revoke this serial.
        #[arg(long, conflicts_with_all = ["key_id", "subject"])]
        serial: Option<u64>,
        /// Revoke the certificate with this key id (as sshd logs it).
        #[arg(long, conflicts_with_all = ["serial", "subject", "role"])]
        key_id: Option<String>,
        /// Revoke every unexpired certificate of this role (or, with --subject, of that identity in this role).
        #[arg(long)]
        role: Option<String>,
        /// Revoke every unexpired certificate of this identity (needs --issuer).
        #[arg(long, requires = "issuer")]
        subject: Option<String>,
        /// Issuer name of --subject.
        #[arg(long, requires = "subject")]
        issuer: Option<String>,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Just-in-time approvals: list, approve, deny (with your own OIDC token).
    #[command(subcommand)]
    Request(RequestCmd),
    /// Tamper-evident audit log: verify the chain, export for a SIEM, search.
    #[command(subcommand)]
    Audit(mayfly::audit::cli::AuditCmd),
    /// Compliance evidence and access reviews from this CA's live data.
    #[command(subcommand)]
    Report(mayfly::report::ReportCmd),
    /// CA keys: rotation and status.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Disable, enable and list identities and roles.
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// Host side: sync CA keys and KRL, get host certificates.
    #[command(subcommand)]
    Host(mayfly::hostsync::HostCmd),
    /// Print @cert-authority lines for known_hosts from the CA's host keys.
    KnownHosts(mayfly::hostsync::KnownHostsArgs),
    /// Measure certificates/s through the full path on loopback.
    Bench {
        /// Total requests.
        #[arg(long, default_value_t = 5000)]
        requests: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Token signature algorithm: rs256 or es256.
        #[arg(long, default_value = "rs256")]
        alg: String,
    },
}

#[derive(Args)]
struct IdentityTarget {
    /// The CA's mayfly.toml.
    #[arg(long)]
    config: PathBuf,
    /// Issuer name of the identity.
    #[arg(long, requires = "subject")]
    issuer: Option<String>,
    /// Token subject of the identity.
    #[arg(long, requires = "issuer")]
    subject: Option<String>,
    /// A role: alone, the whole role; with --issuer/--subject, that identity in this role only.
    #[arg(long)]
    role: Option<String>,
    /// Why (recorded in the audit log).
    #[arg(long, default_value = "")]
    reason: String,
}

#[derive(Subcommand)]
enum CaCmd {
    /// Rotate a CA key without downtime: --stage, wait for hosts to sync, --activate, wait for old certs to expire, --retire.
    Rotate {
        /// The CA's mayfly.toml.
        #[arg(long)]
        config: PathBuf,
        /// Create and publish the next key.
        #[arg(long, group = "step")]
        stage: bool,
        /// Switch signing to the staged key.
        #[arg(long, group = "step")]
        activate: bool,
        /// Drop the previous key (refused while certificates it signed are valid).
        #[arg(long, group = "step")]
        retire: bool,
        /// With --retire: retire even though certificates it signed are still valid.
        #[arg(long, requires = "retire")]
        force: bool,
        /// Rotate the host CA instead of the user CA.
        #[arg(long, conflicts_with = "group")]
        host: bool,
        /// Rotate the user CA key of this ca_group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Show CA keys: slot, fingerprint, age, which one signs.
    Status {
        /// The CA's mayfly.toml.
        #[arg(long)]
        config: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum IdentityCmd {
    /// Stop all future issuance and revoke live certificates.
    Disable(IdentityTarget),
    /// Allow issuance again (revoked certificates stay revoked).
    Enable(IdentityTarget),
    /// Inventory: every identity seen, its roles, owners, first/last use, status (active/disabled/stale).
    List {
        /// The CA's mayfly.toml.
        #[arg(long)]
        config: PathBuf,
        /// Days without issuance after which an identity counts as stale.
        #[arg(long)]
        stale_days: Option<u64>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List disabled identities and roles.
    Disabled {
        /// The CA's mayfly.toml.
        #[arg(long)]
        config: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Check every role file in DIR; exit 1 with file:line: reason on errors.
    /// Risky grants are printed as warnings (exit 0 unless --deny-warnings).
    Check {
        /// Policy directory.
        #[arg(default_value = "ca-policy")]
        dir: PathBuf,
        /// Also check roles against the issuers in this config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Exit 1 on warnings too.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Evaluate a claims JSON file against a role and print the decision, or
    /// run a table of cases (--cases); exit 1 on any case that does not come
    /// out as expected.
    Test {
        /// Policy directory (or --dir; default ca-policy).
        #[arg(value_name = "DIR", conflicts_with = "dir")]
        dir_arg: Option<PathBuf>,
        /// Policy directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// A cases file ([[case]] tables) to run instead of one request.
        #[arg(long, conflicts_with_all = ["role", "issuer", "claims", "principals", "ttl"])]
        cases: Option<PathBuf>,
        /// Role to evaluate.
        #[arg(long, required_unless_present = "cases")]
        role: Option<String>,
        /// Issuer name the claims come from.
        #[arg(long, required_unless_present = "cases")]
        issuer: Option<String>,
        /// JSON file with the token's claims.
        #[arg(long, required_unless_present = "cases")]
        claims: Option<PathBuf>,
        /// Requested principals.
        #[arg(long = "principal")]
        principals: Vec<String>,
        /// Requested TTL, e.g. 5m.
        #[arg(long)]
        ttl: Option<String>,
        /// Evaluate at this time (RFC 3339) instead of now; with --cases,
        /// for cases without their own `at`.
        #[arg(long)]
        at: Option<String>,
    },
    /// Show, step by step, how policy decides one request.
    Explain {
        /// Policy directory.
        #[arg(long, default_value = "ca-policy")]
        dir: PathBuf,
        /// Role to evaluate.
        #[arg(long)]
        role: String,
        /// Issuer name the claims come from.
        #[arg(long)]
        issuer: String,
        /// JSON file with the token's claims.
        #[arg(long)]
        claims: PathBuf,
        /// Requested principals.
        #[arg(long = "principal")]
        principals: Vec<String>,
        /// Requested TTL, e.g. 5m.
        #[arg(long)]
        ttl: Option<String>,
        /// Evaluate at this time (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<String>,
        /// The bot's key type, e.g. ssh-ed25519, to check key_types too.
        #[arg(long)]
        key_type: Option<String>,
        /// With --key-type ssh-rsa: the key size in bits.
        #[arg(long, requires = "key_type")]
        rsa_bits: Option<u32>,
    },
}

#[derive(Args)]
struct ApproverArgs {
    /// CA base URL.
    #[arg(long, env = "MAYFLY_SERVER")]
    server: String,
    /// File holding your own OIDC token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Audience to request from CI token endpoints.
    #[arg(long, default_value = "mayfly")]
    audience: String,
    /// Allow plain http to a non-loopback CA (sends the token in clear).
    #[arg(long)]
    insecure_http: bool,
    /// PEM file with the CA certificate(s) that signed the server's TLS certificate.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

impl ApproverArgs {
    fn options(&self) -> client::ApproverOptions {
        client::ApproverOptions {
            server: self.server.clone(),
            token: TokenSource {
                token_file: self.token_file.clone(),
                audience: self.audience.clone(),
            },
            insecure_http: self.insecure_http,
            ca_file: self.ca_file.clone(),
        }
    }
}

#[derive(Subcommand)]
enum RequestCmd {
    /// List pending approval requests you may decide.
    List {
        #[command(flatten)]
        who: ApproverArgs,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending request.
    Approve {
        /// Approval request id (apr_...).
        id: String,
        /// Why (audited).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        who: ApproverArgs,
    },
    /// Deny a pending request.
    Deny {
        /// Approval request id (apr_...).
        id: String,
        /// Why (audited).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        who: ApproverArgs,
    },
}

#[derive(Args)]
struct RequestArgs {
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

fn parse_ttl(s: &Option<String>) -> anyhow::Result<Option<Duration>> {
    s.as_deref()
        .map(|t| {
            humantime::parse_duration(t).with_context(|| format!("--ttl {t:?}: write e.g. 5m"))
        })
        .transpose()
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

fn init_logging(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mayfly: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let quiet = if cli.verbose { "debug" } else { "warn" };
    match cli.cmd {
        Cmd::Serve {
            config,
            insecure_http,
        } => {
            let mut cfg = Config::load(config.as_deref(), &|k| std::env::var(k).ok())?;
            cfg.insecure_http |= insecure_http;
            init_logging("info", cfg.log_format);
            if config.is_none() {
                tracing::info!("no --config given: using embedded defaults (listen 127.0.0.1:8400, data ./mayfly-data, policies ./ca-policy)");
            }
            runtime()?.block_on(mayfly::server::serve(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Policy(PolicyCmd::Check {
            dir,
            config,
            deny_warnings,
        }) => {
            let policy = match mayfly::policy::load_dir(&dir) {
                Ok(p) => p,
                Err(errs) => {
                    for e in &errs {
                        eprintln!("{e}");
                    }
                    eprintln!("{} error(s) in {}", errs.len(), dir.display());
                    return Ok(ExitCode::from(1));
                }
            };
            if let Some(c) = config {
                let cfg = Config::load(Some(&c), &|_| None)?;
                let names: Vec<&str> = cfg.issuers.iter().map(|i| i.name.as_str()).collect();
                if let Err(errs) = mayfly::policy::load::check_issuers(&policy, &names) {
                    for e in &errs {
                        eprintln!("{e}");
                    }
                    return Ok(ExitCode::from(1));
                }
            }
            let warnings = mayfly::policy::lint::lint(&policy);
            for w in &warnings {
                eprintln!("{w}");
            }
            if deny_warnings && !warnings.is_empty() {
                eprintln!(
                    "{} warning(s) in {} (--deny-warnings)",
                    warnings.len(),
                    dir.display()
                );
                return Ok(ExitCode::from(1));
            }
            println!(
                "{}: {} role(s) OK ({})",
                dir.display(),
                policy.roles.len(),
                policy.roles.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            if !warnings.is_empty() {
                eprintln!("{} warning(s)", warnings.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Policy(PolicyCmd::Test {
            dir_arg,
            dir,
            cases,
            role,
            issuer,
            claims,
            principals,
            ttl,
            at,
        }) => {
            let dir = dir_arg
                .or(dir)
                .unwrap_or_else(|| PathBuf::from("ca-policy"));
            let policy = mayfly::policy::load_dir(&dir).map_err(|errs| {
                anyhow::anyhow!(errs
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"))
            })?;
            let now = match &at {
                Some(t) => mayfly::policy::window::unix_from_timestamp(
                    mayfly::policy::window::parse_instant(t)
                        .map_err(|e| anyhow::anyhow!("--at {e}"))?,
                ),
                None => unix_now(),
            };
            if let Some(file) = cases {
                let list = match mayfly::policy::cases::load_cases(&file) {
                    Ok(c) => c,
                    Err(errs) => {
                        for e in &errs {
                            eprintln!("{e}");
                        }
                        eprintln!("{} error(s) in {}", errs.len(), file.display());
                        return Ok(ExitCode::from(1));
                    }
                };
                let report = mayfly::policy::cases::run(&policy, &file, list, now);
                for n in &report.notes {
                    eprintln!("note: {n}");
                }
                println!("{report}");
                return Ok(if report.failed() == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
            let (Some(role), Some(issuer), Some(claims)) = (role, issuer, claims) else {
                anyhow::bail!("name --role, --issuer and --claims, or --cases FILE");
            };
            let claims =
                mayfly::policy::explain::read_claims_file(&claims).map_err(anyhow::Error::msg)?;
            let req = mayfly::policy::CertRequest {
                principals: (!principals.is_empty()).then_some(principals),
                ttl: parse_ttl(&ttl)?,
            };
            match policy.evaluate(&role, &issuer, &claims, &req, now) {
                Ok(g) => {
                    let p: Vec<&str> = g.principals.iter().map(|p| p.as_str()).collect();
                    let e: Vec<&str> = g.extensions.iter().map(|e| e.as_str()).collect();
                    println!(
                        "allow role={role} principals={p:?} ttl={}s extensions={e:?}",
                        g.ttl.as_secs()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(d) => {
                    println!("deny {}: {d}", d.code.as_str());
                    Ok(ExitCode::from(2))
                }
            }
        }
        Cmd::Policy(PolicyCmd::Explain {
            dir,
            role,
            issuer,
            claims,
            principals,
            ttl,
            at,
            key_type,
            rsa_bits,
        }) => {
            let policy = mayfly::policy::load_dir(&dir).map_err(|errs| {
                anyhow::anyhow!(errs
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"))
            })?;
            let now = match &at {
                Some(t) => mayfly::policy::window::unix_from_timestamp(
                    mayfly::policy::window::parse_instant(t)
                        .map_err(|e| anyhow::anyhow!("--at {e}"))?,
                ),
                None => unix_now(),
            };
            let claims =
                mayfly::policy::explain::read_claims_file(&claims).map_err(anyhow::Error::msg)?;
            let req = mayfly::policy::CertRequest {
                principals: (!principals.is_empty()).then_some(principals),
                ttl: parse_ttl(&ttl)?,
            };
            let key = key_type.map(|k| mayfly::policy::KeyFacts::declared(&k, rsa_bits));
            let e = mayfly::policy::explain::explain(
                &policy,
                &role,
                &issuer,
                &claims,
                &req,
                now,
                key.as_ref(),
            );
            println!("{e}");
            Ok(if e.decision.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Cmd::Cert { req, out } => {
            init_logging(quiet, LogFormat::Text);
            let opts = req.options()?;
            let (answer, path) = runtime()?.block_on(client::cert_to_dir(&opts, &out))?;
            if cli.verbose {
                eprintln!(
                    "certificate serial {} key_id {} principals {:?}, valid for {}s",
                    answer.serial,
                    answer.key_id,
                    answer.principals,
                    client::remaining(answer.valid_before)
                );
            }
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ssh {
            req,
            ssh_program,
            args,
        } => {
            init_logging(quiet, LogFormat::Text);
            let opts = req.options()?;
            let code = runtime()?.block_on(client::ssh_with_cert(&opts, &ssh_program, &args))?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Cmd::Revoke {
            config,
            serial,
            key_id,
            role,
            subject,
            issuer,
            reason,
        } => {
            init_logging(quiet, LogFormat::Text);
            let cfg = Config::load(Some(&config), &|k| std::env::var(k).ok())?;
            let filter = match (serial, key_id, role, issuer, subject) {
                (Some(n), None, None, None, None) => CertFilter::Serial(n),
                (None, Some(k), None, None, None) => {
                    // Still run: it revokes nothing, but says why.
                    if let Some(why) = mayfly::ca::key_id_problem(&k) {
                        eprintln!("warning: {why}");
                    }
                    CertFilter::KeyId(k)
                }
                (None, None, Some(r), None, None) => CertFilter::Role(r),
                (None, None, role, Some(issuer), Some(subject)) => CertFilter::Identity { issuer, subject, role },
                _ => anyhow::bail!("name what to revoke: --serial N, --key-id ID, --role R, or --subject S --issuer I"),
            };
            let actor = revocation::cli_actor(&|k| std::env::var(k).ok());
            let rt = runtime()?;
            let outcome = rt.block_on(async {
                let store = revocation::open_store(&cfg)?;
                revocation::revoke(&store, filter, &reason, &actor, unix_now()).await
            })?;
            for c in &outcome.revoked {
                println!(
                    "revoked serial {} key_id {} (valid until {})",
                    c.serial, c.key_id, c.valid_before
                );
            }
            eprintln!(
                "{} certificate(s) revoked; KRL version {}",
                outcome.revoked.len(),
                outcome.krl_version
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Identity(IdentityCmd::List {
            config,
            stale_days,
            json,
        }) => mayfly::inventory::run_identity_list(&config, stale_days, json),
        Cmd::Identity(IdentityCmd::Disabled { config, json }) => {
            let cfg = Config::load(Some(&config), &|k| std::env::var(k).ok())?;
            let list = runtime()?.block_on(async {
                let store = revocation::open_store(&cfg)?;
                anyhow::Ok(store.access().disabled().await?)
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("nothing is disabled");
            } else {
                println!(
                    "{:<10} {:<12} {:<40} {:<16} REASON (BY)",
                    "STATUS", "ISSUER", "SUBJECT", "ROLE"
                );
                for d in list {
                    println!(
                        "{:<10} {:<12} {:<40} {:<16} {} ({})",
                        "disabled",
                        if d.key.issuer.is_empty() {
                            "*"
                        } else {
                            &d.key.issuer
                        },
                        if d.key.subject.is_empty() {
                            "*"
                        } else {
                            &d.key.subject
                        },
                        if d.key.role.is_empty() {
                            "*"
                        } else {
                            &d.key.role
                        },
                        d.reason,
                        d.actor
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Identity(cmd @ (IdentityCmd::Disable(_) | IdentityCmd::Enable(_))) => {
            init_logging(quiet, LogFormat::Text);
            let (t, enable) = match cmd {
                IdentityCmd::Disable(t) => (t, false),
                IdentityCmd::Enable(t) => (t, true),
                IdentityCmd::List { .. } | IdentityCmd::Disabled { .. } => {
                    unreachable!("matched above")
                }
            };
            let cfg = Config::load(Some(&t.config), &|k| std::env::var(k).ok())?;
            let target = DisabledKey {
                issuer: t.issuer.unwrap_or_default(),
                subject: t.subject.unwrap_or_default(),
                role: t.role.unwrap_or_default(),
            };
            let actor = revocation::cli_actor(&|k| std::env::var(k).ok());
            let o = runtime()?.block_on(async {
                let store = revocation::open_store(&cfg)?;
                revocation::set_disabled(&store, target, enable, &t.reason, &actor, unix_now())
                    .await
            })?;
            let what = if o.target.subject.is_empty() {
                format!("role {}", o.target.role)
            } else if o.target.role.is_empty() {
                format!("identity {}/{}", o.target.issuer, o.target.subject)
            } else {
                format!(
                    "identity {}/{} in role {}",
                    o.target.issuer, o.target.subject, o.target.role
                )
            };
            let state = if enable { "enabled" } else { "disabled" };
            if o.changed {
                println!("{what} {state}");
            } else {
                println!("{what} was already {state}");
            }
            for c in &o.revoked {
                println!("revoked serial {} key_id {}", c.serial, c.key_id);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ca(CaCmd::Rotate {
            config,
            stage,
            activate,
            retire,
            force,
            host,
            group,
        }) => {
            init_logging(quiet, LogFormat::Text);
            let cfg = Config::load(Some(&config), &|k| std::env::var(k).ok())?;
            let step = match (stage, activate, retire) {
                (true, false, false) => mayfly::rotation::Step::Stage,
                (false, true, false) => mayfly::rotation::Step::Activate,
                (false, false, true) => mayfly::rotation::Step::Retire { force },
                _ => anyhow::bail!("name one step: --stage, --activate or --retire"),
            };
            let which = match (host, group) {
                (true, _) => mayfly::rotation::Which::Host,
                (false, Some(g)) => mayfly::rotation::Which::Group(g),
                (false, None) => mayfly::rotation::Which::User,
            };
            let actor = revocation::cli_actor(&|k| std::env::var(k).ok());
            let summary = runtime()?.block_on(mayfly::rotation::rotate(
                &cfg,
                which,
                step,
                &actor,
                unix_now(),
            ))?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ca(CaCmd::Status { config, json }) => {
            let cfg = Config::load(Some(&config), &|k| std::env::var(k).ok())?;
            let keys = mayfly::rotation::status(&cfg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!(
                    "{:<5} {:<9} {:<6} {:<52} {:>10}  LOCATION",
                    "CA", "SLOT", "SIGNS", "FINGERPRINT", "AGE"
                );
                for k in keys {
                    let age = k
                        .age_seconds
                        .map(|s| {
                            humantime::format_duration(std::time::Duration::from_secs(s))
                                .to_string()
                        })
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:<5} {:<9} {:<6} {:<52} {:>10}  {}",
                        k.ca,
                        k.slot.as_str(),
                        if k.signs { "yes" } else { "no" },
                        k.fingerprint,
                        age,
                        k.location
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Request(cmd) => {
            init_logging(quiet, LogFormat::Text);
            let rt = runtime()?;
            match cmd {
                RequestCmd::List { who, json } => {
                    let list = rt.block_on(client::list_requests(&who.options()))?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&list)?);
                    } else if list.is_empty() {
                        println!("no pending requests you can decide");
                    } else {
                        println!(
                            "{:<38} {:<14} {:<30} {:<20} {:>8}  VOTES",
                            "ID", "ROLE", "REQUESTER", "PRINCIPALS", "EXPIRES"
                        );
                        for r in list {
                            println!(
                                "{:<38} {:<14} {:<30} {:<20} {:>7}s  {}/{}",
                                r.id,
                                r.role,
                                format!("{}:{}", r.issuer, r.subject),
                                r.principals.join(","),
                                client::remaining(r.expires_at),
                                r.votes.iter().filter(|v| v.approve).count(),
                                r.required
                            );
                        }
                    }
                }
                RequestCmd::Approve { id, reason, who } => {
                    let r =
                        rt.block_on(client::vote_request(&who.options(), &id, true, &reason))?;
                    println!(
                        "{}: {} ({} of {} approvals)",
                        r.id,
                        r.status.as_str(),
                        r.votes.iter().filter(|v| v.approve).count(),
                        r.required
                    );
                }
                RequestCmd::Deny { id, reason, who } => {
                    let r =
                        rt.block_on(client::vote_request(&who.options(), &id, false, &reason))?;
                    println!("{}: {}", r.id, r.status.as_str());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Report(cmd) => mayfly::report::run_report(cmd),
        Cmd::Audit(cmd) => mayfly::audit::cli::run_audit(cmd),
        Cmd::Host(cmd) => mayfly::hostsync::run_host(cmd, cli.verbose),
        Cmd::KnownHosts(args) => mayfly::hostsync::run_known_hosts(args),
        Cmd::Bench {
            requests,
            concurrency,
            alg,
        } => {
            init_logging("warn", LogFormat::Text);
            let alg = match alg.as_str() {
                "rs256" => mayfly::bench::BenchAlg::Rs256,
                "es256" => mayfly::bench::BenchAlg::Es256,
                other => anyhow::bail!("--alg {other:?}: use rs256 or es256"),
            };
            let report = runtime()?
                .block_on(mayfly::bench::run(mayfly::bench::BenchOptions {
                    requests,
                    concurrency,
                    alg,
                }))
                .map_err(anyhow::Error::msg)?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
