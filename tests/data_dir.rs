//! One data directory serves one server. Two `mayfly serve` processes on
//! one data directory would share the SQLite database but not the
//! in-memory replay set, so one token could get a certificate from each;
//! the second is refused at start, naming the first one's pid, and the
//! lock goes with the process that holds it.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{free_port, http, ClientSpec, Mayfly, Oidc};

const POLICY: &str = r#"
description = "Deploy"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
[claims]
repository = "acme/*"
"#;

/// Runs a second `mayfly serve` on `ca`'s config but its own port; returns
/// its exit status and stderr once it exits (or fails the test after 30 s).
fn second_server(ca: &Mayfly, port: u16) -> (Option<i32>, String) {
    let mut child = Command::new(Mayfly::bin())
        .args(["serve", "--config"])
        .arg(ca.config_path())
        .env("MAYFLY_LISTEN", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn second mayfly serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            return (
                status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the second mayfly serve on one data directory kept running");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_second_server_on_one_data_directory_is_refused_until_the_first_stops() {
    let oidc =
        Oidc::start(&[ClientSpec::new("bot", "RS256").claims(json!({"repository": "acme/api"}))]);
    let mut ca = Mayfly::start(&oidc.issuer_toml("ci"), &[("deploy", POLICY)]);
    let port = free_port();
    let (code, stderr) = second_server(&ca, port);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("is in use by another mayfly serve")
            && stderr.contains(&format!("(pid {})", ca.pid().expect("pid"))),
        "{stderr}"
    );
    // The first one serves on, and nothing answers on the second's port.
    assert_eq!(
        http::get(&format!("{}/healthz", ca.url()))
            .expect("healthz")
            .status,
        200
    );
    assert!(http::get(&format!("http://127.0.0.1:{port}/healthz")).is_err());

    // Once the first has stopped, the directory is free again.
    ca.stop();
    ca.restart();
    assert_eq!(
        http::get(&format!("{}/healthz", ca.url()))
            .expect("healthz")
            .status,
        200
    );
}
