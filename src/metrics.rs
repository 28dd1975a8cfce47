//! Prometheus metrics, rendered in the text exposition format (0.0.4).
//!
//! Counters and histograms live in memory and count from process start.
//! Gauges that describe durable state (audit records, live revocations,
//! disabled identities, CA key age) are read at scrape time from the data
//! directory, so they are right after a restart and include changes made by
//! other processes (`mayfly revoke`, `mayfly identity disable`). So are the
//! replica gauges: every replica's last heartbeat, as the store has it
//! (see [`crate::replica`]).

mod process;

use crate::auth::keystats::{IssuerKeyStats, JwksMetrics};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::replica::StatusReport;
use crate::store::reports::ScrapeGauges;
use crate::store::{ApprovalStore, KeyStore, ReplicaStore, ReportStore};
use crate::time::UnixSecs;

/// Upper bounds (seconds) of the request latency histogram buckets.
const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
];

/// Upper bounds (seconds) of the store commit latency histogram buckets:
/// an fsync ranges from sub-millisecond (NVMe) to seconds (a busy disk).
const STORE_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Renders the issuers' key-cache counters.
fn write_jwks(stats: &BTreeMap<String, IssuerKeyStats>, o: &mut String, now: SystemTime) {
    let g = stats;
    family(
        o,
        "mayfly_jwks_fetch_errors_total",
        "counter",
        "Failed fetches of an issuer's OIDC discovery document or JWKS, by issuer URL.",
    );
    // Counters appear for an issuer once they count something.
    for (issuer, s) in g.iter().filter(|(_, s)| s.fetch_errors > 0) {
        sample(
            o,
            "mayfly_jwks_fetch_errors_total",
            &[("issuer", issuer)],
            s.fetch_errors,
        );
    }
    family(
        o,
        "mayfly_jwks_key_age_seconds",
        "gauge",
        "Seconds since the issuer's signing keys were last fetched successfully (absent until the first fetch).",
    );
    for (issuer, s) in g.iter() {
        if let Some(at) = s.fetched_at {
            let age = now.duration_since(at).map(|d| d.as_secs()).unwrap_or(0);
            sample(o, "mayfly_jwks_key_age_seconds", &[("issuer", issuer)], age);
        }
    }
    family(
        o,
        "mayfly_jwks_last_success_timestamp_seconds",
        "gauge",
        "When the issuer's signing keys were last fetched successfully (unix seconds; absent until the first fetch).",
    );
    for (issuer, s) in g.iter() {
        if let Some(at) = s.fetched_at {
            let t = at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            sample(
                o,
                "mayfly_jwks_last_success_timestamp_seconds",
                &[("issuer", issuer)],
                t,
            );
        }
    }
    family(
        o,
        "mayfly_jwks_stale_refusals_total",
        "counter",
        "Tokens refused (503) because the issuer's keys were older than its max_stale_keys and could not be refreshed.",
    );
    for (issuer, s) in g.iter().filter(|(_, s)| s.stale_refusals > 0) {
        sample(
            o,
            "mayfly_jwks_stale_refusals_total",
            &[("issuer", issuer)],
            s.stale_refusals,
        );
    }
}

/// Why the server closed a connection before or between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyClose {
    /// No complete request head within `header_read_timeout` (a slow or
    /// idle client, or an idle keep-alive connection).
    HeaderTimeout,
    /// The TLS handshake did not finish in time.
    TlsHandshakeTimeout,
    /// The TLS handshake failed (bad client certificate, not TLS, ...).
    TlsHandshakeError,
    /// The client did not take the response for `request_timeout`.
    WriteStalled,
}

