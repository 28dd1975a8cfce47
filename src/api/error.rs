//! The JSON error answer and the mapping from domain errors to HTTP status.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::auth::TokenError;
use crate::service::IssueError;

/// An error answer: `{"error": code, "message": what to do, "request_id"}`.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    error: &'static str,
    message: String,
    request_id: String,
    #[serde(skip)]
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with an explicit status.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: String,
        request_id: String,
    ) -> Self {
        ApiError {
            status,
            error: code,
            message,
            request_id,
            retry_after: None,
        }
    }

    /// Maps a failed issuance. 5xx messages say little; the log has the cause.
    pub fn from_issue(e: IssueError, request_id: String) -> Self {
        let code = e.code();
        let (status, message) = match &e {
            IssueError::BadRequest { message, .. } => (StatusCode::BAD_REQUEST, message.clone()),
            IssueError::Token(TokenError::IssuerUnavailable { issuer, .. }) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the signing keys of issuer {issuer} cannot be fetched right now; retry later"),
            ),
            IssueError::Token(TokenError::IssuerKeysTooOld {
                issuer,
                age_secs,
                max_secs,
                ..
            }) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the signing keys of issuer {issuer} are too old to trust: fetched {age_secs} s ago, \
                     above its max_stale_keys of {max_secs} s, and fresh keys cannot be fetched right now; retry later"
                ),
            ),
            IssueError::Token(t) => (StatusCode::UNAUTHORIZED, t.to_string()),
            IssueError::Denied(d) => (StatusCode::FORBIDDEN, d.to_string()),
            IssueError::Store(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit store is unavailable, so no certificate was issued; retry later with a fresh token".into(),
            ),
            IssueError::Mint(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; the CA log has details under this request_id".into(),
            ),
            IssueError::Approval(crate::approval::ApprovalError::NotFound(_)) => {
                (StatusCode::NOT_FOUND, e.to_string())
            }
            IssueError::Approval(_) => (StatusCode::FORBIDDEN, e.to_string()),
            IssueError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        };
        let retry_after = match &e {
            IssueError::RateLimited { retry_after, .. } => Some(retry_after.as_secs().max(1)),
            _ => None,
        };
        let mut a = ApiError::new(status, code, message, request_id);
        a.retry_after = retry_after;
        a
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let rid = HeaderValue::from_str(&self.request_id).ok();
        let retry = self
            .retry_after
            .and_then(|s| HeaderValue::from_str(&s.to_string()).ok());
        let mut r = (status, Json(self)).into_response();
        if let Some(v) = rid {
            r.headers_mut().insert("x-request-id", v);
        }
        if let Some(v) = retry {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        r
    }
}
