//! `mayfly request list | approve | deny`: just-in-time approvals, decided
//! by a human with their own OIDC token.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use mayfly::approval::ApprovalRequest;
use mayfly::client::{self, token::TokenSource};
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
    fn options(&self) -> client::ApproverOptions {
        client::ApproverOptions {
            server: self.server.clone(),
            token: TokenSource {
                token_file: self.token_file.clone(),
                token_command: None,
                audience: self.audience.clone(),
            },
            insecure_http: self.insecure_http,
            ca_file: self.ca_file.clone(),
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

/// Runs one `mayfly request` command.
pub fn run(cmd: RequestCmd, verbose: bool) -> anyhow::Result<ExitCode> {
    init_logging(quiet(verbose), LogFormat::Text);
    let rt = runtime()?;
    match cmd {
        RequestCmd::List { who, json } => {
            let list = rt.block_on(client::list_requests(&who.options()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", pending_table(&list));
            }
        }
        RequestCmd::Approve { id, reason, who } => {
            let r = rt.block_on(client::vote_request(&who.options(), &id, true, &reason))?;
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
        RequestCmd::Deny { id, reason, who } => {
            let r = rt.block_on(client::vote_request(&who.options(), &id, false, &reason))?;
            println!("{}: {}", r.id, r.status.as_str());
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
            client::remaining(r.expires_at.get()),
            approvals(r),
            r.required
        ));
        if let Some(j) = job_line(r) {
            out.push_str(&format!("  {j}\n"));
        }
    }
    out
}

/// `job: actor=… run_id=… sha=…`: the run, commit and actor being
/// approved (the requester's issuer `audit_claims`), if the token had any.
fn job_line(r: &ApprovalRequest) -> Option<String> {
    (!r.job_claims.is_empty())
        .then(|| format!("job: {}", mayfly::audit::claims::one_line(&r.job_claims)))
}
