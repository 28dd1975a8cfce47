//! `mayfly policy check | test | explain` (and `serve` refusing a config)
//! as a user sees them: the whole output compared against the expected text
//! (temporary paths written as `$DIR`), and the exit code.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What one run of the CLI printed.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `mayfly args...` in `cwd`, replacing `dir` in the output with `$DIR`.
fn mayfly(cwd: &Path, dir: Option<&Path>, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .expect("run mayfly");
    let clean = |b: &[u8]| {
        let s = String::from_utf8_lossy(b).to_string();
        match dir {
            Some(d) => s.replace(&d.display().to_string(), "$DIR"),
            None => s,
        }
    };
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: clean(&out.stdout),
        stderr: clean(&out.stderr),
    }
}

/// Runs `mayfly serve --config CONFIG`, which must stop on its own within
/// 30 s (a refused config); a server that keeps running is killed and the
/// test fails, instead of hanging.
fn serve_must_stop(config: &Path) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .current_dir(repo())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mayfly serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "mayfly serve accepted the config and kept running:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// A temporary policy directory with the given files.
fn policy_dir(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::Builder::new()
        .prefix("mayfly-policy-cli-")
        .tempdir()
        .expect("temp dir");
    let dir = t.path().join("policy");
    std::fs::create_dir(&dir).expect("mkdir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write file");
    }
    (t, dir)
}

#[track_caller]
fn assert_text(got: &str, want: &str) {
    if got != want {
        panic!("output differs\n--- want\n{want}\n--- got\n{got}\n---");
    }
}

const RISKY: &str = r#"description = "Anything from CI"
owner = "ci@example.com"
issuer = "github"
principals = ["root", "gh-{actor}"]
max_ttl = "8h"
extensions = ["permit-pty", "permit-agent-forwarding"]

[claims]
sub = "*"
"#;

const DEPLOY: &str = r#"description = "Deploy acme/api"
owner = "platform@example.com"
issuer = "github"
principals = ["deploy"]
max_ttl = "10m"
default_ttl = "5m"
extensions = ["permit-pty"]

[claims]
sub = "repo:acme/api:ref:refs/heads/main"
repository = "acme/api"
"#;

const NIGHTLY: &str = r#"description = "Nightly migrations"
owner = "dba@example.com"
issuer = "github"
principals = ["migrate"]
max_ttl = "30m"
default_ttl = "15m"
key_types = ["ssh-ed25519"]
rate_limit = "10/h"

[claims]
sub = "repo:acme/db:ref:refs/heads/main"

[[window]]
days = ["mon-fri"]
start = "01:00"
end = "03:00"
timezone = "Europe/Berlin"
"#;

