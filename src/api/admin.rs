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
    // Disabling a name no token can carry protects nothing: refuse the typo
    // (as `mayfly identity disable --config` does). Enabling stays
    // possible, for an entry left from an issuer removed since.
    if let (false, Some(issuer)) = (enable, b.issuer.as_deref().filter(|i| !i.is_empty())) {
        let names = s.service.verifier().issuer_names();
        if let Some(why) = crate::config::unknown_issuer(&names, issuer) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_issuer",
                format!("issuer {why}"),
            ));
        }
    }
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

/// `GET /v1/admin/ca`: every CA key with its slot, fingerprint, location,
/// age and whether it signs (the JSON of `mayfly ca status --json`).
pub async fn ca_status(
    State(s): State<AppState>,
    _caller: AdminCaller,
) -> Result<Json<Vec<crate::ca::rotation::KeyStatus>>, ApiError> {
    let now = crate::clock::unix_secs(s.service.clock().now());
    s.service.ca_status(now).await.map(Json).map_err(|e| {
        ApiError::store_unavailable(
            &e,
            "CA key status cannot be read",
            "the CA keys cannot be read right now; retry later",
        )
    })
}

/// Most records one `GET /v1/admin/audit` answers.
pub const AUDIT_SEARCH_MAX: usize = 1000;

/// Query of `GET /v1/admin/audit`: the filters of `mayfly audit search`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSearchQuery {
    subject: Option<String>,
    issuer: Option<String>,
    role: Option<String>,
    serial: Option<u64>,
    key_id: Option<String>,
    event: Option<String>,
    /// Only records at or after this time (unix milliseconds).
    since_ms: Option<i64>,
    /// Most records (the newest); default 50, at most [`AUDIT_SEARCH_MAX`].
    limit: Option<usize>,
}

/// `GET /v1/admin/audit?subject=..&issuer=..&role=..&serial=..&key_id=..&event=..&since_ms=..&limit=..`:
/// audit records by who, what and when, as `mayfly audit search` finds
/// them on the CA host.
pub async fn audit_search(
    State(s): State<AppState>,
    _caller: AdminCaller,
    query: Result<axum::extract::Query<AuditSearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<crate::audit::search::SearchAnswer>, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let q = match query {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => {
            return Err(bad(format!(
                "query takes subject, issuer, role, serial, key_id, event, since_ms, limit: {}",
                e.body_text()
            )))
        }
    };
    if let Some(e) = q.event.as_deref() {
        crate::audit::EventKind::parse_named(e).map_err(|why| bad(format!("event {why}")))?;
    }
    let limit = q.limit.unwrap_or(crate::audit::search::DEFAULT_LIMIT);
    if limit == 0 || limit > AUDIT_SEARCH_MAX {
        return Err(bad(format!("limit must be 1 to {AUDIT_SEARCH_MAX}")));
    }
    let aq = crate::audit::search::AuditQuery {
        subject: q.subject,
        issuer: q.issuer,
        role: q.role,
        serial: q.serial,
        key_id: q.key_id,
        event: q.event,
        since_ms: q.since_ms,
        limit,
    };
    let mut rows = s.service.store().audit().search(&aq).await?;
    // Newest were fetched first; answer oldest first, as the CLI shows them.
    rows.reverse();
    let mut answer = crate::audit::search::SearchAnswer {
        records: Vec::with_capacity(rows.len()),
        unreadable: Vec::new(),
    };
    for r in rows {
        match r {
            Ok(r) => answer.records.push(crate::audit::export::to_line(&r)),
            Err(bad) => answer.unreadable.push(crate::audit::search::UnreadableRow {
                seq: bad.seq,
                what: bad.what,
            }),
        }
    }
    Ok(Json(answer))
}

/// `GET /v1/admin/hosts`: the hosts that report after `mayfly host sync`,
/// their KRL lag, the stale ones and the expected ones that never reported
/// (the JSON of `mayfly hosts --json`).
pub async fn hosts(
    State(s): State<AppState>,
    _caller: AdminCaller,
) -> Result<Json<crate::fleet::FleetView>, ApiError> {
    let now = crate::clock::unix_secs(s.service.clock().now());
    s.service.fleet_view(now).await.map(Json).map_err(|e| {
        ApiError::store_unavailable(
            &e,
            "the hosts' reports cannot be read",
            "the hosts' reports cannot be read right now; retry later",
        )
    })
}
