//! `mayfly audit verify | export | search`: the operator's side of the
//! audit log, run on the CA host against its `mayfly.toml`. These only read
//! the database (opened read-only), so they are safe while the server runs.
//!
//! Exit codes: 0 when all is well, 2 when `verify` found tampering (or
//! `search` found nothing), 1 for errors (unreadable config or database).

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::exit::Exit;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Subcommand;

use mayfly::audit::checkpoint::{self, AuditPublicKey};
use mayfly::audit::export;
use mayfly::audit::search::{self, AuditQuery};
use mayfly::config::Config;
use mayfly::evidence;
use mayfly::store::{block_on, OpenMode, Store, StoreConfig, StoreError};

/// `mayfly audit ...`.
// Parsed once per process: the size of the `search` variant (with its
// --server options) costs nothing worth boxing it for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check the audit log's hash chain and signed checkpoints (or an
    /// exported file); name the first altered, deleted or reordered record.
    Verify {
        /// The CA's mayfly.toml (verifies its database).
        #[arg(long, required_unless_present = "export")]
        config: Option<PathBuf>,
        /// Audit public key for checkpoint signatures (default
        /// data_dir/audit_key.pub; pass a copy kept off the CA host).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Verify this exported JSON Lines file; with --config also check
        /// that the database still holds every exported record unchanged.
        #[arg(long)]
        export: Option<PathBuf>,
        /// One JSON object on stdout: intact, the audit key, and a report
        /// per thing verified (records, range, head hash, problems,
        /// checkpoints).
        #[arg(long)]
        json: bool,
    },
    /// Write audit records as JSON Lines (each line carries its chain hash).
    Export {
        /// The CA's mayfly.toml.
        #[arg(long)]
        config: PathBuf,
        /// From this time: RFC 3339 (2026-11-01T00:00:00Z), unix seconds, or
        /// a duration back from now (24h). Default: everything.
        #[arg(long)]
        since: Option<String>,
        /// Output format (only jsonl).
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// Write to this file (atomically) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Find audit records; by --key-id answers "which job was this login?".
    Search {
        /// The CA's mayfly.toml (on the CA host; or --server).
        #[arg(long, required_unless_present = "server")]
        config: Option<PathBuf>,
        #[command(flatten)]
        remote: super::remote::RemoteArgs,
        /// Token subject.
        #[arg(long)]
        subject: Option<String>,
        /// Issuer name.
        #[arg(long)]
        issuer: Option<String>,
        /// Role.
        #[arg(long)]
        role: Option<String>,
        /// Certificate serial (its issuance and revocation).
        #[arg(long)]
        serial: Option<u64>,
        /// Certificate key id, as sshd logs it.
        #[arg(long)]
        key_id: Option<String>,
        /// Event (cert_issued, cert_denied, cert_revoked, disabled, ...).
        #[arg(long)]
        event: Option<String>,
        /// From this time (as for export).
        #[arg(long)]
        since: Option<String>,
        /// Most records shown (the newest).
        #[arg(long, default_value_t = search::DEFAULT_LIMIT)]
        limit: usize,
        /// JSON Lines (the export schema) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Longest a command waits for a database locked by a writer.
const BUSY: Duration = Duration::from_secs(5);

fn open_db(config: &Path) -> anyhow::Result<(Config, String, Store)> {
    let cfg = super::load_config(config)?;
    let mut sc = StoreConfig::from_config(&cfg, OpenMode::ReadOnly);
    sc.busy_timeout = BUSY.max(cfg.store_busy_timeout);
    let path = sc.location();
    let db = match mayfly::store::open(&sc) {
        Ok(db) => db,
        Err(e @ StoreError::Missing(_)) => anyhow::bail!(e),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("opening {path}"))),
    };
    Ok((cfg, path, db))
}

