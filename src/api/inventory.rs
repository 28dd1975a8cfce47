//! `GET /v1/identities`: the identity inventory, for administrators only.
//! The caller authenticates like the other admin endpoints (an OIDC token
//! matched by an `[[admin]]` rule); a refusal is audited.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::admin::AdminCaller;
use super::{ApiError, AppState};
use crate::inventory::{self, Inventory, DEFAULT_STALE_DAYS};

/// Query of `GET /v1/identities`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitiesQuery {
    /// Days without a certificate after which an identity is stale (default 30).
    stale_days: Option<u64>,
}

fn unavailable(cause: &dyn std::fmt::Display, log: &str) -> ApiError {
    ApiError::store_unavailable(
        cause,
        log,
        "the inventory cannot be read right now; retry later",
    )
}

/// `GET /v1/identities[?stale_days=N]`: every identity the CA has seen,
/// with roles, owners, first/last seen, certificates, last refusal and
/// status (`active`, `disabled`, `stale`).
pub async fn list_identities(
    State(s): State<AppState>,
    _caller: AdminCaller,
    query: Result<Query<IdentitiesQuery>, QueryRejection>,
) -> Result<Json<Inventory>, ApiError> {
    let stale_days = match query {
        Ok(Query(q)) => q.stale_days.unwrap_or(DEFAULT_STALE_DAYS),
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("query must be ?stale_days=N: {}", e.body_text()),
            ))
        }
    };
    let policy = s.service.policy();
    let now = crate::clock::unix_secs(s.service.clock().now());
    // The report queries run on the store's report connection, apart from
    // the request path's readers.
    inventory::collect(s.service.store(), &policy, stale_days, now)
        .await
        .map(Json)
        .map_err(|e| unavailable(&e, "inventory query failed"))
}
