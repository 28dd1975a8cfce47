//! HTTP API (axum). Translates requests into [`Service`] calls and errors
//! into the JSON error shape `{"error", "message", "request_id"}`; this is
//! the one place that maps domain errors to status codes.

pub mod admin;
pub mod approvals;
pub mod error;
mod hosts;
pub mod inventory;
pub mod request;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::ca::CertKind;
use crate::service::{Issuance, PendingApproval, Service, UserCertRequest};
pub use error::ApiError;
pub use request::{Bearer, RequestId};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The CA service.
    pub service: Arc<Service>,
    /// Per-request time limit.
    pub request_timeout: std::time::Duration,
    /// Admin endpoints also require a verified TLS client certificate.
    pub admin_requires_client_cert: bool,
}

/// Body of `POST /v1/certs/user`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserCertBody {
    role: String,
    public_key: String,
    ttl_seconds: Option<u64>,
    principals: Option<Vec<String>>,
    /// Redeems an approved approval request (roles that need approval).
    approval_request: Option<String>,
    /// Renews a live certificate (`mayfly exec`): the certificate and a
    /// signature by its key.
    renewal: Option<crate::service::RenewalProof>,
}

/// Body of `POST /v1/certs/host`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostCertBody {
    role: String,
    public_key: String,
    ttl_seconds: Option<u64>,
    hostnames: Option<Vec<String>>,
}

/// Builds the router with body limit and timeouts. The outermost layer,
/// [`request::request_context_of`], gives every request its id and log span
/// and writes every error answer.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/ca/user.pub", get(user_ca))
        .route("/v1/ca/host.pub", get(host_ca))
        .route("/v1/krl", get(krl_handler))
        .route("/v1/certs/user", post(user_cert))
        .route("/v1/certs/host", post(host_cert))
        // Approvers are not administrators: the service checks the
        // caller's token against the approvers of each request's role.
        .route("/v1/hosts/report", post(hosts::report))
        .route("/v1/requests", get(approvals::list))
        .route("/v1/requests/{id}/approve", post(approvals::approve))
        .route("/v1/requests/{id}/deny", post(approvals::deny))
        .route("/v1/requests/{id}/cancel", post(approvals::cancel))
        .route("/metrics", get(metrics))
        .merge(admin_routes().into_router(state.clone()))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.request_timeout + std::time::Duration::from_secs(1),
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request::request_context_of,
        ))
        .with_state(state)
}

/// Every admin route. They can only be added through
/// [`admin::AdminRoutes`], which puts all of them behind
/// [`admin::require_admin`] (client certificate where configured, then an
/// `[[admin]]` token).
fn admin_routes() -> admin::AdminRoutes {
    admin::AdminRoutes::new()
        .route("/v1/admin/revoke", post(admin::revoke))
        .route("/v1/admin/disable", post(admin::disable))
        .route("/v1/admin/enable", post(admin::enable))
        .route("/v1/admin/disabled", get(admin::list_disabled))
        .route("/v1/admin/replicas", get(admin::replicas))
        .route("/v1/admin/ca", get(admin::ca_status))
        .route("/v1/admin/hosts", get(admin::hosts))
        .route("/v1/admin/audit", get(admin::audit_search))
        .route("/v1/identities", get(inventory::list_identities))
}

/// How long `/healthz` waits for the store before it answers 503.
const HEALTH_STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// 200 `ok` while this process can issue: the store answers a read within
/// two seconds. A load balancer takes a replica that cannot reach its
/// database out of rotation (503 `store_unavailable`) and back once it can.
async fn healthz(State(s): State<AppState>) -> Result<&'static str, ApiError> {
    match tokio::time::timeout(
        HEALTH_STORE_TIMEOUT,
        s.service.store().access().state_version(),
    )
    .await
    {
        Ok(Ok(_)) => Ok("ok\n"),
        Ok(Err(e)) => Err(ApiError::store_unavailable(
            &e,
            "health check: the store failed",
            "the store is unavailable; this replica cannot issue certificates",
        )),
        Err(_) => Err(ApiError::store_unavailable(
            &"no answer within 2 s",
            "health check: the store did not answer",
            "the store is unavailable; this replica cannot issue certificates",
        )),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see GET /v1/ca/user.pub, GET /v1/krl, POST /v1/certs/user",
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

#[derive(Debug, Deserialize)]
struct CaQuery {
    group: Option<String>,
}

/// Every user CA key, or with `?group=G` only that CA group's keys
/// (`default` for roles without `ca_group`).
async fn user_ca(
    State(s): State<AppState>,
    q: Result<axum::extract::Query<CaQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    s.service.refresh().await;
    let group = q.ok().and_then(|axum::extract::Query(q)| q.group);
    Ok(match group.as_deref() {
        None => text(s.service.all_user_public_lines()),
        Some("default") => text(
            s.service
                .user_keys()
                .public_lines(crate::config::files::USER_CA_KEY),
        ),
        Some(g) => {
            match s.service.group_keys(g) {
                Some(ring) => text(ring.public_lines(&crate::config::files::group_base(g))),
                None => return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_ca_group",
                    "no role uses this ca_group; use ?group=default or a group named in the policy",
                )),
            }
        }
    })
}

