//! `/metrics` of a real `mayfly serve` after real issuances, refusals, a
//! revocation and a deactivation, read the way Prometheus reads it: parsed
//! by a Prometheus text-format parser (`prometheus-parse`) and checked
//! line by line against the exposition grammar.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Command, Stdio};

use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;
use support::{free_port, http, keygen_ed25519, ClientSpec, Mayfly, Oidc};

const DEPLOY_POLICY: &str = r#"
description = "Deploy acme services from CI"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
[claims]
repository = "acme/*"
"#;

fn labels_of(s: &Sample) -> BTreeMap<String, String> {
    s.labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The value of the one sample of `metric` whose labels include `want`.
fn value(scrape: &Scrape, metric: &str, want: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| want.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{metric}{want:?}: {} samples: {:?}",
        found.len(),
        found
    );
    match &found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{metric} is not a scalar: {other:?}"),
    }
}

/// The cumulative bucket counts of a histogram, with `+Inf` last.
fn histogram(scrape: &Scrape, metric: &str) -> Vec<(f64, f64)> {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric)
        .unwrap_or_else(|| panic!("no histogram {metric}"));
    match &s.value {
        Value::Histogram(h) => h.iter().map(|b| (b.less_than, b.count)).collect(),
        other => panic!("{metric} is not a histogram: {other:?}"),
    }
}

/// Splits `name{a="b",c="d"} value` by the exposition grammar, handling
/// escapes in label values; panics on anything malformed.
fn parse_sample_line(line: &str) -> (String, Vec<(String, String)>, String) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = &line[..name_end];
    assert!(
        !name.is_empty()
            && name
                .chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic()
                    || c == '_'
                    || c == ':'
                    || (i > 0 && c.is_ascii_digit())),
        "bad metric name: {line}"
    );
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        loop {
            let start = chars.peek().map(|(i, _)| *i).expect("label");
            let mut key_end = start;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    key_end = i;
                    break;
                }
                assert!(
                    c.is_ascii_alphanumeric() || c == '_',
                    "bad label name: {line}"
                );
            }
            let key = r[start..key_end].to_string();
            assert_eq!(
                chars.next().map(|(_, c)| c),
                Some('"'),
                "unquoted value: {line}"
            );
            let mut val = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => val.push('\\'),
                        Some('"') => val.push('"'),
                        Some('n') => val.push('\n'),
                        other => panic!("bad escape {other:?}: {line}"),
                    },
                    Some('"') => break,
                    Some('\n') | None => panic!("unterminated value: {line}"),
                    Some(c) => val.push(c),
                }
            }
            labels.push((key, val));
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => {
                    rest = &r[i + 1..];
                    break;
                }
                other => panic!("expected , or }} got {other:?}: {line}"),
            }
        }
    }
    let v = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before value: {line}"));
    assert!(
        v == "+Inf" || v == "-Inf" || v == "NaN" || v.parse::<f64>().is_ok(),
        "bad value: {line}"
    );
    (name.to_string(), labels, v.to_string())
}

/// The text format rules Prometheus relies on: HELP and TYPE once per
/// family, before its samples; samples belong to a declared family; no
/// duplicate series; histogram buckets cumulative and ending in `+Inf`
/// equal to `_count`.
fn check_exposition(text: &str) {
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    let mut help = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut series = HashSet::new();
    let mut buckets: HashMap<String, Vec<(String, f64)>> = HashMap::new();
    let mut counts: HashMap<String, f64> = HashMap::new();
    for line in text.lines() {
        if let Some(r) = line.strip_prefix("# HELP ") {
            let name = r.split(' ').next().expect("name");
            assert!(help.insert(name.to_string()), "HELP twice: {name}");
            assert!(!types.contains_key(name), "HELP after TYPE/samples: {name}");
            continue;
        }
        if let Some(r) = line.strip_prefix("# TYPE ") {
            let mut it = r.split(' ');
            let (name, kind) = (it.next().expect("name"), it.next().expect("type"));
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(help.contains(name), "TYPE without HELP: {name}");
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "TYPE twice: {name}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line: {line:?}"
        );
        let (name, labels, v) = parse_sample_line(line);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&name)
            .to_string();
        let kind = types
            .get(&family)
            .unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter without _total: {name}");
        }
        assert!(
            series.insert(line.rsplit_once(' ').expect("value").0.to_string()),
            "duplicate series: {line}"
        );
        if name.ends_with("_bucket") {
            let le = labels
                .iter()
                .find(|(k, _)| k == "le")
                .map(|(_, v)| v.clone())
                .expect("le");
            buckets
                .entry(family.clone())
                .or_default()
                .push((le, v.parse().expect("count")));
        } else if name.ends_with("_count") && kind == "histogram" {
            counts.insert(family.clone(), v.parse().expect("count"));
        }
    }
    for (family, b) in &buckets {
        let last = b.last().expect("buckets");
        assert_eq!(last.0, "+Inf", "{family} must end with +Inf");
        assert!(
            b.windows(2).all(|w| w[0].1 <= w[1].1),
            "{family} not cumulative: {b:?}"
        );
        assert_eq!(Some(&last.1), counts.get(family), "{family} +Inf != _count");
    }
}