#[test]
fn check_of_the_example_policies_is_clean() {
    let r = mayfly(repo(), None, &["policy", "check", "ca-policy"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (summary, digest) = r.stdout.split_once('\n').expect("two lines");
    assert_text(
        &format!("{summary}\n"),
        "ca-policy: 4 role(s) OK (deploy, gitlab-release, k8s-backup, nightly-migrate)\n",
    );
    let digest = digest.strip_prefix("digest ").expect("a digest line");
    assert!(
        digest.trim_end().len() == 64 && digest.trim_end().bytes().all(|b| b.is_ascii_hexdigit()),
        "{digest}"
    );
    assert_text(&r.stderr, "");
    let r = mayfly(
        repo(),
        None,
        &["policy", "check", "--deny-warnings", "ca-policy"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn check_warns_about_risky_grants_and_fails_only_with_deny_warnings() {
    let (_t, dir) = policy_dir(&[("anything.toml", RISKY), ("deploy.toml", DEPLOY)]);
    let d = dir.to_str().expect("utf-8 path");
    let r = mayfly(repo(), Some(&dir), &["policy", "check", d]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout
            .starts_with("$DIR: 2 role(s) OK (anything, deploy)\ndigest "),
        "{}",
        r.stdout
    );
    assert_text(
        &r.stderr,
        "\
$DIR/anything.toml:4: warning: principal \"root\" is an administrator account; grant a dedicated account with only the rights the job needs [privileged_principal]
$DIR/anything.toml:4: warning: principal \"gh-{actor}\" takes {actor} from the token, and [claims] does not pin \"actor\" to exact values: whatever the issuer puts there becomes a login name [unpinned_template]
$DIR/anything.toml:5: warning: max_ttl 8h is above 1h: a leaked certificate stays usable that long; keep bot certificates to minutes [long_ttl]
$DIR/anything.toml:6: warning: permit-agent-forwarding lets the login use the bot's agent on the host (and anyone root there can too); bots rarely need it [risky_extension]
$DIR/anything.toml:8: warning: every claim rule is a glob: no claim is matched exactly, so unforeseen values may match; pin at least one claim exactly [no_exact_claim]
$DIR/anything.toml:9: warning: sub = \"*\" matches subjects of any repository or namespace (e.g. \"repo:mayfly-lint-probe/any:ref:refs/heads/main\"); pin the owner and name [wildcard_sub]
6 warning(s)
",
    );

    let r = mayfly(
        repo(),
        Some(&dir),
        &["policy", "check", "--deny-warnings", d],
    );
    assert_eq!(r.code, 1);
    assert_text(&r.stdout, "");
    assert!(
        r.stderr
            .ends_with("6 warning(s) in $DIR (--deny-warnings)\n"),
        "{}",
        r.stderr
    );
}

#[test]
fn check_reports_errors_in_new_keys_with_file_and_line() {
    let bad = NIGHTLY
        .replace(
            "rate_limit = \"10/h\"",
            "rate_limit = \"lots\"\nmin_rsa_bits = 2048",
        )
        .replace("Europe/Berlin", "Europe/Atlantis")
        .replace("\"mon-fri\"", "\"mon-fry\"");
    let (_t, dir) = policy_dir(&[("nightly.toml", &bad)]);
    let d = dir.to_str().expect("utf-8 path");
    let r = mayfly(repo(), Some(&dir), &["policy", "check", d]);
    assert_eq!(r.code, 1);
    assert_text(&r.stdout, "");
    assert_text(
        &r.stderr,
        "\
$DIR/nightly.toml:8: rate_limit: \"lots\" is not a rate; write requests per period, e.g. \"30/m\", \"100/h\" or \"5/10m\"
$DIR/nightly.toml:9: min_rsa_bits = 2048 must be between 3072 and 16384
$DIR/nightly.toml:15: window day \"mon-fry\" is not a day; write \"mon\" .. \"sun\" or a range like \"mon-fri\"
$DIR/nightly.toml:18: window timezone \"Europe/Atlantis\" is not an IANA time zone name; write e.g. \"Europe/Berlin\" or \"UTC\"
4 error(s) in $DIR
",
    );
}

const NODES_WITH_APPROVAL: &str = r#"description = "Cluster nodes"
owner = "infra@example.com"
issuer = "github"
cert_type = "host"
hostnames = ["{node}.example.com"]
max_ttl = "1d"
[claims]
node = "node*"

[approval]
required = 1
issuer = "github"
approvers = ["groups:sre"]
"#;

#[test]
fn check_refuses_approval_on_a_host_role_with_file_and_line() {
    let (_t, dir) = policy_dir(&[
        ("nodes.toml", NODES_WITH_APPROVAL),
        ("nightly.toml", NIGHTLY),
    ]);
    let d = dir.to_str().expect("utf-8 path");
    let r = mayfly(repo(), Some(&dir), &["policy", "check", d]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_text(&r.stdout, "");
    assert_text(
        &r.stderr,
        "\
$DIR/nodes.toml:10: [approval] is only for user roles; a host certificate request cannot redeem an approval, so this role could never issue: remove [approval] or make it a user role
1 error(s) in $DIR
",
    );
    // Without [approval] the same host role is fine.
    let fixed = NODES_WITH_APPROVAL
        .split("\n[approval]")
        .next()
        .expect("text");
    std::fs::write(dir.join("nodes.toml"), fixed).expect("write");
    let r = mayfly(repo(), Some(&dir), &["policy", "check", d]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// A config with two `[[issuer]]`s whose urls differ only by a trailing slash.
const TWO_ISSUERS_ONE_URL: &str = r#"
[[issuer]]
name = "github"
url = "https://token.actions.githubusercontent.com"
audience = "mayfly"

[[issuer]]
name = "github-staging"
url = "https://token.actions.githubusercontent.com/"
audience = "mayfly-staging"
"#;

#[test]
fn two_issuers_with_the_same_url_stop_serve_and_policy_check() {
    let (t, dir) = policy_dir(&[("nightly.toml", NIGHTLY)]);
    let config = t.path().join("mayfly.toml");
    let data = t.path().join("data");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\npolicy_dir = {:?}\n{TWO_ISSUERS_ONE_URL}",
            data.display().to_string(),
            dir.display().to_string()
        ),
    )
    .expect("write config");
    let c = config.to_str().expect("utf-8 path");
    let want = "mayfly: config: issuers \"github\" (url \"https://token.actions.githubusercontent.com\") \
                and \"github-staging\" (url \"https://token.actions.githubusercontent.com/\") have the \
                same url (a trailing slash does not count); each [[issuer]] needs its own url: merge \
                them into one entry, or remove one\n";
    let r = serve_must_stop(&config);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_text(&r.stderr, want);
    assert!(!data.exists(), "serve must stop before it creates anything");
    let d = dir.to_str().expect("utf-8 path");
    let r = mayfly(repo(), Some(&dir), &["policy", "check", d, "--config", c]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_text(&r.stderr, want);
    assert_text(&r.stdout, "");
}

#[test]
fn example_cases_all_pass() {
    let r = mayfly(
        repo(),
        None,
        &[
            "policy",
            "test",
            "ca-policy",
            "--cases",
            "ca-policy/cases.toml",
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let cases = std::fs::read_to_string(repo().join("ca-policy/cases.toml"))
        .expect("read cases")
        .lines()
        .filter(|l| l.trim() == "[[case]]")
        .count();
    assert!(cases >= 20, "{cases}");
    assert!(
        r.stdout.ends_with(&format!("all {cases} cases passed\n")),
        "{}",
        r.stdout
    );
    assert_eq!(
        r.stdout.lines().filter(|l| l.starts_with("ok   ")).count(),
        cases
    );
    assert_text(&r.stderr, "");
}

const CASES: &str = r#"[[case]]
name = "main deploys"
role = "deploy"
issuer = "github"
claims = { sub = "repo:acme/api:ref:refs/heads/main", repository = "acme/api" }
expect = "allow"
expect_principals = ["deploy"]

[[case]]
name = "dev branch deploys too"
role = "deploy"
issuer = "github"
claims = { sub = "repo:acme/api:ref:refs/heads/dev", repository = "acme/api" }
expect = "allow"

[[case]]
name = "migrations wait for the window"
role = "nightly"
issuer = "github"
claims = { sub = "repo:acme/db:ref:refs/heads/main" }
at = "2026-11-24T02:50:00+01:00"
expect = "deny"
expect_code = "outside_window"

[[case]]
name = "deploy keeps its ttl"
role = "deploy"
issuer = "github"
claims = { sub = "repo:acme/api:ref:refs/heads/main", repository = "acme/api" }
expect = "allow"
expect_principals = ["deploy", "admin"]
expect_ttl = "10m"

[[case]]
name = "nightly without a time"
role = "nightly"
issuer = "github"
claims = { sub = "repo:acme/db:ref:refs/heads/main" }
expect = "deny"
"#;

#[test]
fn failing_cases_print_a_diff_and_exit_1() {
    let (_t, dir) = policy_dir(&[("deploy.toml", DEPLOY), ("nightly.toml", NIGHTLY)]);
    let cases = dir.join("cases.toml");
    std::fs::write(&cases, CASES).expect("write cases");
    let r = mayfly(
        repo(),
        Some(&dir),
        &[
            "policy",
            "test",
            dir.to_str().expect("utf-8"),
            "--cases",
            cases.to_str().expect("utf-8"),
            // Cases without `at` run at this time: a Tuesday noon, closed.
            "--at",
            "2026-11-24T12:00:00+01:00",
        ],
    );
    assert_eq!(r.code, 1);
    assert_text(
        &r.stdout,
        "\
ok   main deploys
FAIL dev branch deploys too ($DIR/cases.toml:10)
     role deploy, issuer github
     - expected: allow
     + got:      deny claim_mismatch (deploy.toml claims.sub): claim \"sub\" is \"repo:acme/api:ref:refs/heads/dev\", which matches none of [\"repo:acme/api:ref:refs/heads/main\"]
FAIL migrations wait for the window ($DIR/cases.toml:17)
     role nightly, issuer github
     - expected: deny outside_window
     + got:      allow principals=[\"migrate\"] ttl=600s extensions=[] window_end=2026-11-24T02:00:00Z
FAIL deploy keeps its ttl ($DIR/cases.toml:26)
     role deploy, issuer github
     - expected principals: [\"deploy\", \"admin\"]
     + got principals:      [\"deploy\"]
     - expected ttl: 10m
     + got ttl:      5m
       (decision: allow principals=[\"deploy\"] ttl=300s extensions=[\"permit-pty\"])
ok   nightly without a time
3 of 5 cases failed
",
    );
    assert_text(
        &r.stderr,
        "note: $DIR/cases.toml:35: case \"nightly without a time\" has no `at`, but role nightly has time windows: the result depends on when it runs\n",
    );
}

#[test]
fn a_broken_cases_file_names_the_line() {
    let (_t, dir) = policy_dir(&[("deploy.toml", DEPLOY)]);
    let cases = dir.join("cases.toml");
    std::fs::write(
        &cases,
        CASES.replace(
            "expect_code = \"outside_window\"",
            "expect_code = \"too_late\"",
        ),
    )
    .expect("write cases");
    let r = mayfly(
        repo(),
        Some(&dir),
        &[
            "policy",
            "test",
            dir.to_str().expect("utf-8"),
            "--cases",
            cases.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(r.code, 1);
    assert_text(&r.stdout, "");
    assert!(
        r.stderr.starts_with("$DIR/cases.toml:23: expect_code = \"too_late\" is not a denial code; known: [\"unknown_role\""),
        "{}",
        r.stderr
    );
}

#[test]
fn single_request_mode_still_works() {
    let (_t, dir) = policy_dir(&[("deploy.toml", DEPLOY)]);
    let claims = dir.join("claims.json");
    std::fs::write(
        &claims,
        r#"{"sub": "repo:acme/api:ref:refs/heads/main", "repository": "acme/api"}"#,
    )
    .expect("write claims");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "policy",
            "test",
            "--dir",
            dir.to_str().expect("utf-8"),
            "--role",
            "deploy",
            "--issuer",
            "github",
            "--claims",
            claims.to_str().expect("utf-8"),
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let a = args(&[]);
    let r = mayfly(
        repo(),
        Some(&dir),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_text(
        &r.stdout,
        "allow role=deploy principals=[\"deploy\"] ttl=300s extensions=[\"permit-pty\"]\n",
    );
    let a = args(&["--principal", "root"]);
    let r = mayfly(
        repo(),
        Some(&dir),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(r.code, 3);
    assert_text(
        &r.stdout,
        "deny principal_not_allowed: deploy.toml principals: principal \"root\" is not granted; this role grants [\"deploy\"]\n",
    );
    // --cases and --role are alternatives.
    let a = args(&["--cases", "x.toml"]);
    let r = mayfly(
        repo(),
        Some(&dir),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("cannot be used with"), "{}", r.stderr);
}

#[test]
fn explain_walks_through_every_step() {
    let (_t, dir) = policy_dir(&[("nightly.toml", NIGHTLY)]);
    let claims = dir.join("claims.json");
    std::fs::write(&claims, r#"{"sub": "repo:acme/db:ref:refs/heads/main"}"#)
        .expect("write claims");
    let base = [
        "policy",
        "explain",
        "--dir",
        dir.to_str().expect("utf-8"),
        "--role",
        "nightly",
        "--issuer",
        "github",
        "--claims",
        claims.to_str().expect("utf-8"),
    ];
    let mut a = base.to_vec();
    a.extend([
        "--at",
        "2026-11-24T02:50:00+01:00",
        "--key-type",
        "ssh-ed25519",
    ]);
    let r = mayfly(repo(), Some(&dir), &a);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_text(
        &r.stdout,
        "\
role nightly ($DIR/nightly.toml) at 2026-11-24T01:50:00Z
  pass  role          nightly (Nightly migrations), owner dba@example.com
  pass  issuer        token is from \"github\", the role's issuer
  pass  claims.sub    \"repo:acme/db:ref:refs/heads/main\" matches \"repo:acme/db:ref:refs/heads/main\"
  pass  window        window 1 (mon-fri 01:00-03:00 Europe/Berlin) is open at 2026-11-24T02:50:00+01:00 (Europe/Berlin); it closes 2026-11-24T03:00:00+01:00 (Europe/Berlin)
  pass  principals    [\"migrate\"] -> [\"migrate\"]
  pass  ttl           default_ttl 15m
  info  ttl           clipped to 10m so the certificate expires when the window closes
  info  extensions    []
  pass  key_types     ssh-ed25519 is one of the role's key types
  info  deactivation  not checked: give --config to check the CA's deactivations
  info  limits        rate_limit 10/h for the role; the CA counts these live (429 rate_limited, 403 too_many_active_certs)
decision: allow principals=[\"migrate\"] ttl=600s extensions=[] window_end=2026-11-24T02:00:00Z
",
    );

    let mut a = base.to_vec();
    a.extend([
        "--at",
        "2026-11-27T15:00:00Z",
        "--key-type",
        "ssh-rsa",
        "--rsa-bits",
        "4096",
    ]);
    let r = mayfly(repo(), Some(&dir), &a);
    assert_eq!(r.code, 3);
    assert_text(
        &r.stdout,
        "\
role nightly ($DIR/nightly.toml) at 2026-11-27T15:00:00Z
  pass  role        nightly (Nightly migrations), owner dba@example.com
  pass  issuer      token is from \"github\", the role's issuer
  pass  claims.sub  \"repo:acme/db:ref:refs/heads/main\" matches \"repo:acme/db:ref:refs/heads/main\"
  FAIL  window      2026-11-27T16:00:00+01:00 (Europe/Berlin) is outside every window of this role; next window opens 2026-11-30T01:00:00+01:00 (Europe/Berlin)
decision: deny outside_window (nightly.toml window): 2026-11-27T16:00:00+01:00 (Europe/Berlin) is outside every window of this role; next window opens 2026-11-30T01:00:00+01:00 (Europe/Berlin)
",
    );

    let mut a = base.to_vec();
    a.extend([
        "--at",
        "2026-11-24T01:30:00+01:00",
        "--key-type",
        "ssh-rsa",
        "--rsa-bits",
        "4096",
    ]);
    let r = mayfly(repo(), Some(&dir), &a);
    assert_eq!(r.code, 3);
    assert!(
        r.stdout.ends_with("  FAIL  key_types   public_key type \"ssh-rsa\" is not accepted by this role; use one of [\"ssh-ed25519\"]\ndecision: deny key_type_not_allowed (nightly.toml key_types): public_key type \"ssh-rsa\" is not accepted by this role; use one of [\"ssh-ed25519\"]\n"),
        "{}",
        r.stdout
    );
}

#[test]
fn the_policy_repo_example_passes_its_own_ci() {
    let dir = "examples/policy-repo-ci/ca-policy";
    let r = mayfly(repo(), None, &["policy", "check", "--deny-warnings", dir]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_text(&r.stderr, "");
    let cases = format!("{dir}/cases.toml");
    let r = mayfly(repo(), None, &["policy", "test", dir, "--cases", &cases]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.ends_with("all 5 cases passed\n"), "{}", r.stdout);
    // The workflow runs exactly these commands.
    let workflow = std::fs::read_to_string(repo().join("examples/policy-repo-ci/policy.yml"))
        .expect("read workflow");
    assert!(workflow.contains("run: mayfly policy check --deny-warnings ca-policy"));
    assert!(workflow.contains("run: mayfly policy test ca-policy --cases ca-policy/cases.toml"));
}

/// `--json` on check, test (one request and --cases) and explain: the
/// facts the text gives, with the same exit codes.
#[test]
fn check_test_and_explain_speak_json_with_the_same_exit_codes() {
    let (_t, dir) = policy_dir(&[("deploy.toml", DEPLOY), ("nightly.toml", NIGHTLY)]);
    let d = dir.to_str().expect("utf-8");
    let json = |r: &Run| -> serde_json::Value {
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", r.stdout, r.stderr))
    };

    // check: the roles and the digest the text prints.
    let text = mayfly(repo(), None, &["policy", "check", d]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    let r = mayfly(repo(), None, &["policy", "check", d, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json(&r);
    assert_eq!(v["ok"], true);
    assert_eq!(v["roles"], serde_json::json!(["deploy", "nightly"]));
    let digest = v["digest"].as_str().expect("digest");
    assert!(
        text.stdout.contains(&format!("digest {digest}")),
        "{}",
        text.stdout
    );
    // A broken role: ok false, the error with its file, exit 1.
    let (_t2, bad) = policy_dir(&[("deploy.toml", "principals = 3\n")]);
    let r = mayfly(
        repo(),
        None,
        &["policy", "check", bad.to_str().expect("utf-8"), "--json"],
    );
    assert_eq!(r.code, 1);
    let v = json(&r);
    assert_eq!(v["ok"], false);
    assert!(
        v["errors"][0]
            .as_str()
            .expect("error")
            .contains("deploy.toml"),
        "{v}"
    );

    // test, one request: allow, then deny with code and rule (exit 3).
    let claims = dir.join("claims.json");
    std::fs::write(
        &claims,
        r#"{"sub": "repo:acme/api:ref:refs/heads/main", "repository": "acme/api"}"#,
    )
    .expect("write claims");
    let c = claims.to_str().expect("utf-8");
    let test = [
        "policy", "test", "--dir", d, "--role", "deploy", "--issuer", "github", "--claims", c,
        "--json",
    ];
    let r = mayfly(repo(), None, &test);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json(&r);
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["principals"], serde_json::json!(["deploy"]));
    assert_eq!(v["ttl_seconds"], 300);
    let mut deny = test.to_vec();
    deny.extend(["--principal", "root"]);
    let r = mayfly(repo(), None, &deny);
    assert_eq!(r.code, 3);
    let v = json(&r);
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["code"], "principal_not_allowed");
    assert_eq!(v["rule"], "deploy.toml principals");

    // --cases: every case with its result; exit 1 on a mismatch.
    let cases = dir.join("cases.toml");
    std::fs::write(&cases, CASES).expect("write cases");
    let r = mayfly(
        repo(),
        None,
        &[
            "policy",
            "test",
            d,
            "--cases",
            cases.to_str().expect("utf-8"),
            "--at",
            "2026-11-24T12:00:00+01:00",
            "--json",
        ],
    );
    assert_eq!(r.code, 1);
    let v = json(&r);
    assert_eq!(v["total"], 5);
    assert_eq!(v["failed"], 3);
    assert_eq!(v["cases"][0]["passed"], true);
    assert_eq!(v["cases"][1]["result"]["code"], "claim_mismatch");

    // explain: the steps and the decision.
    let db = dir.join("claims-db.json");
    std::fs::write(&db, r#"{"sub": "repo:acme/db:ref:refs/heads/main"}"#).expect("write claims");
    let r = mayfly(
        repo(),
        None,
        &[
            "policy",
            "explain",
            "--dir",
            d,
            "--role",
            "nightly",
            "--issuer",
            "github",
            "--claims",
            db.to_str().expect("utf-8"),
            "--at",
            "2026-11-27T15:00:00Z",
            "--json",
        ],
    );
    assert_eq!(r.code, 3);
    let v = json(&r);
    let steps = v["steps"].as_array().expect("steps");
    assert!(
        steps
            .iter()
            .any(|s| s["verdict"] == "fail" && s["check"] == "window"),
        "{v}"
    );
    assert_eq!(v["result"]["decision"], "deny");
}
