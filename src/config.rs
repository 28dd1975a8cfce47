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
    policy_poll_interval: Option<String>,
    heartbeat_interval: Option<String>,
    backdate: Option<String>,
    request_timeout: Option<String>,
    max_body_bytes: Option<usize>,
    header_read_timeout: Option<String>,
    max_connections: Option<usize>,
    worker_threads: Option<usize>,
    store_busy_timeout: Option<String>,
    log_format: Option<String>,
    error_detail: Option<String>,
    ca: Option<RawCa>,
    insecure_http: Option<bool>,
    tls: Option<RawTls>,
    audit: Option<RawAudit>,
    store: Option<RawStore>,
    approval_webhook: Option<RawApprovalWebhook>,
    hosts: Option<RawHosts>,
    #[serde(default, rename = "issuer")]
    issuers: Vec<RawIssuer>,
    #[serde(default, rename = "admin")]
    admins: Vec<RawAdmin>,
    console: Option<RawConsole>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    issuer: String,
    client_id: String,
    client_secret_file: Option<PathBuf>,
    public_url: String,
    #[serde(default)]
    viewers: Vec<String>,
}

/// `[console]`: the web console, where people log in with the OIDC
/// authorization-code flow (PKCE) at an `[[issuer]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// The `[[issuer]]` name whose people log in.
    pub issuer: String,
    /// OAuth client id of the console at that issuer (the ID token's `aud`).
    pub client_id: String,
    /// File holding the client secret (confidential client); `None`: a
    /// public client that authenticates with PKCE alone.
    pub client_secret_file: Option<PathBuf>,
    /// Where browsers reach mayfly; the redirect URI is
    /// `public_url + "/console/callback"`.
    pub public_url: url::Url,
    /// Who may look (read-only): `(claim, pattern)`, any one matching.
    pub viewers: Vec<(String, String)>,
}

impl ConsoleConfig {
    /// The redirect URI registered at the issuer.
    pub fn redirect_uri(&self) -> String {
        format!(
            "{}/console/callback",
            self.public_url.as_str().trim_end_matches('/')
        )
    }