async fn host_ca(State(s): State<AppState>) -> Response {
    s.service.refresh().await;
    text(
        s.service
            .host_keys()
            .public_lines(crate::config::files::HOST_CA_KEY),
    )
}

async fn krl_handler(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let snap = s.service.krl().await.map_err(|e| {
        ApiError::store_unavailable(
            &e,
            "cannot build the KRL",
            "the revocation list cannot be read right now; hosts keep their last good copy",
        )
    })?;
    let last_modified = crate::time::http_date(snap.generated_date);
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == snap.etag || t.trim() == "*")
        });
    let mut h = vec![
        (header::ETAG, HeaderValue::from_str(&snap.etag).ok()),
        (
            header::LAST_MODIFIED,
            HeaderValue::from_str(&last_modified).ok(),
        ),
        (
            header::CACHE_CONTROL,
            Some(HeaderValue::from_static("no-cache")),
        ),
        (
            header::HeaderName::from_static("x-krl-version"),
            HeaderValue::from_str(&snap.version.to_string()).ok(),
        ),
    ];
    if not_modified {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        for (k, v) in h.drain(..) {
            if let Some(v) = v {
                r.headers_mut().insert(k, v);
            }
        }
        return Ok(r);
    }
    let mut r = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        snap.bytes.clone(),
    )
        .into_response();
    for (k, v) in h {
        if let Some(v) = v {
            r.headers_mut().insert(k, v);
        }
    }
    Ok(r)
}

async fn metrics(State(s): State<AppState>) -> Response {
    // The KRL as hosts would fetch it now (cached until revocations
    // change), so its version and size gauges are current.
    if let Err(e) = s.service.krl().await {
        tracing::warn!(error = %e, "metrics: cannot build the KRL");
    }
    let p = s.service.policy();
    let body = s
        .service
        .metrics()
        .render_at(
            &s.service.user_keys().active.fingerprint(),
            &p.digest,
            p.roles.len(),
            s.service.clock().now(),
        )
        .await;
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        body,
    )
        .into_response()
}

async fn user_cert(
    State(s): State<AppState>,
    rid: RequestId,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Bearer(token): Bearer,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    cert_request(s, rid, addr, token, body, CertKind::User).await
}

async fn host_cert(
    State(s): State<AppState>,
    rid: RequestId,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Bearer(token): Bearer,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    cert_request(s, rid, addr, token, body, CertKind::Host).await
}

/// Reads a JSON body with the body-limit rejection mapped to our error shape.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    shape: &str,
) -> Result<T, ApiError> {
    let body = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body is too large; send only {shape}"),
            ))
        }
        Err(r) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                r.body_text(),
            ))
        }
    };
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("body must be JSON {{{shape}}}: {e}"),
        )
    })
}

async fn cert_request(
    s: AppState,
    rid: RequestId,
    addr: SocketAddr,
    token: Option<crate::auth::BearerToken>,
    body: Result<Bytes, BytesRejection>,
    kind: CertKind,
) -> Result<Response, ApiError> {
    let started = s.service.clock().monotonic();
    let req = match kind {
        CertKind::User => {
            let shape = "\"role\", \"public_key\", \"ttl_seconds\"?, \"principals\"?, \"approval_request\"?, \"renewal\"?";
            let b: UserCertBody = read_json(body, shape)?;
            UserCertRequest {
                kind,
                hostnames: None,
                token,
                role: b.role,
                public_key: b.public_key,
                ttl_seconds: b.ttl_seconds,
                principals: b.principals,
                request_id: rid.to_string(),
                client_addr: Some(addr),
                approval_request: b.approval_request,
                renewal: b.renewal,
            }
        }
        CertKind::Host => {
            let shape = "\"role\", \"public_key\", \"ttl_seconds\"?, \"hostnames\"?";
            let b: HostCertBody = read_json(body, shape)?;
            UserCertRequest {
                kind,
                hostnames: b.hostnames,
                token,
                role: b.role,
                public_key: b.public_key,
                ttl_seconds: b.ttl_seconds,
                principals: None,
                request_id: rid.to_string(),
                client_addr: Some(addr),
                approval_request: None,
                renewal: None,
            }
        }
    };
    let role = req.role.chars().take(64).collect::<String>();
    let fut = s.service.issue_user_cert(req, s.service.clock().now());
    let resp = match tokio::time::timeout(s.request_timeout, fut).await {
        Ok(Ok(Issuance::Issued(issued))) => {
            let mut r = Json(issued).into_response();
            if let Ok(v) = HeaderValue::from_str(rid.as_str()) {
                r.headers_mut().insert("x-request-id", v);
            }
            r
        }
        Ok(Ok(Issuance::Pending(PendingApproval {
            id,
            needed,
            expires_at,
        }))) => {
            let message = format!(
                "role {role} needs approval: waiting for {needed} approval(s) of request {id} until {expires_at}; an approver runs `mayfly request approve {id}`"
            );
            let body = serde_json::json!({
                "status": "pending",
                "approval_request": id,
                "approvals_needed": needed,
                "expires_at": expires_at,
                "message": message,
                "request_id": rid.as_str(),
            });
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the CA could not answer in time; no certificate was issued, retry with a fresh token",
        )
        .into_response(),
    };
    s.service
        .metrics()
        .observe(s.service.clock().monotonic().saturating_sub(started));
    Ok(resp)
}
