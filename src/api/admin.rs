//! Admin API: revoke certificates, disable and enable identities and roles.
//! Callers authenticate with an OIDC token matched by an `[[admin]]` rule of
//! the server config; every action (and every refusal) is audited.

use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
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

/// Checks the admin token (and, if configured, the TLS client certificate).
pub(crate) async fn authorize_with_cert(
    s: &AppState,
    client: &crate::tls::ClientIdentity,
    headers: &HeaderMap,
    action: &str,
    rid: &str,
) -> Result<String, Response> {
    if s.admin_requires_client_cert && client.0.is_none() {
        tracing::warn!(
            request_id = rid,
            action,
            "admin call without a TLS client certificate refused"
        );
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "client_certificate_required",
            "admin endpoints need a TLS client certificate signed by the configured client CA, plus an admin token".into(),
            rid.into(),
        )
        .into_response());
    }
    let actor = authorize(s, headers, action, rid).await?;
    Ok(match &client.0 {
        Some(c) => format!("{actor} (tls: {c})"),
        None => actor,
    })
}

async fn authorize(
    s: &AppState,
    headers: &HeaderMap,
    action: &str,
    rid: &str,
) -> Result<String, Response> {
    let token = bearer(headers).map_err(|m| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "malformed_authorization",
            m.into(),
            rid.into(),
        )
        .into_response()
    })?;
    s.service
        .authorize_admin(token.as_ref(), action, rid, SystemTime::now())
        .await
        .map_err(|e| ApiError::from_issue(e, rid.into()).into_response())
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
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let rid = request_id();
    let actor = match authorize(&s, &headers, "revoke", &rid).await {
        Ok(a) => a,
        Err(r) => return r,
    };
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
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    enable: bool,
) -> Response {
    let rid = request_id();
    let action = if enable { "enable" } else { "disable" };
    let actor = match authorize(&s, &headers, action, &rid).await {
        Ok(a) => a,
        Err(r) => return r,
    };
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
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    set_disabled(s, headers, body, false).await
}

/// `POST /v1/admin/enable`: lift a deactivation (revocations stay).
pub async fn enable(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    set_disabled(s, headers, body, true).await
}

/// `GET /v1/admin/disabled`: every disabled identity and role.
pub async fn list_disabled(
    State(s): State<AppState>,
    client: crate::tls::ClientIdentity,
    headers: HeaderMap,
) -> Response {
    let rid = request_id();
    if let Err(r) = authorize_with_cert(&s, &client, &headers, "list_disabled", &rid).await {
        return r;
    }
    match s.service.store().read(|b| b.disabled()) {
        Ok(list) => Json(list).into_response(),
        Err(e) => revoke_error(RevokeError::Store(e), rid),
    }
}
