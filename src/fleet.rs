//! The CA's view of its fleet: what each host last reported after
//! `mayfly host sync`, and what that says about it.
//!
//! A host reports its name, the KRL version it installed, the
//! fingerprints of the user-CA keys it trusts (its `TrustedUserCAKeys`
//! file) and its last error. The report is signed with the host key whose
//! certificate this CA issued ([`crate::ca::hostreport`]), so the rows
//! here were written by the hosts they name. This module is pure: the wire
//! form, the checks of the report's content, and the status of a host at
//! a given time (lag behind the CA's KRL, stale after missed syncs), which
//! `mayfly hosts`, `/metrics`, `ca rotate` and `revoke --wait` share.

use serde::{Deserialize, Serialize};

/// How far a report's time may be from the CA's clock, in seconds: older
/// reports are refused as replays, later ones as a wrong clock.
pub const MAX_REPORT_SKEW_SECS: u64 = 300;

/// Most CA fingerprints one report may list.
pub const MAX_FINGERPRINTS: usize = 32;

/// Longest last-error text kept (longer ones are cut).
pub const MAX_ERROR_CHARS: usize = 512;

/// Longest host name.
pub const MAX_HOST_CHARS: usize = 253;

/// Default expected time between two syncs (the shipped timer's).
pub const DEFAULT_SYNC_INTERVAL_SECS: u64 = crate::config::DEFAULT_HOST_SYNC_INTERVAL_SECS;

/// Default number of missed intervals after which a host is stale.
pub const DEFAULT_STALE_INTERVALS: u64 = crate::config::DEFAULT_HOST_STALE_INTERVALS;

/// What a host sends, signed: the exact JSON text is what the signature
/// covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostReport {
    /// The host's name: one of its certificate's principals.
    pub host: String,
    /// When the report was made (unix seconds).
    pub time: u64,
    /// `krl_version` of the installed `revoked.krl` (0 if none).
    pub krl_version: u64,
    /// `SHA256:` fingerprints of the user-CA keys in its `TrustedUserCAKeys`.
    pub ca_fingerprints: Vec<String>,
    /// Why the last sync failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The stored last report of one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRow {
    /// Host name.
    pub host: String,
    /// When the report was made (unix seconds, the host's signed time).
    pub reported_at: u64,
    /// Installed KRL version.
    pub krl_version: u64,
    /// Trusted user-CA fingerprints.
    pub ca_fingerprints: Vec<String>,
    /// Last error, if any.
    pub last_error: Option<String>,
    /// Serial of the host certificate that signed the report.
    pub cert_serial: u64,
    /// Address the report came from.
    pub client_addr: Option<String>,
}

/// Why a report's content is refused (after its signature verified).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The report text is not the JSON of a report.
    #[error("report is not a host report: {0}")]
    Malformed(String),
    /// The host name is not one the certificate is valid for.
    #[error("report is for host {host:?} but the certificate is valid for {principals:?}: a host reports only for itself")]
    OtherHost {
        /// Reported name.
        host: String,
        /// The certificate's principals.
        principals: Vec<String>,
    },
    /// Too old (a replay) or too far ahead (a wrong clock).
    #[error("report time {time} is more than {MAX_REPORT_SKEW_SECS} s from the CA's clock ({now}); check the host's clock (NTP)")]
    Stale {
        /// Report time.
        time: u64,
        /// CA time.
        now: u64,
    },
    /// Older than the host's last stored report.
    #[error("report time {time} is older than this host's last report ({last}); a replayed report is refused")]
    Older {
        /// Report time.
        time: u64,
        /// Time of the stored report.
        last: u64,
    },
    /// A field is out of bounds.
    #[error("report field {0}")]
    Bounds(String),
    /// The certificate is revoked.
    #[error("the host certificate (serial {0}) is revoked")]
    Revoked(u64),
}

/// Parses and checks a report's text, signed by a certificate valid for
/// `principals`, at CA time `now`.
pub fn check_report(
    text: &str,
    principals: &[String],
    now: u64,
) -> Result<HostReport, ReportError> {
    let mut r: HostReport =
        serde_json::from_str(text).map_err(|e| ReportError::Malformed(e.to_string()))?;
    if r.host.is_empty()
        || r.host.chars().count() > MAX_HOST_CHARS
        || r.host.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(ReportError::Bounds(format!(
            "host must be 1-{MAX_HOST_CHARS} characters without spaces"
        )));
    }
    if !principals.iter().any(|p| p.eq_ignore_ascii_case(&r.host)) {
        return Err(ReportError::OtherHost {
            host: r.host,
            principals: principals.to_vec(),
        });
    }
    if r.time.abs_diff(now) > MAX_REPORT_SKEW_SECS {
        return Err(ReportError::Stale { time: r.time, now });
    }
    if r.ca_fingerprints.len() > MAX_FINGERPRINTS
        || r.ca_fingerprints
            .iter()
            .any(|f| !f.starts_with("SHA256:") || f.len() > 100 || f.contains(char::is_whitespace))
    {
        return Err(ReportError::Bounds(format!(
            "ca_fingerprints must be at most {MAX_FINGERPRINTS} SHA256: fingerprints"
        )));
    }
    r.last_error = r.last_error.map(|e| {
        let mut s: String = e
            .chars()
            .take(MAX_ERROR_CHARS)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if e.chars().count() > MAX_ERROR_CHARS {
            s.push('…');
        }
        s
    });
    Ok(r)
}

