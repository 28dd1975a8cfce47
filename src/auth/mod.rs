//! Workload authentication: a bearer JWT in, [`VerifiedToken`] out.
//!
//! Checks, in order: size, header (`alg` must be asymmetric; `none` and HMAC
//! never; no `crit`, since mayfly implements no JWS extension and RFC 7515
//! §4.1.11 requires refusing a token that makes one critical), `iss` exactly
//! one configured issuer, key by `kid` (refetching the
//! issuer's JWKS once, rate-limited, for an unknown kid), `alg` equal to the
//! key's pinned algorithm, signature, `aud` contains our audience, `exp`,
//! `nbf`, `iat` with bounded leeway, `sub` present. Replay is checked
//! separately, after policy, so a token that policy refuses is not burnt:
//! by the store's [`crate::store::IssuanceCounters::claim_token`] right
//! before minting, or, on a shared database, in the commit of the
//! certificate's record ([`crate::store::IssueGuard::claims`]).
//!
//! A token's replay identity is `issuer:jti`, or, without a `jti`, a hash of
//! what the signature covers (the JWS signing input `header.payload`), never
//! of the signature: ECDSA signatures are malleable (`s` and `n - s` both
//! verify) and other schemes are randomized, so the same signed content can
//! come with many valid signatures and must still count as one use.

pub mod jwks;
pub mod keystats;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::IssuerConfig;
use jwks::{IssuerKeys, JwksError};
pub use keystats::JwksMetrics;

/// Why a token was not accepted. Each variant is one check; none carries
/// the token itself.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token; send Authorization: Bearer <workload JWT>")]
    Missing,
    /// Above the size limit.
    #[error("token is {len} bytes, above the limit of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a JWT.
    #[error("token is not a well-formed JWT: {0}")]
    Malformed(String),
    /// `alg` is `none`, HMAC or unknown.
    #[error(
        "token algorithm {0} is not accepted; issuers must sign with RS*, PS*, ES256/384 or EdDSA"
    )]
    AlgorithmNotAllowed(String),
    /// `iss` matches no configured issuer.
    #[error("token issuer {0:?} is not trusted by this CA")]
    UnknownIssuer(String),
    /// The issuer has no key with this kid.
    #[error("issuer {issuer} has no signing key {kid:?}")]
    UnknownKey {
        /// Issuer name.
        issuer: String,
        /// The token's kid.
        kid: String,
    },
    /// `alg` differs from the key's algorithm.
    #[error("token alg {token} does not match the issuer key's algorithm {key}")]
    AlgorithmMismatch {
        /// Header alg.
        token: String,
        /// The key's pinned alg.
        key: String,
    },
    /// Signature did not verify.
    #[error("token signature is not valid")]
    BadSignature,
    /// `aud` lacks our audience.
    #[error("token audience does not contain {expected:?}; request the token with that audience")]
    WrongAudience {
        /// The configured audience.
        expected: String,
    },
    /// `exp` passed.
    #[error("token expired at {exp} (now {now}); get a fresh token")]
    Expired {
        /// The token's exp.
        exp: u64,
        /// Our clock.
        now: u64,
    },
    /// `nbf` in the future.
    #[error("token is not valid before {nbf} (now {now})")]
    NotYetValid {
        /// The token's nbf.
        nbf: u64,
        /// Our clock.
        now: u64,
    },
    /// `iat` in the future.
    #[error("token was issued in the future ({iat}, now {now}); check the issuer's clock")]
    IssuedInFuture {
        /// The token's iat.
        iat: u64,
        /// Our clock.
        now: u64,
    },
    /// A required claim is missing or has the wrong type.
    #[error("token claim {0:?} is missing or not of the expected type")]
    MissingClaim(&'static str),
    /// This token already minted a certificate.
    #[error("token was already used to obtain a certificate; get a fresh token")]
    Replayed,
    /// The issuer's keys could not be fetched (server-side; 503).
    #[error("keys of issuer {issuer} are unavailable: {reason}")]
    IssuerUnavailable {
        /// Issuer name.
        issuer: String,
        /// Why.
        reason: String,
    },
    /// The issuer's keys in hand are older than its `max_stale_keys` and
    /// could not be refreshed (server-side; 503).
    #[error(
        "keys of issuer {issuer} were fetched {age_secs} s ago, above its max_stale_keys \
         ({max_secs} s), and fresh keys cannot be fetched: {reason}"
    )]
    IssuerKeysTooOld {
        /// Issuer name.
        issuer: String,
        /// Seconds since the last successful fetch.
        age_secs: u64,
        /// The issuer's `max_stale_keys`, in seconds.
        max_secs: u64,
        /// Why the last fetch failed.
        reason: String,
    },
    /// The protected header has `crit`: it names extensions that must be
    /// understood, and mayfly implements none (RFC 7515 §4.1.11).
    #[error(
        "token header {0}; mayfly implements no JWS extension, so a token with \
         \"crit\" is refused (RFC 7515 section 4.1.11); have the issuer sign it without \"crit\""
    )]
    CriticalHeader(String),
}

