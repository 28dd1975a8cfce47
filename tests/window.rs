//! Time windows end to end, with real programs: a real OIDC provider issues
//! the token, `mayfly serve` decides against roles whose `[[window]]` is
//! computed from the current time, and a real `sshd` accepts the
//! certificate. A window that is open now yields a certificate that logs in
//! and expires exactly when the window closes; a closed window yields 403
//! `outside_window` naming the next opening.

mod support;

use std::process::Command;

use jiff::{tz::TimeZone, Timestamp, Zoned};
use serde_json::{json, Value};
use support::{http, keygen_ed25519, ClientSpec, Mayfly, Oidc, Sshd};

/// A zone without daylight saving time, so the test cannot straddle a
/// clock change; DST behaviour is covered by the unit tests.
const ZONE: &str = "Asia/Tokyo";

const MINUTE: i64 = 60;

fn tokyo_now() -> Zoned {
    Timestamp::now().to_zoned(TimeZone::get(ZONE).expect("Asia/Tokyo is in the bundled database"))
}

/// `z` truncated to the minute.
fn floor_minute(z: &Zoned) -> Zoned {
    let s = z.timestamp().as_second();
    Timestamp::from_second(s - s.rem_euclid(MINUTE))
        .expect("timestamp")
        .to_zoned(z.time_zone().clone())
}

fn plus(z: &Zoned, secs: i64) -> Zoned {
    Timestamp::from_second(z.timestamp().as_second() + secs)
        .expect("timestamp")
        .to_zoned(z.time_zone().clone())
}

fn day(z: &Zoned) -> &'static str {
    ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][z.weekday().to_monday_zero_offset() as usize]
}

fn hhmm(z: &Zoned) -> String {
    z.strftime("%H:%M").to_string()
}

fn role(days: &str, start: &Zoned, end: &Zoned, extra: &str) -> String {
    format!(
        r#"description = "Migrations in a window"
owner = "dba@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "20m"
default_ttl = "15m"
{extra}

[claims]
repository = "acme/db"
sub = "migrator"

[[window]]
days = [{days}]
start = "{}"
end = "{}"
timezone = "{ZONE}"
"#,
        hhmm(start),
        hhmm(end)
    )
}

struct Env {
    oidc: Oidc,
    ca: Mayfly,
    sshd: Sshd,
    dir: tempfile::TempDir,
    /// When the open window closes.
    open_end: Zoned,
    /// When the closed window opens next.
    closed_next: Zoned,
}

fn setup() -> Env {
    let now = tokyo_now();
    // Open: opened an hour ago (on that day's weekday, so a window that
    // started before midnight spans it), closes in 8 to 9 minutes.
    let open_start = floor_minute(&plus(&now, -60 * MINUTE));
    let open_end = floor_minute(&plus(&now, 9 * MINUTE));
    // Closed: every day, opening in two hours for an hour.
    let closed_next = floor_minute(&plus(&now, 2 * 60 * MINUTE));
    let closed_end = plus(&closed_next, 60 * MINUTE);
    let open = role(
        &format!("\"{}\"", day(&open_start)),
        &open_start,
        &open_end,
        "key_types = [\"ssh-ed25519\"]\nsource_address_claim = \"runner_ip\"\nsource_address = [\"127.0.0.0/8\"]",
    );
    let closed = role("\"mon-sun\"", &closed_next, &closed_end, "");
    let ecdsa_only = role(
        &format!("\"{}\"", day(&open_start)),
        &open_start,
        &open_end,
        "key_types = [\"ecdsa-sha2-nistp256\"]",
    );
    let oidc = Oidc::start(&[ClientSpec::new("migrator", "ES256")
        .claims(json!({"repository": "acme/db", "runner_ip": "127.0.0.1"}))]);
    let ca = Mayfly::start(
        &oidc.issuer_toml("ci"),
        &[
            ("open-now", open.as_str()),
            ("closed-now", closed.as_str()),
            ("ecdsa-only", ecdsa_only.as_str()),
        ],
    );
    let ca_pub = http::get(&format!("{}/v1/ca/user.pub", ca.url()))
        .expect("GET user.pub")
        .text();
    let sshd = Sshd::start(&ca_pub);
    Env {
        oidc,
        ca,
        sshd,
        dir: support::temp_dir("window"),
        open_end,
        closed_next,
    }
}

