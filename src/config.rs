//! Server configuration (`mayfly.toml`): defaults, then the file, then
//! `MAYFLY_*` environment variables; validated once at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys / wrong types.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("config: {0}")]
    Invalid(String),
}

/// Raw file shape; every field optional so defaults can fill in.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    policy_dir: Option<PathBuf>,
    backdate: Option<String>,
    request_timeout: Option<String>,
    max_body_bytes: Option<usize>,
    store_busy_timeout: Option<String>,
    log_format: Option<String>,
    #[serde(default, rename = "issuer")]
    issuers: Vec<RawIssuer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    name: String,
    url: String,
    audience: String,
    jwks_file: Option<PathBuf>,
    replay_protection: Option<bool>,
    leeway: Option<String>,
    max_token_bytes: Option<usize>,
}

/// A trusted workload-token issuer.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Name that policies refer to (`issuer = "github"`).
    pub name: String,
    /// The exact `iss` value; also the OIDC discovery base unless `jwks_file` is set.
    pub url: String,
    /// The audience that tokens must carry in `aud`.
    pub audience: String,
    /// Static JWKS file for air-gapped issuers (Kubernetes service-account keys).
    pub jwks_file: Option<PathBuf>,
    /// Refuse a token that was already used to mint a certificate.
    pub replay_protection: bool,
    /// Allowed clock difference for `exp`/`nbf`/`iat`.
    pub leeway: Duration,
    /// Tokens longer than this are refused before parsing.
    pub max_token_bytes: usize,
}

/// Validated server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Where the database and CA keys live.
    pub data_dir: PathBuf,
    /// Directory of `<role>.toml` policy files.
    pub policy_dir: PathBuf,
    /// How far `valid_after` is set in the past, for hosts with slow clocks.
    pub backdate: Duration,
    /// Upper bound on one request's handling time.
    pub request_timeout: Duration,
    /// Request bodies above this get 413.
    pub max_body_bytes: usize,
    /// How long a store write waits for a lock before the request fails (503).
    pub store_busy_timeout: Duration,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Trusted issuers.
    pub issuers: Vec<IssuerConfig>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Longest leeway an operator may configure: more would make `exp` meaningless.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8400)),
            data_dir: PathBuf::from("mayfly-data"),
            policy_dir: PathBuf::from("ca-policy"),
            backdate: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            store_busy_timeout: Duration::from_secs(2),
            log_format: LogFormat::Text,
            issuers: Vec::new(),
        }
    }
}

