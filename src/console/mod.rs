//! The web console: where the people who answer for the CA watch it and
//! act on it (approve, deny, revoke, disable) from a browser.
//!
//! It is one more caller of the services the admin API and the CLI use:
//! votes go through [`Service::vote_as`], admin rights through
//! [`Service::admin_actor`], revocation and deactivation through
//! [`crate::revocation`], reads through the inventory, the audit search and
//! `policy explain`. Nothing here writes SQL or decides on its own who may
//! do what.
//!
//! People log in with the OIDC authorization-code flow with PKCE at the
//! `[console]` issuer ([`oidc`]); the claims of their verified ID token
//! are kept in a server-side session in the store ([`session`]), so every
//! replica of a shared store knows it. Pages are rendered on the server with
//! maud (escaped by construction), with no script at all, under a strict
//! Content-Security-Policy; every form carries the session's CSRF token.
//! Without `[console]` none of these routes exist and `/console/` is 404.

pub mod oidc;
mod pages;
pub mod session;

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, DOCTYPE};

use crate::auth::VerifiedToken;
use crate::config::ConsoleConfig;
use crate::policy::ClaimRule;
use crate::service::Service;
use oidc::OidcClient;
use session::{Logins, Session, Sessions, LOGIN_COOKIE, SESSION_COOKIE};

/// The Content-Security-Policy of every console answer: nothing but this
/// origin's stylesheet, no script at all, no framing.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("console.css");

/// Largest form body the console reads.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Everything the console's handlers share.
pub struct Console {
    service: Arc<Service>,
    oidc: OidcClient,
    logins: Logins,
    sessions: Sessions,
    viewers: Vec<ClaimRule>,
    issuer: String,
    /// `scheme://host[:port]` of `public_url`, what the `Origin` of a form
    /// post must be.
    origin: String,
    /// Cookies carry `Secure` (the console is served over HTTPS).
    secure: bool,
}

impl Console {
    /// The console for `cfg`, on `service`, logging people in with `oidc`.
    /// `secure`: the server speaks TLS (cookies get `Secure`).
    pub fn new(
        cfg: &ConsoleConfig,
        service: Arc<Service>,
        oidc: OidcClient,
        secure: bool,
    ) -> Console {
        let viewers = cfg
            .viewers
            .iter()
            .map(|(claim, pattern)| ClaimRule {
                claim: claim.clone(),
                patterns: vec![crate::policy::Pattern::new(pattern)],
            })
            .collect();
        Console {
            sessions: Sessions::new(service.store().sessions_shared()),
            service,
            oidc,
            logins: Logins::default(),
            viewers,
            issuer: cfg.issuer.clone(),
            origin: cfg.public_url.origin().ascii_serialization(),
            secure: secure || cfg.public_url.scheme() == "https",
        }
    }

    fn now(&self) -> u64 {
        crate::clock::unix_secs(self.service.clock().now())
    }

    fn is_viewer(&self, v: &VerifiedToken) -> bool {
        v.issuer() == self.issuer
            && self
                .viewers
                .iter()
                .any(|r| crate::policy::match_claims(std::slice::from_ref(r), v.claims()).is_ok())
    }

    fn approves_any_role(&self, v: &VerifiedToken) -> bool {
        let policy = self.service.policy();
        policy
            .roles
            .keys()
            .any(|r| self.service.may_decide(v, r.as_str()))
    }

