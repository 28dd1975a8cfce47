//! The web console end to end: a real OIDC provider with a login form
//! (tests/oidc/provider.mjs with a human client), `mayfly serve` with
//! `[console]`, a headless chromium driven through chromedriver, the bot's
//! `mayfly ssh` and a real sshd.

mod support;

use std::process::{Command, Stdio};
use std::str::FromStr as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::browser::Browser;
use support::{http, keygen_ed25519, ClientSpec, Mayfly, Oidc, Sshd};

const PROD_POLICY: &str = r#"
description = "Production deploys need a human"
owner = "platform@example.com"
issuer = "ci"
principals = ["deploy"]
max_ttl = "10m"
[claims]
repository = "acme/*"
[approval]
required = 1
issuer = "ci"
approvers = ["groups:sre"]
expires = "15m"
"#;

const BUILD_POLICY: &str = r#"
description = "Builds"
owner = "ci@example.com"
issuer = "ci"
principals = ["build"]
max_ttl = "10m"
[claims]
repository = "acme/*"
"#;

/// The job claims every bot token carries (recorded through the issuer's
/// `audit_claims`).
const JOB: [(&str, &str); 3] = [("actor", "octocat"), ("run_id", "4242"), ("sha", "c0ffee1")];

const CONSOLE_CLIENT: &str = "mayfly-console";
const CONSOLE_SECRET: &str = "console-client-secret";

struct Env {
    oidc: Oidc,
    ca: Mayfly,
    dir: tempfile::TempDir,
    /// The git commit of the policy directory.
    policy_commit: String,
}

/// The CA with `[console]` at the provider's human client. People:
/// alice (sre, admin), carol (sre; carol-bot's token has her subject),
/// victor (viewer only), mallory (nothing). Bot tokens carry [`JOB`],
/// recorded through `audit_claims`; every record is checkpointed; the
/// policy directory is a git checkout.
fn setup() -> Env {
    let dir = support::temp_dir("console");
    let mut ca = Mayfly::configure("", &[("prod-deploy", PROD_POLICY), ("build", BUILD_POLICY)]);
    let public_url = ca.url();
    let oidc = Oidc::start_with_people(
        &[
            ClientSpec::new("bot", "RS256").claims(json!({
                "repository": "acme/api", "actor": JOB[0].1, "run_id": JOB[1].1, "sha": JOB[2].1,
            })),
            ClientSpec::new("carol-bot", "RS256")
                .claims(json!({"repository": "acme/api", "sub": "carol"})),
        ],
        &json!([{
            "client_id": CONSOLE_CLIENT,
            "client_secret": CONSOLE_SECRET,
            "redirect_uris": [format!("{public_url}/console/callback")],
        }]),
        &json!({
            "alice": {"groups": ["sre"], "name": "Alice"},
            "carol": {"groups": ["sre"]},
            "victor": {"groups": ["viewers"]},
            "mallory": {"groups": ["nobody"]},
        }),
    );
    let secret_file = dir.path().join("console-secret");
    std::fs::write(&secret_file, format!("{CONSOLE_SECRET}\n")).expect("write secret");
    let extra = format!(
        "{}audit_claims = [\"run_id\", \"sha\", \"actor\"]\n\n[audit]\ncheckpoint_every = 1\n\n[[admin]]\nissuer = \"ci\"\n[admin.claims]\nsub = \"alice\"\n\n[console]\nissuer = \"ci\"\nclient_id = \"{CONSOLE_CLIENT}\"\nclient_secret_file = \"{}\"\npublic_url = \"{public_url}\"\nviewers = [\"groups:viewers\"]\n",
        oidc.issuer_toml("ci"),
        secret_file.display()
    );
    let mut config = std::fs::read_to_string(ca.config_path()).expect("read config");
    config.push_str(&extra);
    std::fs::write(ca.config_path(), config).expect("write config");
    let policy_commit = git_commit_all(&ca.policy_dir());
    ca.restart();
    Env {
        oidc,
        ca,
        dir,
        policy_commit,
    }
}

/// Makes `dir` a git checkout with one commit of everything in it;
/// returns the commit.
fn git_commit_all(dir: &std::path::Path) -> String {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=ops", "-c", "user.email=ops@example.com"])
            .args(args)
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "policy"]);
    git(&["rev-parse", "HEAD"])
}

impl Env {
    fn token_file(&self, who: &str) -> String {
        let p = self.dir.path().join(format!("{who}.token"));
        std::fs::write(&p, self.oidc.token(who)).expect("token");
        p.display().to_string()
    }

    fn bot_post(&self, who: &str, body: Value) -> http::Response {
        let auth = format!("Bearer {}", self.oidc.token(who));
        http::post_json(
            &format!("{}/v1/certs/user", self.ca.url()),
            &[("Authorization", auth.as_str())],
            &body,
        )
        .expect("POST /v1/certs/user")
    }

    /// Logs `user` in through the provider's login form, starting from a
    /// browser with no cookies; returns the session cookie's value.
    async fn login(&self, b: &Browser, user: &str) -> String {
        b.client
            .goto(&format!("{}/console/", self.ca.url()))
            .await
            .expect("goto");
        b.client.delete_all_cookies().await.expect("delete cookies");
        b.client
            .goto(&format!("{}/console/", self.ca.url()))
            .await
            .expect("goto");
        let url = b.client.current_url().await.expect("url").to_string();
        assert!(
            url.starts_with(&self.oidc.issuer),
            "not at the issuer: {url}"
        );
        b.fill("input[name=login]", user).await;
        b.fill("input[name=password]", "any").await;
        b.click("button[type=submit]").await;
        b.wait("#person").await;
        assert_eq!(b.text("#person").await, format!("ci:{user}"));
        b.client
            .get_named_cookie("mayfly_console")
            .await
            .expect("session cookie")
            .value()
            .to_string()
    }