impl EarlyClose {
    const ALL: [EarlyClose; 4] = [
        EarlyClose::HeaderTimeout,
        EarlyClose::TlsHandshakeTimeout,
        EarlyClose::TlsHandshakeError,
        EarlyClose::WriteStalled,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            EarlyClose::HeaderTimeout => "header_timeout",
            EarlyClose::TlsHandshakeTimeout => "tls_handshake_timeout",
            EarlyClose::TlsHandshakeError => "tls_handshake_error",
            EarlyClose::WriteStalled => "write_stalled",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The listener's connection counters. The serve loop holds an `Arc` of
/// them (from [`Metrics::connections`]) and `/metrics` renders them.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: AtomicU64,
    accepted: AtomicU64,
    limit_reached: AtomicU64,
    closed_early: [AtomicU64; EarlyClose::ALL.len()],
}

impl ConnectionStats {
    /// Counts an accepted connection as open until the guard drops.
    pub fn open(self: &Arc<Self>) -> OpenConnection {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    /// Counts one time accepting paused because `max_connections` were open.
    pub fn limit_reached(&self) {
        self.limit_reached.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection the server closed for `why`.
    pub fn closed_early(&self, why: EarlyClose) {
        self.closed_early[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn open_now(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    fn write(&self, o: &mut String) {
        family(
            o,
            "mayfly_connections_open",
            "gauge",
            "Client connections open now, TLS handshakes included (at most max_connections).",
        );
        sample(o, "mayfly_connections_open", &[], self.open_now());
        family(
            o,
            "mayfly_connections_accepted_total",
            "counter",
            "Client connections accepted.",
        );
        let accepted = self.accepted.load(Ordering::Relaxed);
        sample(o, "mayfly_connections_accepted_total", &[], accepted);
        family(
            o,
            "mayfly_connections_limit_reached_total",
            "counter",
            "Times max_connections connections were open, so accepting paused and new clients \
             waited in the listen backlog.",
        );
        let reached = self.limit_reached.load(Ordering::Relaxed);
        sample(o, "mayfly_connections_limit_reached_total", &[], reached);
        family(
            o,
            "mayfly_connections_closed_early_total",
            "counter",
            "Connections the server closed: no complete request head within \
             header_read_timeout (idle keep-alive included), a TLS handshake that failed or \
             timed out, or a response the client did not read for request_timeout.",
        );
        for why in EarlyClose::ALL {
            let n = self.closed_early[why.index()].load(Ordering::Relaxed);
            sample(
                o,
                "mayfly_connections_closed_early_total",
                &[("reason", why.label())],
                n,
            );
        }
    }
}

/// An open connection, counted in [`ConnectionStats`] until dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<ConnectionStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A cumulative histogram with fixed buckets.
struct Histogram<const N: usize> {
    bounds: [f64; N],
    counts: [u64; N],
    sum: f64,
    total: u64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: [f64; N]) -> Self {
        Histogram {
            bounds,
            counts: [0; N],
            sum: 0.0,
            total: 0,
        }
    }

    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in self.bounds.iter().enumerate() {
            if s <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += s;
        self.total += 1;
    }

    fn write(&self, o: &mut String, name: &str, help: &str) {
        family(o, name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (b, n) in self.bounds.iter().zip(self.counts) {
            sample(o, &bucket, &[("le", &b.to_string())], n);
        }
        sample(o, &bucket, &[("le", "+Inf")], self.total);
        sample(o, &format!("{name}_sum"), &[], self.sum);
        sample(o, &format!("{name}_count"), &[], self.total);
    }
}

/// The KRL last built: its version and encoded size.
#[derive(Debug, Clone, Copy)]
struct KrlFacts {
    version: u64,
    bytes: u64,
    generated: u64,
}

struct Inner {
    krl: Option<KrlFacts>,
    issued: BTreeMap<String, u64>,
    denied: BTreeMap<(String, String), u64>,
    pending: BTreeMap<String, u64>,
    latency: Histogram<{ BUCKETS.len() }>,
    store: Histogram<{ STORE_BUCKETS.len() }>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            krl: None,
            issued: BTreeMap::new(),
            denied: BTreeMap::new(),
            pending: BTreeMap::new(),
            latency: Histogram::new(BUCKETS),
            store: Histogram::new(STORE_BUCKETS),
        }
    }
}

/// Process-wide metrics.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    data_dir: Option<PathBuf>,
    /// Where the CA keys are, for their age (without: the key files in
    /// `data_dir`).
    keys: Option<Arc<dyn KeyStore>>,
    /// Scrape-time gauges (the store serves them apart from the reports,
    /// and never builds an index for them).
    gauges: Option<Arc<dyn ReportStore>>,
    /// The replicas' heartbeats, read at scrape time.
    replicas: Option<Arc<dyn ReplicaStore>>,
    /// Approval requests, for the open-requests gauge.
    approvals: Option<Arc<dyn ApprovalStore>>,
    /// The audit streaming thread's counters and the log they trail.
    stream: Option<(
        Arc<crate::evidence::stream::StreamStats>,
        Arc<dyn crate::store::AuditLog>,
    )>,
    /// Report the process's own stats from /proc/self.
    process: bool,
    /// The hosts' sync reports, read at scrape time.
    hosts: Option<crate::store::hosts::Fleet>,
    /// Written by the issuers' key caches.
    jwks: Arc<JwksMetrics>,
    /// The listener's connection counters, shared with the serve loop.
    connections: Arc<ConnectionStats>,
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

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

/// Escapes HELP text: backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

fn sample(o: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    o.push_str(name);
    if !labels.is_empty() {
        o.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            let _ = write!(o, "{k}=\"{}\"", escape_label(v));
        }
        o.push('}');
    }
    let _ = writeln!(o, " {value}");
}

/// Seconds since `path` was last modified, if it exists.
fn file_age(path: &Path, now: SystemTime) -> Option<u64> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(now.duration_since(m).map(|d| d.as_secs()).unwrap_or(0))
}

impl Metrics {
    /// Metrics that also report the durable state under `data_dir`: audit
    /// records, live revocations and disabled entries (from the database),
    /// and the age of the CA key files.
    pub fn for_data_dir(data_dir: &Path, store: Arc<dyn ReportStore>) -> Metrics {
        Metrics {
            inner: Mutex::default(),
            data_dir: Some(data_dir.to_path_buf()),
            keys: None,
            gauges: Some(store),
            replicas: None,
            approvals: None,
            stream: None,
            process: false,
            hosts: None,
            jwks: Arc::default(),
            connections: Arc::default(),
        }
    }