    fn from_raw(r: RawConsole, issuers: &[IssuerConfig]) -> Result<ConsoleConfig, ConfigError> {
        let bad = |m: String| ConfigError::Invalid(format!("[console] {m}"));
        if !issuers.iter().any(|i| i.name == r.issuer) {
            let names: Vec<&str> = issuers.iter().map(|i| i.name.as_str()).collect();
            return Err(bad(format!(
                "issuer {:?} is not an [[issuer]] name (configured: {names:?}); people log in at one of the configured issuers",
                r.issuer
            )));
        }
        if r.client_id.trim().is_empty() || r.client_id.len() > 256 {
            return Err(bad(
                "client_id must name the console's OAuth client at the issuer".into(),
            ));
        }
        let public_url = url::Url::parse(&r.public_url).map_err(|e| {
            bad(format!(
                "public_url {:?} is not a URL ({e}); write e.g. \"https://ca.example.com\"",
                r.public_url
            ))
        })?;
        if public_url.query().is_some()
            || public_url.fragment().is_some()
            || !public_url.username().is_empty()
            || public_url.host_str().is_none()
        {
            return Err(bad(format!(
                "public_url {:?} must be scheme://host[:port][/path], without user, query or fragment",
                r.public_url
            )));
        }
        match public_url.scheme() {
            "https" => {}
            "http" if is_loopback_http(&public_url) => {}
            _ => {
                return Err(bad(format!(
                    "public_url {:?} must be https (plain http only on a loopback address): session cookies and login codes cross it",
                    r.public_url
                )))
            }
        }
        if let Some(f) = &r.client_secret_file {
            if f.as_os_str().is_empty() {
                return Err(bad(
                    "client_secret_file is empty; leave it out for a public client".into(),
                ));
            }
        }
        let mut viewers = Vec::new();
        for v in r.viewers {
            let (claim, pattern) = v.split_once(':').ok_or_else(|| {
                bad(format!(
                    "viewer {v:?} must be claim:pattern, e.g. \"groups:sre\" or \"sub:alice@example.com\""
                ))
            })?;
            let claim = if claim == "group" { "groups" } else { claim };
            if claim.is_empty() || pattern.is_empty() {
                return Err(bad(format!("viewer {v:?} must be claim:pattern")));
            }
            viewers.push((claim.to_string(), pattern.to_string()));
        }
        Ok(ConsoleConfig {
            issuer: r.issuer,
            client_id: r.client_id,
            client_secret_file: r.client_secret_file,
            public_url,
            viewers,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovalWebhook {
    url: Option<String>,
    secret_file: Option<PathBuf>,
    server_url: Option<String>,
    retries: Option<u32>,
    retry_initial: Option<String>,
}

/// `[approval_webhook]`: how approvers are notified of new approval
/// requests (a role's `[approval] webhook` overrides `url`).
#[derive(Debug, Clone)]
pub struct ApprovalWebhookConfig {
    /// Where notices go for roles without their own webhook.
    pub url: Option<url::Url>,
    /// HMAC-SHA256 key that signs each notice body (`secret_file`).
    pub secret: Option<WebhookSecret>,
    /// The CA's URL as approvers reach it, for the `approve_command` in
    /// each notice.
    pub server_url: Option<url::Url>,
    /// Retries after a failed delivery (each waits twice as long).
    pub retries: u32,
    /// Wait before the first retry.
    pub retry_initial: Duration,
}

impl Default for ApprovalWebhookConfig {
    fn default() -> Self {
        ApprovalWebhookConfig {
            url: None,
            secret: None,
            server_url: None,
            retries: 5,
            retry_initial: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHosts {
    sync_interval: Option<String>,
    stale_intervals: Option<u64>,
    expected_file: Option<PathBuf>,
}

/// What the CA expects of the hosts that report after `mayfly host sync`
/// (`[hosts]`): `mayfly hosts`, `/metrics`, `ca rotate` and `revoke --wait`
/// call a host stale after `stale_intervals` intervals without a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsConfig {
    /// How often hosts sync (the shipped timer: 5 minutes).
    pub sync_interval: Duration,
    /// Missed intervals after which a host is stale.
    pub stale_intervals: u64,
    /// The hosts the CA should hear from, one name per line
    /// ([`read_expected_hosts`]): the ones that never reported are listed
    /// as `never_reported`. Read again at each use, so editing it needs no
    /// restart.
    pub expected_file: Option<PathBuf>,
}

impl Default for HostsConfig {
    fn default() -> Self {
        HostsConfig {
            sync_interval: Duration::from_secs(DEFAULT_HOST_SYNC_INTERVAL_SECS),
            stale_intervals: DEFAULT_HOST_STALE_INTERVALS,
            expected_file: None,
        }
    }
}

/// Most names an expected-hosts file may list.
pub const MAX_EXPECTED_HOSTS: usize = 100_000;

/// Parses an expected-hosts file: one host name per line (as the host
/// reports it: its certificate's principal), blank lines and `#` comments
/// ignored, surrounding spaces trimmed. Names compare without case; a name
/// listed twice counts once. Errors name the line.
pub fn parse_expected_hosts(text: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.chars().count() > 253
            || line
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == ',')
        {
            return Err(format!(
                "line {}: {:?} is not a host name (one name per line, no spaces or commas)",
                i + 1,
                line.chars().take(64).collect::<String>()
            ));
        }
        if seen.insert(line.to_ascii_lowercase()) {
            out.push(line.to_string());
        }
        if out.len() > MAX_EXPECTED_HOSTS {
            return Err(format!("more than {MAX_EXPECTED_HOSTS} host names"));
        }
    }
    Ok(out)
}

/// Reads and parses an expected-hosts file ([`parse_expected_hosts`]);
/// the error names the file.
pub fn read_expected_hosts(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("expected hosts file {}: {e}", path.display()))?;
    parse_expected_hosts(&text).map_err(|e| format!("expected hosts file {}: {e}", path.display()))
}

/// The webhook signing key: zeroized on drop, never printed.
#[derive(Clone)]
pub struct WebhookSecret(zeroize::Zeroizing<Vec<u8>>);

impl WebhookSecret {
    /// Wraps key bytes.
    pub fn new(bytes: Vec<u8>) -> WebhookSecret {
        WebhookSecret(zeroize::Zeroizing::new(bytes))
    }

    /// The key bytes, for signing.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

impl ApprovalWebhookConfig {
    fn from_raw(r: RawApprovalWebhook) -> Result<ApprovalWebhookConfig, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(format!("approval_webhook.{m}"));
        let url = r
            .url
            .as_deref()
            .map(parse_webhook_url)
            .transpose()
            .map_err(|m| invalid(format!("url: {m}")))?;
        let server_url = r
            .server_url
            .as_deref()
            .map(|s| {
                url::Url::parse(s)
                    .map_err(|e| invalid(format!("server_url {s:?} is not a URL: {e}")))
            })
            .transpose()?;
        let secret = match &r.secret_file {
            None => None,
            Some(p) => {
                let bytes = std::fs::read(p).map_err(|e| {
                    invalid(format!("secret_file {}: cannot read it: {e}", p.display()))
                })?;
                // A trailing newline from `echo` is not part of the key.
                let trimmed = bytes.trim_ascii_end().to_vec();
                drop(zeroize::Zeroizing::new(bytes));
                if trimmed.len() < 16 {
                    return Err(invalid(format!(
                        "secret_file {}: the secret must be at least 16 bytes (e.g. `openssl rand -hex 32`)",
                        p.display()
                    )));
                }
                Some(WebhookSecret::new(trimmed))
            }
        };
        let retries = r.retries.unwrap_or(5);
        if retries > 10 {
            return Err(invalid(format!("retries = {retries}: at most 10")));
        }
        let retry_initial = match &r.retry_initial {
            None => Duration::from_secs(1),
            Some(s) => duration("approval_webhook.retry_initial", s)?,
        };
        if retry_initial < Duration::from_millis(100) || retry_initial > Duration::from_secs(600) {
            return Err(invalid(format!(
                "retry_initial = {:?} must be between 100ms and 10m",
                r.retry_initial.unwrap_or_default()
            )));
        }
        Ok(ApprovalWebhookConfig {
            url,
            secret,
            server_url,
            retries,
            retry_initial,
        })
    }
}

/// Default `[hosts] sync_interval` in seconds (the shipped timer's 5 minutes).
pub const DEFAULT_HOST_SYNC_INTERVAL_SECS: u64 = 300;

/// Default `[hosts] stale_intervals`: missed intervals after which a host is stale.
pub const DEFAULT_HOST_STALE_INTERVALS: u64 = 3;

/// Parses an approval webhook URL: https, or plain http to loopback only
/// (the notice names who asks for what).
pub fn parse_webhook_url(s: &str) -> Result<url::Url, String> {
    let u = url::Url::parse(s).map_err(|e| format!("webhook {s:?} is not a URL: {e}"))?;
    if u.scheme() == "https" || is_loopback_http(&u) {
        Ok(u)
    } else {
        Err(format!(
            "webhook {:?} must be https:// (plain http only to loopback)",
            u.origin().ascii_serialization()
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    issuer: String,
    claims: std::collections::BTreeMap<String, RawClaimValue>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawClaimValue {
    One(String),
    Many(Vec<String>),
}

/// Who may use the admin API: tokens from `issuer` whose claims all match.
#[derive(Debug, Clone)]
pub struct AdminRule {
    /// An `[[issuer]]` name.
    pub issuer: String,
    /// Claim name -> accepted values (exact or `*` glob), any of.
    pub claims: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    reload_interval: Option<String>,
    admin_requires_client_cert: Option<bool>,
}

/// `[tls]`: serve HTTPS with this certificate instead of plain HTTP.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key of the leaf (PKCS#8, RSA or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates that client certificates are verified against;
    /// when set, clients are asked for a certificate (not required).
    pub client_ca_file: Option<PathBuf>,
    /// How often the certificate and key files are checked for changes.
    pub reload_interval: Duration,
    /// Admin endpoints also require a TLS client certificate signed by
    /// `client_ca_file` (on top of the admin OIDC token).
    pub admin_requires_client_cert: bool,
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
    max_stale_keys: Option<String>,
    kind: Option<String>,
    audit_claims: Option<Vec<String>>,
}

/// Most claims one issuer may name in `audit_claims`.
pub const MAX_AUDIT_CLAIMS: usize = 16;

/// Longest claim name (or `/`-separated path) in `audit_claims`.
pub const MAX_AUDIT_CLAIM_NAME: usize = 128;

/// The kind of a workload-token issuer, which sets the defaults of
/// `audit_claims`. Recognised from the issuer's url unless `kind` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerKind {
    /// GitHub Actions (`https://token.actions.githubusercontent.com`).
    GithubActions,
    /// GitLab CI (`https://gitlab.com`, or a host named `gitlab.*`).
    Gitlab,
    /// Kubernetes service-account tokens.
    Kubernetes,
    /// Any other OIDC issuer: no default audit claims.
    Generic,
}

impl IssuerKind {
    /// Parses the `kind` key.
    pub fn parse(s: &str) -> Option<IssuerKind> {
        match s {
            "github" | "github-actions" => Some(IssuerKind::GithubActions),
            "gitlab" => Some(IssuerKind::Gitlab),
            "kubernetes" => Some(IssuerKind::Kubernetes),
            "generic" => Some(IssuerKind::Generic),
            _ => None,
        }
    }

    /// The kind an issuer url names, `Generic` when it is not a known one.
    pub fn recognise(url: &str) -> IssuerKind {
        let host = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .unwrap_or_default();
        if host == "token.actions.githubusercontent.com" {
            IssuerKind::GithubActions
        } else if host == "gitlab.com" || host.starts_with("gitlab.") {
            IssuerKind::Gitlab
        } else if host == "kubernetes.default.svc"
            || host.starts_with("kubernetes.default.svc.")
            || host.starts_with("oidc.eks.")
            || host == "container.googleapis.com"
        {
            IssuerKind::Kubernetes
        } else {
            IssuerKind::Generic
        }
    }

    /// The claims recorded in the audit log when `audit_claims` is not set:
    /// what tells one job (run, commit, actor) from another of the same `sub`.
    pub fn default_audit_claims(self) -> &'static [&'static str] {
        match self {
            IssuerKind::GithubActions => &[
                "run_id",
                "run_attempt",
                "sha",
                "workflow_ref",
                "actor",
                "job_workflow_ref",
            ],
            IssuerKind::Gitlab => &["pipeline_id", "job_id", "sha", "user_login"],
            IssuerKind::Kubernetes => &["kubernetes.io/pod/name", "kubernetes.io/pod/uid"],
            IssuerKind::Generic => &[],
        }
    }
}

/// Checks one `audit_claims` entry: a claim name, or a `/`-separated path
/// into nested objects (`kubernetes.io/pod/name`).
fn audit_claim_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_AUDIT_CLAIM_NAME
        && !n.starts_with('/')
        && !n.ends_with('/')
        && !n.contains("//")
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
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
    /// How long keys fetched earlier stay in use while the issuer cannot be
    /// reached; after that its tokens get 503 until a fetch succeeds.
    pub max_stale_keys: Duration,
    /// What kind of issuer this is (sets the default `audit_claims`).
    pub kind: IssuerKind,
    /// Claims of a verified token recorded in the audit record of its
    /// issuances and refusals (at most [`MAX_AUDIT_CLAIMS`]).
    pub audit_claims: Vec<String>,
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
    /// How often `policy_dir` is checked for changes (SIGHUP reloads at once).
    pub policy_poll_interval: Duration,
    /// How often this replica writes its heartbeat (version, policy
    /// digest, last seen) into the store; `mayfly status` calls it stale
    /// after three intervals without one.
    pub heartbeat_interval: Duration,
    /// How far `valid_after` is set in the past, for hosts with slow clocks.
    pub backdate: Duration,
    /// Upper bound on one request's handling time.
    pub request_timeout: Duration,
    /// Request bodies above this get 413.
    pub max_body_bytes: usize,
    /// A connection that has not sent a complete request head this long
    /// after it opened, or after its previous response (idle keep-alive),
    /// is closed.
    pub header_read_timeout: Duration,
    /// Most client connections open at once (TLS handshakes included);
    /// further clients wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Threads that serve requests (`None`: one per CPU the process may
    /// use). Fewer leave CPUs to other work on the machine: on two cores
    /// shared with a load generator, one served more certificates per
    /// second than two, at less CPU each (docs/performance.md).
    pub worker_threads: Option<usize>,
    /// How long a store write waits for a lock before the request fails (503).
    pub store_busy_timeout: Duration,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// How much a refusal tells the bot (`error_detail`).
    pub error_detail: ErrorDetail,
    /// Trusted issuers.
    pub issuers: Vec<IssuerConfig>,
    /// Admin identities (`[[admin]]`); none means the admin API refuses everyone.
    pub admins: Vec<AdminRule>,
    /// The web console (`[console]`); `None`: `/console/` is 404.
    pub console: Option<ConsoleConfig>,
    /// Where the CA private keys live and how they are protected (`[ca]`).
    pub ca: CaKeyConfig,
    /// HTTPS settings; `None` serves plain HTTP (allowed on loopback only,
    /// unless `insecure_http`).
    pub tls: Option<TlsConfig>,
    /// Dangerous: allow plain HTTP on a non-loopback address, so bearer
    /// tokens cross the network in clear.
    pub insecure_http: bool,
    /// Audit streaming and checkpoints (`[audit]`).
    pub audit: AuditConfig,
    /// Which store holds the audit log and the CA's state (`[store]`).
    pub store: StoreSettings,
    /// How approvers hear of new approval requests (`[approval_webhook]`).
    pub approval_webhook: ApprovalWebhookConfig,
    /// Host sync expectations (`[hosts]`).
    pub hosts: HostsConfig,
}

/// `[store]`: which backend holds the audit log and the CA's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreSettings {
    /// The backend (`backend = "sqlite"`, the default).
    pub backend: StoreBackend,
    /// The PostgreSQL settings; set exactly when `backend = "postgres"`.
    pub postgres: Option<PgSettings>,
}

/// `[store]` with `backend = "postgres"`: where the shared database is and
/// how to log in. The password is never part of this value: it is read
/// when the store opens, from `password_file`, else the systemd credential
/// [`PG_PASSWORD_CREDENTIAL`], else `$PGPASSWORD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSettings {
    /// `postgres://user@host[:port][,host2[:port]]/db?sslmode=...`; never
    /// holds a password (refused at parse time).
    pub url: String,
    /// File holding the password (one line), if configured; when set it is
    /// the only source.
    pub password_file: Option<PathBuf>,
    /// Most connections this process opens to the database.
    pub pool_size: usize,
}

/// The systemd credential that holds the PostgreSQL password
/// (`LoadCredential=mayfly-pg-password:/etc/mayfly/pg-password`).
pub const PG_PASSWORD_CREDENTIAL: &str = "mayfly-pg-password";
/// The environment variable read last for the PostgreSQL password.
pub const PG_PASSWORD_ENV: &str = "PGPASSWORD";
/// Default `[store] pool_size`.
pub const DEFAULT_PG_POOL_SIZE: usize = 16;
/// Largest `[store] pool_size`: each connection is a PostgreSQL backend
/// process, and a few replicas must fit under `max_connections`.
pub const MAX_PG_POOL_SIZE: usize = 512;

/// A store backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreBackend {
    /// SQLite, in `data_dir/mayfly.db` (one server per database).
    #[default]
    SQLite,
    /// PostgreSQL shared by any number of replicas (`[store] url`).
    Postgres,
}

