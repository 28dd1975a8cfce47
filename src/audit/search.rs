//! `mayfly audit search`: find records by who, what and when, and answer
//! "which job was this login?" from the key id sshd logged.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::chain::{self, StoredRecord};
use super::export::{outcome, rfc3339_ms};

/// Default number of records a search returns.
pub const DEFAULT_LIMIT: usize = 50;

/// What to search for; every set field must match (exactly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// Token subject.
    pub subject: Option<String>,
    /// Issuer name.
    pub issuer: Option<String>,
    /// Role.
    pub role: Option<String>,
    /// Certificate serial (issuance, and revocations of it).
    pub serial: Option<u64>,
    /// Certificate key id.
    pub key_id: Option<String>,
    /// Event name.
    pub event: Option<String>,
    /// Only records at or after this time (unix ms).
    pub since_ms: Option<i64>,
    /// Most records returned (the newest ones).
    pub limit: usize,
}

impl Default for AuditQuery {
    fn default() -> Self {
        AuditQuery {
            subject: None,
            issuer: None,
            role: None,
            serial: None,
            key_id: None,
            event: None,
            since_ms: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl AuditQuery {
    /// Whether `r` matches: the reference semantics every store's search
    /// must give (newest first, at most `limit` of the matches). A serial
    /// matches its issuance and the revocation records of it, which keep
    /// the serial in their reason ([`chain::revoked_serial_prefix`]),
    /// since only issuance claims the serial column.
    pub fn matches(&self, r: &StoredRecord) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        eq(&self.subject, &r.subject)
            && eq(&self.issuer, &r.issuer)
            && eq(&self.role, &r.role)
            && eq(&self.key_id, &r.key_id)
            && self.event.as_ref().is_none_or(|e| *e == r.event)
            && self.since_ms.is_none_or(|t| r.time_ms >= t)
            && self.serial.is_none_or(|n| {
                r.serial == Some(n as i64)
                    || (r.event == "cert_revoked"
                        && r.serial.is_none()
                        && r.reason.as_deref().is_some_and(|why| {
                            // As SQL `LIKE 'serial N:%'`: ASCII case-insensitive.
                            let p = format!("serial {n}:");
                            why.get(..p.len())
                                .is_some_and(|head| head.eq_ignore_ascii_case(&p))
                        }))
            })
    }
}

/// Answer of `GET /v1/admin/audit`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SearchAnswer {
    /// Matching records, oldest first, each as one line of `mayfly audit
    /// export` (the export schema, with its chain hash).
    pub records: Vec<super::export::Line>,
    /// Matching rows that cannot be read (altered by hand): run `mayfly
    /// audit verify`.
    pub unreadable: Vec<UnreadableRow>,
}

/// A row of the audit table that does not decode.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UnreadableRow {
    /// Its sequence number.
    pub seq: u64,
    /// What is wrong with it.
    pub what: String,
}

/// Parses a `--since` value: RFC 3339 (`2026-11-01T00:00:00Z`), unix
/// seconds (`1793491200`), or a duration back from `now` (`24h`, `30m`).
/// Returns unix milliseconds.
pub fn parse_since(s: &str, now: SystemTime) -> Result<i64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i64>()
            .ok()
            .and_then(|v| v.checked_mul(1000))
            .ok_or_else(|| format!("--since {s:?}: number too large"));
    }
    let to_ms = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    };
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(to_ms(t));
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(to_ms(now.checked_sub(d).unwrap_or(UNIX_EPOCH)));
    }
    Err(format!(
        "--since {s:?}: write an RFC 3339 time (2026-11-01T00:00:00Z), unix seconds, or a duration back from now (24h)"
    ))
}

fn unix_s(v: i64) -> String {
    rfc3339_ms(v.saturating_mul(1000)).replace(".000Z", "Z")
}

fn cell(s: &str, width: usize) -> String {
    let mut out: String = s.chars().take(width).collect();
    if s.chars().count() > width && width > 1 {
        out.pop();
        out.push('…');
    }
    format!("{out:<width$}")
}