impl TokenError {
    /// Stable code for API errors and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing_token",
            TokenError::TooLarge { .. } => "token_too_large",
            TokenError::Malformed(_) => "malformed_token",
            TokenError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            TokenError::UnknownIssuer(_) => "unknown_issuer",
            TokenError::UnknownKey { .. } => "unknown_key",
            TokenError::AlgorithmMismatch { .. } => "algorithm_mismatch",
            TokenError::BadSignature => "bad_signature",
            TokenError::WrongAudience { .. } => "wrong_audience",
            TokenError::Expired { .. } => "token_expired",
            TokenError::NotYetValid { .. } => "token_not_yet_valid",
            TokenError::IssuedInFuture { .. } => "token_issued_in_future",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::Replayed => "token_replayed",
            TokenError::IssuerUnavailable { .. } => "issuer_unavailable",
            TokenError::IssuerKeysTooOld { .. } => "issuer_keys_too_old",
            TokenError::CriticalHeader(_) => "unsupported_critical_header",
        }
    }
}

/// A bearer token string; `Debug` never prints it.
#[derive(Clone)]
pub struct BearerToken(zeroize::Zeroizing<String>);

impl BearerToken {
    /// Wraps a token.
    pub fn new(s: String) -> BearerToken {
        BearerToken(zeroize::Zeroizing::new(s))
    }
    /// The token text, for verification only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken([redacted])")
    }
}

/// Claims of a token whose signature, issuer, audience and times were
/// checked. Only [`Verifier::verify`] makes one.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    issuer: String,
    subject: String,
    claims: Map<String, Value>,
    replay_id: String,
    legacy_replay_id: Option<String>,
    expires_at: u64,
    replay_protection: bool,
    job: std::collections::BTreeMap<String, String>,
}

impl VerifiedToken {
    /// The configured issuer name (not the URL).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
    /// The `sub` claim.
    pub fn subject(&self) -> &str {
        &self.subject
    }
    /// The job behind the token: its issuer's `audit_claims` that it
    /// carries, bounded, for audit records and approvers.
    pub fn job_claims(&self) -> &std::collections::BTreeMap<String, String> {
        &self.job
    }
    /// All claims.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }
    /// Identifies this token for replay checks: `issuer:jti`, or, if it has
    /// no jti, a hash of its signed content (`header.payload`, not the
    /// signature, which can be rewritten). Never the token itself.
    pub fn replay_id(&self) -> &str {
        &self.replay_id
    }
    /// The id mayfly before 0.2 gave a token without jti (a hash of the
    /// whole token). The replay cache is refilled from audit records at
    /// start, so a token used just before an upgrade is known only by this
    /// id until it expires; checking it too keeps that token single-use.
    pub fn legacy_replay_id(&self) -> Option<&str> {
        self.legacy_replay_id.as_deref()
    }
    /// Until when the token is accepted (`exp` plus leeway), unix seconds,
    /// at most `i64::MAX` so that it is stored and restored exactly.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }
    /// Whether the issuer requires single use.
    pub fn replay_protection(&self) -> bool {
        self.replay_protection
    }

    /// The person of a console session, as the session store kept it:
    /// the issuer name and claims of an ID token that [`Verifier::verify`]
    /// accepted at login (the store holds nothing else, and only the CA
    /// writes it). It has no replay id and is valid until `expires_at`,
    /// the session's end. Only the console's session store makes one.
    pub(crate) fn of_console_session(
        issuer: String,
        claims: Map<String, Value>,
        job: std::collections::BTreeMap<String, String>,
        expires_at: u64,
    ) -> Option<VerifiedToken> {
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 1024 => s.clone(),
            _ => return None,
        };
        Some(VerifiedToken {
            issuer,
            subject,
            claims,
            replay_id: String::new(),
            legacy_replay_id: None,
            expires_at,
            replay_protection: false,
            job,
        })
    }
}

struct Issuer {
    cfg: IssuerConfig,
    keys: IssuerKeys,
}