    /// Reads the CA key ages from the store's keys (wherever it keeps
    /// them, also a database shared by replicas) instead of `data_dir`.
    pub fn with_keys(mut self, keys: Arc<dyn KeyStore>) -> Metrics {
        self.keys = Some(keys);
        self
    }

    /// Age in seconds of the active key of each CA, as of `unix`.
    async fn key_ages(&self, unix: u64, now: SystemTime) -> Option<Vec<(&'static str, u64)>> {
        let cas = [
            ("user", crate::config::files::USER_CA_KEY),
            ("host", crate::config::files::HOST_CA_KEY),
        ];
        let mut out = Vec::new();
        if let Some(keys) = &self.keys {
            for (ca, base) in cas {
                if let Ok(Ok(k)) = keys.ca_keys(base).await {
                    if let Some(t) = k.active.and_then(|a| a.created_at) {
                        out.push((ca, unix.saturating_sub(t)));
                    }
                }
            }
            return Some(out);
        }
        let dir = self.data_dir.as_ref()?;
        for (ca, file) in cas {
            if let Some(age) = file_age(&dir.join(file), now) {
                out.push((ca, age));
            }
        }
        Some(out)
    }

    /// Also reports every replica's last heartbeat and the policy drift
    /// between the live ones, read from `store` at scrape time.
    pub fn with_replicas(mut self, store: Arc<dyn ReplicaStore>) -> Metrics {
        self.replicas = Some(store);
        self
    }

    /// Also reports the approval requests still open (pending and not
    /// expired) per role, read from `store` at scrape time.
    pub fn with_approvals(mut self, store: Arc<dyn ApprovalStore>) -> Metrics {
        self.approvals = Some(store);
        self
    }

    /// Also reports the audit stream (sink errors, sink lag, signed
    /// checkpoint age), reading the head of `log` at scrape time.
    pub fn with_audit_stream(
        mut self,
        stats: Arc<crate::evidence::stream::StreamStats>,
        log: Arc<dyn crate::store::AuditLog>,
    ) -> Metrics {
        self.stream = Some((stats, log));
        self
    }

    /// Also reports this process's open fds, memory, CPU time and start
    /// time (the Prometheus process collector's `process_*` families).
    pub fn with_process_stats(mut self) -> Metrics {
        self.process = true;
        self
    }

    /// Records the KRL just built (served at `/v1/krl`).
    pub fn krl_built(&self, version: u64, bytes: usize, generated: u64) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.krl = Some(KrlFacts {
            version,
            bytes: bytes as u64,
            generated,
        });
    }

    /// Age in seconds of every stored CA key, by CA and slot (active,
    /// next, previous), as of `unix`.
    async fn key_slot_ages(&self, unix: u64) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        let Some(keys) = &self.keys else {
            return out;
        };
        for (ca, base) in [
            ("user", crate::config::files::USER_CA_KEY),
            ("host", crate::config::files::HOST_CA_KEY),
        ] {
            if let Ok(Ok(k)) = keys.ca_keys(base).await {
                for (slot, key) in [
                    ("active", &k.active),
                    ("next", &k.next),
                    ("previous", &k.previous),
                ] {
                    if let Some(t) = key.as_ref().and_then(|k| k.created_at) {
                        out.push((ca, slot, unix.saturating_sub(t)));
                    }
                }
            }
        }
        out
    }

