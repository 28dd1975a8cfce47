//! The HTTP concerns that are applied once: the request id shared by the
//! error answer and the request's log span, the admin sub-router that
//! cannot hold a route without authorization, and the one HTTP client
//! builder (no redirects) of the bot and host sides.

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::{http, Mayfly};

/// The JSON log lines of `ca` whose request span has `request_id == rid`.
fn span_lines(ca: &Mayfly, rid: &str) -> Vec<Value> {
    ca.stderr_log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["span"]["request_id"] == rid)
        .collect()
}

/// Checks an error answer: JSON `{"error", "message", "request_id"}` with
/// `x-request-id` equal to the body's id. Returns the id.
fn error_id(r: &http::Response, status: u16, code: &str) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    let rid = v["request_id"].as_str().expect("request_id").to_string();
    assert!(!rid.is_empty());
    assert_eq!(r.header("x-request-id"), Some(rid.as_str()), "header");
    let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
    assert_eq!(keys.len(), 3, "{v}");
    rid
}

#[test]
fn error_answers_carry_the_request_id_of_the_log_span() {
    let ca = Mayfly::start("log_format = \"json\"\n", &[]);
    let base = ca.url();

    // An admin call without a token: the service logs the refusal inside
    // the request; that line's span names the id of the answer.
    let r = http::post_json(
        &format!("{base}/v1/admin/disable"),
        &[],
        &serde_json::json!({"role": "deploy", "reason": "test"}),
    )
    .expect("POST");
    let admin = error_id(&r, 401, "missing_token");
    let lines = support::wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        let l = span_lines(&ca, &admin);
        (!l.is_empty()).then_some(l)
    })
    .unwrap_or_else(|| {
        panic!(
            "no log line in the span of request {admin}:\n{}",
            ca.stderr_log()
        )
    });
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "admin call refused"),
        "{lines:?}"
    );
    for l in &lines {
        assert_eq!(l["span"]["name"], "request", "{l}");
        assert_eq!(l["span"]["method"], "POST", "{l}");
        assert_eq!(l["span"]["path"], "/v1/admin/disable", "{l}");
    }

    // Errors of every layer carry the id the same way: the fallback, a
    // malformed Authorization header, a bad body.
    let r = http::get(&format!("{base}/nope")).expect("GET");
    let fallback = error_id(&r, 404, "not_found");
    let r = http::post_json(
        &format!("{base}/v1/certs/user"),
        &[("Authorization", "Basic abc")],
        &serde_json::json!({}),
    )
    .expect("POST");
    let malformed = error_id(&r, 401, "malformed_authorization");
    let r = http::request(
        "POST",
        &format!("{base}/v1/requests/apr_x/approve"),
        &[("Content-Type", "application/json")],
        b"{not json",
    )
    .expect("POST");
    let bad_json = error_id(&r, 400, "invalid_json");
    let mut ids = vec![admin, fallback, malformed, bad_json];
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "one id per request: {ids:?}");
}

#[test]
fn every_admin_route_refuses_a_call_without_an_admin_token() {
    let ca = Mayfly::start("", &[]);
    for (method, path) in [
        ("POST", "/v1/admin/revoke"),
        ("POST", "/v1/admin/disable"),
        ("POST", "/v1/admin/enable"),
        ("GET", "/v1/admin/disabled"),
        ("GET", "/v1/identities"),
    ] {
        let url = format!("{}{path}", ca.url());
        let r = http::request(method, &url, &[], b"{}").expect("request");
        error_id(&r, 401, "missing_token");
        let r =
            http::request(method, &url, &[("Authorization", "Token x")], b"{}").expect("request");
        error_id(&r, 401, "malformed_authorization");
    }
}

/// The service of a CA with an empty policy, for driving routers directly.
async fn app_state(dir: &std::path::Path) -> mayfly::api::AppState {
    let cfg = mayfly::config::Config {
        data_dir: dir.join("data"),
        policy_dir: dir.join("ca-policy"),
        ..Default::default()
    };
    std::fs::create_dir_all(&cfg.policy_dir).expect("policy dir");
    let service = mayfly::server::build(&cfg).await.expect("service");
    mayfly::api::AppState {
        service: Arc::new(service),
        request_timeout: Duration::from_secs(5),
        admin_requires_client_cert: false,
    }
}