#[test]
fn metrics_after_real_traffic_parse_and_show_every_series() {
    let oidc = Oidc::start(&[
        ClientSpec::new("deploy-rs", "RS256").claims(json!({"repository": "acme/api"})),
        ClientSpec::new("intruder", "RS256").claims(json!({"repository": "evil/x"})),
    ]);
    // A second issuer whose discovery cannot be fetched (nothing listens
    // there): its key fetches fail and must be counted.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let extra = format!(
        "{}\n[[issuer]]\nname = \"down\"\nurl = \"{dead}\"\naudience = \"mayfly\"\n",
        oidc.issuer_toml("ci")
    );
    let ca = Mayfly::start(&extra, &[("deploy", DEPLOY_POLICY)]);
    let dir = support::temp_dir("metrics");
    let cert = |client: &str, role: &str| {
        let (_, public) = keygen_ed25519(dir.path());
        let auth = format!("Bearer {}", oidc.token(client));
        http::post_json(
            &format!("{}/v1/certs/user", ca.url()),
            &[("Authorization", auth.as_str())],
            &json!({"role": role, "public_key": public}),
        )
        .expect("POST")
    };
    let first = cert("deploy-rs", "deploy");
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(cert("deploy-rs", "deploy").status, 200);
    assert_eq!(cert("intruder", "deploy").json()["error"], "claim_mismatch");
    assert_eq!(cert("deploy-rs", "nope").json()["error"], "unknown_role");

    // An operator revokes one certificate and disables one identity.
    let cfg = ca.config_path().to_str().expect("utf8").to_string();
    let serial = first.json()["serial"].as_u64().expect("serial").to_string();
    for args in [
        vec![
            "revoke",
            "--serial",
            serial.as_str(),
            "--config",
            cfg.as_str(),
        ],
        vec![
            "identity",
            "disable",
            "--issuer",
            "ci",
            "--subject",
            "intruder",
            "--config",
            cfg.as_str(),
        ],
    ] {
        let out = Command::new(Mayfly::bin())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run mayfly");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let r = http::get(&format!("{}/metrics", ca.url())).expect("GET /metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain") && c.contains("version=0.0.4")),
        "{:?}",
        r.header("content-type")
    );
    let text = r.text();
    check_exposition(&text);
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");

    // Counters from process start.
    assert_eq!(
        value(&scrape, "mayfly_certs_issued_total", &[("role", "deploy")]),
        2.0
    );
    assert_eq!(
        value(
            &scrape,
            "mayfly_certs_denied_total",
            &[("role", "deploy"), ("reason", "claim_mismatch")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "mayfly_certs_denied_total",
            &[("role", "_unknown"), ("reason", "unknown_role")]
        ),
        1.0
    );
    // A role that does not exist is never a label of its own: anyone can
    // send random role names, and each would be a new series.
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.labels.get("role") == Some("nope")),
        "an unknown role became a label"
    );
    let req = histogram(&scrape, "mayfly_cert_request_duration_seconds");
    assert_eq!(req.last().expect("+Inf"), &(f64::INFINITY, 4.0));
    assert_eq!(
        value(&scrape, "mayfly_cert_request_duration_seconds_count", &[]),
        4.0
    );
    // Two issuances waited for their audit commit.
    let store = histogram(&scrape, "mayfly_store_commit_duration_seconds");
    assert_eq!(store.last().expect("+Inf"), &(f64::INFINITY, 2.0));
    assert!(value(&scrape, "mayfly_store_commit_duration_seconds_sum", &[]) > 0.0);

    // Durable state read at scrape time.
    let records = ca.audit(&[]).len();
    assert!(
        records >= 6,
        "2 issued, 2 refused, 1 revoked, 1 disabled: {records}"
    );
    assert_eq!(
        value(&scrape, "mayfly_audit_records_total", &[]),
        records as f64
    );
    assert_eq!(value(&scrape, "mayfly_store_up", &[]), 1.0);
    assert_eq!(value(&scrape, "mayfly_revocations_live", &[]), 1.0);
    assert_eq!(
        value(&scrape, "mayfly_disabled", &[("scope", "identity")]),
        1.0
    );
    assert_eq!(value(&scrape, "mayfly_disabled", &[("scope", "role")]), 0.0);
    assert_eq!(
        value(&scrape, "mayfly_disabled", &[("scope", "identity_role")]),
        0.0
    );
    for ca_kind in ["user", "host"] {
        let age = value(&scrape, "mayfly_ca_key_age_seconds", &[("ca", ca_kind)]);
        assert!((0.0..600.0).contains(&age), "{ca_kind} key age {age}");
    }

    // The policy version: the digest label agrees with mayfly_info's.
    let info = scrape
        .samples
        .iter()
        .find(|s| s.metric == "mayfly_info")
        .expect("mayfly_info");
    let digest = labels_of(info)["policy_digest"].clone();
    assert_eq!(digest.len(), 64, "{digest}");
    assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        value(&scrape, "mayfly_policy_info", &[("digest", &digest)]),
        1.0
    );
    assert_eq!(value(&scrape, "mayfly_policy_roles", &[]), 1.0);
    assert!(labels_of(info)["user_ca"].starts_with("SHA256:"));

    // The unreachable issuer's failed key fetches, and none for the good one.
    let errors = value(
        &scrape,
        "mayfly_jwks_fetch_errors_total",
        &[("issuer", &dead)],
    );
    assert!(errors >= 1.0, "{errors}");
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.metric == "mayfly_jwks_fetch_errors_total"
                && s.labels.get("issuer") == Some(oidc.issuer.as_str())),
        "the reachable issuer has no fetch errors"
    );
    // Every family has its HELP text.
    for name in [
        "mayfly_jwks_fetch_errors_total",
        "mayfly_store_commit_duration_seconds",
        "mayfly_audit_records_total",
        "mayfly_policy_info",
        "mayfly_ca_key_age_seconds",
        "mayfly_revocations_live",
        "mayfly_disabled",
    ] {
        assert!(scrape.docs.contains_key(name), "no HELP for {name}");
    }
}

