//! Admin API: revoke certificates, disable and enable identities and roles.
//! Callers authenticate with an OIDC token matched by an `[[admin]]` rule of
//! the server config; every action (and every refusal) is audited.

use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{bearer, read_json, request_id, ApiError, AppState};
use crate::revocation::{self, RevokeError};
use crate::store::{CertFilter, DisabledKey};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    serial: Option<u64>,
    key_id: Option<String>,
    role: Option<String>,
    issuer: Option<String>,
    subject: Option<String>,
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisableBody {
    issuer: Option<String>,
    subject: Option<String>,
    role: Option<String>,
    #[serde(default)]
    reason: String,
}

use crate::clock::now_secs as now;

/// The administrator a request was authorized for. Only
/// [`require_admin`] puts it into a request; a handler that takes it can
/// therefore only run behind that middleware, and one mounted elsewhere by
/// mistake answers 500 instead of running unauthenticated.
#[derive(Debug, Clone)]
pub struct AdminCaller {
    /// Actor name for audit records (`admin:<issuer>:<subject>`, plus the
    /// TLS client certificate's identity when one was presented).
    pub actor: String,
    /// The request id (also in the error answers and audit records).
    pub request_id: String,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for AdminCaller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<AdminCaller>().cloned().ok_or_else(|| {
            tracing::error!(path = %parts.uri.path(), "admin handler mounted outside the admin router; refused");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error".into(),
                request_id(),
            )
            .into_response()
        })
    }
}

/// The audited name of an admin action: the last path segment
/// (`/v1/admin/revoke` is `revoke`, `/v1/identities` is `identities`).
fn action_of(path: &str) -> String {
    path.rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("admin")
        .chars()
        .take(32)
        .collect()
}

/// Middleware for every admin route (the admin sub-router in
/// [`super::router`]): the TLS client certificate when
/// `admin_requires_client_cert` is set, then an `[[admin]]` token. Every
/// refusal is audited. A route added to that router cannot skip it.
pub async fn require_admin(
    State(s): State<AppState>,
    client: crate::tls::ClientIdentity,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let rid = request_id();
    let action = action_of(req.uri().path());
    if s.admin_requires_client_cert && client.0.is_none() {
        s.service
            .record_admin_refusal(
                &action,
                &rid,
                "client_certificate_required",
                "no TLS client certificate",
                SystemTime::now(),
            )
            .await;
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "client_certificate_required",
            "admin endpoints need a TLS client certificate signed by the configured client CA, plus an admin token".into(),
            rid,
        )
        .into_response();
    }
    let token = match bearer(req.headers()) {
        Ok(t) => t,
        Err(m) => {
            s.service
                .record_admin_refusal(
                    &action,
                    &rid,
                    "malformed_authorization",
                    m,
                    SystemTime::now(),
                )
                .await;
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "malformed_authorization",
                m.into(),
                rid,
            )
            .into_response();
        }
    };
    let actor = match s
        .service
        .authorize_admin(token.as_ref(), &action, &rid, SystemTime::now())
        .await
    {
        Ok(a) => a,
        Err(e) => return ApiError::from_issue(e, rid).into_response(),
    };
    let actor = match &client.0 {
        Some(c) => format!("{actor} (tls: {c})"),
        None => actor,
    };
    req.extensions_mut().insert(AdminCaller {
        actor,
        request_id: rid,
    });
    next.run(req).await
}

fn revoke_error(e: RevokeError, rid: String) -> Response {
    match e {
        RevokeError::NothingMatched(m) => {
            ApiError::new(StatusCode::NOT_FOUND, "nothing_matched", m, rid)
        }
        RevokeError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m, rid),
        RevokeError::Store(se) => {
            tracing::error!(request_id = %rid, error = %se, "admin change not stored");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the store is unavailable; nothing was changed, retry later".into(),
                rid,
            )
        }
    }
    .into_response()
}

/// `POST /v1/admin/revoke` with exactly one of `serial`, `key_id`, `role`,
/// or `issuer`+`subject` (optionally with `role`), and a `reason`.
pub async fn revoke(
    State(s): State<AppState>,
    caller: AdminCaller,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let AdminCaller {
        actor,
        request_id: rid,
    } = caller;
    let shape = "\"serial\" | \"key_id\" | \"role\" | \"issuer\"+\"subject\", \"reason\"";
    let b: RevokeBody = match read_json(body, shape, &rid) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let filter = match (b.serial, b.key_id, b.role, b.issuer, b.subject) {
        (Some(n), None, None, None, None) => CertFilter::Serial(n),
        (None, Some(k), None, None, None) => CertFilter::KeyId(k),
        (None, None, Some(r), None, None) => CertFilter::Role(r),
        (None, None, role, Some(issuer), Some(subject)) => CertFilter::Identity {
            issuer,
            subject,
            role,
        },
        _ => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("name exactly one target: {shape}"),
                rid,
            )
            .into_response()
        }
    };
    match revocation::revoke(s.service.store(), filter, &b.reason, &actor, now()).await {
        Ok(o) => Json(o).into_response(),
        Err(e) => revoke_error(e, rid),
    }
}

async fn set_disabled(
    s: AppState,
    caller: AdminCaller,
    body: Result<Bytes, BytesRejection>,
    enable: bool,
) -> Response {
    let AdminCaller {
        actor,
        request_id: rid,
    } = caller;
    let b: DisableBody = match read_json(
        body,
        "\"issuer\"+\"subject\" and/or \"role\", \"reason\"",
        &rid,
    ) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let target = DisabledKey {
        issuer: b.issuer.unwrap_or_default(),
        subject: b.subject.unwrap_or_default(),
        role: b.role.unwrap_or_default(),
    };
    match revocation::set_disabled(s.service.store(), target, enable, &b.reason, &actor, now())
        .await
    {
        Ok(o) => Json(o).into_response(),
        Err(e) => revoke_error(e, rid),
    }
}

/// `POST /v1/admin/disable`: stop issuance to an identity or role and revoke its live certificates.
pub async fn disable(
    State(s): State<AppState>,
    caller: AdminCaller,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    set_disabled(s, caller, body, false).await
}

/// `POST /v1/admin/enable`: lift a deactivation (revocations stay).
pub async fn enable(
    State(s): State<AppState>,
    caller: AdminCaller,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    set_disabled(s, caller, body, true).await
}

/// `GET /v1/admin/disabled`: every disabled identity and role.
pub async fn list_disabled(State(s): State<AppState>, caller: AdminCaller) -> Response {
    let rid = caller.request_id;
    match s.service.store().access().disabled().await {
        Ok(list) => Json(list).into_response(),
        Err(e) => revoke_error(RevokeError::Store(e), rid),
    }
}