/// Verifies workload tokens against the configured issuers.
pub struct Verifier {
    by_url: HashMap<String, Arc<Issuer>>,
    max_token_bytes: usize,
}

fn num(claims: &Map<String, Value>, name: &str) -> Option<Result<u64, ()>> {
    claims.get(name).map(|v| match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or(()),
        _ => Err(()),
    })
}

/// Replay identity of a token without `jti`: a hash of the JWS signing
/// input. The signature is left out on purpose (see the module docs).
fn signed_content_id(signing_input: &str) -> String {
    let h = Sha256::digest(signing_input.as_bytes());
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("signed-sha256:{hex}")
}

/// Until when a used token must stay remembered: `exp` plus leeway, clamped
/// to `i64::MAX`. The audit store keeps it as a signed 64-bit integer, from
/// which the replay cache is refilled at start; a larger value would wrap
/// negative there and the token would be forgotten by a restart. Clamping
/// keeps such a token remembered for good, which is what its `exp` asks for.
fn replay_expiry(exp: u64, leeway: u64) -> u64 {
    exp.saturating_add(leeway).min(i64::MAX as u64)
}

/// Says what is wrong with a `crit` header value, for the refusal message;
/// names are quoted, shortened and at most five, since they are untrusted.
fn describe_crit(crit: &Value) -> String {
    match crit.as_array() {
        Some(list) if !list.is_empty() && list.iter().all(Value::is_string) => {
            let names: Vec<String> = list
                .iter()
                .filter_map(Value::as_str)
                .take(5)
                .map(|n| format!("{:?}", n.chars().take(40).collect::<String>()))
                .collect();
            let more = if list.len() > 5 { ", ..." } else { "" };
            format!(
                "marks extensions [{}{more}] as critical (\"crit\")",
                names.join(", ")
            )
        }
        _ => "has a malformed \"crit\" (it must be a non-empty list of extension names)".into(),
    }
}

fn alg_allowed(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// What a token says before its signature is checked: just enough to pick
/// the issuer and key. Nothing in it is trusted yet.
#[derive(Debug, Clone)]
pub struct UnverifiedToken {
    /// The header's `alg`, already refused if `none`, HMAC or unknown.
    pub alg: Algorithm,
    /// `alg` as written in the header.
    pub alg_name: String,
    /// The header's `kid`, if it is a string.
    pub kid: Option<String>,
    /// The payload's `iss`.
    pub iss: String,
}

/// Parses a token's header and payload up to (not including) the signature
/// check: three dot-separated parts, a base64url JSON header with an
/// accepted `alg`, and a base64url JSON object payload with a string `iss`.
/// The size limit and everything after it are checked by [`Verifier::verify`].
pub fn parse_unverified(token: &str) -> Result<UnverifiedToken, TokenError> {
    parse_front(token).map(|f| f.token)
}

/// A token split and decoded once: what [`parse_unverified`] reads, plus
/// the payload's claims and the two signed parts, which
/// [`Verifier::verify`] trusts only once the signature verifies.
struct Front<'a> {
    token: UnverifiedToken,
    claims: Map<String, Value>,
    /// `header.payload`, what the signature covers.
    signing_input: &'a str,
    /// The base64url signature.
    signature: &'a str,
}

fn parse_front(token: &str) -> Result<Front<'_>, TokenError> {
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header_json: Map<String, Value> = b64
        .decode(h64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| TokenError::Malformed("header is not a base64url JSON object".into()))?;
    let alg_name = header_json
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or_else(|| TokenError::Malformed("header has no alg".into()))?;
    // RFC 7515's string-valued header parameters: one of another type is
    // a malformed token, not an absent parameter (a `kid` of 7 must not
    // make the token try every key of its issuer).
    for name in ["kid", "typ", "cty", "jku", "x5u", "x5t", "x5t#S256"] {
        if header_json.get(name).is_some_and(|v| !v.is_string()) {
            return Err(TokenError::Malformed(format!(
                "header {name} is not a string"
            )));
        }
    }
    let alg: Algorithm = alg_name.parse().map_err(|_| {
        // Echoed to the caller and logged: bounded like the other echoes.
        let shown: String = alg_name.chars().take(32).collect();
        TokenError::AlgorithmNotAllowed(format!("{shown:?}"))
    })?;
    if !alg_allowed(alg) {
        return Err(TokenError::AlgorithmNotAllowed(alg_name.to_string()));
    }
    if let Some(crit) = header_json.get("crit") {
        return Err(TokenError::CriticalHeader(describe_crit(crit)));
    }
    let kid = header_json.get("kid").and_then(|k| k.as_str());
    // The issuer decides which keys apply, so read `iss` before the
    // signature check; nothing in the payload is trusted before it.
    let claims: Map<String, Value> = b64
        .decode(p64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| TokenError::Malformed("payload is not base64url JSON object".into()))?;
    let iss = claims
        .get("iss")
        .and_then(|v| v.as_str())
        .ok_or(TokenError::MissingClaim("iss"))?;
    let token_front = UnverifiedToken {
        alg,
        alg_name: alg_name.to_string(),
        kid: kid.map(str::to_string),
        iss: iss.to_string(),
    };
    Ok(Front {
        token: token_front,
        claims,
        signing_input: &token[..h64.len() + 1 + p64.len()],
        signature: s64,
    })
}

