//! The identity inventory, the access review and the compliance report,
//! seeded through the real path: a real OIDC provider, `mayfly serve`,
//! `POST /v1/certs/user`, `mayfly identity disable` as an operator runs it,
//! and old records appended through the store API (as a long-running CA
//! would have written them 40 days ago).

mod support;

use std::time::Duration;

use mayfly::audit::{AuditRecord, EventKind};
use mayfly::store::sqlite::Sqlite;
use mayfly::store::Backend;
use serde_json::{json, Value};
use support::{http, keygen_ed25519, mayfly, now, ok, ClientSpec, Mayfly, Oidc};

const DEPLOY_POLICY: &str = r#"
description = "Deploy acme services from CI"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy", "backup"]
max_ttl = "2h"
default_ttl = "5m"
extensions = ["permit-pty", "permit-port-forwarding"]
[claims]
repository = "acme/*"
"#;

const LEGACY_POLICY: &str = r#"
description = "Old batch jobs, kept just in case"
owner = "legacy-team@example.com"
issuer = "ci"
principals = ["batch"]
max_ttl = "5m"
[claims]
repository = "legacy/*"
"#;

const FRESH_POLICY: &str = r#"
description = "Added to the policy minutes ago"
owner = "platform@example.com"
issuer = "ci"
principals = ["release"]
max_ttl = "5m"
key_types = ["ssh-ed25519"]
rate_limit = "10/h"
max_active_certs = 1
[claims]
repository = "acme/release"
[[window]]
days = ["mon-fri"]
start = "09:00"
end = "17:00"
timezone = "Europe/Berlin"
"#;

struct Env {
    oidc: Oidc,
    ca: Mayfly,
    dir: tempfile::TempDir,
}

/// Sets a file's modification time `days` days back, as a role file
/// written long ago has it.
fn age_file(path: &std::path::Path, days: u64) {
    let t = std::time::SystemTime::now() - Duration::from_secs(days * 86_400);
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(t))
        .unwrap_or_else(|e| panic!("set the time of {}: {e}", path.display()));
}

fn setup() -> Env {
    let oidc = Oidc::start(&[
        ClientSpec::new("deploy-rs", "RS256").claims(json!({"repository": "acme/api"})),
        ClientSpec::new("deploy-es", "ES256").claims(json!({"repository": "acme/web"})),
        ClientSpec::new("intruder", "RS256").claims(json!({"repository": "evil/x"})),
        ClientSpec::new("ops-admin", "RS256").claims(json!({"groups": ["sre"]})),
    ]);
    let extra = format!(
        "{}\n[[admin]]\nissuer = \"ci\"\n[admin.claims]\ngroups = \"sre\"\n",
        oidc.issuer_toml("ci")
    );
    let ca = Mayfly::start(
        &extra,
        &[
            ("deploy", DEPLOY_POLICY),
            ("legacy", LEGACY_POLICY),
            ("fresh", FRESH_POLICY),
        ],
    );
    // The policy repository is no git checkout here: the roles' file times
    // date them. The old ones were written 60 days ago.
    for role in ["deploy", "legacy"] {
        age_file(&ca.policy_dir().join(format!("{role}.toml")), 60);
    }
    Env {
        oidc,
        ca,
        dir: support::temp_dir("inventory"),
    }
}

impl Env {
    fn cert(&self, client: &str, body: Value) -> http::Response {
        let (_, public) = keygen_ed25519(self.dir.path());
        let mut body = body;
        body["public_key"] = json!(public);
        let auth = format!("Bearer {}", self.oidc.token(client));
        http::post_json(
            &format!("{}/v1/certs/user", self.ca.url()),
            &[("Authorization", auth.as_str())],
            &body,
        )
        .expect("POST /v1/certs/user")
    }

    fn cli(&self, args: &[&str]) -> String {
        let cfg = self.ca.config_path().to_str().expect("utf8").to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", &cfg]);
        ok(mayfly(&all))
    }

    fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    fn identities(&self, token: Option<&str>, query: &str) -> http::Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        http::request(
            "GET",
            &format!("{}/v1/identities{query}", self.ca.url()),
            &headers,
            b"",
        )
        .expect("GET /v1/identities")
    }

    /// Seeds the traffic every test here starts from: three certificates
    /// (none carrying the role's second principal, `backup`),
    /// two refusals, one identity disabled by the operator, and one
    /// identity whose only certificate is 40 days old.
    fn seed(&self) {
        for body in [
            json!({"role": "deploy", "principals": ["deploy"]}),
            json!({"role": "deploy", "ttl_seconds": 120, "principals": ["deploy"]}),
        ] {
            let r = self.cert("deploy-rs", body);
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let r = self.cert(
            "deploy-es",
            json!({"role": "deploy", "principals": ["deploy"]}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let r = self.cert("intruder", json!({"role": "deploy"}));
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.json()["error"], "claim_mismatch");
        let r = self.cert("deploy-rs", json!({"role": "nope"}));
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.json()["error"], "unknown_role");
        let out = self.cli(&[
            "identity",
            "disable",
            "--issuer",
            "ci",
            "--subject",
            "deploy-es",
            "--reason",
            "job retired",
        ]);
        assert!(out.contains("revoked serial"), "{out}");
        // An issuer name that is not configured (a typo, or the issuer's
        // URL) is refused with the configured names, and changes nothing.
        let cfg = self.ca.config_path().to_str().expect("utf8").to_string();
        let typo = mayfly(&[
            "identity",
            "disable",
            "--issuer",
            "https://ci.example",
            "--subject",
            "deploy-rs",
            "--config",
            &cfg,
        ]);
        let err = String::from_utf8_lossy(&typo.stderr);
        assert_eq!(typo.status.code(), Some(1), "{err}");
        assert!(
            err.contains("is not an [[issuer]] of this CA (its issuers: ci)"),
            "{err}"
        );

        // A bot that last got a certificate 40 days ago, appended through
        // the store API like the CA writes every record.
        let t = now() - 40 * 86_400;
        let mut old = AuditRecord::new(EventKind::CertIssued, t * 1000, "seed-old");
        old.issuer = Some("ci".into());
        old.subject = Some("old-bot".into());
        old.role = Some("deploy".into());
        old.serial = Some(7);
        old.key_id = Some("mayfly:deploy:ci:old-bot:7".into());
        old.principals = vec!["deploy".into()];
        old.valid_after = Some(t - 60);
        old.valid_before = Some(t + 300);
        old.key_fingerprint = Some("SHA256:seeded".into());
        old.policy_digest = Some("seeded".into());
        old.cert_type = Some("user".into());
        let mut db = Sqlite::open(
            &self.ca.data_dir().join("mayfly.db"),
            Duration::from_secs(5),
        )
        .expect("open the CA database");
        db.append_batch(&[old]).expect("append the old record");
    }
}

fn by_subject<'a>(inv: &'a Value, subject: &str) -> &'a Value {
    inv["identities"]
        .as_array()
        .expect("identities array")
        .iter()
        .find(|i| i["subject"] == subject)
        .unwrap_or_else(|| panic!("{subject} not in inventory: {inv:#}"))
}