impl StoreBackend {
    /// Every accepted `backend` value.
    pub const ACCEPTED: &'static [&'static str] = &["sqlite", "postgres"];

    /// Parses a `backend` value.
    pub fn parse(s: &str) -> Result<StoreBackend, ConfigError> {
        match s {
            "sqlite" => Ok(StoreBackend::SQLite),
            "postgres" => Ok(StoreBackend::Postgres),
            other => Err(ConfigError::Invalid(format!(
                "store.backend = {other:?} is not a store mayfly has; accepted: {}",
                StoreBackend::ACCEPTED
                    .iter()
                    .map(|v| format!("{v:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The `backend` value.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreBackend::SQLite => "sqlite",
            StoreBackend::Postgres => "postgres",
        }
    }
}

/// Raw `[store]` section.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: Option<String>,
    url: Option<String>,
    password_file: Option<PathBuf>,
    pool_size: Option<usize>,
}

/// Not derived: `url` may hold a password until [`store_settings`] refused it.
impl std::fmt::Debug for RawStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawStore")
            .field("backend", &self.backend)
            .field("url", &self.url.as_ref().map(|_| "[not shown]"))
            .field("password_file", &self.password_file)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// Validates `[store]`. Keys that only apply to PostgreSQL are refused with
/// SQLite, so a typo in `backend` does not silently leave a replica on a
/// private database.
fn store_settings(s: RawStore) -> Result<StoreSettings, ConfigError> {
    let backend = match s.backend {
        Some(b) => StoreBackend::parse(&b)?,
        None => StoreBackend::default(),
    };
    if backend == StoreBackend::SQLite {
        let pg_keys: Vec<&str> = [
            ("url", s.url.is_some()),
            ("password_file", s.password_file.is_some()),
            ("pool_size", s.pool_size.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
        if !pg_keys.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "store.{} {} only to backend = \"postgres\"; set [store] backend = \"postgres\" \
                 or remove {}",
                pg_keys.join(", store."),
                if pg_keys.len() == 1 {
                    "applies"
                } else {
                    "apply"
                },
                if pg_keys.len() == 1 { "it" } else { "them" }
            )));
        }
        return Ok(StoreSettings {
            backend,
            postgres: None,
        });
    }
    let url = s.url.filter(|u| !u.trim().is_empty()).ok_or_else(|| {
        ConfigError::Invalid(
            "[store] backend = \"postgres\" needs url, e.g. \
             url = \"postgres://mayfly@db.example.com:5432/mayfly?sslmode=verify-full\""
                .into(),
        )
    })?;
    check_pg_url(&url)?;
    let pool_size = s.pool_size.unwrap_or(DEFAULT_PG_POOL_SIZE);
    if !(1..=MAX_PG_POOL_SIZE).contains(&pool_size) {
        return Err(ConfigError::Invalid(format!(
            "store.pool_size = {pool_size} must be between 1 and {MAX_PG_POOL_SIZE}"
        )));
    }
    if let Some(p) = &s.password_file {
        if p.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "store.password_file is empty; name the file that holds the password, or \
                 remove the key to use the systemd credential or $PGPASSWORD"
                    .into(),
            ));
        }
    }
    Ok(StoreSettings {
        backend,
        postgres: Some(PgSettings {
            url: url.trim().to_string(),
            password_file: s.password_file,
            pool_size,
        }),
    })
}

/// The shape checks of `[store] url` that need no PostgreSQL client: a
/// `postgres://` URL, and no password in it (passwords in URLs end up in
/// shell history, process lists and logs). The store checks the rest when
/// it opens. Error messages never repeat the URL, which may hold the
/// password being refused.
fn check_pg_url(url: &str) -> Result<(), ConfigError> {
    let url = url.trim();
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return Err(ConfigError::Invalid(
            "store.url must be a URL starting with postgres:// (or postgresql://), \
             e.g. \"postgres://mayfly@db.example.com:5432/mayfly?sslmode=verify-full\""
                .into(),
        ));
    };
    let (authority, query) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], rest[i..].split_once('?').map(|(_, q)| q)),
        None => (rest, None),
    };
    let has_password_in_userinfo = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let has_password_param = query
        .is_some_and(|q| url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "password"));
    if has_password_in_userinfo || has_password_param {
        return Err(ConfigError::Invalid(format!(
            "store.url contains a password; remove it from the URL and put it in a file named \
             by [store] password_file (mode 0600), or in the systemd credential \
             {PG_PASSWORD_CREDENTIAL}, or in ${PG_PASSWORD_ENV}"
        )));
    }
    Ok(())
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// How much a policy refusal tells the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorDetail {
    /// The rule that failed and what it allows (subjects, principals,
    /// admin groups, windows): the fastest fix for a misconfigured bot.
    #[default]
    Full,
    /// The refusal's code and request id only; the reason stays in the
    /// audit log and the server log, for CAs whose policy should not be
    /// visible to every bot.
    Terse,
}

/// How often `[tls]` certificate files are checked for changes by default.
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// How often `policy_dir` is checked for changes by default.
pub const DEFAULT_POLICY_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// How often a replica writes its heartbeat by default.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Shortest and longest `heartbeat_interval`.
const HEARTBEAT_INTERVAL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);
/// How long an issuer's keys stay in use while it is unreachable, unless
/// `max_stale_keys` says otherwise: long enough to ride out an outage of the
/// issuer's discovery endpoint, short enough that a key the issuer withdrew
/// (compromise) stops being trusted within the hour.
pub const DEFAULT_MAX_STALE_KEYS: Duration = Duration::from_secs(3600);
/// Shortest `max_stale_keys`.
const MIN_MAX_STALE_KEYS: Duration = Duration::from_secs(1);
/// Longest `max_stale_keys`: a week-old key set is a key set nobody watches.
const MAX_MAX_STALE_KEYS: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest `header_read_timeout`: below it, clients on slow links could
/// not send a request at all.
pub const MIN_HEADER_READ_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest `header_read_timeout`: more lets idle clients hold slots too long.
pub const MAX_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(300);
/// Highest `max_connections` accepted (each connection holds a descriptor).
pub const MAX_CONNECTIONS_LIMIT: usize = 1 << 20;
/// Highest `worker_threads` accepted.
pub const MAX_WORKER_THREADS: usize = 1024;

/// Longest leeway an operator may configure: more would make `exp` meaningless.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8400)),
            data_dir: PathBuf::from("mayfly-data"),
            policy_dir: PathBuf::from("ca-policy"),
            policy_poll_interval: DEFAULT_POLICY_POLL_INTERVAL,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            backdate: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            worker_threads: None,
            store_busy_timeout: Duration::from_secs(2),
            log_format: LogFormat::Text,
            error_detail: ErrorDetail::Full,
            issuers: Vec::new(),
            admins: Vec::new(),
            console: None,
            ca: CaKeyConfig::default(),
            tls: None,
            insecure_http: false,
            audit: AuditConfig::default(),
            store: StoreSettings::default(),
            approval_webhook: ApprovalWebhookConfig::default(),
            hosts: HostsConfig::default(),
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

