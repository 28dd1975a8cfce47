//! `mayfly audit verify`, the pure part: given the stored chain (or an
//! exported file) record by record, check every signed checkpoint and say
//! what is wrong and where. Reading the records from a store is the
//! evidence layer's job (`crate::evidence::verify`); this module decides,
//! so every store is judged the same way.
//!
//! What this can and cannot prove is written up in `docs/audit-schema.md`
//! ("What the chain proves"): in short, any change, deletion, insertion or
//! reordering at or before the last signed checkpoint is detected without
//! trusting the database; after it, only against the chain itself, the
//! `AUTOINCREMENT` counter, or an exported copy.

use std::collections::BTreeMap;
use std::fmt;

use super::chain::{self, BadRow, ChainMeta, ChainWalker, Hash, Problem, StoredRecord};
use super::checkpoint::{AuditPublicKey, Checkpoint};
use super::export::{rfc3339_ms, LineError};

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

impl VerifyReport {
    /// The report as JSON (`mayfly audit verify --json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "subject": self.subject,
            "intact": self.is_intact(),
            "records": self.records,
            "first_seq": self.range.map(|r| r.0),
            "last_seq": self.range.map(|r| r.1),
            "head_hash": self.head.as_ref().map(chain::hex),
            "problem_count": self.problem_count,
            "problems": self.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "checkpoints": self.checkpoints,
            "checkpoints_signed_ok": self.checkpoints_signed_ok,
            "last_checkpoint": self.last_checkpoint.map(|(seq, t)| serde_json::json!({
                "seq": seq, "time": rfc3339_ms(t),
            })),
            "notes": self.notes,
        })
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

/// Verifies a whole stored log: every record against the chain, every
/// checkpoint's signature (when `key` is given) and position, and the tail
/// against the checkpoints and the store's seq counter. Feed it the
/// checkpoints (oldest first), then [`LogVerifier::checkpoints_done`], then
/// every record in seq order, then [`LogVerifier::finish`].
pub struct LogVerifier<'k> {
    key: Option<&'k AuditPublicKey>,
    report: VerifyReport,
    walker: ChainWalker,
    meta: ChainMeta,
    marks: BTreeMap<u64, Vec<Mark>>,
    prev_cp: Option<Checkpoint>,
    expected_id: i64,
    first: Option<u64>,
    last: u64,
}

