//! Approval endpoints for people deciding just-in-time requests:
//! `GET /v1/requests` (what the caller may decide),
//! `POST /v1/requests/{id}/approve` and `/deny` with `{"reason"}`,
//! `GET /v1/requests?all=true` (recent requests in every state), and
//! `POST /v1/requests/{id}/cancel` (the requesting bot, or an admin).
//!
//! Approvers are not administrators, so these routes are not on the admin
//! sub-router: the service checks the caller's token against the
//! approvers of each request's role, and audits refused votes.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
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

/// Query of `GET /v1/requests`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Every recent request (any state), not only the pending ones.
    #[serde(default)]
    all: bool,
}

/// `GET /v1/requests`: pending requests the caller is an approver for
/// (`?all=true`: the recent ones in every state, expired included).
pub async fn list(
    State(s): State<AppState>,
    Bearer(token): Bearer,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<ApprovalRequest>>, ApiError> {
    let all = match q {
        Ok(Query(q)) => q.all,
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the only query parameter is all=true|false",
            ))
        }
    };
    let list = s
        .service
        .approval_requests(token.as_ref(), all, s.service.clock().now())
        .await?;
    Ok(Json(list))
}

/// `POST /v1/requests/{id}/cancel` with `{"reason"}`: the identity that
/// made the request, or an administrator, withdraws it.
pub async fn cancel(
    State(s): State<AppState>,
    rid: RequestId,
    client: crate::tls::ClientIdentity,
    Path(id): Path<String>,
    Bearer(token): Bearer,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ApprovalRequest>, ApiError> {
    let b: VoteBody = read_json(body, "\"reason\"")?;
    check_reason(&b.reason)?;
    // An administrator cancelling someone else's request passes the same
    // transport check as the admin API.
    let admin_ok = !s.admin_requires_client_cert || client.0.is_some();
    let r = s
        .service
        .cancel_request(
            token.as_ref(),
            &id,
            &b.reason,
            rid.as_str(),
            admin_ok,
            s.service.clock().now(),
        )
        .await?;
    Ok(Json(r))
}

fn check_reason(reason: &str) -> Result<(), ApiError> {
    if reason.len() > 1024 || reason.chars().any(|c| c.is_control()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "reason must be one line of at most 1024 bytes",
        ));
    }
    Ok(())
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
    check_reason(&b.reason)?;
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