/// Whether two issuer URLs name the same issuer: equal once a trailing
/// slash is ignored (discovery strips it, so both reach the same JWKS).
fn same_issuer_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
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

/// Why `issuer` names none of the configured issuers `names`, listing
/// them (`{issuer:?} is not an [[issuer]] of this CA ...`); `None` when it
/// is one. The CLI's `--issuer` and the admin API word their refusals with it.
pub fn unknown_issuer(names: &[&str], issuer: &str) -> Option<String> {
    (!names.contains(&issuer)).then(|| {
        format!(
            "{issuer:?} is not an [[issuer]] of this CA (its issuers: {}); give the issuer's name from mayfly.toml, not its URL",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )
    })
}

impl Config {
    /// The names of the configured `[[issuer]]`s, as role files name them.
    pub fn issuer_names(&self) -> Vec<&str> {
        self.issuers.iter().map(|i| i.name.as_str()).collect()
    }

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
        if let Some(p) = raw.policy_poll_interval {
            c.policy_poll_interval = duration("policy_poll_interval", &p)?;
            if !(Duration::from_secs(1)..=Duration::from_secs(86_400))
                .contains(&c.policy_poll_interval)
            {
                return Err(ConfigError::Invalid(
                    "policy_poll_interval must be between 1s and 24h (SIGHUP reloads at once)"
                        .into(),
                ));
            }
        }
        if let Some(h) = raw.heartbeat_interval {
            c.heartbeat_interval = duration("heartbeat_interval", &h)?;
            if !HEARTBEAT_INTERVAL_RANGE.contains(&c.heartbeat_interval)
                || c.heartbeat_interval.subsec_nanos() != 0
            {
                return Err(ConfigError::Invalid(format!(
                    "heartbeat_interval = {h:?} must be whole seconds between 1s and 1h"
                )));
            }
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
        if let Some(s) = raw.store {
            c.store = store_settings(s)?;
        }
        if let Some(m) = raw.max_body_bytes {
            if !(1024..=16 * 1024 * 1024).contains(&m) {
                return Err(ConfigError::Invalid(
                    "max_body_bytes must be between 1024 and 16777216".into(),
                ));
            }
            c.max_body_bytes = m;
        }
        if let Some(t) = raw.header_read_timeout {
            c.header_read_timeout = duration("header_read_timeout", &t)?;
            if !(MIN_HEADER_READ_TIMEOUT..=MAX_HEADER_READ_TIMEOUT).contains(&c.header_read_timeout)
            {
                return Err(ConfigError::Invalid(format!(
                    "header_read_timeout = {t:?} must be between 100ms and 5m: \
                     longer lets idle clients hold connection slots"
                )));
            }
        }
        if let Some(n) = raw.worker_threads {
            if !(1..=MAX_WORKER_THREADS).contains(&n) {
                return Err(ConfigError::Invalid(format!(
                    "worker_threads = {n} must be between 1 and {MAX_WORKER_THREADS}; \
                     leave it out for one per CPU"
                )));
            }
            c.worker_threads = Some(n);
        }
        if let Some(m) = raw.max_connections {
            if !(1..=MAX_CONNECTIONS_LIMIT).contains(&m) {
                return Err(ConfigError::Invalid(format!(
                    "max_connections = {m} must be between 1 and {MAX_CONNECTIONS_LIMIT}"
                )));
            }
            c.max_connections = m;
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
        if let Some(d) = raw.error_detail {
            c.error_detail = match d.as_str() {
                "full" => ErrorDetail::Full,
                "terse" => ErrorDetail::Terse,
                other => {
                    return Err(ConfigError::Invalid(format!(
                        "error_detail = {other:?}; use \"full\" (refusals name the rule and the allowed values) \
                         or \"terse\" (refusals name only their code and request id)"
                    )))
                }
            };
        }
        c.insecure_http = raw.insecure_http.unwrap_or(false);
        if let Some(t) = raw.tls {
            let reload_interval = match t.reload_interval {
                Some(r) => duration("tls.reload_interval", &r)?,
                None => DEFAULT_TLS_RELOAD_INTERVAL,
            };
            if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&reload_interval) {
                return Err(ConfigError::Invalid(
                    "tls.reload_interval must be between 1s and 1h".into(),
                ));
            }
            let admin_requires_client_cert = t.admin_requires_client_cert.unwrap_or(false);
            if admin_requires_client_cert && t.client_ca_file.is_none() {
                return Err(ConfigError::Invalid(
                    "tls.admin_requires_client_cert needs tls.client_ca_file (the CA that signs admin client certificates)".into(),
                ));
            }
            c.tls = Some(TlsConfig {
                cert_file: t.cert_file,
                key_file: t.key_file,
                client_ca_file: t.client_ca_file,
                reload_interval,
                admin_requires_client_cert,
            });
        }
        if let Some(ra) = raw.audit.take() {
            c.audit = AuditConfig::from_raw(ra)?;
        }
        if let Some(rw) = raw.approval_webhook.take() {
            c.approval_webhook = ApprovalWebhookConfig::from_raw(rw)?;
        }
        if let Some(rh) = raw.hosts.take() {
            if let Some(i) = rh.sync_interval {
                c.hosts.sync_interval = duration("hosts.sync_interval", &i)?;
            }
            if !(Duration::from_secs(10)..=Duration::from_secs(86_400))
                .contains(&c.hosts.sync_interval)
            {
                return Err(ConfigError::Invalid(
                    "hosts.sync_interval must be between 10s and 24h".into(),
                ));
            }
            if let Some(n) = rh.stale_intervals {
                if !(1..=100).contains(&n) {
                    return Err(ConfigError::Invalid(
                        "hosts.stale_intervals must be between 1 and 100".into(),
                    ));
                }
                c.hosts.stale_intervals = n;
            }
            c.hosts.expected_file = rh.expected_file;
        }
        if let Some(rc) = raw.ca.take() {
            c.ca = CaKeyConfig::from_raw(rc)?;
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
            // Tokens are routed to an issuer by `iss`, and discovery trims a
            // trailing slash, so two entries for one URL would silently
            // shadow each other (whose audience and JWKS apply?).
            if let Some(other) = c.issuers.iter().find(|i| same_issuer_url(&i.url, &ri.url)) {
                return Err(ConfigError::Invalid(format!(
                    "issuers {:?} (url {:?}) and {:?} (url {:?}) have the same url (a trailing \
                     slash does not count); each [[issuer]] needs its own url: merge them into \
                     one entry, or remove one",
                    other.name, other.url, ri.name, ri.url
                )));
            }
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
            let max_stale_keys = match ri.max_stale_keys {
                Some(s) => duration("max_stale_keys", &s)?,
                None => DEFAULT_MAX_STALE_KEYS,
            };
            if !(MIN_MAX_STALE_KEYS..=MAX_MAX_STALE_KEYS).contains(&max_stale_keys) {
                return Err(ConfigError::Invalid(format!(
                    "issuer {:?}: max_stale_keys must be between 1s and 7d",
                    ri.name
                )));
            }
            let kind = match ri.kind.as_deref() {
                None => IssuerKind::recognise(&ri.url),
                Some(k) => IssuerKind::parse(k).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "issuer {:?}: kind {k:?} is not one of github, gitlab, kubernetes, generic",
                        ri.name
                    ))
                })?,
            };
            let audit_claims = match ri.audit_claims {
                None => kind
                    .default_audit_claims()
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                Some(list) => {
                    if list.len() > MAX_AUDIT_CLAIMS {
                        return Err(ConfigError::Invalid(format!(
                            "issuer {:?}: audit_claims names {} claims, at most {MAX_AUDIT_CLAIMS} are recorded",
                            ri.name,
                            list.len()
                        )));
                    }
                    let mut seen: Vec<String> = Vec::with_capacity(list.len());
                    for n in list {
                        if !audit_claim_name_ok(&n) {
                            return Err(ConfigError::Invalid(format!(
                                "issuer {:?}: audit_claims entry {n:?} must be a claim name \
                                 (1-{MAX_AUDIT_CLAIM_NAME} characters of A-Z a-z 0-9 - _ . :), \
                                 or a path into nested claims such as \"kubernetes.io/pod/name\"",
                                ri.name
                            )));
                        }
                        if seen.contains(&n) {
                            return Err(ConfigError::Invalid(format!(
                                "issuer {:?}: audit_claims names {n:?} twice",
                                ri.name
                            )));
                        }
                        seen.push(n);
                    }
                    seen
                }
            };
            c.issuers.push(IssuerConfig {
                name: ri.name,
                url: ri.url,
                audience: ri.audience,
                jwks_file: ri.jwks_file,
                replay_protection: ri.replay_protection.unwrap_or(true),
                leeway,
                max_token_bytes,
                max_stale_keys,
                kind,
                audit_claims,
            });
        }
        for a in raw.admins {
            if !c.issuers.iter().any(|i| i.name == a.issuer) {
                return Err(ConfigError::Invalid(format!(
                    "[[admin]] issuer {:?} is not an [[issuer]] name",
                    a.issuer
                )));
            }
            if a.claims.is_empty() {
                return Err(ConfigError::Invalid(
                    "[[admin]] needs at least one claim in [admin.claims] (e.g. sub = \"alice@example.com\")".into(),
                ));
            }
            c.admins.push(AdminRule {
                issuer: a.issuer,
                claims: a
                    .claims
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k,
                            match v {
                                RawClaimValue::One(s) => vec![s],
                                RawClaimValue::Many(l) => l,
                            },
                        )
                    })
                    .collect(),
            });
        }
        if let Some(rc) = raw.console {
            c.console = Some(ConsoleConfig::from_raw(rc, &c.issuers)?);
        }
        Ok(c)
    }
}

