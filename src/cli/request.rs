//! `mayfly request list | approve | deny | cancel`: just-in-time approvals,
//! decided by a human with their own OIDC token, and withdrawn by the bot
//! that asked (or an administrator).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use mayfly::approval::ApprovalRequest;
use mayfly::client::operator::{self, OperatorOptions};
use mayfly::client::token::TokenSource;
use mayfly::config::LogFormat;

use super::{init_logging, quiet, runtime};

// Who is deciding, and where the CA is.
#[derive(Args)]
pub struct ApproverArgs {
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
    fn options(&self) -> OperatorOptions {
        OperatorOptions {
            server: self.server.clone(),
            token: TokenSource {
                token_file: self.token_file.clone(),
                token_command: None,
                audience: self.audience.clone(),
            },
            insecure_http: self.insecure_http,
            ca_file: self.ca_file.clone(),
            client_cert: None,
            client_key: None,
        }
    }
}

/// `mayfly request ...`.
#[derive(Subcommand)]
pub enum RequestCmd {
    /// List pending approval requests you may decide.
    List {
        #[command(flatten)]
        who: ApproverArgs,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Also the recent requests that are no longer pending (approved,
        /// denied, used, expired, cancelled), with their state.
        #[arg(long)]
        all: bool,
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
        /// The request as the CA answers it, as one JSON object.
        #[arg(long)]
        json: bool,
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
        /// The request as the CA answers it, as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a request: the bot that made it (with its token), or an administrator.
    Cancel {
        /// Approval request id (apr_...).
        id: String,
        /// Why (audited).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        who: ApproverArgs,
        /// The request as the CA answers it, as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `mayfly request` command.
pub fn run(cmd: RequestCmd, verbose: bool) -> anyhow::Result<ExitCode> {
    init_logging(quiet(verbose), LogFormat::Text);
    let rt = runtime()?;
    match cmd {
        RequestCmd::List { who, json, all } => {
            let list = if all {
                rt.block_on(operator::list_all_requests(&who.options()))?
            } else {
                rt.block_on(operator::list_requests(&who.options()))?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if all {
                print!("{}", all_table(&list));
            } else {
                print!("{}", pending_table(&list));
            }
        }
        RequestCmd::Cancel {
            id,
            reason,
            who,
            json,
        } => {
            let r = rt.block_on(operator::cancel_request(&who.options(), &id, &reason))?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{}: {}", r.id, r.status.as_str());
            }
        }
        RequestCmd::Approve {
            id,
            reason,
            who,
            json,
        } => {
            let r = rt.block_on(operator::vote_request(&who.options(), &id, true, &reason))?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{}: {} ({} of {} approvals)",
                r.id,
                r.status.as_str(),
                approvals(&r),
                r.required
            );
            if let Some(j) = job_line(&r) {
                println!("  {j}");
            }
        }
        RequestCmd::Deny {
            id,
            reason,
            who,
            json,
        } => {
            let r = rt.block_on(operator::vote_request(&who.options(), &id, false, &reason))?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{}: {}", r.id, r.status.as_str());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn approvals(r: &ApprovalRequest) -> usize {
    r.votes.iter().filter(|v| v.approve).count()
}

/// The `request list` table.
fn pending_table(list: &[ApprovalRequest]) -> String {
    if list.is_empty() {
        return "no pending requests you can decide\n".into();
    }
    let mut out = format!(
        "{:<38} {:<14} {:<30} {:<20} {:>8}  VOTES\n",
        "ID", "ROLE", "REQUESTER", "PRINCIPALS", "EXPIRES"
    );
    for r in list {
        out.push_str(&format!(
            "{:<38} {:<14} {:<30} {:<20} {:>7}s  {}/{}\n",
            r.id,
            r.role,
            format!("{}:{}", r.issuer, r.subject),
            r.principals.join(","),
            mayfly::client::remaining(r.expires_at.get()),
            approvals(r),
            r.required
        ));
        if let Some(j) = job_line(r) {
            out.push_str(&format!("  {j}\n"));
        }
    }
    out
}

/// The `request list --all` table: every recent request with its state.
fn all_table(list: &[ApprovalRequest]) -> String {
    if list.is_empty() {
        return "no requests of roles you approve\n".into();
    }
    let w = |f: fn(&ApprovalRequest) -> String, head: &str| {
        list.iter()
            .map(|r| f(r).chars().count())
            .chain([head.len()])
            .max()
            .unwrap_or(0)
    };
    let requester = |r: &ApprovalRequest| format!("{}:{}", r.issuer, r.subject);
    let (wi, wr, wq) = (
        w(|r| r.id.clone(), "ID"),
        w(|r| r.role.clone(), "ROLE"),
        w(requester, "REQUESTER"),
    );
    let mut out = format!(
        "{:<wi$}  {:<wr$}  {:<wq$}  {:<9}  VOTES\n",
        "ID", "ROLE", "REQUESTER", "STATE"
    );
    for r in list {
        out.push_str(&format!(
            "{:<wi$}  {:<wr$}  {:<wq$}  {:<9}  {}/{}\n",
            r.id,
            r.role,
            requester(r),
            r.status.as_str(),
            approvals(r),
            r.required
        ));
    }
    out
}

/// `job: actor=… run_id=… sha=…`: the run, commit and actor being
/// approved (the requester's issuer `audit_claims`), if the token had any.
fn job_line(r: &ApprovalRequest) -> Option<String> {
    (!r.job_claims.is_empty())
        .then(|| format!("job: {}", mayfly::audit::claims::one_line(&r.job_claims)))
}