    fn cookie(&self, name: &str, value: &str, path: &str, same_site: &str, max_age: u64) -> String {
        format!(
            "{name}={value}; Path={path}; HttpOnly; SameSite={same_site}; Max-Age={max_age}{}",
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// Starts a login and sends the browser to the issuer.
    async fn login_redirect(&self) -> Response {
        let (state, nonce, verifier, binding) = self.logins.begin_login(self.now());
        match self.oidc.authorization_url(&state, &nonce, &verifier).await {
            Ok(url) => {
                let mut r = Redirect::to(url.as_str()).into_response();
                if let Ok(v) = HeaderValue::from_str(&self.cookie(
                    LOGIN_COOKIE,
                    &binding,
                    "/console/callback",
                    "Lax",
                    session::LOGIN_TTL_SECS,
                )) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            }
            Err(e) => {
                tracing::warn!(error = %e, "console login cannot start");
                ConsoleError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
            }
        }
    }
}

/// The console's routes, all under `/console/`, with its security headers.
/// It has no fallback of its own: it is merged into the API router, whose
/// fallback answers any other path.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(pages::overview))
        .route("/console/callback", get(pages::callback))
        .route("/console/logout", post(pages::logout))
        .route("/console/assets/console.css", get(css))
        .route("/console/approvals", get(pages::approvals))
        .route("/console/approvals/{id}", post(pages::vote))
        .route("/console/feed", get(pages::feed))
        .route("/console/certs", get(pages::cert))
        .route("/console/certs/revoke", post(pages::revoke))
        .route("/console/identities", get(pages::identities))
        .route("/console/identity", get(pages::identity))
        .route("/console/identity/disable", post(pages::disable))
        .route("/console/identity/enable", post(pages::enable))
        .route("/console/audit", get(pages::audit))
        .route("/console/policy", get(pages::policy))
        .route("/console/policy/explain", post(pages::explain))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not "no-referrer": browsers then send `Origin: null` on form posts,
    // and the Origin check below could not tell our forms from others.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

/// An error page.
#[derive(Debug)]
pub struct ConsoleError {
    status: StatusCode,
    message: String,
}

impl ConsoleError {
    fn new(status: StatusCode, message: impl Into<String>) -> ConsoleError {
        ConsoleError {
            status,
            message: message.into(),
        }
    }

    fn forbidden(message: impl Into<String>) -> ConsoleError {
        ConsoleError::new(StatusCode::FORBIDDEN, message)
    }

    fn bad(message: impl Into<String>) -> ConsoleError {
        ConsoleError::new(StatusCode::BAD_REQUEST, message)
    }

    fn unavailable(cause: &dyn std::fmt::Display) -> ConsoleError {
        tracing::error!(error = %cause, "console: the store failed");
        ConsoleError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store cannot be read right now; retry later",
        )
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = bare_page(
            title,
            html! {
                h1 { (title) }
                p.error { (self.message) }
                p { a href="/console/" { "Back to the console" } }
            },
        );
        (self.status, body).into_response()
    }
}

/// A page without navigation (errors, the login hand-over).
fn bare_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "mayfly: " (title) }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body { main { (body) } }
        }
    }
}

/// A person with a live session, and what they may do.
pub struct Caller {
    /// Their session.
    pub session: Session,
    /// Admin actor name when an `[[admin]]` rule makes them one.
    pub admin: Option<String>,
}

impl Caller {
    fn person(&self) -> &VerifiedToken {
        &self.session.person
    }

    /// Checks the CSRF token of a form post.
    fn check_csrf(&self, token: Option<&str>) -> Result<(), ConsoleError> {
        match token {
            Some(t) if session::same_secret(t, &self.session.csrf) => Ok(()),
            _ => Err(ConsoleError::forbidden(
                "this form is not from your console session (CSRF token missing or wrong); reload the page and try again",
            )),
        }
    }
}

impl FromRequestParts<Arc<Console>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        c: &Arc<Console>,
    ) -> Result<Self, Self::Rejection> {
        let session = match session_id(&parts.headers) {
            Some(id) => c
                .sessions
                .get(id, c.now())
                .await
                .map_err(|e| ConsoleError::unavailable(&e).into_response())?,
            None => None,
        };
        let Some(session) = session else {
            if parts.method == axum::http::Method::GET {
                return Err(c.login_redirect().await);
            }
            return Err(ConsoleError::forbidden(
                "no console session (logged out or expired); open /console/ to log in again",
            )
            .into_response());
        };
        if parts.method == axum::http::Method::POST {
            // Browsers send Origin on every form post; a foreign one is
            // refused even before the CSRF token is looked at.
            if let Some(o) = parts.headers.get(header::ORIGIN) {
                if o.as_bytes() != c.origin.as_bytes() {
                    return Err(ConsoleError::forbidden(
                        "this form was posted from another site (Origin does not match public_url)",
                    )
                    .into_response());
                }
            }
        }
        let admin = c.service.admin_actor(&session.person).ok();
        let caller = Caller { session, admin };
        if caller.admin.is_none()
            && !c.is_viewer(caller.person())
            && !c.approves_any_role(caller.person())
        {
            return Err(ConsoleError::forbidden(
                "you are no longer a viewer, administrator or approver of this CA",
            )
            .into_response());
        }
        Ok(caller)
    }
}

fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| session::cookie(h, SESSION_COOKIE))
}

/// The console state, for handlers.
type St = State<Arc<Console>>;
