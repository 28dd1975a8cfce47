//! Approval endpoints for people deciding just-in-time requests:
//! `GET /v1/requests` (what the caller may decide),
//! `POST /v1/requests/{id}/approve` and `/deny` with `{"reason"}`.
//!
//! Approvers are not administrators, so these routes are not on the admin
//! sub-router: the service checks the caller's token against the
//! approvers of each request's role, and audits refused votes.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::{read_json, ApiError, AppState, Bearer, RequestId};
use crate::approval::ApprovalRequest;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VoteBody {
    #[serde(default)]
    reason: String,
}

/// `GET /v1/requests`: pending requests the caller is an approver for.
pub async fn list(
    State(s): State<AppState>,
    Bearer(token): Bearer,
) -> Result<Json<Vec<ApprovalRequest>>, ApiError> {
    let list = s
        .service
        .pending_approvals(token.as_ref(), s.service.clock().now())
        .await?;
    Ok(Json(list))
}

async fn vote(
    s: AppState,
    rid: RequestId,
    id: String,
    token: Option<crate::auth::BearerToken>,
    body: Result<Bytes, BytesRejection>,
    approve: bool,
) -> Result<Json<ApprovalRequest>, ApiError> {
    let b: VoteBody = read_json(body, "\"reason\"")?;
    if b.reason.len() > 1024 || b.reason.chars().any(|c| c.is_control()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "reason must be one line of at most 1024 bytes",
        ));
    }
    let r = s
        .service
        .vote(
            token.as_ref(),
            &id,
            approve,
            &b.reason,
            rid.as_str(),
            s.service.clock().now(),
        )
        .await?;
    Ok(Json(r))
}

/// `POST /v1/requests/{id}/approve`.
pub async fn approve(
    State(s): State<AppState>,
    rid: RequestId,
    Path(id): Path<String>,
    Bearer(token): Bearer,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ApprovalRequest>, ApiError> {
    vote(s, rid, id, token, body, true).await
}

/// `POST /v1/requests/{id}/deny`.
pub async fn deny(
    State(s): State<AppState>,
    rid: RequestId,
    Path(id): Path<String>,
    Bearer(token): Bearer,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ApprovalRequest>, ApiError> {
    vote(s, rid, id, token, body, false).await
}
