//! Issuer signing keys: OIDC discovery, JWKS fetch and parse, and a cache
//! that refetches (rate-limited) when a token names an unknown `kid`, so an
//! issuer can rotate its keys without a mayfly restart.
//!
//! Two bounds keep a fetch from trusting the wrong keys:
//! - every URL fetched, and every redirect hop, must be https (or http on
//!   loopback), and a redirect is followed only within the origin (scheme,
//!   host, port) of the URL that was asked for ([`redirect_policy`]): a
//!   redirect to another host would let whoever controls a path on the
//!   issuer's host hand us keys from anywhere;
//! - keys that cannot be refreshed stay in use for at most the issuer's
//!   `max_stale_keys`; after that its tokens get 503, so a key the issuer
//!   withdrew is not trusted forever while we cannot reach it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::clock::Clock;

use aws_lc_rs::signature::{ParsedPublicKey, VerificationAlgorithm};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

use crate::auth::keystats::JwksMetrics;
use crate::config::{is_loopback_http, IssuerConfig};

/// Largest discovery or JWKS document we read.
const MAX_DOC_BYTES: usize = 1024 * 1024;
/// At most one refetch per issuer in this interval (unknown `kid` storms).
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// While an issuer has no keys at all (every fetch so far failed: say the
/// CA started before its issuer), a token of it may retry the fetch after
/// this long instead of [`REFETCH_INTERVAL`]. Every token of that issuer
/// fails until a fetch succeeds, and fetches are single-flight, so the
/// issuer sees at most one request a second from each CA process.
pub const NO_KEYS_REFETCH: Duration = Duration::from_secs(1);
/// Keys older than this are refreshed on the next use.
pub const MAX_KEY_AGE: Duration = Duration::from_secs(600);
/// Most redirects followed for one discovery or JWKS fetch.
pub const MAX_REDIRECTS: usize = 3;

/// One verification key, pinned to exactly one algorithm.
#[derive(Clone)]
pub struct VerifyKey {
    /// The algorithm this key verifies; a token's `alg` must equal it.
    pub alg: Algorithm,
    /// The key, parsed once when the key set is loaded (an RSA modulus
    /// into its big-number form, a curve point checked), not again for
    /// every token. `None`: the key material does not form a key of its
    /// algorithm, so no signature verifies with it.
    pub key: Option<Arc<ParsedPublicKey>>,
}

impl VerifyKey {
    /// Pins `key` to `alg` and parses it for verification.
    pub fn new(alg: Algorithm, key: &DecodingKey) -> VerifyKey {
        VerifyKey {
            alg,
            key: parse_key(alg, key).map(Arc::new),
        }
    }

    /// Whether `signature` is `alg`'s signature of `message` by this key.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.key
            .as_ref()
            .is_some_and(|k| k.verify_sig(message, signature).is_ok())
    }
}

/// The RSA verification parameters of `alg`: those of jsonwebtoken's
/// aws-lc backend (keys of 2048 to 8192 bits).
fn rsa_params(alg: Algorithm) -> Option<&'static aws_lc_rs::signature::RsaParameters> {
    use aws_lc_rs::signature as s;
    Some(match alg {
        Algorithm::RS256 => &s::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &s::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &s::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &s::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &s::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &s::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

/// The verification parameters of `alg`, as jsonwebtoken's aws-lc backend
/// uses them (fixed-size ECDSA signatures, as JWS writes them). `None` for
/// HMAC, which is never accepted.
fn verification_alg(alg: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    use aws_lc_rs::signature as s;
    if let Some(p) = rsa_params(alg) {
        return Some(p);
    }
    match alg {
        Algorithm::ES256 => Some(&s::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => Some(&s::ECDSA_P384_SHA384_FIXED),
        Algorithm::EdDSA => Some(&s::ED25519),
        _ => None,
    }
}

/// `key` parsed for `alg`, from the same bytes jsonwebtoken would hand
/// aws-lc on every verification.
fn parse_key(alg: Algorithm, key: &DecodingKey) -> Option<ParsedPublicKey> {
    match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            aws_lc_rs::signature::RsaPublicKeyComponents { n, e }
                .to_parsed_public_key(rsa_params(alg)?)
                .ok()
        }
        DecodingKeyKind::SecretOrDer(bytes) => {
            ParsedPublicKey::new(verification_alg(alg)?, bytes).ok()
        }
    }
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
    /// The keys in hand are older than `max_stale_keys` and could not be
    /// refreshed.
    #[error(
        "the keys in hand were fetched {age_secs} s ago, above max_stale_keys ({max_secs} s), \
         and fresh keys cannot be fetched: {last_error}"
    )]
    TooOld {
        /// Seconds since the last successful fetch.
        age_secs: u64,
        /// The issuer's `max_stale_keys`, in seconds.
        max_secs: u64,
        /// Why the last fetch failed.
        last_error: String,
    },
}