fn duration(field: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s).map_err(|e| {
        ConfigError::Invalid(format!(
            "{field} = {s:?} is not a duration ({e}); write e.g. \"30s\" or \"5m\""
        ))
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map(|t| t.bytes().filter(|b| *b == b'\n').count() + 1)
        .unwrap_or(1)
}

/// Whether `url` is an `http://` URL whose host is a loopback address.
pub fn is_loopback_http(url: &url::Url) -> bool {
    if url.scheme() != "http" {
        return false;
    }
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

impl Config {
    /// Loads `path` (or embedded defaults when `None`), then applies `MAYFLY_*` overrides.
    pub fn load(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw = match path {
            None => RawConfig::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                toml::from_str::<RawConfig>(&text).map_err(|e| ConfigError::Parse {
                    path: p.to_path_buf(),
                    line: e.span().map(|s| line_of(&text, s.start)).unwrap_or(1),
                    message: e.message().to_string(),
                })?
            }
        };
        Self::from_raw(raw, env)
    }

    /// Parses configuration text (used by tests and `load`).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw = toml::from_str::<RawConfig>(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
            message: e.message().to_string(),
        })?;
        Self::from_raw(raw, &|_| None)
    }

    fn from_raw(
        mut raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        if let Some(v) = env("MAYFLY_LISTEN") {
            raw.listen = Some(v);
        }
        if let Some(v) = env("MAYFLY_DATA_DIR") {
            raw.data_dir = Some(v.into());
        }
        if let Some(v) = env("MAYFLY_POLICY_DIR") {
            raw.policy_dir = Some(v.into());
        }
        let mut c = Config::default();
        if let Some(l) = raw.listen {
            c.listen = l.parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "listen = {l:?} is not an address; write e.g. \"127.0.0.1:8400\""
                ))
            })?;
        }
        if let Some(d) = raw.data_dir {
            c.data_dir = d;
        }
        if let Some(d) = raw.policy_dir {
            c.policy_dir = d;
        }
        if let Some(b) = raw.backdate {
            c.backdate = duration("backdate", &b)?;
            if c.backdate > Duration::from_secs(3600) {
                return Err(ConfigError::Invalid("backdate must be at most 1h".into()));
            }
        }
        if let Some(t) = raw.request_timeout {
            c.request_timeout = duration("request_timeout", &t)?;
            if c.request_timeout.is_zero() {
                return Err(ConfigError::Invalid(
                    "request_timeout must be above zero".into(),
                ));
            }
        }
        if let Some(t) = raw.store_busy_timeout {
            c.store_busy_timeout = duration("store_busy_timeout", &t)?;
        }
        if let Some(m) = raw.max_body_bytes {
            if !(1024..=16 * 1024 * 1024).contains(&m) {
                return Err(ConfigError::Invalid(
                    "max_body_bytes must be between 1024 and 16777216".into(),
                ));
            }
            c.max_body_bytes = m;
        }
        if let Some(f) = raw.log_format {
            c.log_format = match f.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::Invalid(format!(
                        "log_format = {other:?}; use \"text\" or \"json\""
                    )))
                }
            };
        }
        for ri in raw.issuers {
            let name_ok = !ri.name.is_empty()
                && ri.name.len() <= 64
                && ri
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                return Err(ConfigError::Invalid(format!(
                    "issuer name {:?} must be 1-64 characters of A-Z a-z 0-9 - _",
                    ri.name
                )));
            }
            if c.issuers.iter().any(|i| i.name == ri.name) {
                return Err(ConfigError::Invalid(format!(
                    "issuer {:?} is defined twice",
                    ri.name
                )));
            }
            let url = url::Url::parse(&ri.url).map_err(|e| {
                ConfigError::Invalid(format!("issuer {:?}: url {:?}: {e}", ri.name, ri.url))
            })?;
            // A JWKS file needs no network, so its `url` is only the `iss` string.
            if ri.jwks_file.is_none() && url.scheme() != "https" && !is_loopback_http(&url) {
                return Err(ConfigError::Invalid(format!(
                    "issuer {:?}: url {:?} must be https (http is allowed only for loopback)",
                    ri.name, ri.url
                )));
            }
            if ri.audience.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "issuer {:?}: audience must not be empty",
                    ri.name
                )));
            }
            let leeway = match ri.leeway {
                Some(l) => duration("leeway", &l)?,
                None => Duration::from_secs(30),
            };
            if leeway > MAX_LEEWAY {
                return Err(ConfigError::Invalid(format!(
                    "issuer {:?}: leeway must be at most 5m",
                    ri.name
                )));
            }
            let max_token_bytes = ri.max_token_bytes.unwrap_or(16 * 1024);
            if !(256..=256 * 1024).contains(&max_token_bytes) {
                return Err(ConfigError::Invalid(format!(
                    "issuer {:?}: max_token_bytes must be between 256 and 262144",
                    ri.name
                )));
            }
            c.issuers.push(IssuerConfig {
                name: ri.name,
                url: ri.url,
                audience: ri.audience,
                jwks_file: ri.jwks_file,
                replay_protection: ri.replay_protection.unwrap_or(true),
                leeway,
                max_token_bytes,
            });
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_an_error_naming_the_key_and_line() {
        let err = Config::parse("listen = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
        let s = err.to_string();
        assert!(s.contains("lisen"), "{s}");
        assert!(s.contains(":2:"), "{s}");
    }

    #[test]
    fn defaults_are_loopback_and_local_dirs() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8400");
        assert_eq!(c.policy_dir, PathBuf::from("ca-policy"));
        assert_eq!(c.backdate, Duration::from_secs(60));
    }

    #[test]
    fn plain_http_issuer_is_refused_unless_loopback() {
        let t = |u: &str| format!("[[issuer]]\nname=\"x\"\nurl=\"{u}\"\naudience=\"mayfly\"\n");
        assert!(Config::parse(&t("http://example.com")).is_err());
        assert!(Config::parse(&t("http://127.0.0.1:9000")).is_ok());
        assert!(Config::parse(&t("https://example.com")).is_ok());
    }

    #[test]
    fn leeway_is_bounded() {
        let t = "[[issuer]]\nname=\"x\"\nurl=\"https://a\"\naudience=\"m\"\nleeway=\"1h\"\n";
        assert!(Config::parse(t).is_err());
    }
}