/// One scrape of `ca`'s `/metrics`, checked against the exposition rules
/// and parsed as Prometheus parses it.
fn scrape(ca: &Mayfly) -> Scrape {
    let text = http::get(&format!("{}/metrics", ca.url()))
        .expect("GET /metrics")
        .text();
    check_exposition(&text);
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

#[test]
fn replica_gauges_show_each_replica_and_policy_drift_between_live_ones() {
    // An hour between heartbeats: the rows change only when the test writes.
    let ca = Mayfly::start(
        "heartbeat_interval = \"1h\"\n",
        &[("deploy", DEPLOY_POLICY)],
    );
    let id = std::fs::read_to_string(ca.data_dir().join("replica_id"))
        .expect("replica_id")
        .trim()
        .to_string();
    let s = scrape(&ca);
    let info = s
        .samples
        .iter()
        .find(|x| x.metric == "mayfly_info")
        .expect("mayfly_info");
    let digest = labels_of(info)["policy_digest"].clone();
    assert_eq!(
        value(
            &s,
            "mayfly_replica_info",
            &[
                ("replica", &id),
                ("version", env!("CARGO_PKG_VERSION")),
                ("policy_digest", &digest),
                ("git_commit", ""),
            ]
        ),
        1.0
    );
    let age = value(
        &s,
        "mayfly_replica_last_seen_age_seconds",
        &[("replica", &id)],
    );
    assert!((0.0..60.0).contains(&age), "{age}");
    assert_eq!(value(&s, "mayfly_replica_live", &[("replica", &id)]), 1.0);
    assert_eq!(value(&s, "mayfly_policy_drift", &[]), 0.0);
    for name in [
        "mayfly_replica_info",
        "mayfly_replica_last_seen_age_seconds",
        "mayfly_replica_live",
        "mayfly_policy_drift",
    ] {
        assert!(s.docs.contains_key(name), "no HELP for {name}");
    }

    // A second replica of the same database on another policy (its row
    // written through the store API, as its own heartbeat would).
    let beat = |age: u64| mayfly::replica::Heartbeat {
        replica: mayfly::replica::ReplicaId::parse("ca-eu-2").expect("id"),
        version: "0.0.9".into(),
        policy_digest: "f".repeat(64),
        git_commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        listen: "10.0.0.2:8400".into(),
        started_at: mayfly::time::UnixSecs(support::now() - 100),
        last_seen: mayfly::time::UnixSecs(support::now() - age),
        interval_secs: 10,
    };
    ca.write_heartbeat(beat(3));
    let s = scrape(&ca);
    assert_eq!(value(&s, "mayfly_policy_drift", &[]), 1.0);
    assert_eq!(
        value(
            &s,
            "mayfly_replica_info",
            &[
                ("replica", "ca-eu-2"),
                ("version", "0.0.9"),
                ("policy_digest", &"f".repeat(64)),
                ("git_commit", "0123456789abcdef0123456789abcdef01234567"),
            ]
        ),
        1.0
    );
    assert_eq!(
        value(&s, "mayfly_replica_live", &[("replica", "ca-eu-2")]),
        1.0
    );

    // Gone quiet: stale, and a stale replica is no drift.
    ca.write_heartbeat(beat(45));
    let s = scrape(&ca);
    assert_eq!(
        value(&s, "mayfly_replica_live", &[("replica", "ca-eu-2")]),
        0.0
    );
    let age = value(
        &s,
        "mayfly_replica_last_seen_age_seconds",
        &[("replica", "ca-eu-2")],
    );
    assert!((45.0..100.0).contains(&age), "{age}");
    assert_eq!(value(&s, "mayfly_policy_drift", &[]), 0.0);
    assert_eq!(value(&s, "mayfly_store_up", &[]), 1.0);
}

/// Metric families `/metrics` may export that a single test server does
/// not show (they need replicas, a fleet, an approval role or a failing
/// sink). The Grafana dashboard and the alert rules may use these too.
pub const KNOWN_METRICS: &[&str] = &[
    "mayfly_replica_info",
    "mayfly_replica_last_seen_age_seconds",
    "mayfly_replica_live",
    "mayfly_policy_drift",
    "mayfly_certs_pending_total",
    "mayfly_approval_requests_open",
    "mayfly_jwks_stale_refusals_total",
    "mayfly_jwks_fetch_errors_total",
    "mayfly_audit_sink_lag_records",
    // Absent until the first checkpoint is signed.
    "mayfly_audit_checkpoint_age_seconds",
    "mayfly_audit_last_checkpoint_timestamp_seconds",
    "mayfly_certs_denied_total",
    // Host reports (issue 13, part 1).
    "mayfly_hosts_lagging",
    // The process collector's metrics, and Prometheus' own.
    "process_max_fds",
    "up",
];

#[test]
fn operational_gauges_cover_krl_jwks_audit_keys_and_the_process() {
    let oidc = Oidc::start(&[
        ClientSpec::new("deploy-rs", "RS256").claims(json!({"repository": "acme/api"}))
    ]);
    let dir = support::temp_dir("metrics-ops");
    let jsonl = dir.path().join("audit.jsonl");
    let extra = format!(
        "{}\n[audit]\njsonl_file = \"{}\"\ncheckpoint_every = 1\n",
        oidc.issuer_toml("ci"),
        jsonl.display()
    );
    let ca = Mayfly::start(&extra, &[("deploy", DEPLOY_POLICY)]);
    let (_, public) = keygen_ed25519(dir.path());
    let auth = format!("Bearer {}", oidc.token("deploy-rs"));
    let r = http::post_json(
        &format!("{}/v1/certs/user", ca.url()),
        &[("Authorization", auth.as_str())],
        &json!({"role": "deploy", "public_key": public}),
    )
    .expect("POST");
    assert_eq!(r.status, 200, "{}", r.text());
    let serial = r.json()["serial"].as_u64().expect("serial").to_string();
    let cfg = ca.config_path().to_str().expect("utf8").to_string();
    let out = Command::new(Mayfly::bin())
        .args(["revoke", "--serial", &serial, "--config", &cfg])
        .stdin(Stdio::null())
        .output()
        .expect("revoke");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs_f64();

    // The stream catches up and signs a checkpoint of every record.
    let scrape = support::wait_for(
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(200),
        || {
            let s = scrape(&ca);
            let caught_up = value(&s, "mayfly_audit_sink_lag_records", &[]) == 0.0
                && value(&s, "mayfly_audit_unsigned_records", &[]) == 0.0;
            caught_up.then_some(s)
        },
    )
    .expect("the audit stream did not catch up");
    let krl = http::get(&format!("{}/v1/krl", ca.url())).expect("krl");
    assert_eq!(
        value(&scrape, "mayfly_krl_size_bytes", &[]),
        krl.body.len() as f64
    );
    assert!(value(&scrape, "mayfly_krl_version", &[]) >= 1.0);
    let fetched = value(
        &scrape,
        "mayfly_jwks_last_success_timestamp_seconds",
        &[("issuer", oidc.issuer.as_str())],
    );
    assert!(
        (now - 600.0..=now + 5.0).contains(&fetched),
        "{fetched} vs {now}"
    );
    assert_eq!(
        value(
            &scrape,
            "mayfly_audit_sink_errors_total",
            &[("sink", "jsonl_file")]
        ),
        0.0
    );
    assert!(value(&scrape, "mayfly_audit_checkpoints_total", &[]) >= 1.0);
    let cp_age = value(&scrape, "mayfly_audit_checkpoint_age_seconds", &[]);
    assert!((0.0..600.0).contains(&cp_age), "{cp_age}");
    let cp_at = value(
        &scrape,
        "mayfly_audit_last_checkpoint_timestamp_seconds",
        &[],
    );
    assert!((now - 600.0..=now + 5.0).contains(&cp_at), "{cp_at}");
    for ca_kind in ["user", "host"] {
        let age = value(
            &scrape,
            "mayfly_ca_key_slot_age_seconds",
            &[("ca", ca_kind), ("slot", "active")],
        );
        assert!((0.0..600.0).contains(&age), "{ca_kind} {age}");
    }
    // The process collector's families, for this server process.
    assert!(value(&scrape, "process_open_fds", &[]) >= 3.0);
    assert!(value(&scrape, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&scrape, "process_cpu_seconds_total", &[]) > 0.0);
    let start = value(&scrape, "process_start_time_seconds", &[]);
    assert!(
        (now - 600.0..=now + 5.0).contains(&start),
        "{start} vs {now}"
    );
    for name in [
        "mayfly_krl_version",
        "mayfly_jwks_last_success_timestamp_seconds",
        "mayfly_audit_checkpoint_age_seconds",
        "mayfly_ca_key_slot_age_seconds",
        "process_open_fds",
    ] {
        assert!(scrape.docs.contains_key(name), "no HELP for {name}");
    }
}

/// The metric names a PromQL expression uses (mayfly's and the process
/// collector's), with histogram suffixes taken off.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if word.starts_with("mayfly_") || word.starts_with("process_") {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .unwrap_or(&word);
            out.push(base.to_string());
        }
        word.clear();
    }
    out
}

