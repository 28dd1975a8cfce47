//! Prometheus counters and a latency histogram, rendered as text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the request latency histogram buckets.
const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
];

#[derive(Default)]
struct Inner {
    issued: BTreeMap<String, u64>,
    denied: BTreeMap<(String, String), u64>,
    latency_counts: [u64; BUCKETS.len()],
    latency_sum: f64,
    latency_total: u64,
}

/// Process-wide metrics.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// Role names are bounded so a bot cannot grow the label set without limit.
fn label(role: &str) -> String {
    if role.len() <= 64
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        role.to_string()
    } else {
        "_invalid".into()
    }
}

impl Metrics {
    /// Counts an issued certificate.
    pub fn issued(&self, role: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *g.issued.entry(label(role)).or_default() += 1;
    }

    /// Counts a denial with its code.
    pub fn denied(&self, role: &str, code: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *g.denied.entry((label(role), code.to_string())).or_default() += 1;
    }

    /// Records one certificate request's handling time.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                g.latency_counts[i] += 1;
            }
        }
        g.latency_sum += s;
        g.latency_total += 1;
    }

    /// Prometheus text exposition.
    pub fn render(&self, ca_fingerprint: &str, policy_digest: &str, roles: usize) -> String {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP mayfly_certs_issued_total User certificates issued."
        );
        let _ = writeln!(o, "# TYPE mayfly_certs_issued_total counter");
        for (role, n) in &g.issued {
            let _ = writeln!(o, "mayfly_certs_issued_total{{role=\"{role}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP mayfly_certs_denied_total Certificate requests refused, by reason code."
        );
        let _ = writeln!(o, "# TYPE mayfly_certs_denied_total counter");
        for ((role, code), n) in &g.denied {
            let _ = writeln!(
                o,
                "mayfly_certs_denied_total{{role=\"{role}\",reason=\"{code}\"}} {n}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP mayfly_cert_request_duration_seconds Time to answer a certificate request."
        );
        let _ = writeln!(o, "# TYPE mayfly_cert_request_duration_seconds histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "mayfly_cert_request_duration_seconds_bucket{{le=\"{b}\"}} {}",
                g.latency_counts[i]
            );
        }
        let _ = writeln!(
            o,
            "mayfly_cert_request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            g.latency_total
        );
        let _ = writeln!(
            o,
            "mayfly_cert_request_duration_seconds_sum {}",
            g.latency_sum
        );
        let _ = writeln!(
            o,
            "mayfly_cert_request_duration_seconds_count {}",
            g.latency_total
        );
        let _ = writeln!(o, "# HELP mayfly_info CA key and policy version in force.");
        let _ = writeln!(o, "# TYPE mayfly_info gauge");
        let _ = writeln!(o, "mayfly_info{{user_ca=\"{ca_fingerprint}\",policy_digest=\"{policy_digest}\",roles=\"{roles}\"}} 1");
        o
    }
}