impl Verifier {
    /// Builds a verifier for `issuers`. `http` must use
    /// [`jwks::redirect_policy`]; key fetches are reported to `metrics`.
    pub fn new(
        issuers: &[IssuerConfig],
        http: reqwest::Client,
        metrics: Arc<JwksMetrics>,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Verifier {
        let by_url = issuers
            .iter()
            .map(|c| {
                (
                    c.url.clone(),
                    Arc::new(Issuer {
                        cfg: c.clone(),
                        keys: IssuerKeys::new(c, http.clone(), metrics.clone(), clock.clone()),
                    }),
                )
            })
            .collect();
        let max_token_bytes = issuers
            .iter()
            .map(|c| c.max_token_bytes)
            .max()
            .unwrap_or(16 * 1024);
        Verifier {
            by_url,
            max_token_bytes,
        }
    }

    /// The names of the configured issuers (`[[issuer]] name`), sorted.
    pub fn issuer_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_url.values().map(|i| i.cfg.name.as_str()).collect();
        names.sort_unstable();
        names
    }

    /// Changes the minimum time between two JWKS fetches of one issuer
    /// (default [`jwks::REFETCH_INTERVAL`]).
    pub fn set_refetch_interval(&mut self, d: std::time::Duration) {
        for iss in self.by_url.values_mut() {
            if let Some(i) = Arc::get_mut(iss) {
                i.keys.set_refetch_interval(d);
            }
        }
    }

    /// Fetches every issuer's keys once; returns the failures (issuer name, error).
    pub async fn warm(&self) -> Vec<(String, JwksError)> {
        let mut failed = Vec::new();
        for iss in self.by_url.values() {
            if let Err(e) = iss.keys.warm().await {
                failed.push((iss.cfg.name.clone(), e));
            }
        }
        failed
    }