#[test]
fn dashboard_and_alert_rules_query_only_metrics_mayfly_exports() {
    let oidc = Oidc::start(&[
        ClientSpec::new("deploy-rs", "RS256").claims(json!({"repository": "acme/api"}))
    ]);
    let ca = Mayfly::start(&oidc.issuer_toml("ci"), &[("deploy", DEPLOY_POLICY)]);
    let dir = support::temp_dir("metrics-dash");
    let (_, public) = keygen_ed25519(dir.path());
    let auth = format!("Bearer {}", oidc.token("deploy-rs"));
    let r = http::post_json(
        &format!("{}/v1/certs/user", ca.url()),
        &[("Authorization", auth.as_str())],
        &json!({"role": "deploy", "public_key": public}),
    )
    .expect("POST");
    assert_eq!(r.status, 200, "{}", r.text());
    let s = scrape(&ca);
    let mut exported: HashSet<String> = s.docs.keys().cloned().collect();
    exported.extend(KNOWN_METRICS.iter().map(|m| m.to_string()));

    let root = support::repo_root();
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("examples/grafana/mayfly-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("the dashboard is valid JSON");
    let mut exprs = Vec::new();
    let mut ids = HashSet::new();
    for p in dash["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate panel id {p}"
        );
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    let rules =
        std::fs::read_to_string(root.join("examples/prometheus/alerts.yml")).expect("alerts.yml");
    exprs.extend(
        rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr:"))
            .map(str::to_string),
    );
    let mut used = HashSet::new();
    for e in &exprs {
        for m in metrics_in(e) {
            assert!(
                exported.contains(&m),
                "{m} (in {e}) is not exported by /metrics"
            );
            used.insert(m);
        }
    }
    // What this issue added is on the dashboard.
    for m in [
        "mayfly_approval_requests_open",
        "mayfly_krl_version",
        "mayfly_krl_size_bytes",
        "mayfly_jwks_last_success_timestamp_seconds",
        "mayfly_audit_checkpoint_age_seconds",
        "mayfly_audit_sink_errors_total",
        "mayfly_ca_key_slot_age_seconds",
        "mayfly_hosts_lagging",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    ] {
        assert!(used.contains(m), "{m} is on no panel or rule");
    }
}