#[test]
fn inventory_lists_identities_with_status_owners_and_denials_for_admins_only() {
    let env = setup();
    env.seed();

    // The admin API: no token is 401, a bot's token 403, an admin's 200.
    let r = env.identities(None, "");
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "missing_token");
    let r = env.identities(Some(&env.oidc.token("deploy-rs")), "");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "not_admin");
    let admin = env.oidc.token("ops-admin");
    let r = env.identities(Some(&admin), "?stale_days=wat");
    assert_eq!(r.status, 400, "{}", r.text());
    let r = env.identities(Some(&admin), "");
    assert_eq!(r.status, 200, "{}", r.text());
    let inv = r.json();
    assert_eq!(inv["stale_days"], 30);
    let subjects: Vec<&str> = inv["identities"]
        .as_array()
        .expect("array")
        .iter()
        .map(|i| i["subject"].as_str().expect("subject"))
        .collect();
    assert_eq!(subjects, ["deploy-es", "deploy-rs", "intruder", "old-bot"]);
    assert_eq!(
        inv["counts"],
        json!({"active": 1, "disabled": 1, "stale": 1, "only_refused": 1})
    );

    let rs = by_subject(&inv, "deploy-rs");
    assert_eq!(rs["status"], "active");
    assert_eq!(rs["issuer"], "ci");
    assert_eq!(rs["certs_issued"], 2);
    assert_eq!(rs["requests_denied"], 1);
    assert_eq!(rs["roles_granted"], json!(["deploy"]));
    assert_eq!(rs["roles_requested"], json!(["deploy", "nope"]));
    assert_eq!(rs["owners"], json!(["platform@example.com"]));
    assert_eq!(rs["last_denial"]["reason_code"], "unknown_role");
    assert_eq!(rs["last_denial"]["role"], "nope");
    let nope = &rs["roles"][1];
    assert_eq!(nope["role"], "nope");
    assert_eq!(nope["in_policy"], false);
    assert_eq!(nope["owner"], Value::Null);
    let t = now();
    for k in ["first_seen", "last_seen", "last_issued"] {
        let v = rs[k].as_u64().expect(k);
        assert!(v <= t && v + 600 > t, "{k} = {v}, now {t}");
    }

    let es = by_subject(&inv, "deploy-es");
    assert_eq!(es["status"], "disabled");
    assert_eq!(es["deactivations"][0]["scope"], "identity");
    assert_eq!(es["deactivations"][0]["reason"], "job retired");
    assert!(es["deactivations"][0]["actor"]
        .as_str()
        .expect("actor")
        .starts_with("cli:"));
    assert_eq!(es["roles"][0]["status"], "disabled");

    let intruder = by_subject(&inv, "intruder");
    assert_eq!(
        intruder["status"], "only_refused",
        "never got a certificate, only refusals: not stale"
    );
    assert_eq!(intruder["roles"][0]["status"], "only_refused");
    assert_eq!(intruder["certs_issued"], 0);
    assert_eq!(intruder["last_denial"]["reason_code"], "claim_mismatch");
    assert_eq!(intruder["roles_granted"], json!([]));

    let old = by_subject(&inv, "old-bot");
    assert_eq!(old["status"], "stale");
    assert_eq!(old["certs_issued"], 1);
    let last = old["last_issued"].as_u64().expect("last_issued");
    assert!(t - last >= 40 * 86_400 && t - last < 41 * 86_400);

    // A longer stale window makes the 40-day-old bot active again.
    let r = env.identities(Some(&admin), "?stale_days=60");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(by_subject(&r.json(), "old-bot")["status"], "active");

    // The CLI builds the same inventory from the config and prints a table.
    let listed = env.cli_json(&["identity", "list", "--stale-days", "30"]);
    let statuses: Vec<&str> = listed["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .map(|i| i["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses, ["disabled", "active", "only_refused", "stale"]);
    let table = env.cli(&["identity", "list", "--stale-days", "30"]);
    let line = table
        .lines()
        .find(|l| l.contains("deploy-rs"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(line.starts_with("active"), "{line}");
    assert!(
        line.contains("deploy (2), nope (0, not in policy)"),
        "{line}"
    );
    assert!(line.contains("platform@example.com"), "{line}");
    assert!(line.contains("unknown_role"), "{line}");
    assert!(
        table.contains("4 identities: 1 active, 1 disabled, 1 stale (no certificate in 30 days), 1 only refused (never got a certificate)"),
        "{table}"
    );

    // Disabling the whole role disables every identity that only uses it.
    env.cli(&[
        "identity", "disable", "--role", "deploy", "--reason", "freeze",
    ]);
    let inv = env.identities(Some(&admin), "").json();
    assert_eq!(by_subject(&inv, "deploy-rs")["status"], "disabled");
    assert_eq!(
        by_subject(&inv, "deploy-rs")["roles"][0]["disabled_by"]["scope"],
        "role"
    );
    assert_eq!(inv["disabled_roles"][0]["role"], "deploy");
    assert_eq!(inv["disabled_roles"][0]["reason"], "freeze");
}

#[test]
fn access_review_and_compliance_report_show_the_seeded_evidence() {
    let env = setup();
    env.seed();

    // Access review: unused roles, principals and TTL headroom, stale bots.
    let review = env.cli_json(&["report", "access-review", "--days", "30"]);
    let of = |kind: &str| -> Vec<String> {
        review["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .filter(|f| f["kind"] == kind)
            .map(|f| {
                format!(
                    "{} {} {}",
                    f["role"].as_str().unwrap_or("-"),
                    f["identity"].as_str().unwrap_or("-"),
                    f["detail"].as_str().expect("detail")
                )
            })
            .collect()
    };
    let never = of("role_never_used");
    assert_eq!(never.len(), 1, "{never:?}");
    assert!(never[0].starts_with("legacy "), "{never:?}");
    let unused = of("principal_unused");
    assert_eq!(unused.len(), 1, "{unused:?}");
    assert!(unused[0].contains("\"backup\""), "{unused:?}");
    let ttl = of("ttl_headroom");
    assert_eq!(ttl.len(), 1, "{ttl:?}");
    assert!(
        ttl[0]
            .contains("max_ttl 2h is 24x the longest certificate issued in the last 30 days (5m)"),
        "{ttl:?}"
    );
    assert_eq!(of("widening_extension").len(), 1);
    let stale = of("stale_identity");
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert!(stale[0].contains("ci/old-bot"), "{stale:?}");
    // The intruder never had access: its own label, not "stale".
    let refused = of("only_refused_identity");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].starts_with(
            "deploy ci/intruder never got a certificate: 1 request(s), all refused; the last"
        ),
        "{refused:?}"
    );
    assert!(
        refused[0].contains("(claim_mismatch for role deploy)"),
        "{refused:?}"
    );
    // The role added minutes ago is too new to judge, not "never used".
    let usage_of = |role: &str| -> Value {
        review["roles"]
            .as_array()
            .expect("roles")
            .iter()
            .find(|r| r["role"] == role)
            .unwrap_or_else(|| panic!("{role} reviewed"))
            .clone()
    };
    assert_eq!(usage_of("fresh")["usage"], "new_role");
    assert_eq!(usage_of("fresh")["appeared"]["source"], "file_time");
    assert_eq!(usage_of("legacy")["usage"], "never_used");
    let text = env.cli(&["report", "access-review", "--days", "30"]);
    assert!(
        text.contains("new_role: not judged until they are 30 days old: fresh (appeared"),
        "{text}"
    );
    assert!(!text.contains("role_never_used: role fresh"), "{text}");
    let deploy = review["roles"]
        .as_array()
        .expect("roles")
        .iter()
        .find(|r| r["role"] == "deploy")
        .expect("deploy reviewed");
    assert_eq!(
        (
            &deploy["issued_in_window"],
            &deploy["issued_all_time"],
            &deploy["identities_in_window"]
        ),
        (&json!(3), &json!(4), &json!(2))
    );
    assert_eq!(deploy["max_ttl_used"], 300);

    // The compliance report, through the CLI with --out.
    let md_path = env.dir.path().join("report.md");
    let html_path = env.dir.path().join("report.html");
    for (format, path) in [("md", &md_path), ("html", &html_path)] {
        env.cli(&[
            "report",
            "compliance",
            "--format",
            format,
            "--out",
            path.to_str().expect("utf8"),
            "--days",
            "30",
        ]);
    }
    let md = std::fs::read_to_string(&md_path).expect("md written");
    let html = std::fs::read_to_string(&html_path).expect("html written");

    // The summary table: every control, with a status.
    assert!(
        md.contains("| Framework | Control | Evidence from this CA | Status |"),
        "{md}"
    );
    for (framework, control) in [
        ("NIST SP 800-53 r5", "AC-2 Account management"),
        ("NIST SP 800-53 r5", "AC-6 Least privilege"),
        (
            "NIST SP 800-53 r5",
            "IA-2 Identification and authentication",
        ),
        ("NIST SP 800-53 r5", "IA-5 Authenticator management"),
        ("NIST SP 800-53 r5", "AU-2 Event logging"),
        ("NIST SP 800-53 r5", "AU-3 Content of audit records"),
        ("NIST SP 800-53 r5", "AU-9 Protection of audit information"),
        ("NIST SP 800-53 r5", "AU-12 Audit record generation"),
        ("ISO/IEC 27001:2022", "A.5.15 Access control"),
        ("ISO/IEC 27001:2022", "A.5.16 Identity management"),
        ("ISO/IEC 27001:2022", "A.5.17 Authentication information"),
        ("ISO/IEC 27001:2022", "A.5.18 Access rights"),
        ("ISO/IEC 27001:2022", "A.8.2 Privileged access rights"),
        ("ISO/IEC 27001:2022", "A.8.15 Logging"),
        (
            "PCI DSS v4.0",
            "Req 7 Restrict access by business need to know",
        ),
        (
            "PCI DSS v4.0",
            "Req 8 Identify users and authenticate access",
        ),
        ("PCI DSS v4.0", "Req 10 Log and monitor all access"),
    ] {
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| {framework} | {control} |")))
            .unwrap_or_else(|| panic!("no row for {control}:\n{md}"));
        assert!(
            row.ends_with("| pass |") || row.ends_with("| attention |"),
            "{row}"
        );
        let id = if control.starts_with("Req ") {
            control.splitn(3, ' ').take(2).collect::<Vec<_>>().join(" ")
        } else {
            control.split(' ').next().expect("id").to_string()
        };
        assert!(
            html.contains(&format!("<b>{id}</b>")),
            "{id} not in the HTML table"
        );
    }
    let row = |id: &str| -> String {
        md.lines()
            .find(|l| l.contains(&format!(" | {id} ")))
            .unwrap_or_else(|| panic!("{id}"))
            .to_string()
    };
    // Evidence numbers match what was seeded.
    let ac2 = row("AC-2");
    assert!(
        ac2.contains(
            "4 identities inventoried: 1 active, 1 disabled, 1 stale (no certificate in 30 days), 1 only refused (never got a certificate)"
        ),
        "{ac2}"
    );
    assert!(ac2.contains("3/3 roles name an owner"), "{ac2}");
    assert!(
        ac2.contains(
            "1 revocation(s) in the window, 1 live in the KRL; 1 deactivation(s) in force"
        ),
        "{ac2}"
    );
    assert!(ac2.ends_with("| attention |"), "stale identities: {ac2}");
    let au12 = row("AU-12");
    assert!(
        au12.contains("3 certificate(s) issued and 2 request(s) refused in the last 30 days"),
        "{au12}"
    );
    assert!(au12.ends_with("| pass |"), "{au12}");
    assert!(row("AU-3").contains("0 issuance record(s) in the window lack one of them"));
    let ac6 = row("AC-6");
    assert!(
        ac6.contains("max TTL per role: deploy 2h, fresh 5m, legacy 5m"),
        "{ac6}"
    );
    assert!(
        ac6.contains("deploy: permit-pty permit-port-forwarding"),
        "{ac6}"
    );
    // The chain is verified as `mayfly audit verify` does, including the
    // record appended through the store API.
    let au9 = row("AU-9");
    assert!(
        au9.contains("audit hash chain verified over 8 records"),
        "{au9}"
    );
    assert!(
        au9.contains("database mode 0600, data directory mode 0700"),
        "{au9}"
    );
    let req8 = row("Req 8");
    assert!(
        req8.contains("refusals by reason: claim_mismatch 1, unknown_role 1"),
        "{req8}"
    );
    assert!(md.contains("does not certify compliance"));
    // The chart: issuance per role over time.
    assert!(md.contains("## Certificates issued per role"));
    let chart_row = md
        .lines()
        .find(|l| l.starts_with("| deploy | 3 | 3 | `"))
        .unwrap_or_else(|| panic!("{md}"));
    assert!(
        chart_row.ends_with("█` |"),
        "today's bar is the tallest: {chart_row}"
    );
    assert!(md.contains("| legacy | legacy-team@example.com | user | batch | 5m | 5m | - | time windows: none (usable at any time)<br>approval: not required<br>limits: none (no rate limit, no cap on valid certificates)<br>key types: any mayfly accepts (ssh-ed25519, ecdsa-sha2-nistp256, ecdsa-sha2-nistp384, ssh-rsa); RSA keys of at least 3072 bits | 0 / 0 | never_used |"), "{md}");
    // Each role's restrictions, in words, under Restrictions.
    assert!(md.contains("| fresh | platform@example.com | user | release | 5m | 5m | - | time windows: usable only mon-fri 09:00-17:00 Europe/Berlin; certificates end when the window closes<br>approval: not required<br>limits: at most 10 requests per hour for the role; at most 1 valid certificate(s) at once per identity<br>key types: only ssh-ed25519 | 0 / 0 | new_role |"), "{md}");
    assert!(ac6.contains("role restrictions (details in the roles table): 1 with time windows, 0 needing approval, 1 with rate limits or a cap on valid certificates, 1 accepting fewer key types than mayfly does"), "{ac6}");
    assert!(html.contains("limits: at most 10 requests per hour for the role; at most 1 valid certificate(s) at once per identity"));
    assert!(
        md.contains("| stale | ci | old-bot | deploy | platform@example.com |"),
        "{md}"
    );

    // HTML: the same table and evidence, an SVG chart, nothing external.
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<table id=\"controls\">"));
    assert!(html.contains(
        "4 identities inventoried: 1 active, 1 disabled, 1 stale (no certificate in 30 days), 1 only refused (never got a certificate)"
    ));
    assert!(html.contains("<td class=\"attention\">attention</td>"));
    assert!(html.contains("<td class=\"pass\">pass</td>"));
    assert!(html.contains("<svg") && html.contains("<title>deploy "));
    assert!(
        !html.contains("<script") && !html.contains(" src=") && !html.contains(" href="),
        "self-contained, no external references"
    );
    assert!(html.trim_end().ends_with("</html>"));
}

