//! What every request gets once, before any handler runs: a request id, a
//! tracing span that carries it, and the finished JSON error answer.
//!
//! [`request_context`] is the outermost layer of [`super::router`]. It makes
//! the request id, opens the `request` span (`request_id`, `method`,
//! `path`) around everything the request does, so every log line of the
//! request names it, and renders every [`ApiError`] with that same id in
//! the body and the `x-request-id` header. Handlers take the id with the
//! [`RequestId`] extractor and the caller's token with [`Bearer`]; none of
//! them parses `Authorization` or makes an id by hand.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument as _;

use super::error::{self, ApiError};
use crate::auth::BearerToken;

/// Longest request path written into the span (paths carry approval ids;
/// anything longer is cut, so a hostile path cannot flood the log).
const MAX_LOGGED_PATH: usize = 200;

/// The id of one request: in its log span, its audit records and its error
/// answers (`request_id` and the `x-request-id` header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    fn fresh() -> RequestId {
        // A version 4 UUID from the thread's CSPRNG, written straight
        // into the shared string.
        let bytes: [u8; 16] = rand::Rng::gen(&mut rand::thread_rng());
        let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        RequestId(Arc::from(&*id.hyphenated().encode_lower(&mut text)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    /// The id [`request_context`] gave this request. Every route of
    /// [`super::router`] runs inside that layer; a handler driven without
    /// it (never in the server) gets a fresh id rather than none.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::fresh))
    }
}

/// The outermost layer: request id, span, and error answers rendered with
/// the id (see the module doc).
pub async fn request_context(req: Request, next: Next) -> Response {
    with_detail(crate::config::ErrorDetail::Full, req, next).await
}

/// [`request_context`] for the CA's router: error answers as much detailed
/// as its `error_detail` says.
pub async fn request_context_of(
    axum::extract::State(s): axum::extract::State<super::AppState>,
    req: Request,
    next: Next,
) -> Response {
    with_detail(s.service.error_detail(), req, next).await
}

async fn with_detail(detail: crate::config::ErrorDetail, mut req: Request, next: Next) -> Response {
    let rid = RequestId::fresh();
    let path: String = req.uri().path().chars().take(MAX_LOGGED_PATH).collect();
    let span = tracing::info_span!(
        "request",
        request_id = %rid,
        method = %req.method(),
        path = %path,
    );
    req.extensions_mut().insert(rid.clone());
    let resp = next.run(req).instrument(span).await;
    error::render(resp, &rid, detail)
}

/// The bearer token of `Authorization: Bearer <token>`; `None` when the
/// header is absent or empty (the service answers that with
/// `missing_token`).
pub struct Bearer(pub Option<BearerToken>);

/// An `Authorization` header that is not `Bearer <token>`: 401
/// `malformed_authorization`. The message never repeats the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedAuthorization(pub &'static str);

impl From<MalformedAuthorization> for ApiError {
    fn from(m: MalformedAuthorization) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "malformed_authorization", m.0)
    }
}

impl IntoResponse for MalformedAuthorization {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = MalformedAuthorization;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse_bearer(&parts.headers).map(Bearer)
    }
}

fn parse_bearer(headers: &HeaderMap) -> Result<Option<BearerToken>, MalformedAuthorization> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| MalformedAuthorization("Authorization header is not ASCII"))?;
    let malformed = MalformedAuthorization("Authorization must be \"Bearer <token>\"");
    let (scheme, rest) = v.split_once(' ').ok_or(malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed);
    }
    let t = rest.trim();
    if t.is_empty() {
        return Ok(None);
    }
    Ok(Some(BearerToken::new(t.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth(v: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(v).expect("header value"),
        );
        h
    }

    #[test]
    fn bearer_forms() {
        assert!(matches!(parse_bearer(&HeaderMap::new()), Ok(None)));
        assert!(matches!(parse_bearer(&auth(b"Bearer ")), Ok(None)));
        let t = parse_bearer(&auth(b"bearer  abc "))
            .expect("ok")
            .expect("token");
        assert_eq!(t.expose(), "abc");
        assert_eq!(
            parse_bearer(&auth(b"Basic abc")).err(),
            Some(MalformedAuthorization(
                "Authorization must be \"Bearer <token>\""
            ))
        );
        assert_eq!(
            parse_bearer(&auth(b"Bearer")).err(),
            Some(MalformedAuthorization(
                "Authorization must be \"Bearer <token>\""
            ))
        );
        assert_eq!(
            parse_bearer(&auth(b"Bearer \xff")).err(),
            Some(MalformedAuthorization("Authorization header is not ASCII"))
        );
    }
}
