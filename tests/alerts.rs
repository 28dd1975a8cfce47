//! The shipped Prometheus alert rules (`examples/prometheus/alerts.yml`)
//! are valid and behave as their unit tests say: `promtool check rules`
//! and `promtool test rules` (Debian's `prometheus` package). A missing
//! promtool fails the test rather than skipping it.

mod support;

use std::process::Command;

fn promtool(args: &[&str]) -> (bool, String) {
    let bin = support::find_program("promtool", &["/usr/bin/promtool"], "prometheus");
    let out = Command::new(bin)
        .args(args)
        .current_dir(support::repo_root().join("examples/prometheus"))
        .output()
        .expect("run promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn alert_rules_are_valid_and_pass_their_unit_tests() {
    let (ok, out) = promtool(&["check", "rules", "alerts.yml"]);
    assert!(ok, "promtool check rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(ok, "promtool test rules:\n{out}");
    // Every alert the issue asks for exists and has a unit test.
    let rules =
        std::fs::read_to_string(support::repo_root().join("examples/prometheus/alerts.yml"))
            .expect("alerts.yml");
    let tests =
        std::fs::read_to_string(support::repo_root().join("examples/prometheus/alerts.test.yml"))
            .expect("alerts.test.yml");
    for alert in [
        "MayflyStoreDown",
        "MayflyJwksStale",
        "MayflyAuditCheckpointOld",
        "MayflyHostsLagging",
        "MayflyDenialSpike",
        "MayflyCaKeyOld",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}\n")),
            "{alert} missing"
        );
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no unit test"
        );
    }
}