    /// Verifies `token` at time `now` (unix seconds).
    pub async fn verify(&self, token: &str, now: u64) -> Result<VerifiedToken, TokenError> {
        if token.len() > self.max_token_bytes {
            return Err(TokenError::TooLarge {
                len: token.len(),
                max: self.max_token_bytes,
            });
        }
        let front = parse_front(token)?;
        let (alg, alg_name, kid, iss) = (
            front.token.alg,
            front.token.alg_name.as_str(),
            front.token.kid.as_deref(),
            front.token.iss.as_str(),
        );
        let issuer = self
            .by_url
            .get(iss)
            .ok_or_else(|| TokenError::UnknownIssuer(iss.chars().take(200).collect()))?
            .clone();
        if token.len() > issuer.cfg.max_token_bytes {
            return Err(TokenError::TooLarge {
                len: token.len(),
                max: issuer.cfg.max_token_bytes,
            });
        }
        let key = issuer
            .keys
            .key_for(kid, alg)
            .await
            .map_err(|e| match e {
                JwksError::TooOld {
                    age_secs,
                    max_secs,
                    last_error,
                } => TokenError::IssuerKeysTooOld {
                    issuer: issuer.cfg.name.clone(),
                    age_secs,
                    max_secs,
                    reason: last_error,
                },
                e => TokenError::IssuerUnavailable {
                    issuer: issuer.cfg.name.clone(),
                    reason: e.to_string(),
                },
            })?
            .ok_or_else(|| TokenError::UnknownKey {
                issuer: issuer.cfg.name.clone(),
                kid: kid.unwrap_or("").chars().take(100).collect(),
            })?;
        if key.alg != alg {
            return Err(TokenError::AlgorithmMismatch {
                token: alg_name.to_string(),
                key: format!("{:?}", key.alg),
            });
        }
        // The claims parsed above become trusted only here: the signature
        // covers `header.payload` exactly as received, and the key is held
        // parsed (see `jwks::VerifyKey`), so nothing is decoded twice.
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(front.signature)
            .map_err(|_| TokenError::Malformed("signature is not base64url".into()))?;
        if !key.verifies(front.signing_input.as_bytes(), &signature) {
            return Err(TokenError::BadSignature);
        }
        let mut verified =
            self.check_claims(&issuer.cfg, front.claims, front.signing_input, now)?;
        if let Some(name) = verified.legacy_replay_id.take() {
            let hex: String = Sha256::digest(token.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            verified.legacy_replay_id = Some(format!("{name}:sha256:{hex}"));
        }
        Ok(verified)
    }

    fn check_claims(
        &self,
        cfg: &IssuerConfig,
        claims: Map<String, Value>,
        signing_input: &str,
        now: u64,
    ) -> Result<VerifiedToken, TokenError> {
        if claims.get("iss").and_then(|v| v.as_str()) != Some(cfg.url.as_str()) {
            return Err(TokenError::UnknownIssuer("(changed after parse)".into()));
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => a == &cfg.audience,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(&cfg.audience)),
            _ => false,
        };
        if !aud_ok {
            return Err(TokenError::WrongAudience {
                expected: cfg.audience.clone(),
            });
        }
        let leeway = cfg.leeway.as_secs();
        let exp = match num(&claims, "exp") {
            Some(Ok(e)) => e,
            _ => return Err(TokenError::MissingClaim("exp")),
        };
        if now >= exp.saturating_add(leeway) {
            return Err(TokenError::Expired { exp, now });
        }
        match num(&claims, "nbf") {
            Some(Ok(nbf)) if nbf > now.saturating_add(leeway) => {
                return Err(TokenError::NotYetValid { nbf, now })
            }
            Some(Err(())) => return Err(TokenError::MissingClaim("nbf")),
            _ => {}
        }
        match num(&claims, "iat") {
            Some(Ok(iat)) if iat > now.saturating_add(leeway) => {
                return Err(TokenError::IssuedInFuture { iat, now })
            }
            Some(Err(())) => return Err(TokenError::MissingClaim("iat")),
            _ => {}
        }
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 1024 => s.clone(),
            _ => return Err(TokenError::MissingClaim("sub")),
        };
        let (replay_id, legacy_replay_id) = match claims.get("jti") {
            Some(Value::String(j)) if !j.is_empty() && j.len() <= 256 => {
                (format!("{}:jti:{j}", cfg.name), None)
            }
            _ => (
                format!("{}:{}", cfg.name, signed_content_id(signing_input)),
                // Filled in by `verify`, which holds the whole token.
                Some(cfg.name.clone()),
            ),
        };
        let job = crate::audit::claims::extract(&cfg.audit_claims, &claims);
        Ok(VerifiedToken {
            issuer: cfg.name.clone(),
            subject,
            job,
            claims,
            replay_id,
            legacy_replay_id,
            expires_at: replay_expiry(exp, leeway),
            replay_protection: cfg.replay_protection,
        })
    }
}