/// Widest ROLE and ISSUER/SUBJECT columns; longer values are cut with `…`
/// (the `--json` and `--detail` output has them whole). Event names are
/// never cut.
const MAX_ROLE_WIDTH: usize = 24;
const MAX_WHO_WIDTH: usize = 48;

/// A table, one record per line, oldest first; columns as wide as their
/// widest value, so the rows line up.
pub fn render_table(records: &[StoredRecord]) -> String {
    let who_of = |r: &StoredRecord| match (&r.issuer, &r.subject) {
        (Some(i), Some(s)) => format!("{i}/{s}"),
        (Some(i), None) => i.clone(),
        (None, Some(s)) => s.clone(),
        (None, None) => r.actor.clone().unwrap_or_else(|| "-".into()),
    };
    let width = |head: &str, values: &mut dyn Iterator<Item = usize>, max: usize| {
        values.fold(head.len(), usize::max).min(max.max(head.len()))
    };
    let ev_w = width(
        "EVENT",
        &mut records.iter().map(|r| r.event.chars().count()),
        usize::MAX,
    );
    let role_w = width(
        "ROLE",
        &mut records
            .iter()
            .map(|r| r.role.as_deref().unwrap_or("-").chars().count()),
        MAX_ROLE_WIDTH,
    );
    let who_w = width(
        "ISSUER/SUBJECT",
        &mut records.iter().map(|r| who_of(r).chars().count()),
        MAX_WHO_WIDTH,
    );
    let seq_w = width(
        "SEQ",
        &mut records.iter().map(|r| r.seq.to_string().len()),
        usize::MAX,
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:>seq_w$} {:<ev_w$} {:<role_w$} {:<who_w$} WHAT",
        "TIME (UTC)", "SEQ", "EVENT", "ROLE", "ISSUER/SUBJECT"
    );
    for r in records {
        let who = who_of(r);
        let what = match r.event.as_str() {
            "cert_issued" => format!(
                "{} principals={}",
                r.key_id.as_deref().unwrap_or("-"),
                r.principals.join(",")
            ),
            _ => {
                let mut w = String::new();
                if let Some(k) = &r.key_id {
                    w.push_str(k);
                    w.push(' ');
                }
                if let Some(c) = &r.reason_code {
                    w.push_str(c);
                    w.push_str(": ");
                }
                w.push_str(r.reason.as_deref().unwrap_or(""));
                w
            }
        };
        // The job (run, commit, actor) right after what happened: on GitHub
        // every run of a workflow has the same subject.
        let what = match job_line(r) {
            Some(j) => format!("{what} [{j}]"),
            None => what,
        };
        let _ = writeln!(
            out,
            "{:<24} {:>seq_w$} {} {} {} {}",
            rfc3339_ms(r.time_ms),
            r.seq,
            cell(&r.event, ev_w),
            cell(r.role.as_deref().unwrap_or("-"), role_w),
            cell(&who, who_w),
            what.replace(['\n', '\r'], " ")
        );
    }
    out
}

/// The record's job claims as `k=v k=v`, if it has any.
fn job_line(r: &StoredRecord) -> Option<String> {
    let job = chain::parse_claims(r.claims.as_deref()?)?;
    (!job.is_empty()).then(|| super::claims::one_line(&job))
}

