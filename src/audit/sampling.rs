//! Bounding what unauthenticated callers can make the CA write.
//!
//! Every refused certificate request is audited, but a refusal that happens
//! before a token is verified (no token, a forged or expired one) costs the
//! caller nothing, so recording each one durably would let anyone on the
//! network grow the audit log and spend an fsync per request. Instead, each
//! window (one minute) records its first [`SAMPLE_PER_WINDOW`] such
//! refusals in full, counts the rest by reason code, and writes one
//! `refusals_summarized` record with those counts when the window ends.
//! Refusals of verified tokens are always recorded one by one.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{AuditRecord, EventKind};

/// Refusals recorded in full per window.
pub const SAMPLE_PER_WINDOW: u32 = 20;
/// Length of a window, in milliseconds.
pub const WINDOW_MS: u64 = 60_000;

/// What to do with one unauthenticated refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Record it in full.
    Record,
    /// Count it only; the window's summary carries it.
    Count,
}

#[derive(Debug, Default)]
struct Window {
    start_ms: u64,
    recorded: u32,
    counted: BTreeMap<String, u64>,
    last_ms: u64,
}

/// Samples and counts unauthenticated refusals per window.
#[derive(Debug, Default)]
pub struct RefusalSampler {
    window: Mutex<Window>,
}

impl RefusalSampler {
    /// A sampler with an empty first window.
    pub fn new() -> RefusalSampler {
        RefusalSampler::default()
    }

    /// Decides for one refusal with reason `code` at `now_ms`. When this
    /// refusal opens a new window, the summary of the old one is returned
    /// for the caller to store.
    pub fn admit(&self, code: &str, now_ms: u64) -> (Admit, Option<AuditRecord>) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let summary = roll(&mut w, now_ms);
        w.last_ms = w.last_ms.max(now_ms);
        if w.recorded < SAMPLE_PER_WINDOW {
            w.recorded += 1;
            (Admit::Record, summary)
        } else {
            *w.counted.entry(code.to_string()).or_insert(0) += 1;
            (Admit::Count, summary)
        }
    }

    /// The summary of a window that has ended by `now_ms`, if it counted
    /// anything (called periodically so a quiet CA still writes it).
    pub fn flush(&self, now_ms: u64) -> Option<AuditRecord> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        roll(&mut w, now_ms)
    }
}

impl RefusalSampler {
    /// The summary of the current window even if it has not ended (on
    /// shutdown, so no count is lost).
    pub fn finish(&self, now_ms: u64) -> Option<AuditRecord> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        close(&mut w, now_ms)
    }
}

/// Starts a new window if the current one ended; returns its summary.
fn roll(w: &mut Window, now_ms: u64) -> Option<AuditRecord> {
    if w.start_ms != 0 && now_ms < w.start_ms.saturating_add(WINDOW_MS) {
        return None;
    }
    close(w, now_ms)
}

/// Ends the current window and starts a new one; its summary, if it
/// counted anything.
fn close(w: &mut Window, now_ms: u64) -> Option<AuditRecord> {
    let old = std::mem::replace(
        w,
        Window {
            start_ms: now_ms.max(1),
            ..Window::default()
        },
    );
    if old.counted.is_empty() {
        return None;
    }
    let total: u64 = old.counted.values().sum();
    let by_code = old
        .counted
        .iter()
        .map(|(c, n)| format!("{c}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut rec = AuditRecord::new(EventKind::RefusalsSummarized, now_ms, "summary");
    rec.reason_code = Some("unauthenticated_refusals".into());
    rec.reason = Some(format!(
        "{total} more refusal(s) before token verification between {} and {} ms (unix), beyond the {} recorded in full: {by_code}",
        old.start_ms, old.last_ms, old.recorded
    ));
    Some(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_refusals_are_recorded_then_counted_and_summarized_once() {
        let s = RefusalSampler::new();
        let t0 = 1_800_000_000_000;
        for i in 0..SAMPLE_PER_WINDOW {
            let (admit, summary) = s.admit("token_missing", t0 + u64::from(i));
            assert_eq!(admit, Admit::Record);
            assert!(summary.is_none());
        }
        for i in 0..500 {
            let code = if i % 2 == 0 {
                "token_missing"
            } else {
                "bad_signature"
            };
            assert_eq!(s.admit(code, t0 + 100).0, Admit::Count);
        }
        assert!(s.flush(t0 + WINDOW_MS - 1).is_none(), "window still open");
        let summary = s.flush(t0 + WINDOW_MS).expect("summary at window end");
        assert_eq!(summary.event, EventKind::RefusalsSummarized);
        let reason = summary.reason.expect("reason");
        assert!(reason.starts_with("500 more refusal(s)"), "{reason}");
        assert!(
            reason.contains("bad_signature=250 token_missing=250"),
            "{reason}"
        );
        assert!(
            s.flush(t0 + 3 * WINDOW_MS).is_none(),
            "summarized only once"
        );
        // A new window samples again.
        assert_eq!(
            s.admit("token_missing", t0 + 3 * WINDOW_MS).0,
            Admit::Record
        );
    }

    #[test]
    fn a_window_with_nothing_counted_writes_no_summary() {
        let s = RefusalSampler::new();
        assert_eq!(s.admit("x", 5).0, Admit::Record);
        assert!(s.flush(5 + WINDOW_MS).is_none());
    }
}