/// Runs one `mayfly audit` command; prints results on stdout.
pub fn run(cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::Verify {
            config,
            key,
            export,
            json,
        } => run_verify(config.as_deref(), key.as_deref(), export.as_deref(), json),
        AuditCmd::Export {
            config,
            since,
            format,
            out,
        } => run_export(&config, since.as_deref(), &format, out.as_deref()),
        AuditCmd::Search {
            config,
            remote,
            subject,
            issuer,
            role,
            serial,
            key_id,
            event,
            since,
            limit,
            json,
        } => {
            let since_ms = since
                .as_deref()
                .map(|s| search::parse_since(s, SystemTime::now()))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            if let Some(why) = key_id.as_deref().and_then(mayfly::ca::key_id_problem) {
                eprintln!("warning: {why}");
            }
            if let Some(e) = event.as_deref() {
                mayfly::audit::EventKind::parse_named(e)
                    .map_err(|why| anyhow::anyhow!("--event {why}"))?;
            }
            let detail = key_id.is_some() || serial.is_some();
            let q = AuditQuery {
                subject,
                issuer,
                role,
                serial,
                key_id,
                event,
                since_ms,
                limit: limit.max(1),
            };
            run_search(remote.target(config)?, &q, json, detail)
        }
    }
}

fn run_verify(
    config: Option<&Path>,
    key: Option<&Path>,
    export_file: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut intact = true;
    let mut out = std::io::stdout().lock();
    let mut reports = Vec::new();
    let mut audit_key = serde_json::Value::Null;
    let db = match config {
        Some(c) => {
            let (cfg, path, db) = open_db(c)?;
            let (pk, key_from) = audit_public_key(&cfg, &db, key)?;
            let report = block_on(evidence::verify::verify_db(
                db.audit(),
                pk.as_ref(),
                &format!("database {path}"),
            ))??;
            if !json {
                write!(out, "{report}")?;
            }
            if let Some(pk) = &pk {
                if json {
                    audit_key =
                        serde_json::json!({"fingerprint": pk.fingerprint(), "from": key_from});
                } else {
                    writeln!(out, "audit key: {} ({key_from})", pk.fingerprint())?;
                }
            }
            intact &= report.is_intact();
            reports.push(report.to_json());
            Some(db)
        }
        None => None,
    };
    if let Some(f) = export_file {
        let file = std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
        let report = block_on(evidence::verify::verify_export(
            BufReader::new(file),
            &format!("export {}", f.display()),
            db.as_ref().map(|d| d.audit()),
        ))??;
        if !json {
            write!(out, "{report}")?;
        }
        intact &= report.is_intact();
        reports.push(report.to_json());
    }
    if json {
        let v = serde_json::json!({
            "intact": intact,
            "audit_key": audit_key,
            "reports": reports,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    }
    Ok(if intact {
        ExitCode::SUCCESS
    } else {
        Exit::Tampered.into()
    })
}

/// The audit public key checkpoints are verified with, and where it came
/// from: `--key`; else, with a store shared by replicas, the one stored in
/// the database; else `data_dir/audit_key.pub` if it exists.
fn audit_public_key(
    cfg: &Config,
    db: &Store,
    key: Option<&Path>,
) -> anyhow::Result<(Option<AuditPublicKey>, String)> {
    if let Some(k) = key {
        return Ok((Some(AuditPublicKey::read(k)?), k.display().to_string()));
    }
    if db.keys().shared() {
        let stored =
            block_on(db.keys().ca_keys(checkpoint::KEY_FILE))??.map_err(anyhow::Error::new)?;
        let Some(active) = stored.active else {
            return Ok((None, String::new()));
        };
        let pk = AuditPublicKey::parse(&active.public)
            .map_err(|e| anyhow::anyhow!("the audit key stored in the database: {e}"))?;
        return Ok((
            Some(pk),
            "stored in the database; whoever can write the database can replace it, so \
             compare it with a copy kept elsewhere or pass --key"
                .into(),
        ));
    }
    let path = cfg.data_dir.join(checkpoint::PUB_FILE);
    if path.exists() {
        Ok((
            Some(AuditPublicKey::read(&path)?),
            path.display().to_string(),
        ))
    } else {
        Ok((None, String::new()))
    }
}

fn run_export(
    config: &Path,
    since: Option<&str>,
    format: &str,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    if format != "jsonl" {
        anyhow::bail!("--format {format:?}: only jsonl is supported");
    }
    let (_, _, db) = open_db(config)?;
    let from_seq = match since {
        None => Some(1),
        Some(s) => {
            let ms = search::parse_since(s, SystemTime::now()).map_err(anyhow::Error::msg)?;
            block_on(db.audit().first_seq_since(ms))??
        }
    };
    let summary = match (from_seq, out) {
        (None, None) => evidence::export::ExportSummary::default(),
        (Some(from), None) => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            block_on(evidence::export::export_jsonl(db.audit(), from, &mut w))??
        }
        (from, Some(path)) => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let mut tmp = tempfile::Builder::new()
                .prefix(".mayfly-export-")
                .tempfile_in(dir)
                .with_context(|| format!("creating a file in {}", dir.display()))?;
            let summary = match from {
                Some(from) => {
                    let mut w = std::io::BufWriter::new(tmp.as_file_mut());
                    let s = block_on(evidence::export::export_jsonl(db.audit(), from, &mut w))??;
                    w.flush()?;
                    s
                }
                None => evidence::export::ExportSummary::default(),
            };
            tmp.as_file().sync_all()?;
            tmp.persist(path)
                .map_err(|e| e.error)
                .with_context(|| format!("writing {}", path.display()))?;
            summary
        }
    };
    for bad in &summary.unreadable {
        eprintln!(
            "mayfly: seq {} not exported: {} (run `mayfly audit verify`)",
            bad.seq, bad.what
        );
    }
    match summary.range {
        Some((a, b)) => eprintln!("{} record(s) exported (seq {a}..{b})", summary.records),
        None => eprintln!("no records to export"),
    }
    Ok(if summary.unreadable.is_empty() {
        ExitCode::SUCCESS
    } else {
        Exit::Tampered.into()
    })
}