    /// Open approval requests per role (pending, not expired at `unix`).
    async fn open_approvals(&self, unix: u64) -> Option<BTreeMap<String, u64>> {
        let store = self.approvals.as_ref()?;
        match store
            .list(Some(crate::approval::ApprovalStatus::Pending))
            .await
        {
            Ok(list) => {
                let mut out = BTreeMap::new();
                for r in list
                    .iter()
                    .filter(|r| r.status_at(unix) == crate::approval::ApprovalStatus::Pending)
                {
                    *out.entry(label(&r.role)).or_default() += 1;
                }
                Some(out)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the approval requests");
                None
            }
        }
    }

    /// Also reports the hosts of `fleet` that sync (total, lagging, stale),
    /// read at scrape time, and the expected hosts (the expected-hosts
    /// file, read at each scrape) that never reported.
    pub fn with_hosts(mut self, fleet: crate::store::hosts::Fleet) -> Metrics {
        self.hosts = Some(fleet);
        self
    }

    /// The handle through which the issuers' key caches report fetches,
    /// key age and stale-key refusals.
    pub fn jwks(&self) -> Arc<JwksMetrics> {
        self.jwks.clone()
    }

    /// The connection counters, for the serve loop to update.
    pub fn connections(&self) -> Arc<ConnectionStats> {
        self.connections.clone()
    }

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

    /// Counts a request answered "pending" (202): a new approval request
    /// or a bot polling one. Not a denial.
    pub fn pending(&self, role: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *g.pending.entry(label(role)).or_default() += 1;
    }

