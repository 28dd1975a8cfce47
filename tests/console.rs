//! The web console end to end: a real OIDC provider with a login form
//! (tests/oidc/provider.mjs with a human client), `mayfly serve` with
//! `[console]`, a headless chromium driven through chromedriver, the bot's
//! `mayfly ssh` and a real sshd.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
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

const CONSOLE_CLIENT: &str = "mayfly-console";
const CONSOLE_SECRET: &str = "console-client-secret";

struct Env {
    oidc: Oidc,
    ca: Mayfly,
    dir: tempfile::TempDir,
}

/// The CA with `[console]` at the provider's human client. People:
/// alice (sre, admin), carol (sre; carol-bot's token has her subject),
/// victor (viewer only), mallory (nothing).
fn setup() -> Env {
    let dir = support::temp_dir("console");
    let mut ca = Mayfly::configure("", &[("prod-deploy", PROD_POLICY), ("build", BUILD_POLICY)]);
    let public_url = ca.url();
    let oidc = Oidc::start_with_people(
        &[
            ClientSpec::new("bot", "RS256").claims(json!({"repository": "acme/api"})),
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
        "{}\n[[admin]]\nissuer = \"ci\"\n[admin.claims]\nsub = \"alice\"\n\n[console]\nissuer = \"ci\"\nclient_id = \"{CONSOLE_CLIENT}\"\nclient_secret_file = \"{}\"\npublic_url = \"{public_url}\"\nviewers = [\"groups:viewers\"]\n",
        oidc.issuer_toml("ci"),
        secret_file.display()
    );
    let mut config = std::fs::read_to_string(ca.config_path()).expect("read config");
    config.push_str(&extra);
    std::fs::write(ca.config_path(), config).expect("write config");
    ca.restart();
    Env { oidc, ca, dir }
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
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().expect("stderr");
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let start = Instant::now();
    let id = loop {
        let text = stderr.lock().expect("lock").clone();
        if let Some(pos) = text.find("mayfly request approve apr_") {
            let rest = &text[pos + "mayfly request approve ".len()..];
            break rest.split_whitespace().next().expect("id").to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no approval prompt: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
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

    // A refusal shows the reason the bot got.
    let r = env.bot_post(
        "bot",
        json!({"role": "build", "public_key": public, "principals": ["root"]}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let bot_message = r.json()["message"].as_str().expect("message").to_string();
    b.client
        .goto(&format!("{}/console/feed", env.ca.url()))
        .await
        .expect("feed");
    let feed = b.text("table.feed").await;
    assert!(feed.contains(&bot_message), "{bot_message} not in {feed}");

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
