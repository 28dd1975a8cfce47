//! HTTP API (axum). Translates requests into [`Service`] calls and errors
//! into the JSON error shape `{"error", "message", "request_id"}`; this is
//! the one place that maps domain errors to status codes.

pub mod error;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::auth::BearerToken;
use crate::ca::krl;
use crate::service::{Service, UserCertRequest};
pub use error::ApiError;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The CA service.
    pub service: Arc<Service>,
    /// Per-request time limit.
    pub request_timeout: std::time::Duration,
}

/// Body of `POST /v1/certs/user`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserCertBody {
    role: String,
    public_key: String,
    ttl_seconds: Option<u64>,
    principals: Option<Vec<String>>,
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Builds the router with body limit and timeouts.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/ca/user.pub", get(user_ca))
        .route("/v1/ca/host.pub", get(host_ca))
        .route("/v1/krl", get(krl_handler))
        .route("/v1/certs/user", post(user_cert))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.request_timeout + std::time::Duration::from_secs(1),
        ))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see GET /v1/ca/user.pub, GET /v1/krl, POST /v1/certs/user".into(),
        request_id(),
    )
}

fn text(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

async fn user_ca(State(s): State<AppState>) -> Response {
    text(format!("{}\n", s.service.user_ca().public_key_line()))
}

async fn host_ca(State(s): State<AppState>) -> Response {
    text(format!("{}\n", s.service.host_ca().public_key_line()))
}

async fn krl_handler() -> Response {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        krl::encode_empty(now, now, "mayfly"),
    )
        .into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    let p = s.service.policy();
    let body =
        s.service
            .metrics()
            .render(&s.service.user_ca().fingerprint(), &p.digest, p.roles.len());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        body,
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Result<Option<BearerToken>, &'static str> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| "Authorization header is not ASCII")?;
    let (scheme, rest) = v
        .split_once(' ')
        .ok_or("Authorization must be \"Bearer <token>\"")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("Authorization must be \"Bearer <token>\"");
    }
    let t = rest.trim();
    if t.is_empty() {
        return Ok(None);
    }
    Ok(Some(BearerToken::new(t.to_string())))
}

async fn user_cert(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let rid = request_id();
    let bad = |status: StatusCode, code: &'static str, msg: String| {
        ApiError::new(status, code, msg, rid.clone()).into_response()
    };
    let body =
        match body {
            Ok(b) => b,
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => return bad(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body is too large; send only role, public_key, ttl_seconds and principals"
                    .into(),
            ),
            Err(r) => return bad(StatusCode::BAD_REQUEST, "bad_request", r.body_text()),
        };
    let token = match bearer(&headers) {
        Ok(t) => t,
        Err(m) => {
            return bad(
                StatusCode::UNAUTHORIZED,
                "malformed_authorization",
                m.into(),
            )
        }
    };
    let parsed: UserCertBody = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return bad(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!(
                    "body must be JSON {{\"role\", \"public_key\", \"ttl_seconds\"?, \"principals\"?}}: {e}"
                ),
            )
        }
    };
    let req = UserCertRequest {
        token,
        role: parsed.role,
        public_key: parsed.public_key,
        ttl_seconds: parsed.ttl_seconds,
        principals: parsed.principals,
        request_id: rid.clone(),
        client_addr: Some(addr),
    };
    let fut = s.service.issue_user_cert(req, SystemTime::now());
    let resp = match tokio::time::timeout(s.request_timeout, fut).await {
        Ok(Ok(issued)) => {
            let mut r = Json(issued).into_response();
            if let Ok(v) = HeaderValue::from_str(&rid) {
                r.headers_mut().insert("x-request-id", v);
            }
            r
        }
        Ok(Err(e)) => ApiError::from_issue(e, rid).into_response(),
        Err(_) => bad(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the CA could not answer in time; no certificate was issued, retry with a fresh token"
                .into(),
        ),
    };
    s.service.metrics().observe(started.elapsed());
    resp
}