fn run_search(
    target: super::remote::Target,
    q: &AuditQuery,
    json: bool,
    detail: bool,
) -> anyhow::Result<ExitCode> {
    let unreadable = |seq: u64, what: &str| {
        eprintln!("mayfly: seq {seq} cannot be read: {what} (run `mayfly audit verify`)")
    };
    let mut records = Vec::new();
    match target {
        super::remote::Target::Local(config) => {
            let (_, _, db) = open_db(&config)?;
            let mut rows = block_on(db.audit().search(q))??;
            // Newest were fetched first; show oldest first.
            rows.reverse();
            for r in rows {
                match r {
                    Ok(r) => records.push(r),
                    Err(bad) => unreadable(bad.seq, &bad.what),
                }
            }
        }
        super::remote::Target::Remote(opts) => {
            // The CA answers oldest first, each record as an export line.
            let answer =
                super::runtime()?.block_on(mayfly::client::operator::audit_search(&opts, q))?;
            for bad in &answer.unreadable {
                unreadable(bad.seq, &bad.what);
            }
            for line in answer.records {
                let seq = line.mayfly.audit.seq;
                match export::record_of(line) {
                    Ok(r) => records.push(r),
                    Err(e) => unreadable(seq, &format!("the CA's answer: {e}")),
                }
            }
        }
    }
    let mut out = std::io::stdout().lock();
    if records.is_empty() {
        eprintln!("no matching audit records");
        return Ok(Exit::NotFound.into());
    }
    if json {
        for r in &records {
            writeln!(out, "{}", export::to_json(r))?;
        }
    } else if detail {
        for (i, r) in records.iter().enumerate() {
            if i > 0 {
                writeln!(out)?;
            }
            write!(out, "{}", search::render_details(r))?;
        }
    } else {
        write!(out, "{}", search::render_table(&records))?;
    }
    Ok(ExitCode::SUCCESS)
}