// ---- [audit]: live streaming of audit records and signed checkpoints ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    jsonl_file: Option<PathBuf>,
    jsonl_max_bytes: Option<u64>,
    jsonl_keep: Option<usize>,
    jsonl_stdout: Option<bool>,
    syslog: Option<String>,
    checkpoint_every: Option<u64>,
    checkpoint_interval: Option<String>,
}

/// `[audit]`: where audit records are streamed as they are committed, and
/// how often the chain head is signed. See `docs/audit-schema.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Append each record as a JSON line to this file (`jsonl_file`).
    pub jsonl_file: Option<PathBuf>,
    /// Rotate the file when it would grow past this size; 0 never rotates
    /// (`jsonl_max_bytes`, default 100 MiB).
    pub jsonl_max_bytes: u64,
    /// Rotated files kept (`FILE.1` .. `FILE.<n>`; `jsonl_keep`, default 5).
    pub jsonl_keep: usize,
    /// Also write each record as a JSON line to standard output (`jsonl_stdout`).
    pub jsonl_stdout: bool,
    /// Send each record to syslog (`syslog = "udp://host:514"` or `"tcp://host:514"`).
    pub syslog: Option<SyslogTarget>,
    /// Sign a checkpoint after this many records (`checkpoint_every`, default 1000).
    pub checkpoint_every: u64,
    /// ... or after this long when anything was written (`checkpoint_interval`, default 60s).
    pub checkpoint_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            jsonl_file: None,
            jsonl_max_bytes: 100 * 1024 * 1024,
            jsonl_keep: 5,
            jsonl_stdout: false,
            syslog: None,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(60),
        }
    }
}

impl AuditConfig {
    fn from_raw(r: RawAudit) -> Result<AuditConfig, ConfigError> {
        let mut c = AuditConfig {
            jsonl_file: r.jsonl_file,
            ..AuditConfig::default()
        };
        if let Some(m) = r.jsonl_max_bytes {
            if m != 0 && m < 4096 {
                return Err(ConfigError::Invalid(
                    "audit.jsonl_max_bytes must be 0 (never rotate) or at least 4096".into(),
                ));
            }
            c.jsonl_max_bytes = m;
        }
        if let Some(k) = r.jsonl_keep {
            if k > 1000 {
                return Err(ConfigError::Invalid(
                    "audit.jsonl_keep must be at most 1000".into(),
                ));
            }
            c.jsonl_keep = k;
        }
        c.jsonl_stdout = r.jsonl_stdout.unwrap_or(false);
        if let Some(s) = r.syslog {
            c.syslog = Some(
                SyslogTarget::parse(&s).map_err(|e| ConfigError::Invalid(format!("audit.{e}")))?,
            );
        }
        if let Some(n) = r.checkpoint_every {
            if n == 0 {
                return Err(ConfigError::Invalid(
                    "audit.checkpoint_every must be at least 1".into(),
                ));
            }
            c.checkpoint_every = n;
        }
        if let Some(t) = r.checkpoint_interval {
            c.checkpoint_interval = duration("audit.checkpoint_interval", &t)?;
            if !(Duration::from_secs(1)..=Duration::from_secs(86_400))
                .contains(&c.checkpoint_interval)
            {
                return Err(ConfigError::Invalid(
                    "audit.checkpoint_interval must be between 1s and 24h".into(),
                ));
            }
        }
        Ok(c)
    }
}

// ---- [ca]: where the CA private keys live and how they are protected ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCa {
    backend: Option<String>,
    key_protection: Option<String>,
    passphrase_file: Option<PathBuf>,
    pkcs11_module: Option<PathBuf>,
    token_label: Option<String>,
    user_key_label: Option<String>,
    host_key_label: Option<String>,
    pin_file: Option<PathBuf>,
    generate_if_missing: Option<bool>,
    key_type: Option<String>,
}

/// `[ca]`: where the CA private keys live and how they are protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaKeyConfig {
    /// OpenSSH private key files in `data_dir` (`backend = "file"`, the default).
    File {
        /// Whether the files are encrypted with a passphrase.
        protection: KeyProtection,
        /// Where the passphrase is read from, before the systemd credential
        /// `mayfly-ca-passphrase` and `$MAYFLY_CA_PASSPHRASE`.
        passphrase_file: Option<PathBuf>,
    },
    /// Keys inside a PKCS#11 token (an HSM); they never leave it (`backend = "pkcs11"`).
    Pkcs11(Pkcs11Config),
}

impl Default for CaKeyConfig {
    /// Unencrypted key files, so that a first run needs no set-up (the server
    /// warns that the key is unencrypted).
    fn default() -> Self {
        CaKeyConfig::File {
            protection: KeyProtection::None,
            passphrase_file: None,
        }
    }
}

/// How a file-backed CA key is protected at rest (`key_protection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProtection {
    /// Plain OpenSSH key file, mode 0600 (`"none"`).
    None,
    /// OpenSSH's encrypted key format: bcrypt-pbkdf + aes256-ctr (`"passphrase"`).
    Passphrase,
}

/// `[ca] backend = "pkcs11"`: which module, token and keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// Absolute path of the PKCS#11 module (`pkcs11_module`).
    pub module: PathBuf,
    /// Label of the token that holds the keys (`token_label`).
    pub token_label: String,
    /// Label of the user CA key pair (`user_key_label`, default `mayfly-user-ca`).
    pub user_key_label: String,
    /// Label of the host CA key pair (`host_key_label`, default `mayfly-host-ca`).
    pub host_key_label: String,
    /// Where the user PIN is read from, before the systemd credential
    /// `mayfly-pkcs11-pin` and `$MAYFLY_PKCS11_PIN` (`pin_file`).
    pub pin_file: Option<PathBuf>,
    /// Create a key pair in the token when none has the label (`generate_if_missing`).
    pub generate_if_missing: bool,
    /// The type of key that `generate_if_missing` creates (`key_type`).
    pub key_type: CaKeyType,
}

impl Pkcs11Config {
    /// The token label of the key pair for the CA key named `key_name`
    /// (`user_ca`, `host_ca`; any other name maps to `mayfly-<name>` with
    /// `_` turned into `-`).
    pub fn key_label(&self, key_name: &str) -> String {
        match key_name {
            "user_ca" => self.user_key_label.clone(),
            "host_ca" => self.host_key_label.clone(),
            other => format!("mayfly-{}", other.replace('_', "-")),
        }
    }
}

/// A CA key type that mayfly can create in a token (`key_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKeyType {
    /// `"ed25519"` (the default; the token must support CKM_EDDSA).
    Ed25519,
    /// `"ecdsa-p256"`.
    EcdsaP256,
    /// `"ecdsa-p384"`.
    EcdsaP384,
    /// `"rsa-3072"`, signing with rsa-sha2-512.
    Rsa3072,
    /// `"rsa-4096"`, signing with rsa-sha2-512.
    Rsa4096,
}

impl CaKeyType {
    /// Parses the `key_type` value.
    pub fn parse(s: &str) -> Option<CaKeyType> {
        Some(match s {
            "ed25519" => CaKeyType::Ed25519,
            "ecdsa-p256" => CaKeyType::EcdsaP256,
            "ecdsa-p384" => CaKeyType::EcdsaP384,
            "rsa-3072" => CaKeyType::Rsa3072,
            "rsa-4096" => CaKeyType::Rsa4096,
            _ => return None,
        })
    }

