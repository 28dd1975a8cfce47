//! Server-side console sessions and the logins in flight.
//!
//! The browser holds only a random session id in an HttpOnly,
//! SameSite=Strict cookie (Secure under TLS). The session itself (who the
//! person is, when the session ends) is in the store, keyed by the id's
//! SHA-256, so every replica of a shared store knows it, a logout on any
//! replica ends it on all, and neither the database nor a memory dump
//! holds a usable cookie. The CSRF token of a session is derived from the
//! id with another hash, so it is not stored either and cannot be computed
//! from the stored key.
//!
//! A login in flight is kept in this process's memory, keyed by its OAuth
//! `state` and bound to the browser that started it by a second,
//! short-lived cookie, so a callback URL sent to someone else logs nobody
//! in (login CSRF).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use rand_core::RngCore as _;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::auth::VerifiedToken;
use crate::store::{SessionRow, SessionStore, StoreError};

/// How long a console session lasts after login, whatever the person does.
pub const SESSION_TTL_SECS: u64 = 8 * 3600;
/// How long a login may take at the issuer.
pub const LOGIN_TTL_SECS: u64 = 600;
/// Most logins in flight.
const MAX_LOGINS: usize = 1_000;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "mayfly_console";
/// Name of the cookie that binds a login in flight to its browser.
pub const LOGIN_COOKIE: &str = "mayfly_console_login";

/// 32 random bytes, base64url without padding.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn key_of(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The CSRF token of the session with cookie value `id`.
fn csrf_of(id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"mayfly console csrf\0");
    h.update(id.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.finalize())
}

/// Compares two secrets in time that depends only on their lengths.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A logged-in person.
#[derive(Clone)]
pub struct Session {
    /// Claims of their ID token, verified at login.
    pub person: VerifiedToken,
    /// The token every form of this session carries.
    pub csrf: String,
    /// Unix seconds after which the session is gone.
    pub expires_at: u64,
}

/// What the store keeps of the person: the verified ID token's issuer
/// name and claims (never the token).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredPerson {
    issuer: String,
    claims: Map<String, Value>,
    #[serde(default)]
    job: BTreeMap<String, String>,
}

/// Console sessions, kept in the store.
pub struct Sessions {
    store: Arc<dyn SessionStore>,
}

impl Sessions {
    /// Sessions kept in `store`.
    pub fn new(store: Arc<dyn SessionStore>) -> Sessions {
        Sessions { store }
    }

    /// Opens a session for `person` at `now`; returns the cookie value.
    pub async fn open(&self, person: &VerifiedToken, now: u64) -> Result<String, StoreError> {
        let id = random_token();
        let stored = StoredPerson {
            issuer: person.issuer().to_string(),
            claims: person.claims().clone(),
            job: person.job_claims().clone(),
        };
        let row = SessionRow {
            person: serde_json::to_string(&stored)
                .map_err(|e| StoreError::Backend(format!("console session: {e}")))?,
            expires_at: now + SESSION_TTL_SECS,
        };
        self.store.put_session(key_of(&id), row, now).await?;
        Ok(id)
    }

    /// The live session of cookie value `id` at `now`.
    pub async fn get(&self, id: &str, now: u64) -> Result<Option<Session>, StoreError> {
        let Some(row) = self.store.session(key_of(id), now).await? else {
            return Ok(None);
        };
        // A row that cannot be read back is no session (logged out).
        let person = serde_json::from_str::<StoredPerson>(&row.person)
            .ok()
            .and_then(|p| {
                VerifiedToken::of_console_session(p.issuer, p.claims, p.job, row.expires_at)
            });
        Ok(person.map(|person| Session {
            person,
            csrf: csrf_of(id),
            expires_at: row.expires_at,
        }))
    }

    /// Ends the session of cookie value `id`, on every replica.
    pub async fn close(&self, id: &str) -> Result<(), StoreError> {
        self.store.delete_session(key_of(id)).await
    }
}

/// A login between the redirect to the issuer and the callback.
pub struct PendingLogin {
    /// PKCE code verifier.
    pub verifier: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// SHA-256 of the browser-binding cookie's value.
    binding: [u8; 32],
    /// Unix seconds after which the login is void.
    expires_at: u64,
}

/// Why a callback is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginLookupError {
    /// No login with this state (unknown, used, or expired).
    UnknownState,
    /// The browser does not hold the cookie of the login it completes.
    WrongBrowser,
}

/// Logins in flight, in this process's memory (a login completes at the
/// replica that started it).
#[derive(Default)]
pub struct Logins {
    logins: Mutex<HashMap<String, PendingLogin>>,
}

impl Logins {
    /// Starts a login: returns (state, nonce, PKCE verifier, binding cookie value).
    pub fn begin_login(&self, now: u64) -> (String, String, String, String) {
        let (state, nonce, verifier, binding) = (
            random_token(),
            random_token(),
            random_token(),
            random_token(),
        );
        let mut logins = self.logins.lock().unwrap_or_else(|e| e.into_inner());
        logins.retain(|_, l| l.expires_at > now);
        if logins.len() >= MAX_LOGINS {
            if let Some(k) = logins
                .iter()
                .min_by_key(|(_, l)| l.expires_at)
                .map(|(k, _)| k.clone())
            {
                logins.remove(&k);
            }
        }
        logins.insert(
            state.clone(),
            PendingLogin {
                verifier: verifier.clone(),
                nonce: nonce.clone(),
                binding: key_of(&binding),
                expires_at: now + LOGIN_TTL_SECS,
            },
        );
        (state, nonce, verifier, binding)
    }

    /// Takes the login of `state` (once), if `binding` is its browser's cookie.
    pub fn finish_login(
        &self,
        state: &str,
        binding: Option<&str>,
        now: u64,
    ) -> Result<PendingLogin, LoginLookupError> {
        let mut logins = self.logins.lock().unwrap_or_else(|e| e.into_inner());
        let l = logins
            .remove(state)
            .filter(|l| l.expires_at > now)
            .ok_or(LoginLookupError::UnknownState)?;
        match binding {
            Some(b) if key_of(b) == l.binding => Ok(l),
            _ => Err(LoginLookupError::WrongBrowser),
        }
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_completes_once_and_only_in_its_browser() {
        let s = Logins::default();
        let (state, _, _, binding) = s.begin_login(100);
        assert_eq!(
            s.finish_login(&state, Some("other"), 101).err(),
            Some(LoginLookupError::WrongBrowser)
        );
        // The failed attempt used it up.
        assert_eq!(
            s.finish_login(&state, Some(&binding), 101).err(),
            Some(LoginLookupError::UnknownState)
        );
        let (state, _, _, binding) = s.begin_login(100);
        assert!(s.finish_login(&state, Some(&binding), 101).is_ok());
        let (state, _, _, binding) = s.begin_login(100);
        assert_eq!(
            s.finish_login(&state, Some(&binding), 100 + LOGIN_TTL_SECS)
                .err(),
            Some(LoginLookupError::UnknownState)
        );
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let h = "a=1; mayfly_console_login=x; mayfly_console=y";
        assert_eq!(cookie(h, SESSION_COOKIE), Some("y"));
        assert_eq!(cookie(h, LOGIN_COOKIE), Some("x"));
        assert_eq!(cookie(h, "b"), None);
    }

    #[test]
    fn the_csrf_token_is_not_the_stored_key() {
        let id = random_token();
        assert_ne!(
            csrf_of(&id).as_bytes(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(key_of(&id))
                .as_bytes()
        );
        assert_eq!(csrf_of(&id), csrf_of(&id));
        assert_ne!(csrf_of(&id), csrf_of(&random_token()));
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }
}