async fn call(router: axum::Router, path: &str) -> (u16, Value) {
    use tower::ServiceExt as _;
    let req = axum::http::Request::get(path)
        .body(axum::body::Body::empty())
        .expect("request");
    let resp = router.oneshot(req).await.expect("infallible");
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned())),
    )
}

#[tokio::test]
async fn a_route_added_to_the_admin_router_cannot_skip_authorization() {
    use axum::middleware::from_fn;
    use axum::routing::get;
    use mayfly::api::admin::{AdminCaller, AdminRoutes};
    use mayfly::api::request::request_context;

    let dir = support::temp_dir("admin-router");
    let state = app_state(dir.path()).await;

    // A handler that does not ask for the caller still runs only after
    // require_admin: without a token it never runs.
    let admin = AdminRoutes::new()
        .route("/v1/admin/probe", get(|| async { "handler ran" }))
        .into_router(state.clone())
        .layer(from_fn(request_context))
        .with_state(state.clone());
    let (status, body) = call(admin, "/v1/admin/probe").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "missing_token", "{body}");

    // A handler that needs the admin caller, mounted outside the admin
    // router by mistake, refuses instead of running unauthenticated.
    let stray = axum::Router::new()
        .route(
            "/v1/admin/stray",
            get(|c: AdminCaller| async move { c.actor }),
        )
        .layer(from_fn(request_context))
        .with_state(state);
    let (status, body) = call(stray, "/v1/admin/stray").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"], "internal", "{body}");
}

/// A plain HTTP server on loopback answering every request with `answer`
/// (`{addr}` replaced by its own address); counts the requests.
struct Canned {
    url: String,
    hits: Arc<AtomicUsize>,
}

impl Canned {
    fn start(answer: &str) -> Canned {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let answer = answer.replace("{addr}", &url);
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                h.fetch_add(1, Ordering::SeqCst);
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 8192];
                let mut got = Vec::new();
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let _ = s.write_all(answer.as_bytes());
            }
        });
        Canned { url, hits }
    }

    fn redirect_to(target: &Canned) -> Canned {
        Canned::start(&format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {}/elsewhere\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            target.url
        ))
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn target() -> Canned {
    Canned::start("HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
}

#[test]
fn bot_does_not_follow_a_redirect_with_its_token() {
    let elsewhere = target();
    let ca = Canned::redirect_to(&elsewhere);
    let dir = support::temp_dir("bot-redirect");
    let token = dir.path().join("token");
    std::fs::write(&token, "a.b.c\n").expect("token");
    let out = Command::new(Mayfly::bin())
        .args(["cert", "--server", &ca.url, "--role", "deploy", "--out"])
        .arg(dir.path().join("out"))
        .arg("--token-file")
        .arg(&token)
        .env_remove("MAYFLY_SERVER")
        .env_remove("MAYFLY_CA_FILE")
        .output()
        .expect("run mayfly cert");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(ca.hits(), 1, "{stderr}");
    assert_eq!(elsewhere.hits(), 0, "redirect followed: {stderr}");
    assert!(stderr.contains("307 redirect"), "{stderr}");
    assert!(stderr.contains("does not follow redirects"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}/elsewhere", elsewhere.url)),
        "{stderr}"
    );
}

#[test]
fn host_sync_does_not_follow_a_redirect() {
    let elsewhere = target();
    let ca = Canned::redirect_to(&elsewhere);
    let dir = support::temp_dir("host-redirect");
    let out = Command::new(Mayfly::bin())
        .args(["host", "sync", "--server", &ca.url, "--dir"])
        .arg(dir.path())
        .env_remove("MAYFLY_SERVER")
        .env_remove("MAYFLY_CA_FILE")
        .output()
        .expect("run mayfly host sync");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(ca.hits() >= 1, "{stderr}");
    assert_eq!(elsewhere.hits(), 0, "redirect followed: {stderr}");
    assert!(stderr.contains("answered HTTP 307"), "{stderr}");
    let written: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(written.is_empty(), "{written:?}");
}