/// A fixed Ed25519 issuer key (RFC 8037 A.1) and its JWKS (kid `k1`), for
/// unit tests that sign tokens.
#[cfg(test)]
pub(crate) mod test_key {
    /// The private key, PKCS#8 PEM.
    pub const PKCS8_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
    /// Its public half as a JWKS.
    pub const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"k1"}]}"#;
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::time::Duration;

    use super::test_key::{JWKS, PKCS8_PEM};
    const NOW: u64 = 1_800_000_000;

    fn verifier(dir: &tempfile::TempDir) -> Verifier {
        verifier_with(
            dir,
            crate::config::DEFAULT_MAX_STALE_KEYS,
            Default::default(),
            Arc::new(crate::clock::SystemClock::new()),
        )
    }

    fn verifier_with(
        dir: &tempfile::TempDir,
        max_stale_keys: Duration,
        metrics: Arc<JwksMetrics>,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Verifier {
        let p = dir.path().join("jwks.json");
        std::fs::write(&p, JWKS).unwrap();
        let cfg = IssuerConfig {
            name: "k8s".into(),
            url: "https://kubernetes.default.svc".into(),
            audience: "mayfly".into(),
            jwks_file: Some(p),
            replay_protection: true,
            leeway: Duration::from_secs(30),
            max_token_bytes: 4096,
            max_stale_keys,
            kind: crate::config::IssuerKind::Kubernetes,
            audit_claims: vec![
                "kubernetes.io/pod/name".into(),
                "kubernetes.io/pod/uid".into(),
            ],
        };
        Verifier::new(&[cfg], reqwest::Client::new(), metrics, clock)
    }

    fn sign(claims: Value, kid: &str) -> String {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(kid.into());
        let k = EncodingKey::from_ed_pem(PKCS8_PEM.as_bytes()).unwrap();
        jsonwebtoken::encode(&h, &claims, &k).unwrap()
    }

    fn good() -> Value {
        json!({"iss": "https://kubernetes.default.svc", "aud": ["x", "mayfly"], "sub": "system:serviceaccount:backup:restic",
               "exp": NOW + 300, "iat": NOW - 10, "nbf": NOW - 10, "jti": "j1"})
    }

    fn with(k: &str, v: Value) -> Value {
        let mut c = good();
        c[k] = v;
        c
    }

    fn b64(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[tokio::test]
    async fn valid_token_verifies() {
        let d = tempfile::tempdir().unwrap();
        let t = verifier(&d).verify(&sign(good(), "k1"), NOW).await.unwrap();
        assert_eq!(t.subject(), "system:serviceaccount:backup:restic");
        assert_eq!(t.issuer(), "k8s");
        assert_eq!(t.replay_id(), "k8s:jti:j1");
    }

    #[tokio::test]
    async fn each_check_names_itself() {
        let d = tempfile::tempdir().unwrap();
        let v = verifier(&d);
        let cases: Vec<(String, &str)> = vec![
            (sign(with("exp", json!(NOW - 31)), "k1"), "token_expired"),
            (
                sign(with("nbf", json!(NOW + 100)), "k1"),
                "token_not_yet_valid",
            ),
            (
                sign(with("iat", json!(NOW + 100)), "k1"),
                "token_issued_in_future",
            ),
            (sign(with("aud", json!("other")), "k1"), "wrong_audience"),
            (
                sign(with("iss", json!("https://evil")), "k1"),
                "unknown_issuer",
            ),
            (sign(with("sub", json!(5)), "k1"), "missing_claim"),
            (sign(good(), "k2"), "unknown_key"),
            ("a.b".into(), "malformed_token"),
            ("x".repeat(5000), "token_too_large"),
        ];
        for (tok, code) in cases {
            let e = v.verify(&tok, NOW).await.unwrap_err();
            assert_eq!(e.code(), code, "{e}");
        }
    }

    #[tokio::test]
    async fn alg_none_and_hmac_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let v = verifier(&d);
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg":"none","kid":"k1"})),
            b64(&good())
        );
        assert_eq!(
            v.verify(&none, NOW).await.unwrap_err().code(),
            "algorithm_not_allowed"
        );
        // HMAC keyed with the public key bytes: the classic confusion attack.
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let t = jsonwebtoken::encode(&h, &good(), &EncodingKey::from_secret(&x)).unwrap();
        assert_eq!(
            v.verify(&t, NOW).await.unwrap_err().code(),
            "algorithm_not_allowed"
        );
    }

    #[tokio::test]
    async fn tampered_payload_fails_signature() {
        let d = tempfile::tempdir().unwrap();
        let t = sign(good(), "k1");
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(&with("sub", json!("root"))),
            parts[2]
        );
        assert_eq!(
            verifier(&d).verify(&forged, NOW).await.unwrap_err().code(),
            "bad_signature"
        );
    }

    #[test]
    fn front_end_reads_alg_kid_and_iss_before_any_key() {
        let t = format!(
            "{}.{}.AAAA",
            b64(&json!({"alg":"ES256","kid":"k9"})),
            b64(&good())
        );
        let f = parse_unverified(&t).unwrap();
        assert_eq!((f.alg, f.alg_name.as_str()), (Algorithm::ES256, "ES256"));
        assert_eq!(f.kid.as_deref(), Some("k9"));
        assert_eq!(f.iss, good()["iss"].as_str().unwrap());
        let no_iss = format!(
            "{}.{}.",
            b64(&json!({"alg":"ES256"})),
            b64(&json!({"sub":"x"}))
        );
        assert_eq!(
            parse_unverified(&no_iss).unwrap_err().code(),
            "missing_claim"
        );
    }

    #[test]
    fn unknown_alg_is_echoed_cut_short() {
        let long = "\u{7}".repeat(5000);
        let t = format!("{}.{}.", b64(&json!({"alg": long})), b64(&good()));
        let e = parse_unverified(&t).unwrap_err();
        assert_eq!(e.code(), "algorithm_not_allowed");
        assert!(e.to_string().len() < 512, "{} bytes", e.to_string().len());
    }

    #[tokio::test]
    async fn alg_must_match_key() {
        let d = tempfile::tempdir().unwrap();
        let t = format!(
            "{}.{}.AAAA",
            b64(&json!({"alg":"RS256","kid":"k1"})),
            b64(&good())
        );
        assert_eq!(
            verifier(&d).verify(&t, NOW).await.unwrap_err().code(),
            "algorithm_mismatch"
        );
    }

    #[tokio::test]
    async fn unknown_kid_triggers_one_rate_limited_refetch() {
        let d = tempfile::tempdir().unwrap();
        let mut v = verifier(&d);
        assert!(v.verify(&sign(good(), "k1"), NOW).await.is_ok());
        // The issuer rotates: the same key now also published as k2.
        let rotated = JWKS.replace("\"kid\":\"k1\"}", "\"kid\":\"k1\"},{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\",\"kid\":\"k2\"}");
        std::fs::write(d.path().join("jwks.json"), rotated).unwrap();
        // Within the refetch interval the new kid is not looked up again.
        assert_eq!(
            v.verify(&sign(good(), "k2"), NOW).await.unwrap_err().code(),
            "unknown_key"
        );
        v.set_refetch_interval(Duration::ZERO);
        v.verify(&sign(good(), "k2"), NOW).await.unwrap();
        assert_eq!(
            v.verify(&sign(good(), "k3"), NOW).await.unwrap_err().code(),
            "unknown_key"
        );
    }

    #[tokio::test]
    async fn token_without_jti_is_identified_by_its_signed_content_not_its_signature() {
        let d = tempfile::tempdir().unwrap();
        let mut c = good();
        c.as_object_mut().unwrap().remove("jti");
        let tok = sign(c, "k1");
        let t = verifier(&d).verify(&tok, NOW).await.unwrap();
        let (signing_input, _sig) = tok.rsplit_once('.').unwrap();
        let want = Sha256::digest(signing_input.as_bytes());
        let want: String = want.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(t.replay_id(), format!("k8s:signed-sha256:{want}"));
        // The id earlier versions recorded (whole token), still checked.
        let whole: String = Sha256::digest(tok.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            t.legacy_replay_id(),
            Some(format!("k8s:sha256:{whole}").as_str())
        );
    }

    #[test]
    fn replay_expiry_fits_the_store_and_never_wraps() {
        assert_eq!(replay_expiry(1000, 30), 1030);
        assert_eq!(replay_expiry(1 << 63, 30), i64::MAX as u64);
        assert_eq!(replay_expiry(u64::MAX, 30), i64::MAX as u64);
        assert!(i64::try_from(replay_expiry(u64::MAX - 1, 0)).is_ok());
    }

    #[tokio::test]
    async fn absurd_exp_is_remembered_as_i64_max() {
        let d = tempfile::tempdir().unwrap();
        let t = verifier(&d)
            .verify(&sign(with("exp", json!(u64::MAX)), "k1"), NOW)
            .await
            .unwrap();
        assert_eq!(t.expires_at(), i64::MAX as u64);
    }

    fn sign_header(header: Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(&header), b64(claims));
        let k = EncodingKey::from_ed_pem(PKCS8_PEM.as_bytes()).unwrap();
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &k, Algorithm::EdDSA).unwrap();
        format!("{input}.{sig}")
    }

    #[tokio::test]
    async fn crit_header_is_refused_whatever_it_names() {
        let d = tempfile::tempdir().unwrap();
        let v = verifier(&d);
        // The same header without crit verifies: the refusal is for crit.
        let plain = sign_header(json!({"alg": "EdDSA", "kid": "k1"}), &good());
        v.verify(&plain, NOW).await.unwrap();
        for (crit, says) in [
            (json!(["b64"]), "[\"b64\"]"),
            (json!(["exp", "x"]), "[\"exp\", \"x\"]"),
            (json!([]), "malformed"),
            (json!("b64"), "malformed"),
            (json!([1]), "malformed"),
            (json!(null), "malformed"),
        ] {
            let t = sign_header(
                json!({"alg": "EdDSA", "kid": "k1", "crit": crit, "b64": true, "exp": 1}),
                &good(),
            );
            let e = v.verify(&t, NOW).await.unwrap_err();
            assert_eq!(e.code(), "unsupported_critical_header", "{crit}: {e}");
            assert!(e.to_string().contains(says), "{crit}: {e}");
            assert!(e.to_string().contains("RFC 7515"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_header_parameter_of_the_wrong_type_is_malformed() {
        let d = tempfile::tempdir().unwrap();
        let v = verifier(&d);
        // Without the parameter the token verifies: the refusal is its type.
        v.verify(&sign_header(json!({"alg": "EdDSA"}), &good()), NOW)
            .await
            .unwrap();
        for (name, value) in [
            ("kid", json!(7)),
            ("kid", json!(["k1"])),
            ("kid", json!(null)),
            ("typ", json!({"a": 1})),
            ("cty", json!(true)),
            ("jku", json!(1)),
        ] {
            let mut h = json!({"alg": "EdDSA"});
            h[name] = value.clone();
            let e = v.verify(&sign_header(h, &good()), NOW).await.unwrap_err();
            assert_eq!(e.code(), "malformed_token", "{name}={value}: {e}");
            assert!(
                e.to_string()
                    .contains(&format!("header {name} is not a string")),
                "{e}"
            );
        }
        for header in [json!(["EdDSA"]), json!("EdDSA")] {
            let e = v
                .verify(&sign_header(header, &good()), NOW)
                .await
                .unwrap_err();
            assert_eq!(e.code(), "malformed_token", "{e}");
        }
    }

    #[tokio::test]
    async fn an_issuer_without_keys_is_fetched_again_after_a_second_not_the_refetch_interval() {
        let d = tempfile::tempdir().unwrap();
        let clock = Arc::new(crate::clock::ManualClock::at(NOW));
        let v = verifier_with(
            &d,
            crate::config::DEFAULT_MAX_STALE_KEYS,
            Default::default(),
            clock.clone(),
        );
        // The CA starts before its issuer publishes keys.
        let jwks = d.path().join("jwks.json");
        std::fs::remove_file(&jwks).unwrap();
        let e = v.verify(&sign(good(), "k1"), NOW).await.unwrap_err();
        assert_eq!(e.code(), "issuer_unavailable", "{e}");
        std::fs::write(&jwks, JWKS).unwrap();
        // Within the second the failed fetch is not repeated...
        clock.advance(Duration::from_millis(500));
        let e = v.verify(&sign(good(), "k1"), NOW).await.unwrap_err();
        assert_eq!(e.code(), "issuer_unavailable", "{e}");
        // ...after it, long before the 30 s refetch interval, it is.
        clock.advance(Duration::from_millis(600));
        v.verify(&sign(good(), "k1"), NOW).await.unwrap();
        // With keys in hand, a new kid waits for the full interval again.
        let rotated = JWKS.replace("\"kid\":\"k1\"}", "\"kid\":\"k1\"},{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\",\"kid\":\"k2\"}");
        assert_ne!(rotated, JWKS);
        std::fs::write(&jwks, rotated).unwrap();
        clock.advance(Duration::from_secs(2));
        let e = v.verify(&sign(good(), "k2"), NOW).await.unwrap_err();
        assert_eq!(e.code(), "unknown_key", "{e}");
        clock.advance(jwks::REFETCH_INTERVAL);
        v.verify(&sign(good(), "k2"), NOW).await.unwrap();
    }

    #[tokio::test]
    async fn keys_older_than_max_stale_keys_are_refused_until_a_fetch_succeeds() {
        let d = tempfile::tempdir().unwrap();
        let m = Arc::new(JwksMetrics::default());
        let clock = Arc::new(crate::clock::ManualClock::at(NOW));
        let mut v = verifier_with(&d, Duration::from_secs(1), m.clone(), clock.clone());
        v.set_refetch_interval(Duration::ZERO);
        v.verify(&sign(good(), "k1"), NOW).await.unwrap();
        // The issuer becomes unreachable: the keys in hand serve a while...
        std::fs::remove_file(d.path().join("jwks.json")).unwrap();
        v.verify(&sign(good(), "k1"), NOW).await.unwrap();
        // ...but not beyond max_stale_keys.
        clock.advance(Duration::from_millis(1100));
        let e = v.verify(&sign(good(), "k1"), NOW).await.unwrap_err();
        assert_eq!(e.code(), "issuer_keys_too_old", "{e}");
        assert!(e.to_string().contains("max_stale_keys (1 s)"), "{e}");
        // Unknown kids too: no refetch result is trusted from old keys.
        let e = v.verify(&sign(good(), "k9"), NOW).await.unwrap_err();
        assert_eq!(e.code(), "issuer_keys_too_old", "{e}");
        std::fs::write(d.path().join("jwks.json"), JWKS).unwrap();
        v.verify(&sign(good(), "k1"), NOW).await.unwrap();
    }
}
