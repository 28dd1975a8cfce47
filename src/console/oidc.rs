//! The console's side of the OIDC authorization-code flow with PKCE:
//! discovery, the authorization URL, the code exchange, and the ID token
//! check. The ID token goes through the same [`Verifier`] as every bot
//! token (the issuer's JWKS, `iss`, `exp`, `nbf`, `iat`), with the
//! console's client id as the audience; the nonce and `azp` are checked
//! here.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;

use crate::auth::{TokenError, VerifiedToken, Verifier};
use crate::config::{ConsoleConfig, IssuerConfig};

/// Largest discovery document or token response read.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Why a login failed. The message is shown to the person; nothing secret
/// (codes, tokens, the client secret) is ever part of it.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The issuer's discovery document or token endpoint failed.
    #[error("the identity provider {issuer} cannot be used right now: {reason}")]
    Issuer {
        /// `[[issuer]]` name.
        issuer: String,
        /// What went wrong.
        reason: String,
    },
    /// The issuer refused the code.
    #[error("the identity provider refused the login: {0}")]
    Refused(String),
    /// The ID token did not verify.
    #[error("the ID token was not accepted: {0}")]
    Token(#[from] TokenError),
    /// The ID token's nonce or azp is not this login's.
    #[error("the ID token was not accepted: {0}")]
    Binding(&'static str),
}

/// Endpoints from the issuer's discovery document.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Where the browser is sent to log in.
    pub authorization: url::Url,
    /// Where the code is exchanged.
    pub token: url::Url,
}

/// The console's OIDC client.
pub struct OidcClient {
    issuer: IssuerConfig,
    client_id: String,
    client_secret: Option<zeroize::Zeroizing<String>>,
    redirect_uri: String,
    http: reqwest::Client,
    verifier: Verifier,
    endpoints: OnceCell<Endpoints>,
}

impl std::fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcClient")
            .field("issuer", &self.issuer.name)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

/// The PKCE S256 challenge of `verifier`.
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn endpoint_url(doc: &Value, name: &str, issuer: &str) -> Result<url::Url, String> {
    let s = doc
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("its discovery document has no {name}"))?;
    let u = url::Url::parse(s).map_err(|e| format!("its {name} is not a URL: {e}"))?;
    if u.scheme() != "https" && !crate::config::is_loopback_http(&u) {
        return Err(format!(
            "its {name} {s:?} is not https (plain http only on loopback, for {issuer})"
        ));
    }
    Ok(u)
}

impl OidcClient {
    /// A client of `issuer` for `cfg`; `secret` is the client secret read
    /// from `client_secret_file`.
    pub fn new(
        cfg: &ConsoleConfig,
        issuer: &IssuerConfig,
        secret: Option<String>,
        http: reqwest::Client,
        metrics: Arc<crate::auth::keystats::JwksMetrics>,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> OidcClient {
        // ID tokens are for the console: their audience is its client id.
        // They are not single use here (a session is made once per login,
        // and the nonce ties the token to it).
        let mut id_issuer = issuer.clone();
        id_issuer.audience = cfg.client_id.clone();
        id_issuer.replay_protection = false;
        let verifier = Verifier::new(
            std::slice::from_ref(&id_issuer),
            http.clone(),
            metrics,
            clock,
        );
        OidcClient {
            issuer: issuer.clone(),
            client_id: cfg.client_id.clone(),
            client_secret: secret.map(zeroize::Zeroizing::new),
            redirect_uri: cfg.redirect_uri(),
            http,
            verifier,
            endpoints: OnceCell::new(),
        }
    }

    fn issuer_error(&self, reason: impl Into<String>) -> LoginError {
        LoginError::Issuer {
            issuer: self.issuer.name.clone(),
            reason: reason.into(),
        }
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        let body = resp.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
        if body.len() > MAX_RESPONSE_BYTES {
            return Err(format!("GET {url}: answer too large"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not JSON: {e}"))
    }

    /// The issuer's endpoints, fetched once from its discovery document.
    pub async fn endpoints(&self) -> Result<&Endpoints, LoginError> {
        self.endpoints
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.url.trim_end_matches('/')
                );
                let doc = self
                    .get_json(&url)
                    .await
                    .map_err(|e| self.issuer_error(e))?;
                if doc.get("issuer").and_then(Value::as_str) != Some(self.issuer.url.as_str()) {
                    return Err(self.issuer_error(format!(
                        "its discovery document names another issuer than {}",
                        self.issuer.url
                    )));
                }
                Ok(Endpoints {
                    authorization: endpoint_url(&doc, "authorization_endpoint", &self.issuer.name)
                        .map_err(|e| self.issuer_error(e))?,
                    token: endpoint_url(&doc, "token_endpoint", &self.issuer.name)
                        .map_err(|e| self.issuer_error(e))?,
                })
            })
            .await
    }

    /// Where to send the browser to log in.
    pub async fn authorization_url(
        &self,
        state: &str,
        nonce: &str,
        verifier: &str,
    ) -> Result<url::Url, LoginError> {
        let mut u = self.endpoints().await?.authorization.clone();
        u.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", "openid profile email groups")
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", &pkce_challenge(verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(u)
    }

    /// Exchanges `code` for an ID token and verifies it at `now` (unix
    /// seconds): signature, issuer, audience = client id, times, nonce.
    pub async fn exchange(
        &self,
        code: &str,
        verifier: &str,
        nonce: &str,
        now: u64,
    ) -> Result<VerifiedToken, LoginError> {
        let token_url = self.endpoints().await?.token.clone();
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("code_verifier", verifier),
        ];
        let mut req = self.http.post(token_url.clone());
        match &self.client_secret {
            Some(secret) => {
                // RFC 6749 2.3.1: both parts form-encoded before base64.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    enc(&self.client_id),
                    enc(secret)
                ));
                req = req.header("authorization", format!("Basic {basic}"));
            }
            None => form.push(("client_id", self.client_id.as_str())),
        }
        let resp = req
            .form(&form)
            .send()
            .await
            .map_err(|e| self.issuer_error(format!("POST {token_url}: {e}")))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.issuer_error(format!("POST {token_url}: {e}")))?;
        if body.len() > MAX_RESPONSE_BYTES {
            return Err(self.issuer_error("its token answer is too large"));
        }
        let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let what = doc
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error code")
                .chars()
                .take(100)
                .collect::<String>();
            return Err(LoginError::Refused(format!("HTTP {status}, {what}")));
        }
        let id_token = doc
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| LoginError::Refused("its token answer has no id_token".into()))?;
        let v = self.verifier.verify(id_token, now).await?;
        match v.claims().get("nonce").and_then(Value::as_str) {
            Some(n) if crate::console::session::same_secret(n, nonce) => {}
            _ => return Err(LoginError::Binding("its nonce is not this login's")),
        }
        if let Some(azp) = v.claims().get("azp") {
            if azp.as_str() != Some(self.client_id.as_str()) {
                return Err(LoginError::Binding("it was issued to another client (azp)"));
            }
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_rfc7636_s256() {
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
