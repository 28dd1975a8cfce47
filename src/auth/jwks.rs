//! Issuer signing keys: OIDC discovery, JWKS fetch and parse, and a cache
//! that refetches (rate-limited) when a token names an unknown `kid`, so an
//! issuer can rotate its keys without a mayfly restart.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::{is_loopback_http, IssuerConfig};

/// Largest discovery or JWKS document we read.
const MAX_DOC_BYTES: usize = 1024 * 1024;
/// At most one refetch per issuer in this interval (unknown `kid` storms).
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Keys older than this are refreshed on the next use.
pub const MAX_KEY_AGE: Duration = Duration::from_secs(600);

/// One verification key, pinned to exactly one algorithm.
#[derive(Clone)]
pub struct VerifyKey {
    /// The algorithm this key verifies; a token's `alg` must equal it.
    pub alg: Algorithm,
    /// The key.
    pub key: Arc<DecodingKey>,
}

/// Keys of one issuer by `kid` (keys without `kid` under "").
#[derive(Clone, Default)]
pub struct KeySet {
    /// Keys by kid.
    pub keys: HashMap<String, VerifyKey>,
}

/// Why an issuer's keys could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Network or HTTP failure.
    #[error("fetching {url}: {reason}")]
    Fetch {
        /// What was fetched.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The document is not what OIDC requires.
    #[error("{0}")]
    Invalid(String),
}

/// Which algorithm a JWK may verify, from its key type and curve; the
/// JWK's own `alg`, if any, must agree. Symmetric keys are never accepted:
/// a public JWKS with an HMAC key would let anyone forge tokens.
pub fn pinned_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let from_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => match jwk.common.key_algorithm {
            Some(KeyAlgorithm::RS384) => Algorithm::RS384,
            Some(KeyAlgorithm::RS512) => Algorithm::RS512,
            Some(KeyAlgorithm::PS256) => Algorithm::PS256,
            Some(KeyAlgorithm::PS384) => Algorithm::PS384,
            Some(KeyAlgorithm::PS512) => Algorithm::PS512,
            _ => Algorithm::RS256,
        },
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => Algorithm::EdDSA,
            _ => return None,
        },
        _ => return None,
    };
    let declared = match jwk.common.key_algorithm {
        None => return Some(from_type),
        Some(KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(KeyAlgorithm::RS384) => Algorithm::RS384,
        Some(KeyAlgorithm::RS512) => Algorithm::RS512,
        Some(KeyAlgorithm::PS256) => Algorithm::PS256,
        Some(KeyAlgorithm::PS384) => Algorithm::PS384,
        Some(KeyAlgorithm::PS512) => Algorithm::PS512,
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(KeyAlgorithm::ES384) => Algorithm::ES384,
        Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        Some(_) => return None,
    };
    (declared == from_type).then_some(from_type)
}

impl KeySet {
    /// Parses a JWKS document, keeping only signature keys we can pin.
    pub fn parse(doc: &[u8]) -> Result<KeySet, JwksError> {
        let set: JwkSet = serde_json::from_slice(doc)
            .map_err(|e| JwksError::Invalid(format!("JWKS is not valid JSON Web Key Set: {e}")))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) {
                continue;
            }
            let Some(alg) = pinned_algorithm(jwk) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            keys.insert(
                kid,
                VerifyKey {
                    alg,
                    key: Arc::new(key),
                },
            );
        }
        if keys.is_empty() {
            return Err(JwksError::Invalid(
                "JWKS holds no usable signature key (RSA, EC P-256/P-384 or Ed25519)".into(),
            ));
        }
        Ok(KeySet { keys })
    }

    /// Finds the key for a token's `kid` (or the only key of `alg` if the
    /// token has no kid).
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&VerifyKey> {
        match kid {
            Some(k) => self.keys.get(k),
            None => {
                let mut it = self.keys.values().filter(|k| k.alg == alg);
                match (it.next(), it.next()) {
                    (Some(k), None) => Some(k),
                    _ => None,
                }
            }
        }
    }
}

/// Where an issuer's keys come from.
enum Source {
    /// OIDC discovery at this base URL.
    Discovery { base: String },
    /// A local JWKS file (air-gapped issuers).
    File(std::path::PathBuf),
}