/// When a host counts as stale, and how lag is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staleness {
    /// Expected seconds between syncs.
    pub interval_secs: u64,
    /// Missed intervals after which a host is stale.
    pub intervals: u64,
}

impl Staleness {
    /// As `[hosts]` in mayfly.toml sets it.
    pub fn of(h: &crate::config::HostsConfig) -> Staleness {
        Staleness {
            interval_secs: h.sync_interval.as_secs(),
            intervals: h.stale_intervals,
        }
    }
}

impl Default for Staleness {
    fn default() -> Self {
        Staleness {
            interval_secs: DEFAULT_SYNC_INTERVAL_SECS,
            intervals: DEFAULT_STALE_INTERVALS,
        }
    }
}

impl Staleness {
    /// Seconds without a report after which a host is stale.
    pub fn after_secs(&self) -> u64 {
        self.interval_secs.saturating_mul(self.intervals.max(1))
    }
}

/// One host as `mayfly hosts` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// Host name.
    pub host: String,
    /// Last report time (RFC 3339).
    pub last_report: String,
    /// Seconds since then.
    pub age_secs: u64,
    /// Installed KRL version.
    pub krl_version: u64,
    /// How many KRL versions it is behind the CA's.
    pub krl_behind: u64,
    /// Not synced for the configured number of intervals.
    pub stale: bool,
    /// Behind the CA's KRL (and not stale).
    pub lagging: bool,
    /// Trusted user-CA fingerprints.
    pub ca_fingerprints: Vec<String>,
    /// Last error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The status of `row` at `now` against the CA's `krl_version`.
pub fn status(row: &HostRow, krl_version: u64, s: Staleness, now: u64) -> HostStatus {
    let age_secs = now.saturating_sub(row.reported_at);
    let stale = age_secs > s.after_secs();
    let krl_behind = krl_version.saturating_sub(row.krl_version);
    HostStatus {
        host: row.host.clone(),
        last_report: crate::time::rfc3339(row.reported_at),
        age_secs,
        krl_version: row.krl_version,
        krl_behind,
        stale,
        lagging: !stale && krl_behind > 0,
        ca_fingerprints: row.ca_fingerprints.clone(),
        last_error: row.last_error.clone(),
    }
}

/// Counts for `/metrics`: (total, lagging, stale).
pub fn counts(rows: &[HostRow], krl_version: u64, s: Staleness, now: u64) -> (u64, u64, u64) {
    let mut lagging = 0;
    let mut stale = 0;
    for r in rows {
        let st = status(r, krl_version, s, now);
        lagging += u64::from(st.lagging);
        stale += u64::from(st.stale);
    }
    (rows.len() as u64, lagging, stale)
}

/// Of the hosts that trust this CA (any of `ca_keys`, the fingerprints of
/// its published keys: hosts of another CA group are not its concern), the
/// non-stale ones that do not trust `fingerprint` yet, and the stale ones
/// (whose trust is unknown).
pub fn not_trusting<'a>(
    rows: &'a [HostRow],
    fingerprint: &str,
    ca_keys: &[String],
    s: Staleness,
    now: u64,
) -> (Vec<&'a HostRow>, Vec<&'a HostRow>) {
    let mut missing = Vec::new();
    let mut stale = Vec::new();
    for r in rows {
        if !r.ca_fingerprints.iter().any(|f| ca_keys.contains(f)) {
            continue;
        }
        if now.saturating_sub(r.reported_at) > s.after_secs() {
            stale.push(r);
        } else if !r.ca_fingerprints.iter().any(|f| f == fingerprint) {
            missing.push(r);
        }
    }
    (missing, stale)
}

/// The fleet as `mayfly hosts` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetView {
    /// The CA's current KRL version.
    pub ca_krl_version: u64,
    /// Seconds without a report after which a host is stale.
    pub stale_after_secs: u64,
    /// Hosts that reported.
    pub total: u64,
    /// Behind the CA's KRL (not stale).
    pub lagging: u64,
    /// Not reported for the configured intervals.
    pub stale: u64,
    /// Hosts named as expected (`mayfly hosts --expect`, `[hosts]
    /// expected_file`); 0 when no list was given.
    pub expected: u64,
    /// Expected hosts that never reported: the CA knows nothing of them.
    pub never_reported: u64,
    /// Each host, by name.
    pub hosts: Vec<HostStatus>,
    /// The expected hosts that never reported, as the list names them.
    pub never_reported_hosts: Vec<String>,
}

