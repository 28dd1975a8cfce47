//! Admin API: revoke certificates, disable and enable identities and
//! roles, see the replicas.
//! Callers authenticate with an OIDC token matched by an `[[admin]]` rule of
//! the server config; every action (and every refusal) is audited.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::MethodRouter;
use axum::{Json, Router};
use serde::Deserialize;

use super::request::MalformedAuthorization;
use super::{read_json, ApiError, AppState, Bearer, RequestId};
use crate::revocation::{self, DisableOutcome, RevokeError, RevokeOutcome};
use crate::store::{CertFilter, DisableTarget, DisabledEntry};
use crate::tls::ClientIdentity;

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

/// The administrator a request was authorized for. Only
/// [`require_admin`] puts it into a request; a handler that takes it can
/// therefore only run behind that middleware, and one mounted elsewhere by
/// mistake answers 500 instead of running unauthenticated.
#[derive(Debug, Clone)]
pub struct AdminCaller {
    /// Actor name for audit records (`admin:<issuer>:<subject>`, plus the
    /// TLS client certificate's identity when one was presented).
    pub actor: String,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<AdminCaller>()
            .cloned()
            .ok_or_else(|| {
                tracing::error!("admin handler mounted outside the admin router; refused");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            })
    }
}

/// The admin sub-router. Routes go in only through [`AdminRoutes::route`]
/// and come out only through [`AdminRoutes::into_router`], which puts every
/// one of them behind [`require_admin`]: an admin route without
/// authorization cannot be built.
#[must_use = "admin routes only serve once merged with into_router"]
pub struct AdminRoutes(Router<AppState>);

impl Default for AdminRoutes {
    fn default() -> Self {
        AdminRoutes::new()
    }
}

impl AdminRoutes {
    /// No routes yet.
    pub fn new() -> AdminRoutes {
        AdminRoutes(Router::new())
    }

    /// Adds an admin route.
    pub fn route(self, path: &str, method_router: MethodRouter<AppState>) -> AdminRoutes {
        AdminRoutes(self.0.route(path, method_router))
    }

    /// The routes, each behind [`require_admin`], to merge into the API router.
    pub fn into_router(self, state: AppState) -> Router<AppState> {
        self.0
            .route_layer(axum::middleware::from_fn_with_state(state, require_admin))
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

/// Middleware for every admin route (see [`AdminRoutes`]): the TLS client
/// certificate when `admin_requires_client_cert` is set, then an
/// `[[admin]]` token. Every refusal is audited.
pub async fn require_admin(
    State(s): State<AppState>,
    rid: RequestId,
    client: ClientIdentity,
    bearer: Result<Bearer, MalformedAuthorization>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let action = action_of(req.uri().path());
    if s.admin_requires_client_cert && client.0.is_none() {
        s.service
            .record_admin_refusal(
                &action,
                rid.as_str(),
                "client_certificate_required",
                "no TLS client certificate",
                s.service.clock().now(),
            )
            .await;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "client_certificate_required",
            "admin endpoints need a TLS client certificate signed by the configured client CA, plus an admin token",
        ));
    }
    let token = match bearer {
        Ok(Bearer(t)) => t,
        Err(m) => {
            s.service
                .record_admin_refusal(
                    &action,
                    rid.as_str(),
                    "malformed_authorization",
                    m.0,
                    s.service.clock().now(),
                )
                .await;
            return Err(m.into());
        }
    };
    let actor = s
        .service
        .authorize_admin(
            token.as_ref(),
            &action,
            rid.as_str(),
            s.service.clock().now(),
        )
        .await?;
    let actor = match &client.0 {
        Some(c) => format!("{actor} (tls: {c})"),
        None => actor,
    };
    req.extensions_mut().insert(AdminCaller { actor });
    Ok(next.run(req).await)
}

/// `POST /v1/admin/revoke` with exactly one of `serial`, `key_id`, `role`,
/// or `issuer`+`subject` (optionally with `role`), and a `reason`.
pub async fn revoke(
    State(s): State<AppState>,
    AdminCaller { actor }: AdminCaller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RevokeOutcome>, ApiError> {
    let shape = "\"serial\" | \"key_id\" | \"role\" | \"issuer\"+\"subject\", \"reason\"";
    let b: RevokeBody = read_json(body, shape)?;
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
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("name exactly one target: {shape}"),
            ))
        }
    };
    let o = revocation::revoke(
        s.service.store(),
        filter,
        &b.reason,
        &actor,
        crate::clock::unix_secs(s.service.clock().now()),
    )
    .await?;
    Ok(Json(o))
}

async fn set_disabled(
    s: AppState,
    AdminCaller { actor }: AdminCaller,
    body: Result<Bytes, BytesRejection>,
    enable: bool,
) -> Result<Json<DisableOutcome>, ApiError> {
    let b: DisableBody = read_json(body, "\"issuer\"+\"subject\" and/or \"role\", \"reason\"")?;
    let target =
        DisableTarget::from_parts(b.issuer, b.subject, b.role).map_err(RevokeError::from)?;
    let o = revocation::set_disabled(
        s.service.store(),
        target,
        enable,
        &b.reason,
        &actor,
        crate::clock::unix_secs(s.service.clock().now()),
    )
    .await?;
    Ok(Json(o))
}

/// `POST /v1/admin/disable`: stop issuance to an identity or role and revoke its live certificates.
pub async fn disable(
    State(s): State<AppState>,
    caller: AdminCaller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DisableOutcome>, ApiError> {
    set_disabled(s, caller, body, false).await
}

/// `POST /v1/admin/enable`: lift a deactivation (revocations stay).
pub async fn enable(
    State(s): State<AppState>,
    caller: AdminCaller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DisableOutcome>, ApiError> {
    set_disabled(s, caller, body, true).await
}

/// `GET /v1/admin/disabled`: every disabled identity and role.
pub async fn list_disabled(
    State(s): State<AppState>,
    _caller: AdminCaller,
) -> Result<Json<Vec<DisabledEntry>>, ApiError> {
    Ok(Json(s.service.store().access().disabled().await?))
}

/// `GET /v1/admin/replicas`: every replica of this CA's store with its
/// version, policy digest and git commit, last heartbeat and whether it is
/// live, and whether live replicas run different policies (the JSON of
/// `mayfly status --json`).
pub async fn replicas(
    State(s): State<AppState>,
    _caller: AdminCaller,
) -> Result<Json<crate::replica::StatusReport>, ApiError> {
    let now = crate::time::UnixSecs::of(s.service.clock().now());
    crate::heartbeat::status(s.service.store(), now)
        .await
        .map(Json)
        .map_err(|e| {
            ApiError::store_unavailable(
                &e,
                "replica heartbeats cannot be read",
                "the replicas cannot be read right now; retry later",
            )
        })
}