    /// Records one certificate request's handling time.
    pub fn observe(&self, d: Duration) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.latency.observe(d);
    }

    /// Records how long an issuance's audit record took to become durable
    /// (queueing for the group commit included).
    pub fn observe_store_commit(&self, d: Duration) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.store.observe(d);
    }

    /// Prometheus text exposition as of `now` (key ages, live revocations).
    pub async fn render_at(
        &self,
        ca_fingerprint: &str,
        policy_digest: &str,
        roles: usize,
        now: SystemTime,
    ) -> String {
        let unix = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Read durable state before taking the lock: the counters must not
        // wait for the database.
        let gauges: Option<Result<ScrapeGauges, String>> = match &self.gauges {
            Some(db) => Some(db.scrape_gauges(unix).await.map_err(|e| e.to_string())),
            None => None,
        };
        if let Some(Err(e)) = &gauges {
            tracing::warn!(error = %e, "metrics: cannot read the audit database");
        }
        let key_ages = self.key_ages(unix, now).await;
        let open_approvals = self.open_approvals(unix).await;
        let slot_ages = self.key_slot_ages(unix).await;
        let stream = match &self.stream {
            Some((stats, log)) => match log.head().await {
                Ok(h) => Some(
                    stats.render_prometheus()
                        + &stats
                            .render_lag(h.map_or(0, |(seq, _)| seq), crate::clock::unix_ms(now)),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: cannot read the audit log head");
                    Some(stats.render_prometheus())
                }
            },
            None => None,
        };
        let replicas: Option<Result<StatusReport, String>> = match &self.replicas {
            Some(db) => Some(
                db.replicas()
                    .await
                    .map(|rows| StatusReport::new(rows, UnixSecs(unix)))
                    .map_err(|e| e.to_string()),
            ),
            None => None,
        };
        if let Some(Err(e)) = &replicas {
            tracing::warn!(error = %e, "metrics: cannot read the replicas' heartbeats");
        }
        let hosts = match &self.hosts {
            Some(fleet) => {
                // Without its list the never-reported count is unknown, not
                // 0: the gauge is left out rather than reading "all fine".
                let expected = match fleet.expected() {
                    Ok(v) => Some(v),
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics: cannot read [hosts] expected_file");
                        None
                    }
                };
                match fleet
                    .view_with(unix, expected.as_deref().unwrap_or_default())
                    .await
                {
                    Ok(v) => Some((v, expected.is_some())),
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics: cannot read the hosts' sync reports");
                        None
                    }
                }
            }
            None => None,
        };
        let mut o = String::new();
        {
            let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            family(
                &mut o,
                "mayfly_certs_issued_total",
                "counter",
                "User certificates issued.",
            );
            for (role, n) in &g.issued {
                sample(&mut o, "mayfly_certs_issued_total", &[("role", role)], n);
            }
            family(
                &mut o,
                "mayfly_certs_denied_total",
                "counter",
                "Certificate requests refused, by reason code.",
            );
            for ((role, code), n) in &g.denied {
                sample(
                    &mut o,
                    "mayfly_certs_denied_total",
                    &[("role", role), ("reason", code)],
                    n,
                );
            }
            family(
                &mut o,
                "mayfly_certs_pending_total",
                "counter",
                "Certificate requests answered pending (202): a new approval request or a poll of one.",
            );
            for (role, n) in &g.pending {
                sample(&mut o, "mayfly_certs_pending_total", &[("role", role)], n);
            }
            if let Some(open) = &open_approvals {
                family(
                    &mut o,
                    "mayfly_approval_requests_open",
                    "gauge",
                    "Approval requests waiting for approvers now (pending, not expired), by role.",
                );
                for (role, n) in open {
                    sample(
                        &mut o,
                        "mayfly_approval_requests_open",
                        &[("role", role)],
                        n,
                    );
                }
            }
            if let Some(k) = g.krl {
                family(
                    &mut o,
                    "mayfly_krl_version",
                    "gauge",
                    "Version of the KRL served at /v1/krl (the store's revocation state version).",
                );
                sample(&mut o, "mayfly_krl_version", &[], k.version);
                family(
                    &mut o,
                    "mayfly_krl_size_bytes",
                    "gauge",
                    "Size of the encoded KRL served at /v1/krl.",
                );
                sample(&mut o, "mayfly_krl_size_bytes", &[], k.bytes);
                family(
                    &mut o,
                    "mayfly_krl_generated_timestamp_seconds",
                    "gauge",
                    "When the revocations in the served KRL last changed (unix seconds).",
                );
                sample(
                    &mut o,
                    "mayfly_krl_generated_timestamp_seconds",
                    &[],
                    k.generated,
                );
            }
            g.latency.write(
                &mut o,
                "mayfly_cert_request_duration_seconds",
                "Time to answer a certificate request.",
            );
            g.store.write(
                &mut o,
                "mayfly_store_commit_duration_seconds",
                "Time until an issuance's audit record was durable (group-commit wait and fsync).",
            );
        }
        self.connections.write(&mut o);
        family(
            &mut o,
            "mayfly_info",
            "gauge",
            "CA key and policy version in force.",
        );
        sample(
            &mut o,
            "mayfly_info",
            &[
                ("user_ca", ca_fingerprint),
                ("policy_digest", policy_digest),
                ("roles", &roles.to_string()),
            ],
            1,
        );
        family(
            &mut o,
            "mayfly_policy_info",
            "gauge",
            "Policy version in force: SHA-256 digest over the role files.",
        );
        sample(
            &mut o,
            "mayfly_policy_info",
            &[("digest", policy_digest)],
            1,
        );
        family(&mut o, "mayfly_policy_roles", "gauge", "Roles loaded.");
        sample(&mut o, "mayfly_policy_roles", &[], roles);
        write_jwks(&self.jwks.snapshot(), &mut o, now);
        if let Some(ages) = key_ages {
            family(
                &mut o,
                "mayfly_ca_key_age_seconds",
                "gauge",
                "Seconds since the active CA key was written (absent for PKCS#11 keys).",
            );
            for (ca, age) in ages {
                sample(&mut o, "mayfly_ca_key_age_seconds", &[("ca", ca)], age);
            }
        }
        if !slot_ages.is_empty() {
            family(
                &mut o,
                "mayfly_ca_key_slot_age_seconds",
                "gauge",
                "Seconds since each stored CA key was written, by CA and rotation slot (active, next, previous).",
            );
            for (ca, slot, age) in slot_ages {
                sample(
                    &mut o,
                    "mayfly_ca_key_slot_age_seconds",
                    &[("ca", ca), ("slot", slot)],
                    age,
                );
            }
        }
        if let Some(text) = stream {
            o.push_str(&text);
        }
        if self.process {
            crate::metrics::process::write(&mut o, now);
        }
        if let Some(gauges) = gauges {
            family(
                &mut o,
                "mayfly_store_up",
                "gauge",
                "1 if the audit database answered this scrape's queries.",
            );
            let replicas_ok = replicas.as_ref().is_none_or(|r| r.is_ok());
            sample(
                &mut o,
                "mayfly_store_up",
                &[],
                u8::from(gauges.is_ok() && replicas_ok),
            );
            if let Ok(gv) = gauges {
                family(
                    &mut o,
                    "mayfly_audit_records_total",
                    "counter",
                    "Audit records written (the length of the audit log; records are never deleted).",
                );
                sample(&mut o, "mayfly_audit_records_total", &[], gv.audit_records);
                family(
                    &mut o,
                    "mayfly_revocations_live",
                    "gauge",
                    "Revoked certificates that have not expired yet (entries in the KRL).",
                );
                sample(&mut o, "mayfly_revocations_live", &[], gv.live_revocations);
                family(
                    &mut o,
                    "mayfly_disabled",
                    "gauge",
                    "Deactivations in force: identity (every role), identity_role, or role.",
                );
                for (scope, n) in [
                    ("identity", gv.disabled_identities),
                    ("identity_role", gv.disabled_identity_roles),
                    ("role", gv.disabled_roles),
                ] {
                    sample(&mut o, "mayfly_disabled", &[("scope", scope)], n);
                }
            }
        }
        if let Some(Ok(report)) = &replicas {
            write_replicas(report, &mut o);
        }
        if let Some((v, expected_known)) = &hosts {
            write_hosts(v, *expected_known, &mut o);
        }
        o
    }
}

