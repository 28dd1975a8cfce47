//! `mayfly store migrate --from CONFIG --to CONFIG [--json]`: moves a
//! stopped CA's state into another (empty) store, typically from SQLite to
//! PostgreSQL, and checks the copy (`mayfly::migrate` does the work).
//!
//! Exit codes: 0 when the copy is complete and verified, 2 when the
//! source's audit log does not verify (nothing copied), 1 for every other
//! refusal or failure (the message says whether the target was touched
//! and what to do).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use super::exit::Exit;

use clap::Subcommand;

use mayfly::migrate::{AuditKeyOutcome, Migration, Summary};
use mayfly::store::block_on;

/// `mayfly store ...`.
#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// Copy a stopped CA's state (audit chain and checkpoints, revocations,
    /// deactivations, approvals, serial floor, KRL version, audit key) into
    /// an empty store, then verify the copy.
    Migrate {
        /// The mayfly.toml of the CA to copy (stop it first).
        #[arg(long)]
        from: PathBuf,
        /// The mayfly.toml whose [store] receives the copy (must be empty).
        #[arg(long)]
        to: PathBuf,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `mayfly store` command.
pub fn run(cmd: StoreCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        StoreCmd::Migrate { from, to, json } => {
            let from = super::load_config(&from)?;
            let to = super::load_config(&to)?;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let summary = match Migration::open(&from, &to)
                .and_then(|m| block_on(async move { m.run(now_ms).await })?)
            {
                Ok(s) => s,
                Err(e) if e.is_tampered_source() => {
                    eprintln!("mayfly: {e}");
                    return Ok(Exit::Tampered.into());
                }
                Err(e) => return Err(e.into()),
            };
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
            } else {
                write!(out, "{}", render(&summary))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The summary as a person reads it.
fn render(s: &Summary) -> String {
    let c = &s.copied;
    let mut out = format!("OK: copied {} to {} and verified the copy\n", s.from, s.to);
    match &s.head {
        Some(h) => out.push_str(&format!(
            "audit records:     {} (head seq {}, hash {})\n",
            c.audit_records, h.seq, h.hash
        )),
        None => out.push_str("audit records:     0\n"),
    }
    out.push_str(&format!(
        "checkpoints:       {} ({} signatures verified)\n",
        c.checkpoints, s.checkpoints_verified
    ));
    out.push_str(&format!("revocations:       {}\n", c.revocations));
    out.push_str(&format!("deactivations:     {}\n", c.disabled));
    out.push_str(&format!("approval requests: {}\n", c.approvals));
    out.push_str(&format!(
        "serial floor:      {} (new serials are above it)\n",
        s.serial_floor
    ));
    out.push_str(&format!("KRL version:       {}\n", s.state_version));
    if let Some(c) = s.stream_cursor {
        out.push_str(&format!("stream cursor:     seq {c}\n"));
    }
    let key = match s.audit_key {
        AuditKeyOutcome::Copied => format!("copied into {}", s.target_data_dir.display()),
        AuditKeyOutcome::AlreadyThere => format!("already in {}", s.target_data_dir.display()),
        AuditKeyOutcome::None => "none (the source's data_dir has no audit_key)".into(),
    };
    out.push_str(&format!("audit key:         {key}\n"));
    if s.audit_key_in_database {
        out.push_str("                   and stored in the target's database (encrypted)\n");
    }
    if !s.ca_keys.is_empty() {
        out.push_str(&format!(
            "CA keys:           {} (every slot, into the target's database)\n",
            s.ca_keys.join(", ")
        ));
    }
    out
}