impl Env {
    fn request(&self, role: &str, public_key: &str) -> http::Response {
        let auth = format!("Bearer {}", self.oidc.token("migrator"));
        http::post_json(
            &format!("{}/v1/certs/user", self.ca.url()),
            &[("Authorization", auth.as_str())],
            &json!({"role": role, "public_key": public_key}),
        )
        .expect("POST /v1/certs/user")
    }
}

fn denial(r: &http::Response, code: &str) -> String {
    assert_eq!(r.status, 403, "{}", r.text());
    let v: Value = r.json();
    assert_eq!(v["error"], json!(code), "{v}");
    assert!(v.get("certificate").is_none());
    v["message"].as_str().expect("message").to_string()
}

#[test]
fn open_window_gives_a_certificate_that_logs_in_and_ends_with_the_window() {
    let env = setup();
    let (key, public) = keygen_ed25519(env.dir.path());
    let r = env.request("open-now", &public);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), env.ca.stderr_log());
    let answer = r.json();
    let valid_before = answer["valid_before"].as_u64().expect("valid_before");
    let window_end = env.open_end.timestamp().as_second() as u64;
    // The role's default is 15 minutes; the window closes sooner, and the
    // certificate ends exactly then.
    assert_eq!(
        valid_before, window_end,
        "valid_before {valid_before}, window closes {} ({window_end})",
        env.open_end
    );

    let cert = key.with_file_name("id_ed25519-cert.pub");
    std::fs::write(
        &cert,
        format!("{}\n", answer["certificate"].as_str().expect("certificate")),
    )
    .expect("write cert");
    let out = env.sshd.ssh("deploy", &key, &cert, "id -un");
    assert!(
        out.status.success(),
        "login failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.sshd.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "deploy");

    // ssh-keygen shows the clipped end and the source address from the claim.
    let shown = Command::new("ssh-keygen")
        .env("TZ", "UTC")
        .args(["-L", "-f"])
        .arg(&cert)
        .output()
        .expect("ssh-keygen -L");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("source-address 127.0.0.1/32"), "{shown}");
    let local_end = Timestamp::from_second(window_end as i64)
        .expect("timestamp")
        .to_zoned(TimeZone::UTC)
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string();
    assert!(
        shown.contains(&format!(" to {local_end}")),
        "{local_end}\n{shown}"
    );
}

#[test]
fn closed_window_is_refused_with_outside_window_naming_the_next_opening() {
    let env = setup();
    let (_key, public) = keygen_ed25519(env.dir.path());
    let r = env.request("closed-now", &public);
    let message = denial(&r, "outside_window");
    let next = format!(
        "next window opens {} ({ZONE})",
        env.closed_next.strftime("%Y-%m-%dT%H:%M:%S%:z")
    );
    assert!(message.contains(&next), "{message}\nwanted: {next}");
    assert!(message.starts_with("closed-now.toml window: "), "{message}");
    // The refusal is audited with its code; nothing was issued.
    assert_eq!(
        env.ca
            .audit(&["--event", "cert_denied"])
            .iter()
            .filter(|r| r["mayfly"]["reason_code"] == "outside_window")
            .count(),
        1
    );
    assert_eq!(env.ca.audit_count("cert_issued"), 0);
}

#[test]
fn key_type_outside_the_role_allowlist_is_refused() {
    let env = setup();
    let (_key, public) = keygen_ed25519(env.dir.path());
    let message = denial(&env.request("ecdsa-only", &public), "key_type_not_allowed");
    assert!(
        message.contains("public_key type \"ssh-ed25519\" is not accepted by this role"),
        "{message}"
    );
}