struct CacheState {
    keys: Option<Arc<KeySet>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// Cached keys of one issuer.
pub struct IssuerKeys {
    source: Source,
    issuer_url: String,
    http: reqwest::Client,
    refetch_interval: Duration,
    state: RwLock<CacheState>,
    refresh: tokio::sync::Mutex<()>,
}

async fn get_limited(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, JwksError> {
    let fail = |reason: String| JwksError::Fetch {
        url: url.to_string(),
        reason,
    };
    let mut resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
        if body.len() + chunk.len() > MAX_DOC_BYTES {
            return Err(fail("document larger than 1 MiB".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn url_allowed(u: &str) -> bool {
    match url::Url::parse(u) {
        Ok(url) => url.scheme() == "https" || is_loopback_http(&url),
        Err(_) => false,
    }
}

impl IssuerKeys {
    /// Keys for `cfg`, fetched lazily.
    pub fn new(cfg: &IssuerConfig, http: reqwest::Client) -> IssuerKeys {
        let source = match &cfg.jwks_file {
            Some(p) => Source::File(p.clone()),
            None => Source::Discovery {
                base: cfg.url.trim_end_matches('/').to_string(),
            },
        };
        IssuerKeys {
            source,
            issuer_url: cfg.url.clone(),
            http,
            refetch_interval: REFETCH_INTERVAL,
            state: RwLock::new(CacheState {
                keys: None,
                fetched_at: None,
                last_attempt: None,
                last_error: None,
            }),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// Changes the minimum time between two fetches (default 30 s).
    pub fn set_refetch_interval(&mut self, d: Duration) {
        self.refetch_interval = d;
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        match &self.source {
            Source::File(p) => {
                let doc = tokio::fs::read(p).await.map_err(|e| JwksError::Fetch {
                    url: p.display().to_string(),
                    reason: e.to_string(),
                })?;
                KeySet::parse(&doc)
            }
            Source::Discovery { base } => {
                let disco_url = format!("{base}/.well-known/openid-configuration");
                let doc = get_limited(&self.http, &disco_url).await?;
                let v: serde_json::Value = serde_json::from_slice(&doc)
                    .map_err(|e| JwksError::Invalid(format!("{disco_url}: not JSON: {e}")))?;
                let iss = v.get("issuer").and_then(|i| i.as_str()).unwrap_or_default();
                if iss != self.issuer_url {
                    return Err(JwksError::Invalid(format!(
                        "{disco_url}: issuer is {iss:?}, configured url is {:?}; they must be identical",
                        self.issuer_url
                    )));
                }
                let jwks_uri = v
                    .get("jwks_uri")
                    .and_then(|j| j.as_str())
                    .ok_or_else(|| JwksError::Invalid(format!("{disco_url}: no jwks_uri")))?;
                if !url_allowed(jwks_uri) {
                    return Err(JwksError::Invalid(format!(
                        "{disco_url}: jwks_uri {jwks_uri:?} must be https (or http on loopback)"
                    )));
                }
                KeySet::parse(&get_limited(&self.http, jwks_uri).await?)
            }
        }
    }

    fn snapshot(&self) -> (Option<Arc<KeySet>>, bool, bool) {
        let st = match self.state.read() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let stale = st.fetched_at.is_none_or(|t| t.elapsed() > MAX_KEY_AGE);
        let may_fetch = st
            .last_attempt
            .is_none_or(|t| t.elapsed() >= self.refetch_interval);
        (st.keys.clone(), stale, may_fetch)
    }

    /// Refetches unless another refetch happened within the refetch interval.
    /// Keeps the old keys if the fetch fails.
    async fn refetch(&self) -> Result<(), JwksError> {
        let _single_flight = self.refresh.lock().await;
        if !self.snapshot().2 {
            return Ok(());
        }
        {
            let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
            st.last_attempt = Some(Instant::now());
        }
        let res = self.fetch().await;
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        match res {
            Ok(ks) => {
                st.keys = Some(Arc::new(ks));
                st.fetched_at = Some(Instant::now());
                st.last_error = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer_url, error = %e, "fetching issuer keys failed");
                st.last_error = Some(e.to_string());
                crate::metrics::jwks_fetch_failed(&self.issuer_url);
                Err(e)
            }
        }
    }

    /// Eagerly loads keys (at start-up); errors are logged and retried on use.
    pub async fn warm(&self) -> Result<(), JwksError> {
        self.refetch().await
    }

    /// The key for a token, refetching once (rate-limited) when the kid is
    /// unknown or the keys are old. `Ok(None)` means the issuer has no such key.
    pub async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Option<VerifyKey>, JwksError> {
        let (keys, stale, may_fetch) = self.snapshot();
        if let Some(ks) = &keys {
            if let Some(k) = ks.find(kid, alg) {
                if stale && may_fetch {
                    let _ = self.refetch().await;
                    // The fresh set wins if the key is still there; else the
                    // issuer removed it and the token must fail.
                    if let (Some(fresh), _, _) = self.snapshot() {
                        return Ok(fresh.find(kid, alg).cloned());
                    }
                }
                return Ok(Some(k.clone()));
            }
        }
        // Single-flight and rate-limited inside: a request that arrives
        // while another fetch is running waits for it instead of failing.
        let r = self.refetch().await;
        if keys.is_none() {
            r?;
        }
        match self.snapshot().0 {
            Some(ks) => Ok(ks.find(kid, alg).cloned()),
            None => {
                let st = self.state.read().unwrap_or_else(|p| p.into_inner());
                Err(JwksError::Fetch {
                    url: self.issuer_url.clone(),
                    reason: st
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "keys not fetched yet".into()),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_and_unknown_keys_are_dropped() {
        let doc = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"e"}]}"#;
        let ks = KeySet::parse(doc).unwrap();
        assert!(ks.keys.contains_key("e"));
        assert!(!ks.keys.contains_key("h"));
        assert_eq!(ks.keys["e"].alg, Algorithm::EdDSA);
    }

    #[test]
    fn only_symmetric_keys_is_an_error() {
        let doc = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#;
        assert!(KeySet::parse(doc).is_err());
    }

    #[test]
    fn declared_alg_must_agree_with_key_type() {
        let doc = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","alg":"RS256","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"e"}]}"#;
        assert!(KeySet::parse(doc).is_err());
    }
}
