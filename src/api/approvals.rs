//! Approval endpoints for people deciding just-in-time requests:
//! `GET /v1/requests` (what the caller may decide),
//! `POST /v1/requests/{id}/approve` and `/deny` with `{"reason"}`.

use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{bearer, read_json, request_id, ApiError, AppState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VoteBody {
    #[serde(default)]
    reason: String,
}

/// `GET /v1/requests`: pending requests the caller is an approver for.
pub async fn list(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let rid = request_id();
    let token = match bearer(&headers) {
        Ok(t) => t,
        Err(m) => {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "malformed_authorization",
                m.into(),
                rid,
            )
            .into_response()
        }
    };
    match s
        .service
        .pending_approvals(token.as_ref(), SystemTime::now())
        .await
    {
        Ok(list) => Json(list).into_response(),
        Err(e) => ApiError::from_issue(e, rid).into_response(),
    }
}

async fn vote(
    s: AppState,
    id: String,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    approve: bool,
) -> Response {
    let rid = request_id();
    let token = match bearer(&headers) {
        Ok(t) => t,
        Err(m) => {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "malformed_authorization",
                m.into(),
                rid,
            )
            .into_response()
        }
    };
    let b: VoteBody = match read_json(body, "\"reason\"", &rid) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if b.reason.len() > 1024 || b.reason.chars().any(|c| c.is_control()) {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "reason must be one line of at most 1024 bytes".into(),
            rid,
        )
        .into_response();
    }
    match s
        .service
        .vote(
            token.as_ref(),
            &id,
            approve,
            &b.reason,
            &rid,
            SystemTime::now(),
        )
        .await
    {
        Ok(r) => Json(r).into_response(),
        Err(e) => ApiError::from_issue(e, rid).into_response(),
    }
}

/// `POST /v1/requests/{id}/approve`.
pub async fn approve(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    vote(s, id, headers, body, true).await
}

/// `POST /v1/requests/{id}/deny`.
pub async fn deny(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    vote(s, id, headers, body, false).await
}