/// Renders the host gauges (`mayfly hosts` in numbers); the never-reported
/// gauge only when the expected-hosts list could be read.
fn write_hosts(v: &crate::fleet::FleetView, expected_known: bool, o: &mut String) {
    for (name, help, n) in [
        (
            "mayfly_hosts",
            "Hosts that reported after `mayfly host sync`.",
            v.total,
        ),
        (
            "mayfly_hosts_lagging",
            "Reporting hosts whose installed KRL is older than the CA's.",
            v.lagging,
        ),
        (
            "mayfly_hosts_stale",
            "Hosts without a report for [hosts] stale_intervals sync intervals.",
            v.stale,
        ),
    ] {
        family(o, name, "gauge", help);
        sample(o, name, &[], n);
    }
    if expected_known {
        let name = "mayfly_hosts_never_reported";
        family(
            o,
            name,
            "gauge",
            "Hosts listed in [hosts] expected_file that never reported (0 without a list).",
        );
        sample(o, name, &[], v.never_reported);
    }
}

/// Renders the replica gauges: one info and one age sample per replica
/// the store knows, whether it is live, and the drift between live ones.
fn write_replicas(r: &StatusReport, o: &mut String) {
    family(
        o,
        "mayfly_replica_info",
        "gauge",
        "A replica of this CA as its last heartbeat describes it: mayfly version, policy digest          and git commit of its policy directory (empty when not a git checkout).",
    );
    for s in &r.replicas {
        let b = &s.beat;
        sample(
            o,
            "mayfly_replica_info",
            &[
                ("replica", b.replica.as_str()),
                ("version", &b.version),
                ("policy_digest", &b.policy_digest),
                ("git_commit", b.git_commit.as_deref().unwrap_or("")),
            ],
            1,
        );
    }
    family(
        o,
        "mayfly_replica_last_seen_age_seconds",
        "gauge",
        "Seconds since the replica's last heartbeat.",
    );
    for s in &r.replicas {
        let id = s.beat.replica.as_str();
        sample(
            o,
            "mayfly_replica_last_seen_age_seconds",
            &[("replica", id)],
            s.age_secs,
        );
    }
    family(
        o,
        "mayfly_replica_live",
        "gauge",
        "1 if the replica sent a heartbeat within 3 of its heartbeat intervals, else 0 (stale).",
    );
    for s in &r.replicas {
        let id = s.beat.replica.as_str();
        sample(
            o,
            "mayfly_replica_live",
            &[("replica", id)],
            u8::from(s.live),
        );
    }
    family(
        o,
        "mayfly_policy_drift",
        "gauge",
        "Distinct policy digests among the live replicas minus one: 0 when every live replica          enforces the same policy (or none is live).",
    );
    sample(o, "mayfly_policy_drift", &[], r.drift_gauge());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut o = String::new();
        sample(&mut o, "m", &[("x", "q\"\n"), ("y", "z")], 2);
        assert_eq!(o, "m{x=\"q\\\"\\n\",y=\"z\"} 2\n");
    }

    #[tokio::test]
    async fn histograms_are_cumulative_and_end_with_inf() {
        let m = Metrics::default();
        m.observe_store_commit(Duration::from_micros(300));
        m.observe_store_commit(Duration::from_millis(30));
        m.observe_store_commit(Duration::from_secs(5));
        let out = m.render_at("SHA256:x", "d\"igest", 1, UNIX_EPOCH).await;
        assert!(out.contains("mayfly_store_commit_duration_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(out.contains("mayfly_store_commit_duration_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(out.contains("mayfly_store_commit_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("mayfly_store_commit_duration_seconds_count 3\n"));
        assert!(out.contains("mayfly_policy_info{digest=\"d\\\"igest\"} 1\n"));
        // Without a data directory there are no store-backed gauges.
        assert!(!out.contains("mayfly_store_up"));
        // Every sample belongs to a family announced with HELP and TYPE.
        let mut typed = std::collections::HashSet::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| typed.contains(*b)))
                    .unwrap_or(name);
                assert!(typed.contains(base), "{line}");
            }
        }
    }

    #[tokio::test]
    async fn connection_counters_are_rendered_and_the_gauge_follows_guards() {
        let m = Metrics::default();
        let stats = m.connections();
        let a = stats.open();
        let b = stats.open();
        stats.limit_reached();
        stats.closed_early(EarlyClose::HeaderTimeout);
        stats.closed_early(EarlyClose::HeaderTimeout);
        stats.closed_early(EarlyClose::TlsHandshakeError);
        drop(a);
        let out = m.render_at("f", "d", 0, UNIX_EPOCH).await;
        assert!(out.contains("mayfly_connections_open 1\n"), "{out}");
        assert!(
            out.contains("mayfly_connections_accepted_total 2\n"),
            "{out}"
        );
        assert!(
            out.contains("mayfly_connections_limit_reached_total 1\n"),
            "{out}"
        );
        assert!(
            out.contains("mayfly_connections_closed_early_total{reason=\"header_timeout\"} 2\n"),
            "{out}"
        );
        assert!(out
            .contains("mayfly_connections_closed_early_total{reason=\"tls_handshake_error\"} 1\n"));
        assert!(out.contains(
            "mayfly_connections_closed_early_total{reason=\"tls_handshake_timeout\"} 0\n"
        ));
        drop(b);
        assert_eq!(stats.open_now(), 0);
    }

    #[tokio::test]
    async fn jwks_errors_key_age_and_stale_refusals_are_reported_per_issuer() {
        let m = Metrics::default();
        let j = m.jwks();
        j.fetch_failed("https://issuer.test/a");
        j.fetch_failed("https://issuer.test/a");
        j.fetched(
            "https://issuer.test/a",
            UNIX_EPOCH + Duration::from_secs(100),
        );
        j.stale_refused("https://issuer.test/a");
        j.fetch_failed("https://issuer.test/b");
        let out = m
            .render_at("f", "d", 0, UNIX_EPOCH + Duration::from_secs(160))
            .await;
        assert!(
            out.contains("mayfly_jwks_fetch_errors_total{issuer=\"https://issuer.test/a\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("mayfly_jwks_key_age_seconds{issuer=\"https://issuer.test/a\"} 60\n"));
        assert!(
            out.contains("mayfly_jwks_stale_refusals_total{issuer=\"https://issuer.test/a\"} 1\n")
        );
        // Never fetched: no age rather than a made-up one; nothing refused.
        assert!(!out.contains("mayfly_jwks_stale_refusals_total{issuer=\"https://issuer.test/b\"}"));
        assert!(!out.contains("mayfly_jwks_key_age_seconds{issuer=\"https://issuer.test/b\"}"));
        // Another registry shares nothing: no process-wide state.
        let other = Metrics::default().render_at("f", "d", 0, UNIX_EPOCH).await;
        assert!(!other.contains("issuer.test"));
    }

    #[tokio::test]
    async fn data_dir_gauges_read_the_database_and_key_files() {
        let d = tempfile::tempdir().unwrap();
        let store = crate::store::open(&crate::store::StoreConfig {
            backend: crate::config::StoreBackend::SQLite,
            sqlite_path: d.path().join(crate::store::SQLITE_FILE),
            busy_timeout: Duration::from_millis(100),
            mode: crate::store::OpenMode::Create,
            postgres: None,
        })
        .unwrap();
        std::fs::write(d.path().join(crate::config::files::USER_CA_KEY), "k").unwrap();
        let m = Metrics::for_data_dir(d.path(), store.reports_shared());
        let out = m
            .render_at("f", "d", 0, SystemTime::now() + Duration::from_secs(100))
            .await;
        assert!(out.contains("mayfly_store_up 1\n"), "{out}");
        assert!(out.contains("mayfly_audit_records_total 0\n"));
        assert!(out.contains("mayfly_disabled{scope=\"role\"} 0\n"));
        let age = out
            .lines()
            .find_map(|l| l.strip_prefix("mayfly_ca_key_age_seconds{ca=\"user\"} "))
            .unwrap();
        assert!((99..=200).contains(&age.parse::<u64>().unwrap()), "{age}");
        assert!(!out.contains("ca=\"host\""));
    }

    #[tokio::test]
    async fn ca_key_ages_come_from_the_store_when_it_is_given() {
        let d = tempfile::tempdir().unwrap();
        let store = crate::store::open(&crate::store::StoreConfig {
            backend: crate::config::StoreBackend::SQLite,
            sqlite_path: d.path().join(crate::store::SQLITE_FILE),
            busy_timeout: Duration::from_millis(100),
            mode: crate::store::OpenMode::Create,
            postgres: None,
        })
        .unwrap();
        store
            .keys()
            .create_active_if_absent(
                crate::config::files::HOST_CA_KEY,
                crate::ca::NewKey::generate(None).unwrap(),
            )
            .await
            .unwrap()
            .unwrap();
        // No data_dir: the age can only come from the store's keys.
        let m = Metrics::default().with_keys(store.keys_shared());
        let out = m
            .render_at("f", "d", 0, SystemTime::now() + Duration::from_secs(100))
            .await;
        let age = out
            .lines()
            .find_map(|l| l.strip_prefix("mayfly_ca_key_age_seconds{ca=\"host\"} "))
            .unwrap_or_else(|| panic!("{out}"));
        assert!((99..=200).contains(&age.parse::<u64>().unwrap()), "{age}");
        assert!(!out.contains("ca=\"user\""), "{out}");
    }

    #[tokio::test]
    async fn replica_gauges_show_every_replica_and_the_drift_between_live_ones() {
        use crate::replica::{Heartbeat, ReplicaId};
        let d = tempfile::tempdir().unwrap();
        let store = crate::store::open(&crate::store::StoreConfig {
            backend: crate::config::StoreBackend::SQLite,
            sqlite_path: d.path().join(crate::store::SQLITE_FILE),
            busy_timeout: Duration::from_millis(100),
            mode: crate::store::OpenMode::Create,
            postgres: None,
        })
        .unwrap();
        let beat = |id: &str, digest: &str, last_seen: u64| Heartbeat {
            replica: ReplicaId::parse(id).unwrap(),
            version: "1.2.3".into(),
            policy_digest: digest.into(),
            git_commit: (id == "a").then(|| "c0ffee".to_string()),
            listen: "127.0.0.1:1".into(),
            started_at: UnixSecs(1),
            last_seen: UnixSecs(last_seen),
            interval_secs: 10,
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let m = Metrics::for_data_dir(d.path(), store.reports_shared())
            .with_replicas(store.replicas_shared());
        for b in [
            beat("a", "d1", 995),
            beat("b", "d1", 990),
            beat("c", "d2", 900),
        ] {
            store.replicas().heartbeat(b).await.unwrap();
        }
        let out = m.render_at("f", "d", 0, now).await;
        for want in [
            "mayfly_replica_info{replica=\"a\",version=\"1.2.3\",policy_digest=\"d1\",git_commit=\"c0ffee\"} 1\n",
            "mayfly_replica_info{replica=\"c\",version=\"1.2.3\",policy_digest=\"d2\",git_commit=\"\"} 1\n",
            "mayfly_replica_last_seen_age_seconds{replica=\"b\"} 10\n",
            "mayfly_replica_live{replica=\"b\"} 1\n",
            "mayfly_replica_live{replica=\"c\"} 0\n",
            "mayfly_policy_drift 0\n",
            "mayfly_store_up 1\n",
        ] {
            assert!(out.contains(want), "{want}{out}");
        }
        // c comes back on its other policy: two digests among live replicas.
        store
            .replicas()
            .heartbeat(beat("c", "d2", 999))
            .await
            .unwrap();
        let out = m.render_at("f", "d", 0, now).await;
        assert!(out.contains("mayfly_policy_drift 1\n"), "{out}");
        // Without a replica store (tests, bench): no replica families.
        let plain = Metrics::for_data_dir(d.path(), store.reports_shared());
        assert!(!plain
            .render_at("f", "d", 0, now)
            .await
            .contains("mayfly_replica"));
    }
}