    /// A POST of a console form with a session cookie, as a script or
    /// another site would send it (no browser).
    fn post_form(&self, path: &str, session: &str, fields: &[(&str, &str)]) -> http::Response {
        let cookie = format!("mayfly_console={session}");
        http::post_form(
            &format!("{}{path}", self.ca.url()),
            &[("Cookie", cookie.as_str())],
            fields,
        )
        .expect("POST form")
    }

    fn get_with(&self, path: &str, session: &str) -> http::Response {
        let cookie = format!("mayfly_console={session}");
        http::request(
            "GET",
            &format!("{}{path}", self.ca.url()),
            &[("Cookie", cookie.as_str())],
            b"",
        )
        .expect("GET")
    }
}

/// The CSRF token in a page's forms.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a csrf field");
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').expect("end of value")].to_string()
}

/// Starts `mayfly ssh` for prod-deploy as `bot` and returns the child, its
/// stderr so far, and the approval request id it prints.
fn start_mayfly_ssh(
    env: &Env,
    sshd: &Sshd,
    bot: &str,
) -> (std::process::Child, Arc<Mutex<String>>, String) {
    let mut args: Vec<String> = vec![
        "ssh".into(),
        "--server".into(),
        env.ca.url(),
        "--role".into(),
        "prod-deploy".into(),
        "--token-file".into(),
        env.token_file(bot),
        "--approval-timeout".into(),
        "90s".into(),
        "--".into(),
    ];
    args.extend(sshd.client_args("deploy"));
    args.push("id -un".into());
    let mut child = Command::new(Mayfly::bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mayfly ssh");
    let (stderr, _reader) = support::process::capture_stderr(&mut child);
    let id = support::process::approval_id_in(&stderr);
    (child, stderr, id)
}

#[test]
fn console_absent_is_404_and_the_bot_api_is_unchanged() {
    let oidc =
        Oidc::start(&[ClientSpec::new("bot", "RS256").claims(json!({"repository": "acme/api"}))]);
    let ca = Mayfly::start(&oidc.issuer_toml("ci"), &[("build", BUILD_POLICY)]);
    for path in [
        "/console/",
        "/console",
        "/console/approvals",
        "/console/callback?code=x&state=y",
    ] {
        let r = http::get(&format!("{}{path}", ca.url())).expect("GET");
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    let dir = support::temp_dir("console-absent");
    let (_, public) = keygen_ed25519(dir.path());
    let auth = format!("Bearer {}", oidc.token("bot"));
    let r = http::post_json(
        &format!("{}/v1/certs/user", ca.url()),
        &[("Authorization", auth.as_str())],
        &json!({"role": "build", "public_key": public}),
    )
    .expect("POST");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn no_session_redirects_to_the_issuers_authorization_endpoint_with_pkce() {
    let env = setup();
    let r = http::get(&format!("{}/console/", env.ca.url())).expect("GET /console/");
    assert!(matches!(r.status, 302 | 303), "{} {}", r.status, r.text());
    let location = r.header("location").expect("Location").to_string();
    let auth = format!("{}/auth?", env.oidc.issuer);
    assert!(location.starts_with(&auth), "{location}");
    let u = url::Url::parse(&location).expect("url");
    let q: std::collections::HashMap<String, String> = u.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], CONSOLE_CLIENT);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(
        q["redirect_uri"],
        format!("{}/console/callback", env.ca.url())
    );
    for k in ["state", "nonce", "code_challenge"] {
        assert!(q.get(k).is_some_and(|v| v.len() >= 43), "{k} in {location}");
    }
    let cookie = r.header("set-cookie").expect("login cookie");
    assert!(cookie.starts_with("mayfly_console_login="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    // Every console answer has the strict CSP.
    let csp = r
        .header("content-security-policy")
        .expect("CSP")
        .to_string();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("script-src"),
        "{csp}"
    );
    // A callback with a state nobody started logs nobody in.
    let r = http::get(&format!(
        "{}/console/callback?code=x&state={}",
        env.ca.url(),
        q["state"]
    ))
    .expect("GET callback");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r
        .header("set-cookie")
        .is_none_or(|c| !c.starts_with("mayfly_console=")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_logs_in_sees_the_feed_approves_a_request_and_revokes_a_certificate() {
    let env = setup();
    let b = Browser::start().await;
    let session = env.login(&b, "alice").await;

    // The session cookie: HttpOnly, SameSite=Strict, scoped to /console.
    let c = b
        .client
        .get_named_cookie("mayfly_console")
        .await
        .expect("cookie");
    assert_eq!(c.http_only(), Some(true));
    assert_eq!(format!("{:?}", c.same_site()), "Some(Strict)");
    assert_eq!(c.path(), Some("/console"));
    assert!(!session.is_empty());

    // A bot's certificate appears in the feed with its key id.
    let (_, public) = keygen_ed25519(env.dir.path());
    let r = env.bot_post("bot", json!({"role": "build", "public_key": public}));
    assert_eq!(r.status, 200, "{}", r.text());
    let issued = r.json();
    let serial = issued["serial"].as_u64().expect("serial");
    let key_id = issued["key_id"].as_str().expect("key_id").to_string();
    b.client
        .goto(&format!("{}/console/feed", env.ca.url()))
        .await
        .expect("feed");
    let feed = b.text("table.feed").await;
    assert!(feed.contains(&key_id), "{feed}");
    b.client
        .goto(&format!("{}/console/", env.ca.url()))
        .await
        .expect("overview");
    assert!(b.text("table.feed").await.contains(&key_id));

    // A refusal shows the reason the bot got, and appears on the open
    // feed page by itself: the feed reloads itself (no script; a meta
    // refresh the CSP allows).
    b.client
        .goto(&format!("{}/console/feed", env.ca.url()))
        .await
        .expect("feed");
    let r = env.bot_post(
        "bot",
        json!({"role": "build", "public_key": public, "principals": ["root"]}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let bot_message = r.json()["message"].as_str().expect("message").to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // The page may be reloading: an element gone stale reads as empty.
        let feed = match b.client.find(fantoccini::Locator::Css("table.feed")).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if feed.contains(&bot_message) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the open feed did not show the refusal within 20 s: {bot_message} not in {feed}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Approve a pending request; the bot's mayfly ssh then logs in.
    let ca_pub = http::get(&format!("{}/v1/ca/user.pub", env.ca.url()))
        .expect("ca")
        .text();
    let sshd = Sshd::start(&ca_pub);
    let (child, stderr, id) = start_mayfly_ssh(&env, &sshd, "bot");
    b.client
        .goto(&format!("{}/console/approvals", env.ca.url()))
        .await
        .expect("approvals");
    let section = b.text(&format!("section[id='{id}']")).await;
    assert!(
        section.contains("deploy") && section.contains("ci:bot"),
        "{section}"
    );
    assert!(section.contains("SHA256:"), "{section}");
    b.fill(
        &format!("section[id='{id}'] input[name=reason]"),
        "change 42",
    )
    .await;
    b.click(&format!("section[id='{id}'] button[value=approve]"))
        .await;
    let notice = b.text("#notice").await;
    assert!(
        notice.contains("Approved") && notice.contains(&id),
        "{notice}"
    );
    let out = child.wait_with_output().expect("mayfly ssh");
    let err = stderr.lock().expect("lock").clone();
    assert!(
        out.status.success(),
        "mayfly ssh failed: {err}\n{}",
        sshd.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "deploy",
        "{err}"
    );
    // The vote is audited with the person as the approver.
    let granted = env.ca.audit(&["--event", "approval_granted"]);
    assert_eq!(granted.len(), 1, "{granted:?}");
    assert_eq!(
        granted[0]["mayfly"]["actor"],
        json!("approver:ci:alice"),
        "{granted:?}"
    );

    // Revoke the build certificate from its page (found by key id, as sshd logs it).
    b.client
        .goto(&format!("{}/console/certs?q={}", env.ca.url(), key_id))
        .await
        .expect("cert page");
    assert_eq!(b.text("#serial").await, serial.to_string());
    assert_eq!(b.text("#status").await, "valid");
    b.fill(
        "form[action='/console/certs/revoke'] input[name=reason]",
        "key leaked",
    )
    .await;
    b.click("#revoke").await;
    b.wait("#status span.bad").await;
    assert!(b.text("#status").await.starts_with("revoked"));
    let revoked = env.ca.audit(&["--event", "cert_revoked"]);
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(
        revoked[0]["mayfly"]["actor"],
        json!("admin:ci:alice (console)"),
        "{revoked:?}"
    );
    // ... and it is in /v1/krl, as ssh-keygen reads it.
    let krl = http::get(&format!("{}/v1/krl", env.ca.url())).expect("krl");
    assert_eq!(krl.status, 200);
    let krl_path = env.dir.path().join("krl");
    std::fs::write(&krl_path, &krl.body).expect("write krl");
    let cert_path = env.dir.path().join("build-cert.pub");
    std::fs::write(
        &cert_path,
        issued["certificate"].as_str().expect("certificate"),
    )
    .expect("cert");
    let q = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(&krl_path)
        .arg(&cert_path)
        .output()
        .expect("ssh-keygen -Q");
    let said = String::from_utf8_lossy(&q.stdout).to_string();
    assert!(
        said.contains("REVOKED"),
        "ssh-keygen -Q: {said} {}",
        String::from_utf8_lossy(&q.stderr)
    );

    // Logout ends the session on the server: the old cookie is dead.
    b.client
        .goto(&format!("{}/console/", env.ca.url()))
        .await
        .expect("overview");
    b.click("#logout").await;
    // The click returns before the post is answered: wait for the session to end.
    let start = Instant::now();
    let mut r = env.get_with("/console/", &session);
    while r.status == 200 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        r = env.get_with("/console/", &session);
    }
    assert!(matches!(r.status, 302 | 303), "{}", r.status);
    assert!(r
        .header("location")
        .is_some_and(|l| l.starts_with(&env.oidc.issuer)));
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_roles_and_self_approval_are_enforced() {
    let env = setup();
    let b = Browser::start().await;

    // alice, an admin: a form post without or with a wrong CSRF token is refused.
    let (_, public) = keygen_ed25519(env.dir.path());
    let r = env.bot_post("bot", json!({"role": "build", "public_key": public}));
    assert_eq!(r.status, 200, "{}", r.text());
    let serial = r.json()["serial"].as_u64().expect("serial").to_string();
    let alice = env.login(&b, "alice").await;
    let page = env.get_with(&format!("/console/certs?q={serial}"), &alice);
    assert_eq!(page.status, 200);
    let csrf = csrf_of(&page.text());
    let r = env.post_form(
        "/console/certs/revoke",
        &alice,
        &[("serial", &serial), ("reason", "x")],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("CSRF"), "{}", r.text());
    let r = env.post_form(
        "/console/certs/revoke",
        &alice,
        &[
            ("serial", &serial),
            ("reason", "x"),
            ("csrf", "wrong-token-of-the-right-length-0123456789ab"),
        ],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(env.ca.audit(&["--event", "cert_revoked"]).len(), 0);
    // With the session's token it goes through (the check is not just "always no").
    let r = env.post_form(
        "/console/certs/revoke",
        &alice,
        &[("serial", &serial), ("reason", "x"), ("csrf", &csrf)],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(env.ca.audit(&["--event", "cert_revoked"]).len(), 1);
    // A post from another site is refused even with the token.
    let cookie = format!("mayfly_console={alice}");
    let r = http::post_form(
        &format!("{}/console/identity/disable", env.ca.url()),
        &[
            ("Cookie", cookie.as_str()),
            ("Origin", "https://evil.example"),
        ],
        &[
            ("issuer", "ci"),
            ("subject", "bot"),
            ("reason", "x"),
            ("csrf", &csrf),
        ],
    )
    .expect("POST");
    assert_eq!(r.status, 403, "{}", r.text());

    // victor, a viewer: sees a pending request without buttons; cannot
    // approve, revoke or disable even with his own valid CSRF token.
    let (_, key2) = keygen_ed25519(&env.dir.path().join("k2").tap_mkdir());
    let r = env.bot_post("bot", json!({"role": "prod-deploy", "public_key": key2}));
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["approval_request"]
        .as_str()
        .expect("id")
        .to_string();
    let r = env.bot_post("bot", json!({"role": "build", "public_key": key2}));
    let serial2 = r.json()["serial"].as_u64().expect("serial").to_string();
    let victor = env.login(&b, "victor").await;
    b.client
        .goto(&format!("{}/console/approvals", env.ca.url()))
        .await
        .expect("approvals");
    let section = b.text(&format!("section[id='{id}']")).await;
    assert!(section.contains("not an approver"), "{section}");
    assert!(!b.source().await.contains("value=\"approve\""));
    let vcsrf = csrf_of(&b.source().await);
    let r = env.post_form(
        &format!("/console/approvals/{id}"),
        &victor,
        &[
            ("decision", "approve"),
            ("reason", "lgtm"),
            ("csrf", &vcsrf),
        ],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("not_approver"), "{}", r.text());
    let r = env.post_form(
        "/console/certs/revoke",
        &victor,
        &[("serial", &serial2), ("reason", "x"), ("csrf", &vcsrf)],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("not_admin"), "{}", r.text());
    let r = env.post_form(
        "/console/identity/disable",
        &victor,
        &[
            ("issuer", "ci"),
            ("subject", "bot"),
            ("reason", "x"),
            ("csrf", &vcsrf),
        ],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(env.ca.audit(&["--event", "cert_revoked"]).len(), 1);
    assert_eq!(env.ca.audit(&["--event", "approval_granted"]).len(), 0);
    let refused = env.ca.audit(&["--event", "approval_vote_refused"]);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["mayfly"]["actor"], json!("approver:ci:victor"));

    // carol cannot approve a request made under her own subject.
    let (_, key3) = keygen_ed25519(&env.dir.path().join("k3").tap_mkdir());
    let r = env.bot_post(
        "carol-bot",
        json!({"role": "prod-deploy", "public_key": key3}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let own = r.json()["approval_request"]
        .as_str()
        .expect("id")
        .to_string();
    env.login(&b, "carol").await;
    b.client
        .goto(&format!("{}/console/approvals", env.ca.url()))
        .await
        .expect("approvals");
    b.fill(&format!("section[id='{own}'] input[name=reason]"), "mine")
        .await;
    b.click(&format!("section[id='{own}'] button[value=approve]"))
        .await;
    b.wait("p.error").await;
    let said = b.text("p.error").await;
    assert!(said.contains("self_approval"), "{said}");
    assert_eq!(env.ca.audit(&["--event", "approval_granted"]).len(), 0);

    // mallory is nobody here: the login itself is refused, and audited.
    b.client.delete_all_cookies().await.expect("cookies");
    b.client
        .goto(&format!("{}/console/", env.ca.url()))
        .await
        .expect("goto");
    b.fill("input[name=login]", "mallory").await;
    b.fill("input[name=password]", "any").await;
    b.click("button[type=submit]").await;
    b.wait("p.error").await;
    assert!(b.text("p.error").await.contains("not a viewer"));
    assert!(b.client.get_named_cookie("mayfly_console").await.is_err());
    let denied = env.ca.audit(&["--event", "admin_denied"]);
    assert!(
        denied.iter().any(|d| d["event"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ci:mallory"))),
        "{denied:?}"
    );
    b.close().await;
}

/// Starts a console login outside the browser (`GET /console/` without
/// following the redirect), then gives the browser that login's binding
/// cookie, as if it had made the request itself. Returns the issuer's
/// authorization URL, for the test to follow (or alter) in the browser.
async fn login_by_hand(env: &Env, b: &Browser) -> url::Url {
    let r = http::get(&format!("{}/console/", env.ca.url())).expect("GET /console/");
    assert!(matches!(r.status, 302 | 303), "{} {}", r.status, r.text());
    let cookie = r.header("set-cookie").expect("login cookie");
    let binding = cookie
        .strip_prefix("mayfly_console_login=")
        .and_then(|c| c.split(';').next())
        .expect("the login cookie's value")
        .to_string();
    // The page the cookie is for (it answers 400: no code, no state).
    b.client
        .goto(&format!("{}/console/callback", env.ca.url()))
        .await
        .expect("goto");
    // Provider and CA share the host 127.0.0.1: this also logs the
    // browser out of the provider.
    b.client.delete_all_cookies().await.expect("delete cookies");
    let c = fantoccini::cookies::Cookie::parse(format!(
        "mayfly_console_login={binding}; Path=/console/callback; Domain=127.0.0.1; HttpOnly; SameSite=Lax"
    ))
    .expect("a cookie");
    b.client.add_cookie(c).await.expect("add the login cookie");
    url::Url::parse(r.header("location").expect("Location")).expect("authorization URL")
}

/// Types `user` into the provider's login form at `url`.
async fn log_in_at_provider(b: &Browser, url: &url::Url, user: &str) {
    b.client.goto(url.as_str()).await.expect("goto issuer");
    b.fill("input[name=login]", user).await;
    b.fill("input[name=password]", "any").await;
    b.click("button[type=submit]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_for_another_nonce_is_refused_and_opens_no_session() {
    let env = setup();
    let b = Browser::start().await;

    // The login's own authorization request with another nonce: the
    // issuer signs an ID token for that nonce, and the code comes back
    // to this browser's login (right state, binding cookie and PKCE
    // verifier). Only the nonce is wrong.
    let mut url = login_by_hand(&env, &b).await;
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "nonce" {
                "a-nonce-of-another-login-0123456789abcdefghij".to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(&pairs);
    log_in_at_provider(&b, &url, "alice").await;
    b.wait("p.error").await;
    let said = b.text("p.error").await;
    assert!(said.contains("nonce"), "{said}");
    assert!(
        b.client.get_named_cookie("mayfly_console").await.is_err(),
        "a session cookie was set"
    );
    assert!(b.client.current_url().await.expect("url").path() == "/console/callback");
    let served = env.ca.stderr_log();
    assert!(served.contains("console login refused"), "{served}");
    assert!(!served.contains("\"console login\""), "{served}");

    // The same steps with the login's own nonce do log in: the refusal
    // above is the nonce check, not the way the test drives the login.
    let url = login_by_hand(&env, &b).await;
    log_in_at_provider(&b, &url, "alice").await;
    b.wait("#person").await;
    assert_eq!(b.text("#person").await, "ci:alice");
    assert!(b.client.get_named_cookie("mayfly_console").await.is_ok());
    b.close().await;
}

impl Env {
    async fn open(&self, b: &Browser, path: &str) {
        b.client
            .goto(&format!("{}{path}", self.ca.url()))
            .await
            .unwrap_or_else(|e| panic!("goto {path}: {e}"));
    }

    /// The text of the page at `path` in the browser, waiting for `css`.
    async fn page_text(&self, b: &Browser, path: &str, css: &str) -> String {
        self.open(b, path).await;
        b.text(css).await
    }
}

/// The `SHA256:` fingerprint of an OpenSSH public key line.
fn fingerprint(dir: &std::path::Path, public: &str) -> String {
    let p = dir.join("fp.pub");
    std::fs::write(&p, public).expect("write key");
    let out = Command::new("ssh-keygen")
        .arg("-l")
        .arg("-f")
        .arg(&p)
        .output()
        .expect("ssh-keygen -l");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("a fingerprint")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_show_counts_keys_the_chain_identities_the_job_and_the_policy() {
    let env = setup();
    let b = Browser::start().await;
    let (_, public) = keygen_ed25519(env.dir.path());
    let mut issued = Vec::new();
    for _ in 0..2 {
        let r = env.bot_post("bot", json!({"role": "build", "public_key": public}));
        assert_eq!(r.status, 200, "{}", r.text());
        issued.push(r.json());
    }
    let r = env.bot_post(
        "bot",
        json!({"role": "build", "public_key": public, "principals": ["root"]}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let refusal_code = r.json()["error"].as_str().expect("error").to_string();
    let r = env.bot_post("bot", json!({"role": "prod-deploy", "public_key": public}));
    assert_eq!(r.status, 202, "{}", r.text());
    let pending_id = r.json()["approval_request"]
        .as_str()
        .expect("id")
        .to_string();
    env.login(&b, "alice").await;

    // Overview: counts, active certificates, the audit head, the last
    // signed checkpoint's time, the CA keys and their rotation state.
    let start = Instant::now();
    loop {
        env.open(&b, "/console/").await;
        if !b.text("#last-checkpoint").await.contains("none yet") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no checkpoint");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(b.text("#active-certs").await, "2");
    assert_eq!(b.text("#issued-hour").await, "2");
    assert_eq!(b.text("#refused-hour").await, "1");
    assert_eq!(b.text("#pending").await, "1");
    let by_role = b.text("#by-role").await;
    assert!(by_role.contains("build 2 1"), "{by_role}");
    let by_reason = b.text("#by-reason").await;
    assert!(
        by_reason.contains(&format!("{refusal_code} 1")),
        "{by_reason}"
    );
    let records = env.ca.audit(&[]);
    let head = records
        .iter()
        .filter_map(|r| r["mayfly"]["audit"]["seq"].as_u64())
        .max()
        .expect("a head");
    let shown = b.text("#audit-head").await;
    assert!(
        shown.starts_with(&format!("seq {head} ")),
        "{shown} (head {head})"
    );
    let cp = b.text("#last-checkpoint").await;
    let (when, at) = cp
        .strip_prefix("signed ")
        .and_then(|c| c.split_once(", at seq "))
        .unwrap_or_else(|| panic!("{cp}"));
    let when = jiff::Timestamp::from_str(when).unwrap_or_else(|e| panic!("{when}: {e}"));
    let age = jiff::Timestamp::now().duration_since(when);
    assert!(age.as_secs() >= 0 && age.as_secs() < 600, "{cp}");
    let at_seq: u64 = at
        .split_whitespace()
        .next()
        .expect("seq")
        .parse()
        .expect("seq");
    assert!(at_seq >= 1 && at_seq <= head, "{cp}");
    let user_ca = http::get(&format!("{}/v1/ca/user.pub", env.ca.url()))
        .expect("ca")
        .text();
    let ca_line = b.text("#ca-user").await;
    assert!(
        ca_line.contains(&format!("active {}", fingerprint(env.dir.path(), &user_ca))),
        "{ca_line}"
    );
    assert!(ca_line.contains("no rotation in progress"), "{ca_line}");
    assert!(b.text("#ca-host").await.starts_with("active SHA256:"));

    // Feed: the job behind each decision and where it came from.
    let feed = env.page_text(&b, "/console/feed", "table.feed").await;
    let job = JOB.map(|(k, v)| format!("{k}={v}")).join(" ");
    for i in &issued {
        let key_id = i["key_id"].as_str().expect("key_id");
        let row = feed
            .lines()
            .find(|l| l.contains(key_id))
            .unwrap_or_else(|| panic!("{key_id} not in {feed}"));
        assert!(row.contains(&job), "{row}");
        assert!(row.contains("127.0.0.1"), "{row}");
    }
    let refused = feed
        .lines()
        .find(|l| l.contains("refused"))
        .unwrap_or_else(|| panic!("no refusal in {feed}"));
    assert!(
        refused.contains(&job) && refused.contains(&refusal_code),
        "{refused}"
    );

    // Approvals: who asks, with which claims.
    let section = env
        .page_text(
            &b,
            "/console/approvals",
            &format!("section[id='{pending_id}'] td.job"),
        )
        .await;
    assert_eq!(section, job);

    // Identities: owner, first and last seen, certificates, last refusal.
    let list = env.page_text(&b, "/console/identities", "main table").await;
    let row = list
        .lines()
        .find(|l| l.contains("ci:bot"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(row.starts_with("active ci:bot"), "{row}");
    assert!(row.contains("ci@example.com"), "{row}");
    let year = jiff::Timestamp::now().to_string()[..4].to_string();
    assert_eq!(
        row.matches(&format!("{year}-")).count(),
        3,
        "first, last seen, refusal: {row}"
    );
    assert!(
        row.contains(&format!(" 2 {year}-")),
        "two certificates: {row}"
    );
    assert!(row.contains(&format!("build: {refusal_code}")), "{row}");
    let detail = env
        .page_text(&b, "/console/identity?issuer=ci&subject=bot", "main")
        .await;
    assert_eq!(b.text("#identity-status").await, "active");
    assert!(detail.contains("2 issued, 1 refused"), "{detail}");
    assert!(b.source().await.contains("id=\"disable\""));

    // Audit search: the chain's status, and the filters.
    let status = env.page_text(&b, "/console/audit", "#chain-status").await;
    assert!(status.starts_with("Hash chain intact: "), "{status}");
    assert!(status.contains("the last at seq"), "{status}");
    let serial = issued[1]["serial"].as_u64().expect("serial");
    for (query, want, must) in [
        ("event=cert_denied", 1, refusal_code.clone()),
        ("event=cert_issued&role=build", 2, "cert_issued".to_string()),
        (&*format!("serial={serial}"), 1, serial.to_string()),
        ("subject=nobody", 0, String::new()),
        (
            "event=approval_requested&since=1h",
            1,
            "approval_requested".to_string(),
        ),
    ] {
        let text = env
            .page_text(&b, &format!("/console/audit?{query}"), "main")
            .await;
        assert!(
            text.contains(&format!("{want} record(s)")),
            "{query}: {text}"
        );
        assert!(text.contains(&must), "{query}: {text}");
    }
    let text = env
        .page_text(&b, "/console/audit?event=nonsense", "p.error")
        .await;
    assert!(text.contains("there is no audit event"), "{text}");

    // Policy: roles with owner and description, digest and git commit,
    // and the explain form for an allowed and a refused set of claims.
    let roles = env.page_text(&b, "/console/policy", "#roles").await;
    for want in [
        "prod-deploy Production deploys need a human platform@example.com",
        "build Builds ci@example.com",
    ] {
        assert!(roles.contains(want), "{want} not in {roles}");
    }
    let digest = b.text("#policy-digest").await;
    assert!(digest.len() >= 16, "{digest}");
    let replicas = b.text("#replicas").await;
    assert!(replicas.contains(&env.policy_commit), "{replicas}");
    assert!(replicas.contains(&digest), "{replicas}");
    let drift = b.text("#drift").await;
    assert!(
        drift.starts_with("1 live replica(s), all enforcing policy"),
        "{drift}"
    );
    for (claims, verdict) in [
        (
            r#"{"sub": "bot", "repository": "acme/api"}"#,
            "allow principals=[\"build\"]",
        ),
        (r#"{"sub": "bot", "repository": "other/api"}"#, "deny "),
    ] {
        env.open(&b, "/console/policy").await;
        b.client
            .find(fantoccini::Locator::Css("textarea[name=claims]"))
            .await
            .expect("textarea")
            .clear()
            .await
            .expect("clear");
        b.fill("textarea[name=claims]", claims).await;
        b.client
            .find(fantoccini::Locator::Css(
                "select[name=role] option[value=build]",
            ))
            .await
            .expect("option")
            .click()
            .await
            .expect("select build");
        b.click("#explain").await;
        b.wait("#explain-result").await;
        let result = b.text("#explain-result").await;
        assert!(result.starts_with(verdict), "{claims}: {result}");
        let trace = b.text("#explain-trace").await;
        assert!(trace.contains("repository"), "{trace}");
    }
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_disables_and_enables_an_identity_from_its_page() {
    let env = setup();
    let b = Browser::start().await;
    let (_, public) = keygen_ed25519(env.dir.path());
    let r = env.bot_post("bot", json!({"role": "build", "public_key": public}));
    assert_eq!(r.status, 200, "{}", r.text());

    // victor, a viewer, sees the identity without buttons, and a forged
    // post with his own CSRF token is refused.
    let victor = env.login(&b, "victor").await;
    env.open(&b, "/console/identity?issuer=ci&subject=bot")
        .await;
    assert_eq!(b.text("#identity-status").await, "active");
    let src = b.source().await;
    assert!(
        !src.contains("/console/identity/disable") && !src.contains("id=\"disable\""),
        "{src}"
    );
    let vcsrf = csrf_of(&src);
    let r = env.post_form(
        "/console/identity/disable",
        &victor,
        &[
            ("issuer", "ci"),
            ("subject", "bot"),
            ("reason", "x"),
            ("csrf", &vcsrf),
        ],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("not_admin"), "{}", r.text());
    assert_eq!(env.ca.audit(&["--event", "disabled"]).len(), 0);
    let r = env.bot_post("bot", json!({"role": "build", "public_key": public}));
    assert_eq!(r.status, 200, "{}", r.text());

    // alice, an admin, disables it from its page: the bot is refused.
    env.login(&b, "alice").await;
    env.open(&b, "/console/identity?issuer=ci&subject=bot")
        .await;
    b.fill("input[name=reason]", "runner compromised").await;
    b.click("#disable").await;
    b.wait("#enable").await;
    assert_eq!(b.text("#identity-status").await, "disabled");
    let r = env.bot_post("bot", json!({"role": "build", "public_key": public}));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], json!("disabled"), "{}", r.text());
    let disabled = env.ca.audit(&["--event", "disabled"]);
    assert_eq!(disabled.len(), 1, "{disabled:?}");
    assert_eq!(
        disabled[0]["mayfly"]["actor"],
        json!("admin:ci:alice (console)"),
        "{disabled:?}"
    );
    // Its live certificates went with it.
    assert_eq!(env.ca.audit(&["--event", "cert_revoked"]).len(), 2);

    // ... and enables it again: the bot gets certificates.
    b.fill("input[name=reason]", "runner rebuilt").await;
    b.click("#enable").await;
    b.wait("#disable").await;
    assert_eq!(b.text("#identity-status").await, "active");
    let r = env.bot_post("bot", json!({"role": "build", "public_key": public}));
    assert_eq!(r.status, 200, "{}", r.text());
    let enabled = env.ca.audit(&["--event", "enabled"]);
    assert_eq!(enabled.len(), 1, "{enabled:?}");
    assert_eq!(
        enabled[0]["mayfly"]["actor"],
        json!("admin:ci:alice (console)")
    );
    b.close().await;
}

/// `deploy` as replica A has it, and as replica B has it (another TTL:
/// another policy digest).
const REPLICA_ROLE: [&str; 2] = [
    "description = \"replicas\"\nowner = \"sre@example.com\"\nissuer = \"ci\"\nprincipals = [\"deploy\"]\nmax_ttl = \"10m\"\n[claims]\nsub = \"bot*\"\n",
    "description = \"replicas\"\nowner = \"sre@example.com\"\nissuer = \"ci\"\nprincipals = [\"deploy\"]\nmax_ttl = \"5m\"\n[claims]\nsub = \"bot*\"\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_from_one_replica_works_on_the_other_and_a_logout_on_either_ends_it() {
    use support::replicas::{Replicas, Shared};
    let db = support::Postgres::shared().create_database();
    let store = db.store_toml();
    let r = Replicas::new(Shared {
        store_toml: &store,
        policies: &[],
        extra: "heartbeat_interval = \"1s\"\n",
    });
    let mut a = Mayfly::configure(r.config_extra(), &[("deploy", REPLICA_ROLE[0])]);
    let mut b = Mayfly::configure(r.config_extra(), &[("deploy", REPLICA_ROLE[1])]);
    // Behind a load balancer both have one public URL; here it is A's.
    let public_url = a.url();
    let oidc = Oidc::start_with_people(
        &[],
        &json!([{
            "client_id": CONSOLE_CLIENT,
            "client_secret": CONSOLE_SECRET,
            "redirect_uris": [format!("{public_url}/console/callback")],
        }]),
        &json!({"alice": {"groups": ["sre"]}}),
    );
    let dir = support::temp_dir("console-replicas");
    let secret_file = dir.path().join("console-secret");
    std::fs::write(&secret_file, CONSOLE_SECRET).expect("write secret");
    let console = format!(
        "{}\n[console]\nissuer = \"people\"\nclient_id = \"{CONSOLE_CLIENT}\"\nclient_secret_file = \"{}\"\npublic_url = \"{public_url}\"\nviewers = [\"groups:sre\"]\n",
        oidc.issuer_toml("people"),
        secret_file.display()
    );
    for m in [&mut a, &mut b] {
        let mut config = std::fs::read_to_string(m.config_path()).expect("read config");
        config.push_str(&console);
        std::fs::write(m.config_path(), config).expect("write config");
        // A first: on the empty database it makes the CA keys.
        m.restart();
    }

    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("{}/console/", a.url()))
        .await
        .expect("goto A");
    browser.fill("input[name=login]", "alice").await;
    browser.fill("input[name=password]", "any").await;
    browser.click("button[type=submit]").await;
    assert_eq!(browser.text("#person").await, "people:alice");
    let session = browser
        .client
        .get_named_cookie("mayfly_console")
        .await
        .expect("session cookie")
        .value()
        .to_string();
    // The database has the session under a hash, never the cookie.
    let rows = db.psql("SELECT encode(key, 'hex') || ' ' || person FROM console_sessions");
    assert_eq!(rows.trim().lines().count(), 1, "{rows}");
    assert!(!rows.contains(&session), "{rows}");
    assert!(rows.contains("alice"), "{rows}");

    // The policy page shows each replica's digest and flags the drift.
    browser
        .client
        .goto(&format!("{}/console/policy", a.url()))
        .await
        .expect("policy");
    let drift = browser.text("#drift").await;
    assert!(
        drift.starts_with("POLICY DRIFT: the 2 live replicas enforce 2 different policies"),
        "{drift}"
    );
    let table = browser.text("#replicas").await;
    let digest_a = browser.text("#policy-digest").await;
    let page_b = http::request(
        "GET",
        &format!("{}/console/policy", b.url()),
        &[("Cookie", format!("mayfly_console={session}").as_str())],
        b"",
    )
    .expect("GET B");
    // The same cookie is a session on B.
    assert_eq!(page_b.status, 200, "{}", page_b.text());
    let html_b = page_b.text();
    assert!(html_b.contains("people:alice"), "{html_b}");
    let at =
        html_b.find("id=\"policy-digest\">").expect("B's digest") + "id=\"policy-digest\">".len();
    let digest_b = &html_b[at..at + html_b[at..].find('<').expect("end")];
    assert_ne!(digest_a, digest_b);
    for d in [digest_a.as_str(), digest_b] {
        assert!(table.contains(d), "{d} not in {table}");
    }
    assert_eq!(table.matches(" live ").count(), 2, "{table}");

    // Logout on B ends the session on A too.
    let csrf = csrf_of(&html_b);
    let out = http::post_form(
        &format!("{}/console/logout", b.url()),
        &[("Cookie", format!("mayfly_console={session}").as_str())],
        &[("csrf", &csrf)],
    )
    .expect("POST logout on B");
    assert_eq!(out.status, 200, "{}", out.text());
    let again = http::request(
        "GET",
        &format!("{}/console/", a.url()),
        &[("Cookie", format!("mayfly_console={session}").as_str())],
        b"",
    )
    .expect("GET A");
    assert!(
        matches!(again.status, 302 | 303),
        "{} {}",
        again.status,
        again.text()
    );
    assert!(again
        .header("location")
        .is_some_and(|l| l.starts_with(&oidc.issuer)));
    assert_eq!(db.psql("SELECT count(*) FROM console_sessions").trim(), "0");
    browser.close().await;
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).expect("mkdir");
        self
    }
}

/// Writes a screenshot of every console page to docs/console/ (run by
/// hand: `cargo test --release --test console -- --ignored screenshots`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/console/*.png; run by hand when the pages change"]
async fn screenshots_of_every_page() {
    let env = setup();
    let b = Browser::start().await;
    env.login(&b, "alice").await;
    let (_, public) = keygen_ed25519(env.dir.path());
    let mut key_id = String::new();
    for _ in 0..3 {
        let r = env.bot_post("bot", json!({"role": "build", "public_key": public}));
        key_id = r.json()["key_id"].as_str().expect("key_id").to_string();
    }
    env.bot_post(
        "bot",
        json!({"role": "build", "public_key": public, "principals": ["root"]}),
    );
    env.bot_post("carol-bot", json!({"role": "nope", "public_key": public}));
    env.bot_post("bot", json!({"role": "prod-deploy", "public_key": public}));
    let out = support::repo_root().join("docs/console");
    std::fs::create_dir_all(&out).expect("mkdir docs/console");
    let pages = [
        ("overview", "/console/".to_string()),
        ("feed", "/console/feed".to_string()),
        ("approvals", "/console/approvals".to_string()),
        ("certificate", format!("/console/certs?q={key_id}")),
        ("identities", "/console/identities".to_string()),
        (
            "identity",
            "/console/identity?issuer=ci&subject=bot".to_string(),
        ),
        ("audit", "/console/audit".to_string()),
        ("policy", "/console/policy".to_string()),
    ];
    for (name, path) in pages {
        b.client
            .goto(&format!("{}{path}", env.ca.url()))
            .await
            .expect("goto");
        b.wait("main h1").await;
        b.screenshot(&out.join(format!("{name}.png"))).await;
    }
    b.client
        .goto(&format!("{}/console/policy", env.ca.url()))
        .await
        .expect("goto");
    b.fill("textarea[name=claims]", "").await;
    b.client
        .find(fantoccini::Locator::Css("textarea[name=claims]"))
        .await
        .expect("textarea")
        .clear()
        .await
        .expect("clear");
    b.fill(
        "textarea[name=claims]",
        r#"{"sub": "bot", "repository": "other/repo"}"#,
    )
    .await;
    b.click("#explain").await;
    b.wait("#explain-result").await;
    b.screenshot(&out.join("policy-explain.png")).await;
    b.close().await;
}
