//! `mayfly audit verify`: walk the stored chain (or an exported file), check
//! every signed checkpoint, and say what is wrong and where.
//!
//! What this can and cannot prove is written up in `docs/audit-schema.md`
//! ("What the chain proves"): in short, any change, deletion, insertion or
//! reordering at or before the last signed checkpoint is detected without
//! trusting the database; after it, only against the chain itself, the
//! `AUTOINCREMENT` counter, or an exported copy.

use std::collections::BTreeMap;
use std::fmt;
use std::io::BufRead;

use super::chain::{self, ChainWalker, Hash, Problem};
use super::checkpoint::{AuditPublicKey, Checkpoint};
use super::export::{self, rfc3339_ms};
use crate::store::sqlite::Sqlite;
use crate::store::StoreError;

/// The outcome of a verification.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// What was verified (`database /var/lib/mayfly/mayfly.db`, `export FILE`).
    pub subject: String,
    /// Records checked.
    pub records: u64,
    /// First and last seq seen.
    pub range: Option<(u64, u64)>,
    /// Hash of the last record.
    pub head: Option<Hash>,
    /// Problems, first position first (at most [`chain::MAX_PROBLEMS`]).
    pub problems: Vec<Problem>,
    /// Problems found in all.
    pub problem_count: u64,
    /// Checkpoints seen.
    pub checkpoints: u64,
    /// Checkpoints whose signature was verified.
    pub checkpoints_signed_ok: u64,
    /// The last checkpoint: (seq, time_ms).
    pub last_checkpoint: Option<(u64, i64)>,
    /// Facts worth knowing that are not problems.
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_intact(&self) -> bool {
        self.problem_count == 0
    }

    fn absorb(&mut self, w: ChainWalker) {
        self.records = w.checked();
        self.head = w.last_hash();
        let (p, n) = w.into_problems();
        self.problems = p;
        self.problem_count = n;
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = match self.range {
            Some((a, b)) => format!("seq {a}..{b}"),
            None => "no records".into(),
        };
        if self.is_intact() {
            writeln!(
                f,
                "OK: {}: {} records ({range}), hash chain intact",
                self.subject, self.records
            )?;
        } else {
            let first = self
                .problems
                .first()
                .map(|p| p.to_string())
                .unwrap_or_default();
            writeln!(f, "TAMPERED: {}: first problem at {first}", self.subject)?;
            writeln!(
                f,
                "{} problem(s) in {} records ({range}):",
                self.problem_count, self.records
            )?;
            for p in &self.problems {
                writeln!(f, "  {p}")?;
            }
            if self.problem_count > self.problems.len() as u64 {
                writeln!(
                    f,
                    "  ... and {} more",
                    self.problem_count - self.problems.len() as u64
                )?;
            }
        }
        if let Some(h) = &self.head {
            writeln!(f, "head hash: {}", chain::hex(h))?;
        }
        if self.checkpoints > 0 {
            write!(
                f,
                "checkpoints: {} ({} signatures verified)",
                self.checkpoints, self.checkpoints_signed_ok
            )?;
            if let Some((seq, t)) = self.last_checkpoint {
                write!(f, "; last signed at seq {seq}, {}", rfc3339_ms(t))?;
            }
            writeln!(f)?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// A checkpoint reduced to what the record walk compares.
#[derive(Debug, Clone, Copy)]
struct Mark {
    id: i64,
    hash: Hash,
}

/// Verifies the whole log in `db`: every record against the chain, every
/// checkpoint's signature (when `key` is given) and position, and the
/// tail against the checkpoints and the AUTOINCREMENT counter.
pub fn verify_db(
    db: &Sqlite,
    key: Option<&AuditPublicKey>,
    subject: &str,
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport {
        subject: subject.to_string(),
        ..VerifyReport::default()
    };
    let mut walker = ChainWalker::from_genesis();
    let meta = db.chain_meta()?;

    // Checkpoints: signatures, order, deletions. Kept as (seq -> mark).
    let mut marks: BTreeMap<u64, Vec<Mark>> = BTreeMap::new();
    let mut prev_cp: Option<Checkpoint> = None;
    let mut expected_id = 1i64;
    db.scan_checkpoints(&mut |cp| {
        report.checkpoints += 1;
        let cp = match cp {
            Ok(cp) => cp,
            Err(bad) => {
                walker.add(Problem::Checkpoint {
                    seq: bad.seq,
                    what: bad.what,
                });
                return;
            }
        };
        if cp.id > expected_id {
            walker.add(Problem::Checkpoint {
                seq: prev_cp.as_ref().map(|p| p.seq).unwrap_or(0),
                what: format!(
                    "#{}..#{}: deleted (a later state was signed and removed)",
                    expected_id,
                    cp.id - 1
                ),
            });
        }
        expected_id = cp.id + 1;
        if let Some(k) = key {
            match k.verify(&cp) {
                Ok(()) => report.checkpoints_signed_ok += 1,
                Err(why) => walker.add(Problem::Checkpoint {
                    seq: cp.seq,
                    what: format!("#{}: {why}", cp.id),
                }),
            }
        }
        if let Some(p) = &prev_cp {
            if cp.seq < p.seq {
                walker.add(Problem::Checkpoint {
                    seq: cp.seq,
                    what: format!(
                        "#{}: goes back from seq {} to seq {} (log rolled back)",
                        cp.id, p.seq, cp.seq
                    ),
                });
            }
        }
        marks.entry(cp.seq).or_default().push(Mark {
            id: cp.id,
            hash: cp.hash,
        });
        report.last_checkpoint = Some((cp.seq, cp.time_ms));
        prev_cp = Some(cp);
    })?;
    if meta.checkpoint_counter >= expected_id.max(1) as u64 {
        walker.add(Problem::Checkpoint {
            seq: prev_cp.as_ref().map(|p| p.seq).unwrap_or(0),
            what: format!(
                "#{}..#{}: deleted from the end (the table's counter is at {})",
                expected_id, meta.checkpoint_counter, meta.checkpoint_counter
            ),
        });
    }

    // The records.
    let mut first = None;
    let mut last = 0u64;
    db.scan_audit(1, None, &mut |row| {
        match row {
            Ok(r) => {
                walker.push(&r);
                if let Some(ms) = marks.get(&r.seq) {
                    for m in ms {
                        if r.hash != Some(m.hash) {
                            walker.add(Problem::Checkpoint {
                                seq: r.seq,
                                what: format!(
                                    "#{}: signed hash {} for this seq, the log has {} (history rewritten)",
                                    m.id,
                                    short(&m.hash),
                                    r.hash.as_ref().map(short).unwrap_or_else(|| "none".into())
                                ),
                            });
                        }
                    }
                }
                first.get_or_insert(r.seq);
                last = r.seq;
            }
            Err(bad) => {
                walker.malformed(bad.seq, bad.what);
                first.get_or_insert(bad.seq);
                last = bad.seq;
            }
        }
        true
    })?;
    report.range = first.map(|a| (a, last));

    // The tail: anything known to have existed after the last record.
    if let Some((&cp_seq, ms)) = marks.iter().next_back() {
        if cp_seq > last {
            walker.add(Problem::Truncated {
                last,
                expected: cp_seq,
                evidence: format!(
                    "signed checkpoint #{} covers seq {cp_seq}",
                    ms.last().map(|m| m.id).unwrap_or(0)
                ),
            });
        }
    }
    if meta.seq_counter > last {
        walker.add(Problem::Truncated {
            last,
            expected: meta.seq_counter,
            evidence: format!(
                "the table's AUTOINCREMENT counter is at {}",
                meta.seq_counter
            ),
        });
    }
    report.absorb(walker);

    if let Some(through) = meta.legacy_through {
        report.notes.push(format!(
            "records 1..{through} were written before the hash chain existed and were chained \
             when the database was upgraded{}; changes to them before then cannot be detected",
            meta.migrated_at_ms
                .map(|t| format!(" ({})", rfc3339_ms(t)))
                .unwrap_or_default()
        ));
    }
    match (key, report.checkpoints) {
        (_, 0) if report.records > 0 => report.notes.push(
            "no signed checkpoints: a DB-level attacker could rewrite the log and recompute \
             every hash; compare the head hash with an exported copy"
                .into(),
        ),
        (None, n) if n > 0 => report.notes.push(
            "checkpoint signatures not checked: no audit public key (pass --key audit_key.pub \
             from a copy kept off this host)"
                .into(),
        ),
        _ => {}
    }
    if let Some((cp_seq, t)) = report.last_checkpoint {
        if last > cp_seq {
            report.notes.push(format!(
                "{} record(s) after the last checkpoint (seq {cp_seq}, {}) are protected by the \
                 hash chain only: deleting them from the end together with the checkpoints \
                 after it leaves no trace in the database",
                last - cp_seq,
                rfc3339_ms(t)
            ));
        }
    }
    Ok(report)
}

fn short(h: &Hash) -> String {
    chain::hex(h)[..16].to_string()
}

/// Verifies an exported JSON Lines file: each line's hash and its link to
/// the line before. The first line's `prev_hash` is taken on trust unless
/// `db` is given, in which case every exported record must also be in the
/// database with the same hash (the export anchors the database: a
/// database rolled back or rewritten after the export fails here).
pub fn verify_export(
    input: impl BufRead,
    subject: &str,
    db: Option<&Sqlite>,
) -> Result<VerifyReport, VerifyExportError> {
    let mut report = VerifyReport {
        subject: subject.to_string(),
        ..VerifyReport::default()
    };
    let mut walker = ChainWalker::from_first_record();
    let mut first = None;
    let mut last = 0u64;
    let mut db_err = None;
    let mut db_checked = 0u64;
    export::read_lines(input, &mut |line_no, rec| {
        match rec {
            Ok(r) => {
                if first.is_none() {
                    if let (Some(db), Some(prev)) = (db, r.prev_hash) {
                        // The first line's link, which the file alone cannot check.
                        let anchor = if r.seq <= 1 {
                            Some(chain::GENESIS)
                        } else {
                            match db.audit_record(r.seq - 1) {
                                Ok(Some(Ok(p))) => p.hash,
                                Ok(_) => None,
                                Err(e) => {
                                    db_err = Some(e);
                                    return false;
                                }
                            }
                        };
                        if anchor != Some(prev) {
                            walker.add(Problem::BrokenLink { seq: r.seq });
                        }
                    }
                }
                walker.push(&r);
                if let Some(db) = db {
                    match db.audit_record(r.seq) {
                        Ok(Some(Ok(stored))) => {
                            db_checked += 1;
                            if stored.hash != r.hash || stored != r {
                                walker.add(Problem::Diverged {
                                    seq: r.seq,
                                    what: format!(
                                        "the database's record differs from the exported copy (line {line_no}): rewritten after export"
                                    ),
                                });
                            }
                        }
                        Ok(Some(Err(bad))) => walker.add(Problem::Malformed {
                            seq: bad.seq,
                            what: format!("in the database: {}", bad.what),
                        }),
                        Ok(None) => walker.add(Problem::Missing {
                            from: r.seq,
                            to: r.seq,
                        }),
                        Err(e) => {
                            db_err = Some(e);
                            return false;
                        }
                    }
                }
                first.get_or_insert(r.seq);
                last = r.seq;
            }
            Err(e) => {
                let seq = last.saturating_add(1);
                walker.malformed(seq, format!("line {line_no}: {e}"));
                last = seq;
            }
        }
        true
    })?;
    if let Some(e) = db_err {
        return Err(e.into());
    }
    report.range = first.map(|a| (a, last));
    report.absorb(walker);
    if db.is_some() {
        report.notes.push(format!(
            "{db_checked} exported record(s) found unchanged in the database"
        ));
    } else if let Some((a, _)) = report.range {
        if a > 1 {
            report.notes.push(format!(
                "the export starts at seq {a}: its first prev_hash is taken on trust (add --config to check it against the database)"
            ));
        }
    }
    Ok(report)
}

/// Why an export could not be verified at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyExportError {
    /// Reading the file failed.
    #[error("reading the export: {0}")]
    Io(#[from] std::io::Error),
    /// Reading the database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
