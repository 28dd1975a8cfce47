//! Server-side console sessions and the logins in flight.
//!
//! The browser holds only a random session id in an HttpOnly,
//! SameSite=Strict cookie (Secure under TLS); everything else (who the
//! person is, the CSRF token, when the session ends) stays here, keyed by
//! the id's SHA-256 so a memory dump shows no usable cookie. A login in
//! flight is keyed by its OAuth `state` and bound to the browser that
//! started it by a second, short-lived cookie, so a callback URL sent to
//! someone else logs nobody in (login CSRF).

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use rand_core::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::auth::VerifiedToken;

/// How long a console session lasts after login, whatever the person does.
pub const SESSION_TTL_SECS: u64 = 8 * 3600;
/// How long a login may take at the issuer.
pub const LOGIN_TTL_SECS: u64 = 600;
/// Most sessions kept; the oldest go first beyond it.
const MAX_SESSIONS: usize = 10_000;
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

/// Sessions and logins in flight, in this process's memory (a restart
/// logs everyone out).
#[derive(Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    logins: Mutex<HashMap<String, PendingLogin>>,
}

impl Sessions {
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

    /// Opens a session for `person`; returns the cookie value.
    pub fn open(&self, person: VerifiedToken, now: u64) -> String {
        let id = random_token();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.expires_at > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(k) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| *k)
            {
                sessions.remove(&k);
            }
        }
        sessions.insert(
            key_of(&id),
            Session {
                person,
                csrf: random_token(),
                expires_at: now + SESSION_TTL_SECS,
            },
        );
        id
    }

    /// The live session of cookie value `id`.
    pub fn get(&self, id: &str, now: u64) -> Option<Session> {
        let key = key_of(id);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get(&key) {
            Some(s) if s.expires_at > now => Some(s.clone()),
            Some(_) => {
                sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session of cookie value `id`.
    pub fn close(&self, id: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.remove(&key_of(id));
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
        let s = Sessions::default();
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
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }
}