impl<'k> LogVerifier<'k> {
    /// A verification of the log described by `meta`, reported as `subject`.
    pub fn new(subject: &str, key: Option<&'k AuditPublicKey>, meta: ChainMeta) -> LogVerifier<'k> {
        LogVerifier {
            key,
            report: VerifyReport {
                subject: subject.to_string(),
                ..VerifyReport::default()
            },
            walker: ChainWalker::from_genesis(),
            meta,
            marks: BTreeMap::new(),
            prev_cp: None,
            expected_id: 1,
            first: None,
            last: 0,
        }
    }

    /// The next checkpoint (by id): signature, order, deletions.
    pub fn checkpoint(&mut self, cp: Result<Checkpoint, BadRow>) {
        self.report.checkpoints += 1;
        let cp = match cp {
            Ok(cp) => cp,
            Err(bad) => {
                self.walker.add(Problem::Checkpoint {
                    seq: bad.seq,
                    what: bad.what,
                });
                return;
            }
        };
        if cp.id > self.expected_id {
            self.walker.add(Problem::Checkpoint {
                seq: self.prev_cp.as_ref().map(|p| p.seq).unwrap_or(0),
                what: format!(
                    "#{}..#{}: deleted (a later state was signed and removed)",
                    self.expected_id,
                    cp.id - 1
                ),
            });
        }
        self.expected_id = cp.id + 1;
        if let Some(k) = self.key {
            match k.verify(&cp) {
                Ok(()) => self.report.checkpoints_signed_ok += 1,
                Err(why) => self.walker.add(Problem::Checkpoint {
                    seq: cp.seq,
                    what: format!("#{}: {why}", cp.id),
                }),
            }
        }
        if let Some(p) = &self.prev_cp {
            if cp.seq < p.seq {
                self.walker.add(Problem::Checkpoint {
                    seq: cp.seq,
                    what: format!(
                        "#{}: goes back from seq {} to seq {} (log rolled back)",
                        cp.id, p.seq, cp.seq
                    ),
                });
            }
        }
        self.marks.entry(cp.seq).or_default().push(Mark {
            id: cp.id,
            hash: cp.hash,
        });
        self.report.last_checkpoint = Some((cp.seq, cp.time_ms));
        self.prev_cp = Some(cp);
    }

    /// After the last checkpoint: checkpoints deleted from the end.
    pub fn checkpoints_done(&mut self) {
        if self.meta.checkpoint_counter >= self.expected_id.max(1) as u64 {
            self.walker.add(Problem::Checkpoint {
                seq: self.prev_cp.as_ref().map(|p| p.seq).unwrap_or(0),
                what: format!(
                    "#{}..#{}: deleted from the end (the table's counter is at {})",
                    self.expected_id, self.meta.checkpoint_counter, self.meta.checkpoint_counter
                ),
            });
        }
    }

    /// The next record, in seq order.
    pub fn record(&mut self, row: Result<StoredRecord, BadRow>) {
        match row {
            Ok(r) => {
                self.walker.push(&r);
                if let Some(ms) = self.marks.get(&r.seq) {
                    for m in ms {
                        if r.hash != Some(m.hash) {
                            self.walker.add(Problem::Checkpoint {
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
                self.first.get_or_insert(r.seq);
                self.last = r.seq;
            }
            Err(bad) => {
                self.walker.malformed(bad.seq, bad.what);
                self.first.get_or_insert(bad.seq);
                self.last = bad.seq;
            }
        }
    }

    /// The tail (anything known to have existed after the last record),
    /// and the report.
    pub fn finish(self) -> VerifyReport {
        let LogVerifier {
            key,
            mut report,
            mut walker,
            meta,
            marks,
            first,
            last,
            ..
        } = self;
        report.range = first.map(|a| (a, last));
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
        report
    }
}

fn short(h: &Hash) -> String {
    chain::hex(h)[..16].to_string()
}

/// Verifies an exported JSON Lines file: each line's hash and its link to
/// the line before. The first line's `prev_hash` is taken on trust unless a
/// store is consulted, in which case every exported record must also be in
/// the store with the same hash (the export anchors the database: a
/// database rolled back or rewritten after the export fails here). Feed it
/// the lines in order, then [`ExportVerifier::finish`].
pub struct ExportVerifier {
    report: VerifyReport,
    walker: ChainWalker,
    with_store: bool,
    first: Option<u64>,
    last: u64,
    /// Exported records looked up in the store.
    db_checked: u64,
    /// Of those, the ones the store holds exactly as exported.
    db_unchanged: u64,
}

impl ExportVerifier {
    /// A verification of an export reported as `subject`; `with_store`
    /// when each record is also looked up in the store.
    pub fn new(subject: &str, with_store: bool) -> ExportVerifier {
        ExportVerifier {
            report: VerifyReport {
                subject: subject.to_string(),
                ..VerifyReport::default()
            },
            walker: ChainWalker::from_first_record(),
            with_store,
            first: None,
            last: 0,
            db_checked: 0,
            db_unchanged: 0,
        }
    }

    /// Whether the next record is the export's first: then its
    /// `prev_hash` link is checked against the store ([`ExportVerifier::anchor`]).
    pub fn at_first_record(&self) -> bool {
        self.first.is_none()
    }

    /// The first record's link, which the file alone cannot check: `hash`
    /// is the store's hash of the record before it (`None`: not there).
    pub fn anchor(&mut self, r: &StoredRecord, hash: Option<Hash>) {
        if r.prev_hash.is_some() && hash != r.prev_hash {
            self.walker.add(Problem::BrokenLink { seq: r.seq });
        }
    }

    /// A record read from line `line_no`; `stored` is what the store holds
    /// at its seq (`None` when no store is consulted).
    pub fn record(
        &mut self,
        line_no: usize,
        r: StoredRecord,
        stored: Option<Option<Result<StoredRecord, BadRow>>>,
    ) {
        self.walker.push(&r);
        match stored {
            None => {}
            Some(Some(Ok(stored))) => {
                self.db_checked += 1;
                if stored.hash == r.hash && stored == r {
                    self.db_unchanged += 1;
                } else {
                    self.walker.add(Problem::Diverged {
                        seq: r.seq,
                        what: format!(
                            "the database's record differs from the exported copy (line {line_no}): rewritten after export"
                        ),
                    });
                }
            }
            Some(Some(Err(bad))) => {
                self.db_checked += 1;
                self.walker.add(Problem::Malformed {
                    seq: bad.seq,
                    what: format!("in the database: {}", bad.what),
                })
            }
            Some(None) => {
                self.db_checked += 1;
                self.walker.add(Problem::Missing {
                    from: r.seq,
                    to: r.seq,
                })
            }
        }
        self.first.get_or_insert(r.seq);
        self.last = r.seq;
    }

    /// A line that is not a record.
    pub fn bad_line(&mut self, line_no: usize, e: &LineError) {
        let seq = self.last.saturating_add(1);
        self.walker.malformed(seq, format!("line {line_no}: {e}"));
        self.last = seq;
    }

    /// The report.
    pub fn finish(self) -> VerifyReport {
        let mut report = self.report;
        report.range = self.first.map(|a| (a, self.last));
        report.absorb(self.walker);
        if self.with_store {
            report.notes.push(format!(
                "{} of {} exported record(s) found unchanged in the database",
                self.db_unchanged, self.db_checked
            ));
        } else if let Some((a, _)) = report.range {
            if a > 1 {
                report.notes.push(format!(
                    "the export starts at seq {a}: its first prev_hash is taken on trust (add --config to check it against the database)"
                ));
            }
        }
        report
    }
}

/// Verifies an exported file on its own (no store): see [`ExportVerifier`].
pub fn verify_export_file(
    input: impl std::io::BufRead,
    subject: &str,
) -> std::io::Result<VerifyReport> {
    let mut v = ExportVerifier::new(subject, false);
    super::export::read_lines(input, &mut |line_no, rec| {
        match rec {
            Ok(r) => v.record(line_no, r, None),
            Err(e) => v.bad_line(line_no, &e),
        }
        true
    })?;
    Ok(v.finish())
}