/// Why a redirect of a discovery or JWKS fetch was not followed.
#[derive(Debug, thiserror::Error)]
pub enum RedirectRefused {
    /// The redirect leaves the origin that was asked for.
    #[error(
        "cross-origin redirect refused: {from} redirected to {to}; \
         issuer keys are only fetched from the origin that was asked for"
    )]
    CrossOrigin {
        /// Origin of the URL asked for.
        from: String,
        /// Origin of the redirect target.
        to: String,
    },
    /// The redirect target is not https (or http on loopback).
    #[error("redirect to {0} refused: issuer keys are fetched over https only (http on loopback)")]
    Insecure(String),
    /// Too many hops.
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooMany,
}

fn same_origin(a: &url::Url, b: &url::Url) -> bool {
    a.origin() == b.origin()
}

/// Whether a redirect from `chain` (the URLs requested so far, the first
/// being the one asked for) to `next` may be followed.
fn check_redirect(chain: &[url::Url], next: &url::Url) -> Result<(), RedirectRefused> {
    if chain.len() > MAX_REDIRECTS {
        return Err(RedirectRefused::TooMany);
    }
    if !url_allowed(next.as_str()) {
        return Err(RedirectRefused::Insecure(
            next.origin().ascii_serialization(),
        ));
    }
    match chain.first() {
        Some(first) if same_origin(first, next) => Ok(()),
        Some(first) => Err(RedirectRefused::CrossOrigin {
            from: first.origin().ascii_serialization(),
            to: next.origin().ascii_serialization(),
        }),
        None => Err(RedirectRefused::TooMany),
    }
}

/// The redirect policy of the HTTP client that fetches issuer keys: at most
/// [`MAX_REDIRECTS`] hops, each https (or http on loopback) and within the
/// origin of the URL asked for.
pub fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        match check_redirect(attempt.previous(), attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(e) => attempt.error(e),
        }
    })
}

/// The HTTP client for identity providers (discovery, JWKS, the console's
/// token exchange): the redirect policy above, 5 s to connect, 10 s per
/// request, and no idle connection kept for later.
///
/// These requests are seconds or hours apart. A kept connection is reused
/// when the provider may be closing it at that very moment (Node's HTTP
/// server closes idle connections after 5 s, and a person takes about that
/// long to log in), and the request then fails with nothing to retry.
/// A fresh connection per request costs one handshake on a rare call.
pub fn issuer_http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .redirect(redirect_policy())
        .pool_max_idle_per_host(0)
        .build()
}

/// A reqwest error with its causes (reqwest's own message hides the cause,
/// e.g. why a redirect was refused, in its sources).
fn describe(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        src = s.source();
    }
    out
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
            keys.insert(kid, VerifyKey::new(alg, &key));
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
    /// When `keys` were fetched; set together with `keys`.
    /// Monotonic clock time of the last good fetch.
    fetched_at: Option<Duration>,
    /// Monotonic clock time of the last fetch attempt.
    last_attempt: Option<Duration>,
    last_error: Option<String>,
}

/// Cached keys of one issuer.
pub struct IssuerKeys {
    source: Source,
    issuer_url: String,
    http: reqwest::Client,
    refetch_interval: Duration,
    max_stale: Duration,
    metrics: Arc<JwksMetrics>,
    clock: Arc<dyn Clock>,
    state: RwLock<CacheState>,
    refresh: tokio::sync::Mutex<()>,
}

