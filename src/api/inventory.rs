//! `GET /v1/identities`: the identity inventory, for administrators only.
//! The caller authenticates like the other admin endpoints (an OIDC token
//! matched by an `[[admin]]` rule); a refusal is audited.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::inventory::{self, DEFAULT_STALE_DAYS};

/// Query of `GET /v1/identities`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitiesQuery {
    /// Days without a certificate after which an identity is stale (default 30).
    stale_days: Option<u64>,
}

fn unavailable(rid: String) -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the inventory cannot be read right now; retry later".into(),
        rid,
    )
    .into_response()
}

/// `GET /v1/identities[?stale_days=N]`: every identity the CA has seen,
/// with roles, owners, first/last seen, certificates, last refusal and
/// status (`active`, `disabled`, `stale`).
pub async fn list_identities(
    State(s): State<AppState>,
    caller: super::admin::AdminCaller,
    query: Result<Query<IdentitiesQuery>, QueryRejection>,
) -> Response {
    let rid = caller.request_id;
    let stale_days = match query {
        Ok(Query(q)) => q.stale_days.unwrap_or(DEFAULT_STALE_DAYS),
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("query must be ?stale_days=N: {}", e.body_text()),
                rid,
            )
            .into_response()
        }
    };
    let policy = s.service.policy();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // The report queries run on the store's report connection, apart from
    // the request path's readers.
    match inventory::collect(s.service.store(), &policy, stale_days, now).await {
        Ok(inv) => Json(inv).into_response(),
        Err(e) => {
            tracing::error!(request_id = %rid, error = %e, "inventory query failed");
            unavailable(rid)
        }
    }
}