/// Every field of one record, one per line: the answer to "which job was
/// this login?" when searched by key id.
pub fn render_details(r: &StoredRecord) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "seq {}  {}  {} ({})",
        r.seq,
        rfc3339_ms(r.time_ms),
        r.event,
        outcome(&r.event)
    );
    let mut line = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            let _ = writeln!(out, "  {k:<13}{}", v.replace(['\n', '\r'], " "));
        }
    };
    line("issuer", r.issuer.clone());
    line("subject", r.subject.clone());
    line("role", r.role.clone());
    line("actor", r.actor.clone());
    line("job", job_line(r));
    line("request id", Some(r.request_id.clone()));
    line("client", r.client_addr.clone());
    line("serial", r.serial.map(|s| (s as u64).to_string()));
    line("key id", r.key_id.clone());
    line(
        "principals",
        (!r.principals.is_empty()).then(|| r.principals.join(", ")),
    );
    line(
        "valid",
        match (r.valid_after, r.valid_before) {
            (Some(a), Some(b)) => Some(format!("{} .. {}", unix_s(a), unix_s(b))),
            (None, Some(b)) => Some(format!("until {}", unix_s(b))),
            _ => None,
        },
    );
    line("cert type", r.cert_type.clone());
    line("public key", r.key_fingerprint.clone());
    line("token", r.token_id.clone());
    line("policy", r.policy_digest.clone());
    line("code", r.reason_code.clone());
    line("reason", r.reason.clone());
    line("ca key", r.ca_key.clone());
    line("hash", r.hash.as_ref().map(chain::hex));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn since_accepts_rfc3339_unix_seconds_and_durations() {
        let now = UNIX_EPOCH + Duration::from_secs(1_793_491_200);
        assert_eq!(
            parse_since("2026-11-01T00:00:00Z", now),
            Ok(1_793_491_200_000)
        );
        assert_eq!(parse_since("1793491200", now), Ok(1_793_491_200_000));
        assert_eq!(parse_since("24h", now), Ok((1_793_491_200 - 86_400) * 1000));
        let err = parse_since("yesterday", now).expect_err("refused");
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn details_show_who_what_and_when() {
        let r = StoredRecord {
            seq: 3,
            time_ms: 1_793_491_200_000,
            event: "cert_issued".into(),
            request_id: "req-9".into(),
            client_addr: Some("10.1.2.3:5000".into()),
            issuer: Some("ci".into()),
            subject: Some("repo:acme/api".into()),
            role: Some("deploy".into()),
            serial: Some(77),
            key_id: Some("mayfly:deploy:ci:repo_acme_api:77".into()),
            principals: vec!["deploy".into()],
            valid_after: Some(1_793_491_140),
            valid_before: Some(1_793_491_500),
            ..StoredRecord::default()
        };
        let d = render_details(&r);
        for needle in [
            "seq 3  2026-11-01T00:00:00.000Z  cert_issued (success)",
            "issuer       ci",
            "subject      repo:acme/api",
            "request id   req-9",
            "client       10.1.2.3:5000",
            "principals   deploy",
            "valid        2026-10-31T23:59:00Z .. 2026-11-01T00:05:00Z",
        ] {
            assert!(d.contains(needle), "{needle:?} not in\n{d}");
        }
        let t = render_table(&[r]);
        assert!(t.contains("ci/repo:acme/api"), "{t}");
        assert!(
            t.contains("mayfly:deploy:ci:repo_acme_api:77 principals=deploy"),
            "{t}"
        );
    }

    #[test]
    fn table_columns_line_up_and_event_names_are_whole() {
        let rec = |seq: u64, event: &str, role: &str, subject: &str| StoredRecord {
            seq,
            time_ms: 1_793_491_200_000,
            event: event.into(),
            issuer: Some("ci".into()),
            subject: Some(subject.into()),
            role: Some(role.into()),
            ..StoredRecord::default()
        };
        let t = render_table(&[
            rec(
                9,
                "approval_requested",
                "production-deploy",
                "repo:acme/api",
            ),
            rec(10_000, "cert_issued", "db", "x"),
        ]);
        assert!(t.contains(" approval_requested "), "{t}");
        // Each column starts at the same place on every line.
        let col = |l: &str, needle: &str| l.find(needle).unwrap_or(usize::MAX);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            col(lines[0], "EVENT"),
            col(lines[1], "approval_requested"),
            "{t}"
        );
        assert_eq!(
            col(lines[1], "approval_requested"),
            col(lines[2], "cert_issued"),
            "{t}"
        );
        assert_eq!(
            col(lines[0], "ROLE"),
            col(lines[1], "production-deploy"),
            "{t}"
        );
        assert_eq!(
            col(lines[1], "production-deploy"),
            col(lines[2], "db "),
            "{t}"
        );
        assert_eq!(
            col(lines[0], "ISSUER/SUBJECT"),
            col(lines[2], "ci/x"),
            "{t}"
        );
    }
}