    /// The `key_type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            CaKeyType::Ed25519 => "ed25519",
            CaKeyType::EcdsaP256 => "ecdsa-p256",
            CaKeyType::EcdsaP384 => "ecdsa-p384",
            CaKeyType::Rsa3072 => "rsa-3072",
            CaKeyType::Rsa4096 => "rsa-4096",
        }
    }
}

/// Longest token label PKCS#11 can hold (32 bytes, blank padded).
const MAX_TOKEN_LABEL: usize = 32;

impl CaKeyConfig {
    fn from_raw(r: RawCa) -> Result<CaKeyConfig, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("[ca] {m}")));
        match r.backend.as_deref().unwrap_or("file") {
            "file" => {
                let pkcs11_only = [
                    ("pkcs11_module", r.pkcs11_module.is_some()),
                    ("token_label", r.token_label.is_some()),
                    ("user_key_label", r.user_key_label.is_some()),
                    ("host_key_label", r.host_key_label.is_some()),
                    ("pin_file", r.pin_file.is_some()),
                    ("generate_if_missing", r.generate_if_missing.is_some()),
                    ("key_type", r.key_type.is_some()),
                ];
                if let Some((key, _)) = pkcs11_only.iter().find(|(_, set)| *set) {
                    return bad(format!(
                        "{key} applies only to backend = \"pkcs11\" (backend is \"file\")"
                    ));
                }
                let protection = match r.key_protection.as_deref() {
                    None | Some("none") => KeyProtection::None,
                    Some("passphrase") => KeyProtection::Passphrase,
                    Some(other) => {
                        return bad(format!(
                            "key_protection = {other:?}; use \"passphrase\" or \"none\""
                        ))
                    }
                };
                // A passphrase that would silently not be used must not
                // leave a new key written in clear.
                if protection == KeyProtection::None && r.passphrase_file.is_some() {
                    return bad(
                        "passphrase_file is set but key_protection is not \"passphrase\"; \
                         add key_protection = \"passphrase\""
                            .into(),
                    );
                }
                Ok(CaKeyConfig::File {
                    protection,
                    passphrase_file: r.passphrase_file,
                })
            }
            "pkcs11" => {
                if r.key_protection.is_some() || r.passphrase_file.is_some() {
                    return bad(
                        "key_protection and passphrase_file apply only to backend = \"file\"; \
                         a PKCS#11 token protects its keys itself (give its PIN with pin_file)"
                            .into(),
                    );
                }
                let Some(module) = r.pkcs11_module else {
                    return bad("backend = \"pkcs11\" needs pkcs11_module, e.g. \
                         \"/usr/lib/softhsm/libsofthsm2.so\""
                        .into());
                };
                if !module.is_absolute() {
                    return bad(format!(
                        "pkcs11_module = {:?} must be an absolute path (a bare name would be \
                         looked up in the library search path)",
                        module.display().to_string()
                    ));
                }
                let Some(token_label) = r.token_label else {
                    return bad("backend = \"pkcs11\" needs token_label".into());
                };
                if token_label.is_empty() || token_label.len() > MAX_TOKEN_LABEL {
                    return bad(format!(
                        "token_label = {token_label:?} must be 1-{MAX_TOKEN_LABEL} bytes"
                    ));
                }
                let user_key_label = r.user_key_label.unwrap_or_else(|| "mayfly-user-ca".into());
                let host_key_label = r.host_key_label.unwrap_or_else(|| "mayfly-host-ca".into());
                for (key, v) in [
                    ("user_key_label", &user_key_label),
                    ("host_key_label", &host_key_label),
                ] {
                    if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
                        return bad(format!("{key} = {v:?} must be 1-256 printable characters"));
                    }
                }
                if user_key_label == host_key_label {
                    return bad(format!(
                        "user_key_label and host_key_label are both {user_key_label:?}; \
                         the user and host CAs need different keys"
                    ));
                }
                let key_type = match r.key_type.as_deref() {
                    None => CaKeyType::Ed25519,
                    Some(t) => CaKeyType::parse(t).ok_or_else(|| {
                        ConfigError::Invalid(format!(
                            "[ca] key_type = {t:?}; use \"ed25519\", \"ecdsa-p256\", \
                             \"ecdsa-p384\", \"rsa-3072\" or \"rsa-4096\""
                        ))
                    })?,
                };
                Ok(CaKeyConfig::Pkcs11(Pkcs11Config {
                    module,
                    token_label,
                    user_key_label,
                    host_key_label,
                    pin_file: r.pin_file,
                    generate_if_missing: r.generate_if_missing.unwrap_or(false),
                    key_type,
                }))
            }
            other => bad(format!("backend = {other:?}; use \"file\" or \"pkcs11\"")),
        }
    }
}

/// Where syslog messages go (`udp://host:port` or `tcp://host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    /// RFC 5426 datagrams.
    Udp(String),
    /// RFC 6587 octet-counted stream.
    Tcp(String),
}

impl SyslogTarget {
    /// Parses `udp://host:port` / `tcp://host:port` (port 514 if omitted).
    pub fn parse(s: &str) -> Result<SyslogTarget, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("syslog = {s:?}: write udp://host:port or tcp://host:port"))?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(format!(
                "syslog = {s:?}: expected host:port after {scheme}://"
            ));
        }
        let has_port = match rest.rsplit_once(':') {
            Some((host, port)) => {
                // `[::1]:514` or `host:514`; a bare IPv6 literal has more colons.
                (host.ends_with(']') || !host.contains(':')) && port.parse::<u16>().is_ok()
            }
            None => false,
        };
        let addr = if has_port {
            rest.to_string()
        } else {
            format!("{rest}:514")
        };
        match scheme {
            "udp" => Ok(SyslogTarget::Udp(addr)),
            "tcp" => Ok(SyslogTarget::Tcp(addr)),
            other => Err(format!(
                "syslog = {s:?}: scheme {other:?} is not supported; use udp:// or tcp://"
            )),
        }
    }

    /// `udp://host:port` or `tcp://host:port`.
    pub fn describe(&self) -> String {
        match self {
            SyslogTarget::Udp(a) => format!("udp://{a}"),
            SyslogTarget::Tcp(a) => format!("tcp://{a}"),
        }
    }
}

/// File names inside `data_dir`.
pub mod files {
    /// User CA private key.
    pub const USER_CA_KEY: &str = "user_ca";
    /// User CA public key (for `TrustedUserCAKeys`).
    pub const USER_CA_PUB: &str = "user_ca.pub";
    /// Host CA private key.
    pub const HOST_CA_KEY: &str = "host_ca";
    /// Host CA public key (for `@cert-authority`).
    pub const HOST_CA_PUB: &str = "host_ca.pub";
    /// SQLite database.
    pub const DATABASE: &str = "mayfly.db";
    /// This replica's id (`mayfly status`), generated at first start.
    pub const REPLICA_ID: &str = "replica_id";
    /// Held (an advisory lock) by the `mayfly serve` using this directory;
    /// holds its pid.
    pub const SERVE_LOCK: &str = "serve.lock";

    /// Key file base name of CA group `g`.
    pub fn group_base(g: &str) -> String {
        format!("{}-{g}", USER_CA_KEY)
    }
}

#[cfg(test)]
mod ca_section_tests {
    use super::*;

    #[test]
    fn no_ca_section_means_unencrypted_files() {
        assert_eq!(
            Config::parse("").expect("test step").ca,
            CaKeyConfig::default()
        );
    }

    #[test]
    fn passphrase_protection_with_a_passphrase_file() {
        let c = Config::parse(
            "[ca]\nkey_protection = \"passphrase\"\npassphrase_file = \"/run/pass\"\n",
        )
        .expect("test step");
        assert_eq!(
            c.ca,
            CaKeyConfig::File {
                protection: KeyProtection::Passphrase,
                passphrase_file: Some(PathBuf::from("/run/pass")),
            }
        );
    }

    #[test]
    fn passphrase_file_without_passphrase_protection_is_refused() {
        let err = Config::parse("[ca]\npassphrase_file = \"/run/pass\"\n").expect_err("must fail");
        assert!(err.to_string().contains("key_protection"), "{err}");
    }

    #[test]
    fn pkcs11_backend_needs_module_and_token_and_has_label_defaults() {
        let c = Config::parse(
            "[ca]\nbackend = \"pkcs11\"\npkcs11_module = \"/usr/lib/softhsm/libsofthsm2.so\"\n\
             token_label = \"mayfly\"\n",
        )
        .expect("test step");
        let CaKeyConfig::Pkcs11(p) = c.ca else {
            panic!("not pkcs11: {:?}", c.ca)
        };
        assert_eq!(p.key_label("user_ca"), "mayfly-user-ca");
        assert_eq!(p.key_label("host_ca"), "mayfly-host-ca");
        assert_eq!(p.key_type, CaKeyType::Ed25519);
        assert!(!p.generate_if_missing);
        let err = Config::parse("[ca]\nbackend = \"pkcs11\"\ntoken_label = \"t\"\n")
            .expect_err("must fail");
        assert!(err.to_string().contains("pkcs11_module"), "{err}");
        let err = Config::parse(
            "[ca]\nbackend = \"pkcs11\"\npkcs11_module = \"libsofthsm2.so\"\ntoken_label = \"t\"\n",
        )
        .expect_err("must fail");
        assert!(err.to_string().contains("absolute"), "{err}");
    }