async fn get_limited(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, JwksError> {
    let fail = |reason: String| JwksError::Fetch {
        url: url.to_string(),
        reason,
    };
    let mut resp = http.get(url).send().await.map_err(|e| fail(describe(&e)))?;
    // The client's redirect policy already keeps to the origin; checked
    // again so that a client built without it cannot hand us other keys.
    let asked = url::Url::parse(url).map_err(|e| fail(e.to_string()))?;
    if !same_origin(&asked, resp.url()) {
        return Err(fail(
            RedirectRefused::CrossOrigin {
                from: asked.origin().ascii_serialization(),
                to: resp.url().origin().ascii_serialization(),
            }
            .to_string(),
        ));
    }
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| fail(describe(&e)))? {
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
    /// Keys for `cfg`, fetched lazily; fetches, key age and stale-key
    /// refusals are reported to `metrics`.
    pub fn new(
        cfg: &IssuerConfig,
        http: reqwest::Client,
        metrics: Arc<JwksMetrics>,
        clock: Arc<dyn Clock>,
    ) -> IssuerKeys {
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
            max_stale: cfg.max_stale_keys,
            metrics,
            clock,
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

    /// Keys are refreshed on use after this age: [`MAX_KEY_AGE`], or
    /// sooner if `max_stale_keys` is short, so that a refresh is tried
    /// before the keys become too old to use.
    fn refresh_after(&self) -> Duration {
        MAX_KEY_AGE.min(self.max_stale / 2)
    }

    /// Refuses keys older than `max_stale_keys` (the fetches since failed).
    fn check_age(&self) -> Result<(), JwksError> {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        let Some(age) = st
            .fetched_at
            .map(|t| self.clock.monotonic().saturating_sub(t))
        else {
            return Ok(());
        };
        if age <= self.max_stale {
            return Ok(());
        }
        let err = JwksError::TooOld {
            age_secs: age.as_secs(),
            max_secs: self.max_stale.as_secs(),
            last_error: st
                .last_error
                .clone()
                .unwrap_or_else(|| "no refetch was tried since".into()),
        };
        drop(st);
        // No log line per refusal (a token stream would flood the log): the
        // failed refresh already warned, and the refusal is counted here and
        // recorded as a denial.
        self.metrics.stale_refused(&self.issuer_url);
        Err(err)
    }

    fn snapshot(&self) -> (Option<Arc<KeySet>>, bool, bool) {
        let st = match self.state.read() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let stale = st
            .fetched_at
            .is_none_or(|t| self.clock.monotonic().saturating_sub(t) > self.refresh_after());
        // A short max_stale_keys shortens the interval too: keys must be
        // refreshable before they become too old, or a healthy issuer's
        // tokens would be refused.
        let mut interval = self.refetch_interval.min(self.refresh_after());
        if st.keys.is_none() {
            interval = interval.min(NO_KEYS_REFETCH);
        }
        let may_fetch = st
            .last_attempt
            .is_none_or(|t| self.clock.monotonic().saturating_sub(t) >= interval);
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
            st.last_attempt = Some(self.clock.monotonic());
        }
        let res = self.fetch().await;
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        match res {
            Ok(ks) => {
                st.keys = Some(Arc::new(ks));
                st.fetched_at = Some(self.clock.monotonic());
                st.last_error = None;
                self.metrics.fetched(&self.issuer_url, self.clock.now());
                Ok(())
            }
            Err(e) => {
                st.last_error = Some(e.to_string());
                self.metrics.fetch_failed(&self.issuer_url);
                match st
                    .fetched_at
                    .map(|t| self.clock.monotonic().saturating_sub(t))
                {
                    Some(age) if st.keys.is_some() => tracing::warn!(
                        issuer = %self.issuer_url,
                        error = %e,
                        key_age_secs = age.as_secs(),
                        max_stale_keys_secs = self.max_stale.as_secs(),
                        "fetching issuer keys failed; serving the keys in hand until they are older than max_stale_keys"
                    ),
                    _ => {
                        tracing::warn!(issuer = %self.issuer_url, error = %e, "fetching issuer keys failed")
                    }
                }
                Err(e)
            }
        }
    }

    /// Eagerly loads keys (at start-up); errors are logged and retried on use.
    pub async fn warm(&self) -> Result<(), JwksError> {
        self.refetch().await
    }

    /// The key for a token, refetching once (rate-limited) when the kid is
    /// unknown or the keys are old. `Ok(None)` means the issuer has no such
    /// key; keys older than `max_stale_keys` are an error, never used.
    pub async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Option<VerifyKey>, JwksError> {
        let (keys, stale, may_fetch) = self.snapshot();
        if let Some(ks) = &keys {
            if ks.find(kid, alg).is_some() {
                if stale && may_fetch {
                    // On failure the keys in hand stay, within max_stale_keys.
                    let _ = self.refetch().await;
                }
                self.check_age()?;
                // The fresh set wins if the key is still there; else the
                // issuer removed it and the token must fail.
                return Ok(self.snapshot().0.and_then(|ks| ks.find(kid, alg).cloned()));
            }
        }
        // Single-flight and rate-limited inside: a request that arrives
        // while another fetch is running waits for it instead of failing.
        let r = self.refetch().await;
        if keys.is_none() {
            r?;
        }
        match self.snapshot().0 {
            Some(ks) => {
                self.check_age()?;
                Ok(ks.find(kid, alg).cloned())
            }
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

    /// A server that answers the first request on a connection and closes
    /// the connection when a second request arrives on it, as a server
    /// does that times out an idle connection while the client reuses it.
    async fn one_request_per_connection_server() -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let reply =
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}";
                    if sock.write_all(reply).await.is_err() {
                        return;
                    }
                    // The next request on this connection gets no answer.
                    let _ = sock.read(&mut chunk).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_request_to_an_issuer_never_reuses_a_connection_the_issuer_may_be_closing() {
        let addr = one_request_per_connection_server().await;
        let http = issuer_http_client().unwrap();
        let url = format!("http://{addr}/jwks");
        for i in 0..3 {
            let body = get_limited(&http, &url).await;
            assert_eq!(
                body.as_deref().ok(),
                Some(&b"{}"[..]),
                "request {i}: {body:?}"
            );
        }
    }

    fn u(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn redirects_stay_within_the_origin_asked_for() {
        let chain = [u("https://issuer.example/.well-known/openid-configuration")];
        assert!(check_redirect(&chain, &u("https://issuer.example/other/jwks")).is_ok());
        for (to, says) in [
            ("https://evil.example/jwks", "cross-origin"),
            ("https://issuer.example:8443/jwks", "cross-origin"),
            ("https://issuer.example.evil.example/jwks", "cross-origin"),
            ("http://issuer.example/jwks", "https only"),
        ] {
            let e = check_redirect(&chain, &u(to)).unwrap_err().to_string();
            assert!(e.contains(says), "{to}: {e}");
        }
        // Loopback over http: only to the same port.
        let local = [u("http://127.0.0.1:8000/jwks")];
        assert!(check_redirect(&local, &u("http://127.0.0.1:8000/keys")).is_ok());
        assert!(check_redirect(&local, &u("http://127.0.0.1:9000/keys")).is_err());
        // Every hop is compared with the first URL, not the previous one.
        let hops = [u("https://a.example/1"), u("https://a.example/2")];
        assert!(check_redirect(&hops, &u("https://b.example/3")).is_err());
        let many: Vec<url::Url> = (0..=MAX_REDIRECTS)
            .map(|i| u(&format!("https://a.example/{i}")))
            .collect();
        let e = check_redirect(&many, &u("https://a.example/x")).unwrap_err();
        assert!(matches!(e, RedirectRefused::TooMany), "{e}");
    }

    #[test]
    fn jwks_uri_gets_the_same_check_as_the_issuer_url() {
        for (uri, ok) in [
            ("https://keys.example/jwks", true),
            ("http://127.0.0.1:9/jwks", true),
            ("http://localhost:9/jwks", true),
            ("http://keys.example/jwks", false),
            ("http://localhost.evil.example/jwks", false),
            ("file:///etc/passwd", false),
            ("not a url", false),
        ] {
            assert_eq!(url_allowed(uri), ok, "{uri}");
            let as_issuer = format!("[[issuer]]\nname=\"x\"\nurl=\"{uri}\"\naudience=\"m\"\n");
            assert_eq!(
                crate::config::Config::parse(&as_issuer).is_ok(),
                ok,
                "{uri}"
            );
        }
    }
}
