//! `mayfly bench` as a user runs it: the CA in its own `mayfly serve`
//! process over HTTPS, one run per concurrency in the list, every answer
//! checked and the server's own CPU reported.

mod support;

use support::{mayfly, ok};

/// The number after `label` on each line of a report that starts with it.
fn figures(report: &str, label: &str) -> Vec<f64> {
    report
        .lines()
        .filter_map(|l| l.strip_prefix(label))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|n| n.parse().ok())
        .collect()
}

#[test]
fn bench_over_https_reports_the_server_process_cpu_per_certificate_for_each_concurrency() {
    let report = ok(mayfly(&[
        "bench",
        "--tls",
        "--requests",
        "300",
        "--concurrency",
        "4,16",
    ]));
    assert!(
        report.contains("store:               sqlite (1 replica, 4 clients)")
            && report.contains("store:               sqlite (1 replica, 16 clients)"),
        "one run per concurrency:\n{report}"
    );
    assert_eq!(
        report
            .matches("server:              separate process (pid ")
            .count(),
        2,
        "{report}"
    );
    assert_eq!(report.matches("), HTTPS\n").count(), 2, "{report}");
    // Every answer was a certificate for the key sent, signed by the CA,
    // and its audit record is in the server's database.
    assert_eq!(
        figures(&report, "certificates issued:"),
        [300.0, 300.0],
        "{report}"
    );
    assert!(report.contains("(failed: 0)"), "{report}");
    assert_eq!(
        figures(&report, "audit records added:"),
        [300.0, 300.0],
        "{report}"
    );
    let cpu = figures(&report, "server cpu:");
    assert_eq!(cpu.len(), 2, "the server's CPU per certificate:\n{report}");
    assert!(cpu.iter().all(|&us| us > 0.0), "{report}");
    assert_eq!(figures(&report, "load cpu:").len(), 2, "{report}");
    // Every record is made durable, so the server wrote to storage.
    let writes = figures(&report, "server writes:");
    assert_eq!(
        writes.len(),
        2,
        "the server's writes per certificate:\n{report}"
    );
    assert!(writes.iter().all(|&bytes| bytes > 0.0), "{report}");

    // --json: one object per run, with the same facts.
    let lines = ok(mayfly(&[
        "bench",
        "--tls",
        "--requests",
        "100",
        "--concurrency",
        "2,4",
        "--json",
    ]));
    let runs: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(runs.len(), 2, "{lines}");
    for (run, clients) in runs.iter().zip([2, 4]) {
        assert_eq!(run["clients"], clients, "{run}");
        assert_eq!(run["ok"], 100, "{run}");
        assert_eq!(run["audited"], 100, "{run}");
        assert_eq!(run["server"]["tls"], true, "{run}");
        assert!(
            run["server"]["cpu_us_per_cert"]
                .as_f64()
                .is_some_and(|us| us > 0.0),
            "{run}"
        );
        assert!(run["latency_ms"]["p99"].as_f64().is_some(), "{run}");
        assert!(
            run["server"]["write_bytes_per_cert"]
                .as_f64()
                .is_some_and(|b| b > 0.0),
            "{run}"
        );
    }
}

#[test]
fn bench_refuses_a_server_process_on_postgres_and_says_why() {
    let out = mayfly(&[
        "bench",
        "--tls",
        "--store-url",
        "postgres://bench@127.0.0.1:1/none",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tls") && err.contains("--store-url"),
        "{err}"
    );
}