impl FleetView {
    /// Hosts that need a look: lagging, stale, or expected and never
    /// reported (`mayfly hosts` exits 9 while this is not 0).
    pub fn attention(&self) -> u64 {
        self.lagging + self.stale + self.never_reported
    }
}

/// The fleet from the hosts' last reports and the CA's KRL version
/// (read from a store by [`crate::store::hosts::Fleet`]), and the
/// host names the CA expects to hear from (empty: none given). A reported
/// name matches an expected one without regard to case, as host names do.
pub fn view_of(
    rows: &[HostRow],
    ca: u64,
    s: Staleness,
    now: u64,
    expected: &[String],
) -> FleetView {
    let hosts: Vec<HostStatus> = rows.iter().map(|r| status(r, ca, s, now)).collect();
    let (total, lagging, stale) = counts(rows, ca, s, now);
    let reported: std::collections::BTreeSet<String> =
        rows.iter().map(|r| r.host.to_ascii_lowercase()).collect();
    let never_reported_hosts: Vec<String> = expected
        .iter()
        .filter(|e| !reported.contains(&e.to_ascii_lowercase()))
        .cloned()
        .collect();
    FleetView {
        ca_krl_version: ca,
        stale_after_secs: s.after_secs(),
        total,
        lagging,
        stale,
        expected: expected.len() as u64,
        never_reported: never_reported_hosts.len() as u64,
        hosts,
        never_reported_hosts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn report(host: &str, time: u64) -> String {
        serde_json::to_string(&HostReport {
            host: host.into(),
            time,
            krl_version: 3,
            ca_fingerprints: vec!["SHA256:abc".into()],
            last_error: Some("x\ny".into()),
        })
        .unwrap()
    }

    #[test]
    fn a_report_for_the_certificates_host_at_the_right_time_is_accepted() {
        let r = check_report(&report("web1", NOW - 10), &["web1".into()], NOW).unwrap();
        assert_eq!(r.krl_version, 3);
        assert_eq!(r.last_error.as_deref(), Some("x y"));
    }

    #[test]
    fn a_report_for_another_host_or_out_of_time_is_refused() {
        assert!(matches!(
            check_report(&report("web2", NOW), &["web1".into()], NOW),
            Err(ReportError::OtherHost { .. })
        ));
        assert!(matches!(
            check_report(&report("web1", NOW - 301), &["web1".into()], NOW),
            Err(ReportError::Stale { .. })
        ));
        assert!(matches!(
            check_report(&report("web1", NOW + 301), &["web1".into()], NOW),
            Err(ReportError::Stale { .. })
        ));
        assert!(check_report("{\"host\":1}", &["web1".into()], NOW).is_err());
    }

    #[test]
    fn status_says_lagging_and_stale() {
        let row = HostRow {
            host: "web1".into(),
            reported_at: NOW - 100,
            krl_version: 3,
            ca_fingerprints: vec!["SHA256:a".into()],
            last_error: None,
            cert_serial: 1,
            client_addr: None,
        };
        let s = Staleness::default();
        let st = status(&row, 5, s, NOW);
        assert!(st.lagging && !st.stale && st.krl_behind == 2);
        let st = status(&row, 5, s, NOW + 1000);
        assert!(st.stale && !st.lagging);
        let rows = [row];
        assert_eq!(counts(&rows, 3, s, NOW), (1, 0, 0));
        let ca = ["SHA256:a".to_string(), "SHA256:b".to_string()];
        let (missing, stale) = not_trusting(&rows, "SHA256:b", &ca, s, NOW);
        assert_eq!((missing.len(), stale.len()), (1, 0));
        let (missing, _) = not_trusting(&rows, "SHA256:a", &ca, s, NOW);
        assert!(missing.is_empty());
        // A host of another CA (group) is not asked to trust this one's key.
        let (missing, _) = not_trusting(&rows, "SHA256:c", &["SHA256:c".to_string()], s, NOW);
        assert!(missing.is_empty());
    }

    #[test]
    fn expected_hosts_that_never_reported_are_listed_and_need_attention() {
        let row = HostRow {
            host: "Web1".into(),
            reported_at: NOW - 100,
            krl_version: 5,
            ca_fingerprints: vec![],
            last_error: None,
            cert_serial: 1,
            client_addr: None,
        };
        let s = Staleness::default();
        let v = view_of(std::slice::from_ref(&row), 5, s, NOW, &[]);
        assert_eq!((v.expected, v.never_reported, v.attention()), (0, 0, 0));
        let expected = ["web1".to_string(), "db1".to_string()];
        let v = view_of(&[row], 5, s, NOW, &expected);
        assert_eq!(v.expected, 2);
        assert_eq!(v.never_reported_hosts, ["db1"]);
        assert_eq!((v.never_reported, v.attention()), (1, 1));
        let v = view_of(&[], 5, s, NOW, &expected);
        assert_eq!(v.never_reported_hosts, ["web1", "db1"]);
    }
}