    #[test]
    fn options_of_the_other_backend_are_refused() {
        let err = Config::parse("[ca]\npin_file = \"/p\"\n").expect_err("must fail");
        assert!(err.to_string().contains("pin_file"), "{err}");
        let err = Config::parse(
            "[ca]\nbackend = \"pkcs11\"\npkcs11_module = \"/m.so\"\ntoken_label = \"t\"\n\
             key_protection = \"passphrase\"\n",
        )
        .expect_err("must fail");
        assert!(err.to_string().contains("key_protection"), "{err}");
        assert!(Config::parse("[ca]\nbackend = \"vault\"\n").is_err());
        assert!(Config::parse("[ca]\nkey_protection = \"maybe\"\n").is_err());
        assert!(Config::parse("[ca]\nkeyprotection = \"none\"\n").is_err());
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
        assert_eq!(c.policy_poll_interval, DEFAULT_POLICY_POLL_INTERVAL);
    }

    #[test]
    fn store_section_defaults_to_sqlite_and_names_accepted_backends() {
        assert_eq!(
            Config::parse("").expect("no [store]").store.backend,
            StoreBackend::SQLite
        );
        let c = Config::parse("[store]\nbackend = \"sqlite\"\n").expect("sqlite");
        assert_eq!(c.store.backend, StoreBackend::SQLite);
        assert_eq!(
            Config::parse("[store]\n").expect("empty").store.backend,
            StoreBackend::SQLite
        );
        let err = Config::parse("[store]\nbackend = \"mysql\"\n").expect_err("unknown");
        let msg = err.to_string();
        assert!(
            msg.contains("store.backend") && msg.contains("\"mysql\""),
            "{msg}"
        );
        assert!(msg.contains("accepted: \"sqlite\", \"postgres\""), "{msg}");
        let err = Config::parse("[store]\nbakend = \"sqlite\"\n").expect_err("typo");
        assert!(err.to_string().contains("bakend"), "{err}");
    }

    #[test]
    fn postgres_store_takes_url_password_file_and_pool_size() {
        let c = Config::parse(
            "[store]\nbackend = \"postgres\"\n\
             url = \"postgres://mayfly@db1:5432,db2:5432/mayfly?target_session_attrs=read-write\"\n\
             password_file = \"/etc/mayfly/pg-password\"\npool_size = 4\n",
        )
        .expect("valid");
        assert_eq!(c.store.backend, StoreBackend::Postgres);
        let pg = c.store.postgres.expect("postgres settings");
        assert_eq!(
            pg.url,
            "postgres://mayfly@db1:5432,db2:5432/mayfly?target_session_attrs=read-write"
        );
        assert_eq!(
            pg.password_file,
            Some(PathBuf::from("/etc/mayfly/pg-password"))
        );
        assert_eq!(pg.pool_size, 4);
        let c = Config::parse("[store]\nbackend = \"postgres\"\nurl = \"postgresql://m@h/d\"\n")
            .expect("defaults");
        let pg = c.store.postgres.expect("postgres settings");
        assert_eq!(
            (pg.pool_size, pg.password_file),
            (DEFAULT_PG_POOL_SIZE, None)
        );
    }

    #[test]
    fn postgres_store_errors_say_what_to_fix_and_never_echo_a_password() {
        let err = Config::parse("[store]\nbackend = \"postgres\"\n").expect_err("no url");
        assert!(err.to_string().contains("needs url"), "{err}");
        let err = Config::parse("[store]\nbackend = \"postgres\"\nurl = \"mysql://h/d\"\n")
            .expect_err("scheme");
        assert!(err.to_string().contains("postgres://"), "{err}");
        for url in [
            "postgres://mayfly:hunter2@db/mayfly",
            "postgres://mayfly:hunter2@db1,db2:5433/mayfly",
            "postgres://mayfly@db/mayfly?sslmode=require&password=hunter2",
        ] {
            let err = Config::parse(&format!(
                "[store]\nbackend = \"postgres\"\nurl = \"{url}\"\n"
            ))
            .expect_err("password in url");
            let msg = err.to_string();
            assert!(
                msg.contains("contains a password") && msg.contains("password_file"),
                "{msg}"
            );
            assert!(!msg.contains("hunter2"), "password echoed: {msg}");
            assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
        }
        // An @ in the path or query is not a password.
        Config::parse(
            "[store]\nbackend = \"postgres\"\nurl = \"postgres://m@h/d?application_name=a:b\"\n",
        )
        .expect("no password");
        for bad in ["0", "100000"] {
            let err = Config::parse(&format!(
                "[store]\nbackend = \"postgres\"\nurl = \"postgres://m@h/d\"\npool_size = {bad}\n"
            ))
            .expect_err("pool size");
            assert!(err.to_string().contains("store.pool_size"), "{err}");
        }
        let err = Config::parse("[store]\nurl = \"postgres://m@h/d\"\npool_size = 3\n")
            .expect_err("postgres keys with sqlite");
        let msg = err.to_string();
        assert!(
            msg.contains("store.url, store.pool_size apply only to backend = \"postgres\""),
            "{msg}"
        );
    }

    #[test]
    fn heartbeat_interval_defaults_to_10s_and_is_whole_seconds_up_to_an_hour() {
        assert_eq!(
            Config::parse("").expect("valid").heartbeat_interval,
            DEFAULT_HEARTBEAT_INTERVAL
        );
        let c = Config::parse("heartbeat_interval = \"30s\"\n").expect("valid");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        for bad in ["\"0s\"", "\"2h\"", "\"1500ms\"", "\"soon\""] {
            let err = Config::parse(&format!("heartbeat_interval = {bad}\n"))
                .expect_err("must fail")
                .to_string();
            assert!(err.contains("heartbeat_interval"), "{bad}: {err}");
        }
    }

