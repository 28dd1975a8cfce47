//! The JSON error answer and the mapping from domain errors to HTTP status:
//! one `From` per domain error, so handlers return `Result<_, ApiError>`
//! and use `?`.
//!
//! An [`ApiError`] does not know its request: turned into a response it
//! carries its code and message as a response extension, and the
//! request-context layer ([`super::request::request_context`]) writes the
//! body `{"error", "message", "request_id"}` and the `x-request-id` header
//! with the id of the request's log span. So an error answer cannot name
//! another id than the log does.

use std::fmt::Display;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::request::RequestId;
use crate::approval::ApprovalError;
use crate::auth::TokenError;
use crate::revocation::RevokeError;
use crate::service::IssueError;
use crate::store::StoreError;

/// An error answer: `{"error": code, "message": what to do, "request_id"}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    message: String,
    retry_after: Option<u64>,
}

/// The code and message of an error answer, waiting in the response's
/// extensions for [`render`] to add the request id.
#[derive(Debug, Clone)]
struct PendingError {
    error: &'static str,
    message: String,
}

/// The wire form of an error answer; field order is the contract's.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: &'a str,
    request_id: &'a str,
}

impl ApiError {
    /// An error with an explicit status.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error: code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 503 `store_unavailable` telling the caller `message`; the cause goes
    /// to the log only (inside the request's span, so with its id).
    pub fn store_unavailable(cause: &dyn Display, log: &str, message: &str) -> Self {
        tracing::error!(error = %cause, "{log}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            message,
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        self.error
    }

    /// What the caller is told.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A failed issuance or admin/approval check. 5xx messages say little;
/// the log has the cause.
impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> Self {
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
            IssueError::Approval(ApprovalError::NotFound(_)) => {
                (StatusCode::NOT_FOUND, e.to_string())
            }
            IssueError::Approval(_) => (StatusCode::FORBIDDEN, e.to_string()),
            IssueError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        };
        let mut a = ApiError::new(status, code, message);
        if let IssueError::RateLimited { retry_after, .. } = &e {
            a.retry_after = Some(retry_after.as_secs().max(1));
        }
        a
    }
}

/// A token that was not accepted: as in an issuance.
impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        IssueError::Token(e).into()
    }
}

/// An approval that cannot be decided or redeemed: as in an issuance.
impl From<ApprovalError> for ApiError {
    fn from(e: ApprovalError) -> Self {
        IssueError::Approval(e).into()
    }
}

/// A revocation or deactivation that did not happen.
impl From<RevokeError> for ApiError {
    fn from(e: RevokeError) -> Self {
        match e {
            RevokeError::NothingMatched(m) => {
                ApiError::new(StatusCode::NOT_FOUND, "nothing_matched", m)
            }
            RevokeError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m),
            RevokeError::Store(se) => ApiError::store_unavailable(
                &se,
                "admin change not stored",
                "the store is unavailable; nothing was changed, retry later",
            ),
        }
    }
}

/// The store failed under an admin call; nothing was changed. Endpoints
/// with their own wording (the KRL, the inventory) use
/// [`ApiError::store_unavailable`].
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        RevokeError::Store(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = self.status.into_response();
        if let Some(v) = self
            .retry_after
            .and_then(|s| HeaderValue::from_str(&s.to_string()).ok())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r.extensions_mut().insert(PendingError {
            error: self.error,
            message: self.message,
        });
        r
    }
}

/// The message of a policy refusal under `error_detail = "terse"`: its
/// code and where the reason is, without the rule or the values it allows.
/// Other errors (token, limits, store) keep their message.
fn terse(code: &str) -> Option<String> {
    crate::policy::DenialCode::parse(code).map(|_| {
        format!(
            "refused ({code}); this CA does not say why to callers: give the CA operator this \
             request_id, which finds the reason in its audit log"
        )
    })
}

/// Finishes an error answer of the request `rid`: the JSON body and the
/// `x-request-id` header. Other responses pass unchanged. Under
/// `ErrorDetail::Terse`, policy refusals lose their reason here, once for
/// every route.
pub(super) fn render(
    mut resp: Response,
    rid: &RequestId,
    detail: crate::config::ErrorDetail,
) -> Response {
    let Some(mut p) = resp.extensions_mut().remove::<PendingError>() else {
        return resp;
    };
    if detail == crate::config::ErrorDetail::Terse {
        if let Some(m) = terse(p.error) {
            p.message = m;
        }
    }
    let (mut parts, _) = resp.into_parts();
    let body = Json(ErrorBody {
        error: p.error,
        message: &p.message,
        request_id: rid.as_str(),
    })
    .into_response();
    let (body_parts, body) = body.into_parts();
    // A serialization failure (impossible for two strings) leaves
    // `Json`'s 500 status; keep it rather than a wrong body.
    if body_parts.status != StatusCode::OK {
        parts.status = body_parts.status;
    }
    parts.headers.extend(body_parts.headers);
    if let Ok(v) = HeaderValue::from_str(rid.as_str()) {
        parts.headers.insert("x-request-id", v);
    }
    Response::from_parts(parts, body)
}