#[test]
fn compliance_report_gives_the_age_of_the_ca_keys_the_store_holds() {
    let ca = support::Mayfly::start("", &[]);
    let cfg = ca.config_path().to_str().expect("utf8").to_string();
    let out = support::ok(support::mayfly(&[
        "report",
        "compliance",
        "--config",
        &cfg,
        "--format",
        "md",
    ]));
    for which in ["user", "host"] {
        let line = format!("{which} CA key: file (unencrypted), 0 days old");
        assert!(out.contains(&line), "{line} missing from:\n{out}");
    }
}

/// Runs git in `dir` with a fixed identity and commit time.
fn git(dir: &std::path::Path, args: &[&str], date: &str) {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "policy")
        .env("GIT_AUTHOR_EMAIL", "policy@example.com")
        .env("GIT_COMMITTER_NAME", "policy")
        .env("GIT_COMMITTER_EMAIL", "policy@example.com")
        .env("GIT_AUTHOR_DATE", date)
        .env("GIT_COMMITTER_DATE", date)
        .output()
        .expect("run git (the policy repository test needs it)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn access_review_dates_roles_by_the_policy_repositorys_git_history() {
    let issuer = support::issuer::TestIssuer::start();
    let ca = Mayfly::start(
        &issuer.issuer_toml("ci", ""),
        &[("legacy", LEGACY_POLICY), ("fresh", FRESH_POLICY)],
    );
    // The policy directory is a checkout: legacy.toml was committed 60 days
    // ago; fresh.toml is not committed yet. Both files were just written,
    // as a fresh clone or checkout writes them.
    let dir = ca.policy_dir();
    let sixty_days_ago = format!("@{} +0000", now() - 60 * 86_400);
    git(&dir, &["init", "-q"], &sixty_days_ago);
    git(&dir, &["add", "legacy.toml"], &sixty_days_ago);
    git(&dir, &["commit", "-q", "-m", "legacy"], &sixty_days_ago);
    let cfg = ca.config_path().to_str().expect("utf8").to_string();
    let out = ok(mayfly(&[
        "report",
        "access-review",
        "--days",
        "30",
        "--json",
        "--config",
        &cfg,
    ]));
    let review: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let role = |name: &str| -> Value {
        review["roles"]
            .as_array()
            .expect("roles")
            .iter()
            .find(|r| r["role"] == name)
            .unwrap_or_else(|| panic!("{name} reviewed: {review}"))
            .clone()
    };
    let legacy = role("legacy");
    assert_eq!(legacy["usage"], "never_used", "{legacy}");
    assert_eq!(legacy["appeared"]["source"], "git_history", "{legacy}");
    let at = legacy["appeared"]["at"].as_u64().expect("at");
    assert!(
        now() - at >= 60 * 86_400 && now() - at < 61 * 86_400,
        "{legacy}"
    );
    let fresh = role("fresh");
    assert_eq!(fresh["usage"], "new_role", "{fresh}");
    assert_eq!(fresh["appeared"]["source"], "file_time", "{fresh}");
    let never: Vec<&str> = review["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["kind"] == "role_never_used")
        .map(|f| f["role"].as_str().expect("role"))
        .collect();
    assert_eq!(never, ["legacy"]);
}