    #[test]
    fn policy_poll_interval_is_bounded() {
        let c = Config::parse("policy_poll_interval = \"1h\"\n").expect("valid");
        assert_eq!(c.policy_poll_interval, Duration::from_secs(3600));
        for bad in ["\"100ms\"", "\"2d\"", "\"soon\""] {
            let err =
                Config::parse(&format!("policy_poll_interval = {bad}\n")).expect_err("must fail");
            assert!(
                err.to_string().contains("policy_poll_interval"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn plain_http_issuer_is_refused_unless_loopback() {
        let t = |u: &str| format!("[[issuer]]\nname=\"x\"\nurl=\"{u}\"\naudience=\"mayfly\"\n");
        assert!(Config::parse(&t("http://example.com")).is_err());
        assert!(Config::parse(&t("http://127.0.0.1:9000")).is_ok());
        assert!(Config::parse(&t("https://example.com")).is_ok());
    }

    #[test]
    fn tls_section_needs_cert_and_key_and_bounds_the_reload_interval() {
        let c = Config::parse("[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n")
            .expect("valid config");
        let t = c.tls.expect("tls");
        assert_eq!(t.cert_file, PathBuf::from("c.pem"));
        assert_eq!(t.client_ca_file, None);
        assert_eq!(t.reload_interval, DEFAULT_TLS_RELOAD_INTERVAL);
        assert!(!c.insecure_http);
        let err = Config::parse("[tls]\ncert_file = \"c.pem\"\n").expect_err("must fail");
        assert!(err.to_string().contains("key_file"), "{err}");
        assert!(Config::parse(
            "[tls]\ncert_file = \"c\"\nkey_file = \"k\"\nreload_interval = \"10ms\"\n"
        )
        .is_err());
        assert!(
            Config::parse("insecure_http = true\n")
                .expect("valid config")
                .insecure_http
        );
    }

    #[test]
    fn two_issuers_with_one_url_are_refused_naming_both() {
        let two = |a: &str, b: &str| {
            format!(
                "[[issuer]]\nname=\"gh\"\nurl=\"{a}\"\naudience=\"m\"\n\
                 [[issuer]]\nname=\"gh2\"\nurl=\"{b}\"\naudience=\"other\"\n"
            )
        };
        for (a, b) in [
            ("https://t.example", "https://t.example"),
            ("https://t.example", "https://t.example/"),
            ("https://t.example/k8s/", "https://t.example/k8s"),
        ] {
            let err = Config::parse(&two(a, b)).expect_err("must fail");
            let s = err.to_string();
            assert!(
                s.contains("\"gh\"") && s.contains("\"gh2\"") && s.contains(b),
                "{a} / {b}: {s}"
            );
        }
        assert!(Config::parse(&two("https://t.example/a", "https://t.example/b")).is_ok());
    }

    #[test]
    fn leeway_is_bounded() {
        let t = "[[issuer]]\nname=\"x\"\nurl=\"https://a\"\naudience=\"m\"\nleeway=\"1h\"\n";
        assert!(Config::parse(t).is_err());
    }

    #[test]
    fn max_stale_keys_defaults_to_an_hour_and_is_bounded() {
        let t = |extra: &str| {
            format!("[[issuer]]\nname=\"x\"\nurl=\"https://a\"\naudience=\"m\"\n{extra}")
        };
        let c = Config::parse(&t("")).unwrap();
        assert_eq!(c.issuers[0].max_stale_keys, Duration::from_secs(3600));
        let c = Config::parse(&t("max_stale_keys = \"15m\"\n")).unwrap();
        assert_eq!(c.issuers[0].max_stale_keys, Duration::from_secs(900));
        for bad in ["\"0s\"", "\"30d\"", "\"soon\""] {
            let err = Config::parse(&t(&format!("max_stale_keys = {bad}\n"))).unwrap_err();
            assert!(err.to_string().contains("max_stale_keys"), "{err}");
        }
    }

    #[test]
    fn audit_claims_default_per_known_issuer_and_are_bounded() {
        let t = |url: &str, extra: &str| {
            format!("[[issuer]]\nname=\"x\"\nurl=\"{url}\"\naudience=\"m\"\n{extra}")
        };
        let c = Config::parse(&t("https://token.actions.githubusercontent.com", "")).unwrap();
        assert_eq!(c.issuers[0].kind, IssuerKind::GithubActions);
        assert!(c.issuers[0].audit_claims.contains(&"run_id".to_string()));
        assert!(c.issuers[0]
            .audit_claims
            .contains(&"job_workflow_ref".to_string()));
        let c = Config::parse(&t("https://gitlab.example.com", "")).unwrap();
        assert_eq!(
            c.issuers[0].audit_claims,
            ["pipeline_id", "job_id", "sha", "user_login"]
        );
        let c = Config::parse(&t("https://kubernetes.default.svc", "")).unwrap();
        assert_eq!(
            c.issuers[0].audit_claims,
            ["kubernetes.io/pod/name", "kubernetes.io/pod/uid"]
        );
        let c = Config::parse(&t("https://idp.example.com", "")).unwrap();
        assert!(c.issuers[0].audit_claims.is_empty());
        let c = Config::parse(&t("https://idp.example.com", "kind = \"gitlab\"\n")).unwrap();
        assert_eq!(c.issuers[0].audit_claims.len(), 4);
        let c = Config::parse(&t(
            "https://token.actions.githubusercontent.com",
            "audit_claims = [\"sha\"]\n",
        ))
        .unwrap();
        assert_eq!(c.issuers[0].audit_claims, ["sha"]);
        let many: Vec<String> = (0..=MAX_AUDIT_CLAIMS)
            .map(|i| format!("\"c{i}\""))
            .collect();
        let err = Config::parse(&t(
            "https://idp.example.com",
            &format!("audit_claims = [{}]\n", many.join(",")),
        ))
        .unwrap_err();
        assert!(err.to_string().contains("at most 16"), "{err}");
        for bad in ["\"\"", "\"a b\"", "\"/x\"", "\"a//b\"", "\"x\\n\""] {
            let err = Config::parse(&t(
                "https://idp.example.com",
                &format!("audit_claims = [{bad}]\n"),
            ))
            .unwrap_err();
            assert!(err.to_string().contains("audit_claims"), "{bad}: {err}");
        }
        let err = Config::parse(&t(
            "https://idp.example.com",
            "audit_claims = [\"a\", \"a\"]\n",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        let err = Config::parse(&t("https://idp.example.com", "kind = \"jenkins\"\n")).unwrap_err();
        assert!(err.to_string().contains("kind"), "{err}");
    }
}

#[cfg(test)]
mod connection_key_tests {
    use super::*;

    #[test]
    fn connection_bounds_have_safe_defaults() {
        let c = Config::parse("").expect("test step");
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.max_connections, 1024);
        assert_eq!(c.worker_threads, None, "one worker per CPU unless set");
    }

    #[test]
    fn worker_threads_is_read_and_bounded() {
        let c = Config::parse("worker_threads = 1\n").expect("test step");
        assert_eq!(c.worker_threads, Some(1));
        for text in ["worker_threads = 0", "worker_threads = 5000"] {
            let err = Config::parse(text).expect_err(text).to_string();
            assert!(err.contains("between 1 and 1024"), "{text}: {err}");
        }
        assert!(Config::parse("worker_threads = -2").is_err());
    }

    #[test]
    fn connection_bounds_are_read_from_the_file() {
        let c = Config::parse("header_read_timeout = \"2500ms\"\nmax_connections = 64\n")
            .expect("test step");
        assert_eq!(c.header_read_timeout, Duration::from_millis(2500));
        assert_eq!(c.max_connections, 64);
    }

    #[test]
    fn connection_bounds_out_of_range_are_refused_with_the_range() {
        for (text, want) in [
            ("header_read_timeout = \"0s\"", "between 100ms and 5m"),
            ("header_read_timeout = \"1h\"", "between 100ms and 5m"),
            ("header_read_timeout = \"soon\"", "not a duration"),
            ("max_connections = 0", "between 1 and"),
            ("max_connections = 100000000", "between 1 and"),
        ] {
            let err = Config::parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        assert!(Config::parse("max_connections = -1").is_err());
    }
}

#[cfg(test)]
mod console_tests {
    use super::*;

    const ISSUER: &str =
        "[[issuer]]\nname = \"corp\"\nurl = \"https://login.example.com\"\naudience = \"mayfly\"\n";

    fn parse_console(console: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{ISSUER}\n[console]\n{console}"))
    }

    fn err(console: &str) -> String {
        match parse_console(console) {
            Ok(_) => panic!("accepted: {console}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn no_console_section_means_no_console() {
        assert_eq!(Config::parse(ISSUER).expect("parse").console, None);
    }

    #[test]
    fn a_console_section_parses_with_its_redirect_uri_and_viewers() {
        let c = parse_console(
            "issuer = \"corp\"\nclient_id = \"mayfly-console\"\nclient_secret_file = \"/etc/mayfly/secret\"\npublic_url = \"https://ca.example.com/\"\nviewers = [\"group:sre\", \"sub:alice@example.com\"]\n",
        )
        .expect("parse")
        .console
        .expect("console");
        assert_eq!(c.redirect_uri(), "https://ca.example.com/console/callback");
        assert_eq!(
            c.viewers,
            vec![
                ("groups".to_string(), "sre".to_string()),
                ("sub".to_string(), "alice@example.com".to_string())
            ]
        );
        assert_eq!(
            c.client_secret_file,
            Some(PathBuf::from("/etc/mayfly/secret"))
        );
    }

    #[test]
    fn an_unknown_issuer_is_refused_naming_the_configured_ones() {
        let e = err(
            "issuer = \"github\"\nclient_id = \"c\"\npublic_url = \"https://ca.example.com\"\n",
        );
        assert!(
            e.contains("\"github\" is not an [[issuer]]") && e.contains("corp"),
            "{e}"
        );
    }

    #[test]
    fn public_url_must_be_https_unless_loopback() {
        let e =
            err("issuer = \"corp\"\nclient_id = \"c\"\npublic_url = \"http://ca.example.com\"\n");
        assert!(e.contains("must be https"), "{e}");
        assert!(parse_console(
            "issuer = \"corp\"\nclient_id = \"c\"\npublic_url = \"http://127.0.0.1:8400\"\n"
        )
        .is_ok());
        let e = err(
            "issuer = \"corp\"\nclient_id = \"c\"\npublic_url = \"https://ca.example.com/?x=1\"\n",
        );
        assert!(e.contains("without user, query or fragment"), "{e}");
        let e = err("issuer = \"corp\"\nclient_id = \"c\"\npublic_url = \"ca.example.com\"\n");
        assert!(e.contains("is not a URL"), "{e}");
    }

    #[test]
    fn bad_viewers_client_id_and_unknown_keys_are_refused() {
        let e = err("issuer = \"corp\"\nclient_id = \"c\"\npublic_url = \"https://ca.example.com\"\nviewers = [\"sre\"]\n");
        assert!(e.contains("must be claim:pattern"), "{e}");
        let e =
            err("issuer = \"corp\"\nclient_id = \" \"\npublic_url = \"https://ca.example.com\"\n");
        assert!(e.contains("client_id"), "{e}");
        let e = err("issuer = \"corp\"\nclient_id = \"c\"\npublic_url = \"https://ca.example.com\"\nclient_secret = \"x\"\n");
        assert!(e.contains("client_secret"), "{e}");
    }
}
