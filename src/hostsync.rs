//! The host side: keep sshd's trust files current, get a host certificate,
//! and print `@cert-authority` lines for clients.
//!
//! `mayfly host sync` fetches the user-CA keys (`GET /v1/ca/user.pub`) and
//! the KRL (`GET /v1/krl`), checks both, and only then replaces
//! `user_ca.pub` (sshd `TrustedUserCAKeys`) and `revoked.krl` (sshd
//! `RevokedKeys`) in its directory. sshd refuses *every* public-key login if
//! the `RevokedKeys` file is missing or unreadable, and trusts whatever the
//! `TrustedUserCAKeys` file says, so the agent never leaves either file
//! half-written, empty or corrupt: any failure (CA down, bad answer, an older
//! KRL than the one installed, a full or read-only disk) keeps the last good
//! files byte for byte and exits 1 with one line saying what failed and what
//! is kept.
//!
//! Two runs at once (a manual run beside the timer) could race: each
//! re-reads the installed KRL version just before renaming and refuses to
//! install an older one, which narrows but does not close the window; the
//! systemd timer never starts the oneshot service twice at once.
//!
//! `mayfly host cert` asks the CA (`POST /v1/certs/host`, with the host's
//! workload token) to certify the host's own public key and writes the
//! certificate next to it for sshd's `HostCertificate`. `mayfly known-hosts`
//! prints the host-CA keys as `@cert-authority` lines for clients.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::ca::krl;
use crate::client::{self, token::TokenSource, CertAnswer};
use crate::config::is_loopback_http;

/// The `TrustedUserCAKeys` file in the sync directory.
pub const USER_CA_FILE: &str = "user_ca.pub";
/// The `RevokedKeys` file in the sync directory.
pub const KRL_FILE: &str = "revoked.krl";
/// The ETag of the installed KRL, sent back as `If-None-Match`.
pub const ETAG_FILE: &str = ".revoked.krl.etag";
/// Largest user-CA file accepted: a handful of key lines is a few hundred
/// bytes; anything near this is not a CA key file.
pub const MAX_CA_FILE_BYTES: usize = 64 * 1024;
/// Largest KRL accepted. Serials revoke in ranges and bitmaps, so even many
/// thousands of revoked certificates stay far below this.
pub const MAX_KRL_BYTES: usize = 16 * 1024 * 1024;
/// Longest ETag kept (they are short hashes or versions).
const MAX_ETAG_BYTES: usize = 256;
/// Prefix of the temporary files written next to the real ones.
const TEMP_PREFIX: &str = ".mayfly-sync-";
/// Mode of every file the agent writes: sshd reads them, they hold no secret.
const FILE_MODE: u32 = 0o644;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Checking what the CA sent (pure)
// ---------------------------------------------------------------------------

/// Why a CA key file (`user.pub`, `host.pub`) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaKeysError {
    /// Larger than [`MAX_CA_FILE_BYTES`].
    #[error("{len} bytes is more than the {max}-byte limit")]
    TooLarge {
        /// Size received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not UTF-8 text.
    #[error("not UTF-8 text")]
    NotText,
    /// No key line at all: sshd would trust no CA.
    #[error("holds no public key")]
    NoKey,
    /// A line is a certificate, not a plain public key.
    #[error("line {line} is a certificate ({algorithm}), not a CA public key")]
    Certificate {
        /// 1-based line number.
        line: usize,
        /// Its key type.
        algorithm: String,
    },
    /// A line is not an OpenSSH public key.
    #[error("line {line} is not an OpenSSH public key: {reason}")]
    NotAKey {
        /// 1-based line number.
        line: usize,
        /// The parser's reason.
        reason: String,
    },
    /// A line has a key type OpenSSH does not know.
    #[error("line {line} has an unsupported key type {algorithm}")]
    UnknownAlgorithm {
        /// 1-based line number.
        line: usize,
        /// The type given.
        algorithm: String,
    },
}

/// A checked CA key file: at most 64 KiB of text in which every line that
/// is not blank or a `#` comment is an OpenSSH public key (not a
/// certificate), and at least one such line exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaKeys {
    text: String,
    keys: Vec<String>,
}

impl CaKeys {
    /// Checks the bytes of a CA key file.
    pub fn parse(bytes: &[u8]) -> Result<CaKeys, CaKeysError> {
        if bytes.len() > MAX_CA_FILE_BYTES {
            return Err(CaKeysError::TooLarge {
                len: bytes.len(),
                max: MAX_CA_FILE_BYTES,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| CaKeysError::NotText)?;
        let mut keys = Vec::new();
        for (i, raw) in text.split('\n').enumerate() {
            // Lines as sshd reads them (sshkey_in_file): leading spaces and
            // tabs skipped, then empty and '#' lines ignored. Any other line
            // must be a key, or sshd refuses every certificate; so no other
            // white space is trimmed at the start.
            let line = raw.trim_start_matches([' ', '\t']);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let line = line.trim_end_matches([' ', '\t', '\r']);
            if line.is_empty() {
                return Err(CaKeysError::NotAKey {
                    line: n,
                    reason: "blank but for a carriage return, which sshd reads as a bad key".into(),
                });
            }
            let algorithm = line.split_whitespace().next().unwrap_or_default();
            if algorithm.ends_with("-cert-v01@openssh.com") {
                return Err(CaKeysError::Certificate {
                    line: n,
                    algorithm: printable(algorithm),
                });
            }
            let key = ssh_key::PublicKey::from_openssh(line).map_err(|e| CaKeysError::NotAKey {
                line: n,
                reason: e.to_string(),
            })?;
            if matches!(key.algorithm(), ssh_key::Algorithm::Other(_)) {
                return Err(CaKeysError::UnknownAlgorithm {
                    line: n,
                    algorithm: printable(algorithm),
                });
            }
            keys.push(line.to_string());
        }
        if keys.is_empty() {
            return Err(CaKeysError::NoKey);
        }
        let mut text = text.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Ok(CaKeys { text, keys })
    }

    /// The file contents to install (the text as received, newline-terminated).
    pub fn as_bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }

    /// The key lines, without blank and comment lines.
    pub fn key_lines(&self) -> &[String] {
        &self.keys
    }

    /// The keys (type and key data, in wire form), sorted, without
    /// duplicates: what sshd trusts, whatever the lines' comments and order.
    pub fn key_set(&self) -> Vec<Vec<u8>> {
        let mut set: Vec<Vec<u8>> = self
            .keys
            .iter()
            .filter_map(|l| crate::ca::signer::key_blob(l))
            .collect();
        set.sort();
        set.dedup();
        set
    }

    /// Whether the installed file `installed` trusts exactly these keys.
    /// Comments and order do not count: a file written with another
    /// comment (an older version's `mayfly-ca`) is not replaced, so an
    /// update of mayfly changes nothing on the host while the keys stay.
    pub fn same_keys_as(&self, installed: &[u8]) -> bool {
        CaKeys::parse(installed).is_ok_and(|i| i.key_set() == self.key_set())
    }
}

/// At most 64 printable characters of untrusted text, for messages.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// What the header of a KRL says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KrlInfo {
    /// `krl_version`: grows with every change on the CA.
    pub version: u64,
    /// `generated_date`, unix seconds.
    pub generated_date: u64,
}

/// Checks that `bytes` is a whole OpenSSH KRL and returns its header, or the
/// parser's reason it is not.
///
/// The whole file is parsed, not just the header: sshd refuses every
/// public-key login when it cannot parse its `RevokedKeys` file, so a KRL cut
/// short in its sections is as dangerous as a missing one.
pub fn check_krl(bytes: &[u8]) -> Result<KrlInfo, String> {
    parse_krl(bytes).map(|k| KrlInfo::of(&k))
}

/// Parses a whole KRL of at most [`MAX_KRL_BYTES`] ([`check_krl`]).
fn parse_krl(bytes: &[u8]) -> Result<krl::Krl, String> {
    if bytes.len() > MAX_KRL_BYTES {
        return Err(format!(
            "{} bytes is more than the {MAX_KRL_BYTES}-byte limit",
            bytes.len()
        ));
    }
    krl::parse(bytes).map_err(|e| e.to_string())
}

impl KrlInfo {
    /// The header of a parsed KRL.
    fn of(k: &krl::Krl) -> KrlInfo {
        KrlInfo {
            version: k.krl_version,
            generated_date: k.generated_date,
        }
    }
}

/// What to do with the CA's KRL given the installed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KrlDecision {
    /// Newer (or nothing valid installed): install it.
    Install,
    /// Same `krl_version` as installed: keep the installed file.
    Unchanged,
    /// Older than installed: refuse, since installing it would un-revoke.
    Older,
}

/// Compares the CA's `krl_version` with the installed one (`None` if no
/// valid KRL is installed).
pub fn decide_krl(installed: Option<u64>, server: u64) -> KrlDecision {
    match installed {
        None => KrlDecision::Install,
        Some(v) if server > v => KrlDecision::Install,
        Some(v) if server == v => KrlDecision::Unchanged,
        Some(_) => KrlDecision::Older,
    }
}

/// Checks a `--domain` host pattern for a known_hosts line: non-empty, no
/// whitespace, control characters or commas (patterns are comma-joined).
pub fn check_host_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("is empty".into());
    }
    if p.starts_with('@') || p.starts_with('#') {
        return Err("must not start with @ or #".into());
    }
    if p.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    {
        return Err("must not contain spaces, commas or control characters (repeat --domain for several patterns)".into());
    }
    Ok(())
}

/// The `@cert-authority` lines for `patterns` and the host-CA keys.
pub fn known_hosts_lines(patterns: &[String], keys: &CaKeys) -> Vec<String> {
    let hosts = patterns.join(",");
    keys.key_lines()
        .iter()
        .map(|k| format!("@cert-authority {hosts} {k}"))
        .collect()
}

/// Where `mayfly host cert` writes by default: `<key without .pub>-cert.pub`
/// next to the key, the name sshd's `HostCertificate` examples use.
pub fn default_cert_path(key: &Path) -> PathBuf {
    let s = key.as_os_str().to_string_lossy();
    let stem = s.strip_suffix(".pub").unwrap_or(&s);
    PathBuf::from(format!("{stem}-cert.pub"))
}

// ---------------------------------------------------------------------------
// The sync agent
// ---------------------------------------------------------------------------

/// Why a sync did not complete. Nothing was changed on disk unless said.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// `--server` is unusable.
    #[error("--server {url}: {reason}")]
    ServerUrl {
        /// As given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// `--ca-file` is unusable.
    #[error("--ca-file {}: {reason}", path.display())]
    TlsRoots {
        /// As given.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The CA could not be reached or the transfer broke off.
    #[error("cannot fetch {url}: {reason}")]
    Unreachable {
        /// What was fetched.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The CA answered with an unexpected HTTP status.
    #[error("GET {url} answered HTTP {status}")]
    Status {
        /// What was fetched.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The answer is larger than makes sense.
    #[error("GET {url}: answer larger than {limit} bytes")]
    TooLarge {
        /// What was fetched.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// The user-CA file is not a list of public keys.
    #[error("the user CA keys from {url} are refused: {source}")]
    BadCaKeys {
        /// Where they came from.
        url: String,
        /// What is wrong.
        source: CaKeysError,
    },
    /// The KRL does not parse.
    #[error("the KRL from {url} is refused: {reason}")]
    BadKrl {
        /// Where it came from.
        url: String,
        /// The parser's reason.
        reason: String,
    },
    /// The CA's KRL has the installed version but revokes what the
    /// installed one does not.
    #[error(
        "the KRL from {url} has the installed {}'s version ({version}) but revokes certificates \
         that one does not: it comes from another or a rebuilt CA; refusing to guess which \
         revocations hold (if the CA was rebuilt on purpose, delete that file and sync again)",
        path.display()
    )]
    OtherKrl {
        /// Where it came from.
        url: String,
        /// Its `krl_version`, the installed one's too.
        version: u64,
        /// The installed file.
        path: PathBuf,
    },
    /// The CA's KRL is older than the installed one.
    #[error(
        "the KRL from {url} (version {server}) is older than the installed {} (version {installed}); \
         refusing to un-revoke (if the CA was rebuilt on purpose, delete that file and sync again)",
        path.display()
    )]
    OlderKrl {
        /// Where it came from.
        url: String,
        /// Its `krl_version`.
        server: u64,
        /// The installed file.
        path: PathBuf,
        /// The installed `krl_version`.
        installed: u64,
    },
    /// Reading or writing a local file failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What `mayfly host sync` is told.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// CA base URL.
    pub server: String,
    /// Directory holding `user_ca.pub`, `revoked.krl` and the ETag.
    pub dir: PathBuf,
    /// PEM bundle of the only roots trusted for the CA's TLS certificate
    /// (default: the built-in web roots).
    pub ca_file: Option<PathBuf>,
    /// Allow plain http to a non-loopback CA.
    pub insecure_http: bool,
    /// Trust only this CA group's user keys (`ca_group` in role files);
    /// `None` trusts every user CA key the server publishes.
    pub ca_group: Option<String>,
}

/// A successful sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    /// `krl_version` installed now.
    pub krl_version: u64,
    /// Whether `revoked.krl` was replaced.
    pub krl_updated: bool,
    /// Whether `user_ca.pub` was replaced.
    pub ca_updated: bool,
    /// Number of user-CA keys installed now.
    pub ca_keys: usize,
}

impl SyncOutcome {
    /// The `-v` line.
    pub fn summary(&self) -> String {
        let what = match (self.krl_updated, self.ca_updated) {
            (false, false) => "unchanged",
            (true, false) => "updated revoked.krl",
            (false, true) => "updated user_ca.pub",
            (true, true) => "updated user_ca.pub and revoked.krl",
        };
        format!(
            "{what} (KRL version {}, {} user CA key{})",
            self.krl_version,
            self.ca_keys,
            if self.ca_keys == 1 { "" } else { "s" }
        )
    }
}

/// A fetched resource.
enum Fetched {
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
    },
    NotModified,
    NotFound,
}

/// The CA's base URL for unauthenticated GETs: https, or http to loopback
/// unless `insecure_http`. (No token is sent, but whoever can change these
/// answers decides who may log in to the host.)
fn base_url(server: &str, insecure_http: bool) -> Result<url::Url, SyncError> {
    let bad = |reason: String| SyncError::ServerUrl {
        url: server.into(),
        reason,
    };
    let mut u = url::Url::parse(server).map_err(|e| bad(e.to_string()))?;
    match u.scheme() {
        "https" => {}
        "http" if is_loopback_http(&u) => {}
        "http" if insecure_http => {
            tracing::warn!(server, "--insecure-http: CA keys and KRL over plain http can be forged by anyone on the path");
        }
        "http" => {
            return Err(bad(
                "plain http lets anyone on the path choose which CA this host trusts; use https (http only for loopback, or --insecure-http)".into(),
            ))
        }
        other => return Err(bad(format!("scheme {other} is not http(s)"))),
    }
    if !u.path().ends_with('/') {
        let p = format!("{}/", u.path());
        u.set_path(&p);
    }
    Ok(u)
}

/// The HTTP client for the CA at `base` ([`client::http::build`]: no
/// redirects, rustls with the built-in web roots, or with only the
/// certificates in `ca_file`).
fn http_client(base: &url::Url, ca_file: Option<&Path>) -> Result<reqwest::Client, SyncError> {
    use client::http::{self, HttpClientError};
    let spec = http::ClientSpec {
        base,
        ca_file,
        connect_timeout: CONNECT_TIMEOUT,
        timeout: REQUEST_TIMEOUT,
        user_agent: Some(concat!("mayfly-host-sync/", env!("CARGO_PKG_VERSION"))),
        identity: None,
    };
    http::build(&spec).map_err(|e| {
        let reason = match e {
            HttpClientError::Build(e) => {
                return SyncError::Unreachable {
                    url: "(client setup)".into(),
                    reason: e.to_string(),
                }
            }
            HttpClientError::CaFileNeedsHttps { base } => {
                format!("is for a CA served over TLS, but {base} is not https")
            }
            other => other.to_string(),
        };
        SyncError::TlsRoots {
            path: ca_file.unwrap_or(Path::new("")).to_path_buf(),
            reason,
        }
    })
}

/// GETs `url`, reading at most `limit` bytes of body.
async fn fetch(
    http: &reqwest::Client,
    url: &url::Url,
    if_none_match: Option<&str>,
    limit: usize,
) -> Result<Fetched, SyncError> {
    let unreachable = |e: reqwest::Error| SyncError::Unreachable {
        url: url.to_string(),
        reason: describe_http_error(&e),
    };
    let mut req = http.get(url.clone());
    if let Some(tag) = if_none_match {
        req = req.header(reqwest::header::IF_NONE_MATCH, tag);
    }
    let mut resp = req.send().await.map_err(unreachable)?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(Fetched::NotModified);
    }
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(Fetched::NotFound);
    }
    if !status.is_success() {
        return Err(SyncError::Status {
            url: url.to_string(),
            status: status.as_u16(),
        });
    }
    let too_large = || SyncError::TooLarge {
        url: url.to_string(),
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let etag = resp
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_etag(v))
        .map(str::to_string);
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
        if bytes.len() + chunk.len() > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Fetched::Body { bytes, etag })
}

/// An ETag worth storing and sending back: short, printable ASCII. A
/// damaged `.revoked.krl.etag` is ignored rather than breaking every run.
fn valid_etag(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ETAG_BYTES && s.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// What went wrong with a request, in a few words and the root cause
/// (reqwest's own message repeats the URL and hides the cause in sources).
fn describe_http_error(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the transfer broke off"
    } else {
        "request failed"
    };
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    format!("{what}: {root}")
}

/// Reads `path`, `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, SyncError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SyncError::Io {
            what: "reading",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The installed KRL's header, `None` if there is no valid one.
fn installed_krl(dir: &Path) -> Result<Option<KrlInfo>, SyncError> {
    Ok(installed_krl_file(dir)?.map(|(_, k)| KrlInfo::of(&k)))
}

/// The installed KRL's bytes and what they say, `None` if there is no
/// valid one.
fn installed_krl_file(dir: &Path) -> Result<Option<(Vec<u8>, krl::Krl)>, SyncError> {
    Ok(read_optional(&dir.join(KRL_FILE))?.and_then(|b| parse_krl(&b).ok().map(|k| (b, k))))
}

/// One file written to a temporary name in its directory, fsynced, mode
/// 0644, waiting to be renamed over the real one. Dropping it before
/// [`commit`] removes the temporary file.
struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn stage(dir: &Path, name: &str, contents: &[u8]) -> Result<Staged, SyncError> {
    let dest = dir.join(name);
    let io = |what: &'static str| {
        let path = dest.clone();
        move |source| SyncError::Io { what, path, source }
    };
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(io("creating a temporary file for"))?;
    let staged = Staged {
        tmp,
        dest: dest.clone(),
        committed: false,
    };
    // The umask may have taken bits away; sshd only needs to read.
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .map_err(io("setting the mode of a temporary file for"))?;
    file.write_all(contents)
        .map_err(io("writing a temporary file for"))?;
    file.sync_all()
        .map_err(io("syncing a temporary file for"))?;
    Ok(staged)
}

fn commit(mut s: Staged) -> Result<(), SyncError> {
    std::fs::rename(&s.tmp, &s.dest).map_err(|source| SyncError::Io {
        what: "renaming a temporary file onto",
        path: s.dest.clone(),
        source,
    })?;
    s.committed = true;
    Ok(())
}

/// Removes temporary files a killed earlier run left behind.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(TEMP_PREFIX) && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// `mayfly host sync`: fetches, checks and installs the user-CA keys and the
/// KRL into `opts.dir`. On error nothing on disk has changed.
pub async fn sync(opts: &SyncOptions) -> Result<SyncOutcome, SyncError> {
    let base = base_url(&opts.server, opts.insecure_http)?;
    let http = http_client(&base, opts.ca_file.as_deref())?;
    let dir = opts.dir.as_path();
    let join = |p: &str| {
        base.join(p).map_err(|e| SyncError::ServerUrl {
            url: opts.server.clone(),
            reason: e.to_string(),
        })
    };
    let ca_url = match &opts.ca_group {
        Some(g) => {
            let mut u = join("v1/ca/user.pub")?;
            u.query_pairs_mut().append_pair("group", g);
            u
        }
        None => join("v1/ca/user.pub")?,
    };
    let krl_url = join("v1/krl")?;

    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(dir)
            .map_err(|source| SyncError::Io {
                what: "creating",
                path: dir.to_path_buf(),
                source,
            })?;
    }
    remove_stale_temps(dir);

    // What is installed now.
    let krl_path = dir.join(KRL_FILE);
    let ca_path = dir.join(USER_CA_FILE);
    let etag_path = dir.join(ETAG_FILE);
    let installed_file = installed_krl_file(dir)?;
    let installed = installed_file.as_ref().map(|(_, k)| KrlInfo::of(k));
    let installed_ca = read_optional(&ca_path)?;
    // An ETag only means something while the KRL it belongs to is intact;
    // otherwise a 304 would leave the host without a valid KRL.
    let installed_etag = match installed {
        Some(_) => read_optional(&etag_path)?
            .and_then(|b| String::from_utf8(b).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| valid_etag(s)),
        None => None,
    };

    // Fetch and check everything before touching anything.
    let ca = match fetch(&http, &ca_url, None, MAX_CA_FILE_BYTES).await? {
        Fetched::Body { bytes, .. } => {
            CaKeys::parse(&bytes).map_err(|source| SyncError::BadCaKeys {
                url: ca_url.to_string(),
                source,
            })?
        }
        Fetched::NotModified => {
            return Err(SyncError::Status {
                url: ca_url.to_string(),
                status: 304,
            })
        }
        Fetched::NotFound => {
            return Err(SyncError::Status {
                url: ca_url.to_string(),
                status: 404,
            })
        }
    };
    let fetched_krl = fetch(&http, &krl_url, installed_etag.as_deref(), MAX_KRL_BYTES).await?;
    // (new KRL bytes and header, new ETag) if the KRL is to be installed.
    let mut new_krl: Option<(Vec<u8>, KrlInfo)> = None;
    let mut new_etag: Option<String> = None;
    let krl_version = match (fetched_krl, installed) {
        (Fetched::NotModified, Some(info)) => info.version,
        (Fetched::NotModified, None) => {
            // We sent no If-None-Match, so this is the server misbehaving.
            return Err(SyncError::Status {
                url: krl_url.to_string(),
                status: 304,
            });
        }
        (Fetched::NotFound, Some(_)) => {
            return Err(SyncError::Status {
                url: krl_url.to_string(),
                status: 404,
            });
        }
        (Fetched::NotFound, None) => {
            // A CA that publishes no KRL has revoked nothing. sshd needs a
            // readable file, so write an empty KRL that any real one replaces.
            let bytes = krl::encode_empty(0, 0, "mayfly host sync: the CA publishes no KRL");
            let info = check_krl(&bytes).map_err(|reason| SyncError::BadKrl {
                url: krl_url.to_string(),
                reason,
            })?;
            new_krl = Some((bytes, info));
            info.version
        }
        (Fetched::Body { bytes, etag }, installed) => {
            let served = parse_krl(&bytes).map_err(|reason| SyncError::BadKrl {
                url: krl_url.to_string(),
                reason,
            })?;
            let info = KrlInfo::of(&served);
            match decide_krl(installed.map(|i| i.version), info.version) {
                KrlDecision::Older => {
                    return Err(SyncError::OlderKrl {
                        url: krl_url.to_string(),
                        server: info.version,
                        path: krl_path.clone(),
                        installed: installed.map(|i| i.version).unwrap_or_default(),
                    })
                }
                KrlDecision::Unchanged => {
                    // A CA revokes nothing new without a new version: its
                    // KRL of one version is the same bytes (older CAs left
                    // out entries that had expired since). A KRL of the
                    // installed version revoking more comes from another
                    // or a rebuilt CA, whose revocations this host would
                    // otherwise never install.
                    let other = installed_file.as_ref().filter(|(old, _)| *old != bytes);
                    if let Some((_, old)) = other {
                        if !served.is_within(old) {
                            return Err(SyncError::OtherKrl {
                                url: krl_url.to_string(),
                                version: info.version,
                                path: krl_path.clone(),
                            });
                        }
                    }
                    if etag.is_some() && etag != installed_etag {
                        new_etag = etag;
                    }
                }
                KrlDecision::Install => {
                    new_krl = Some((bytes, info));
                    new_etag = etag;
                }
            }
            info.version
        }
    };
    let ca_changed = !installed_ca
        .as_deref()
        .is_some_and(|installed| ca.same_keys_as(installed));

    // Stage every file first, so a full or read-only disk fails before any
    // real file is replaced. Dropping a Staged removes its temporary file.
    let mut krl_staged = match &new_krl {
        Some((bytes, _)) => Some(stage(dir, KRL_FILE, bytes)?),
        None => None,
    };
    let ca_staged = match ca_changed {
        true => Some(stage(dir, USER_CA_FILE, ca.as_bytes())?),
        false => None,
    };
    let etag_staged = match &new_etag {
        Some(tag) => Some(stage(dir, ETAG_FILE, format!("{tag}\n").as_bytes())?),
        None => None,
    };

    // Another run may have installed this or a newer KRL meanwhile.
    if let (Some((_, info)), Some(now)) = (&new_krl, installed_krl(dir)?) {
        match decide_krl(Some(now.version), info.version) {
            KrlDecision::Install => {}
            KrlDecision::Unchanged => krl_staged = None,
            KrlDecision::Older => {
                return Err(SyncError::OlderKrl {
                    url: krl_url.to_string(),
                    server: info.version,
                    path: krl_path,
                    installed: now.version,
                })
            }
        }
    }
    // The KRL goes first (revocations are the urgent part), and the ETag
    // only after the KRL it names: an ETag newer than the installed KRL
    // would make the CA answer 304 and hold a revocation back.
    if krl_staged.is_some() && etag_staged.is_none() {
        // The old ETag no longer matches the file; never send it again.
        match std::fs::remove_file(&etag_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SyncError::Io {
                    what: "removing",
                    path: etag_path,
                    source,
                })
            }
        }
    }
    let krl_updated = krl_staged.is_some();
    if let Some(s) = krl_staged {
        commit(s)?;
    }
    if let Some(s) = ca_staged {
        commit(s)?;
    }
    if let Some(s) = etag_staged {
        commit(s)?;
    }
    if krl_updated || ca_changed || new_etag.is_some() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| SyncError::Io {
                what: "syncing directory",
                path: dir.to_path_buf(),
                source,
            })?;
    }
    Ok(SyncOutcome {
        krl_version,
        krl_updated,
        ca_updated: ca_changed,
        ca_keys: ca.key_lines().len(),
    })
}

// ---------------------------------------------------------------------------
// Reporting to the CA
// ---------------------------------------------------------------------------

/// How `mayfly host sync` reports back: with the host key whose
/// certificate this CA issued (`mayfly host cert`).
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// The host's private key (e.g. `/etc/ssh/ssh_host_ed25519_key`).
    pub host_key: PathBuf,
    /// Its certificate (default: `<host_key>-cert.pub`).
    pub certificate: PathBuf,
    /// The host name reported (default: the certificate's first principal).
    pub host_name: Option<String>,
}

/// Why a report could not be sent or was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReportSendError {
    /// A file could not be read.
    #[error("reading {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The CA could not be reached or refused.
    #[error("{0}")]
    Sync(#[from] SyncError),
    /// The CA answered with an error.
    #[error("the CA refused the report ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The CA's message.
        message: String,
    },
}

/// The report of the sync directory `dir` as it is now: installed KRL
/// version, trusted CA fingerprints, and `last_error`.
pub fn current_report(
    dir: &Path,
    host: &str,
    time: u64,
    last_error: Option<String>,
) -> crate::fleet::HostReport {
    let krl_version = installed_krl(dir)
        .ok()
        .flatten()
        .map(|i| i.version)
        .unwrap_or(0);
    let ca_fingerprints = std::fs::read(dir.join(USER_CA_FILE))
        .ok()
        .and_then(|b| CaKeys::parse(&b).ok())
        .map(|k| {
            k.key_lines()
                .iter()
                .filter_map(|l| ssh_key::PublicKey::from_openssh(l).ok())
                .map(|p| p.fingerprint(ssh_key::HashAlg::Sha256).to_string())
                .collect()
        })
        .unwrap_or_default();
    crate::fleet::HostReport {
        host: host.to_string(),
        time,
        krl_version,
        ca_fingerprints,
        last_error,
    }
}

/// Signs and sends the report of `sync.dir` (with `last_error`) to the CA.
/// Returns the CA's KRL version.
pub async fn report(
    sync: &SyncOptions,
    opts: &ReportOptions,
    last_error: Option<String>,
    now: u64,
) -> Result<u64, ReportSendError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| ReportSendError::Read {
            path: p.to_path_buf(),
            reason: e.to_string(),
        })
    };
    let key_text = read(&opts.host_key)?;
    let key = ssh_key::PrivateKey::from_openssh(key_text.as_bytes()).map_err(|e| {
        ReportSendError::Read {
            path: opts.host_key.clone(),
            reason: format!("not an unencrypted OpenSSH private key: {e}"),
        }
    })?;
    let certificate = read(&opts.certificate)?;
    let cert = ssh_key::Certificate::from_openssh(certificate.trim()).map_err(|e| {
        ReportSendError::Read {
            path: opts.certificate.clone(),
            reason: format!("not an OpenSSH certificate: {e}"),
        }
    })?;
    let host = match &opts.host_name {
        Some(h) => h.clone(),
        None => cert
            .valid_principals()
            .first()
            .cloned()
            .ok_or_else(|| ReportSendError::Read {
                path: opts.certificate.clone(),
                reason: "the certificate names no host; pass --host-name".into(),
            })?,
    };
    let text = serde_json::to_string(&current_report(&sync.dir, &host, now, last_error))
        .unwrap_or_default();
    let signature =
        crate::ca::hostreport::sign(&key, text.as_bytes()).map_err(|e| ReportSendError::Read {
            path: opts.host_key.clone(),
            reason: format!("signing failed: {e}"),
        })?;
    let base = base_url(&sync.server, sync.insecure_http)?;
    let http = http_client(&base, sync.ca_file.as_deref())?;
    let url = base
        .join("v1/hosts/report")
        .map_err(|e| SyncError::ServerUrl {
            url: sync.server.clone(),
            reason: e.to_string(),
        })?;
    let body = serde_json::json!({
        "report": text,
        "certificate": certificate.trim(),
        "signature": signature,
    });
    let resp = http
        .post(url.clone())
        .json(&body)
        .send()
        .await
        .map_err(|e| ReportSendError::Refused {
            status: 0,
            message: format!("POST {url}: {e}"),
        })?;
    let status = resp.status().as_u16();
    let answer: serde_json::Value = resp.json().await.unwrap_or_default();
    if status != 200 {
        return Err(ReportSendError::Refused {
            status,
            message: answer["message"]
                .as_str()
                .unwrap_or("no message")
                .to_string(),
        });
    }
    Ok(answer["ca_krl_version"].as_u64().unwrap_or(0))
}

/// What is installed in `dir` now, for the failure message.
pub fn describe_installed(dir: &Path) -> String {
    let ca = match std::fs::read(dir.join(USER_CA_FILE)) {
        Ok(b) => match CaKeys::parse(&b) {
            Ok(k) => format!(
                "{USER_CA_FILE} ({} key{})",
                k.key_lines().len(),
                if k.key_lines().len() == 1 { "" } else { "s" }
            ),
            Err(_) => format!("{USER_CA_FILE} (not a valid key list!)"),
        },
        Err(_) => format!("no {USER_CA_FILE}"),
    };
    let krl = match std::fs::read(dir.join(KRL_FILE)) {
        Ok(b) => match check_krl(&b) {
            Ok(i) => format!("{KRL_FILE} (KRL version {})", i.version),
            Err(_) => format!("{KRL_FILE} (not a valid KRL!)"),
        },
        Err(_) => format!(
            "no {KRL_FILE}: sshd with RevokedKeys refuses all key logins until a sync succeeds"
        ),
    };
    format!("kept in {}: {ca}, {krl}", dir.display())
}

// ---------------------------------------------------------------------------
// Host certificate and known_hosts
// ---------------------------------------------------------------------------

/// Body of `POST /v1/certs/host`.
#[derive(Debug, Serialize)]
struct HostCertBody<'a> {
    role: &'a str,
    public_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostnames: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_seconds: Option<u64>,
}

/// What `mayfly host cert` is told.
#[derive(Debug, Clone)]
pub struct HostCertOptions {
    /// CA base URL.
    pub server: String,
    /// Role (policy file name).
    pub role: String,
    /// The host's public key file.
    pub key: PathBuf,
    /// Host names to request (default: what the role grants).
    pub hostnames: Vec<String>,
    /// Lifetime, if not the role default.
    pub ttl: Option<Duration>,
    /// Where the workload token comes from.
    pub token: TokenSource,
    /// Where to write the certificate (default: [`default_cert_path`]).
    pub out: Option<PathBuf>,
    /// PEM bundle of the only roots trusted for the CA's TLS certificate.
    pub ca_file: Option<PathBuf>,
    /// Allow plain http to a non-loopback CA (sends the token in clear).
    pub insecure_http: bool,
}

/// Why `mayfly host cert` got no certificate. Nothing is written unless
/// the certificate parses, is a host certificate and certifies this key.
#[derive(Debug, thiserror::Error)]
pub enum HostCertError {
    /// `--server`, the token request or the CA's answer failed.
    #[error(transparent)]
    Client(#[from] client::ClientError),
    /// No workload token could be found.
    #[error(transparent)]
    Token(#[from] client::token::TokenSourceError),
    /// `--ca-file`, or writing the certificate, failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// The host public key file could not be read.
    #[error("reading the host public key {}", path.display())]
    ReadKey {
        /// `--key`.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `--key` names a private key.
    #[error("{} is a private key; give the public key (the .pub file)", path.display())]
    PrivateKey {
        /// `--key`.
        path: PathBuf,
    },
    /// `--key` does not hold an OpenSSH public key.
    #[error(
        "{} is not an OpenSSH public key (expected e.g. /etc/ssh/ssh_host_ed25519_key.pub)",
        path.display()
    )]
    NotPublicKey {
        /// `--key`.
        path: PathBuf,
        /// The parser's error.
        source: ssh_key::Error,
    },
    /// The host public key could not be encoded for the request.
    #[error("encoding the host public key")]
    EncodeKey(#[source] ssh_key::Error),
    /// The CA's answer is not a certificate.
    #[error("the CA's certificate does not parse")]
    BadCertificate(#[source] ssh_key::Error),
    /// The CA certified the key as a user key.
    #[error("the CA returned a user certificate, not a host certificate")]
    NotHostCertificate,
    /// The CA certified some other key.
    #[error("the CA's certificate is not for {}", path.display())]
    WrongKey {
        /// `--key`.
        path: PathBuf,
    },
    /// `--out` has no file name.
    #[error("--out must name a file")]
    OutNotAFile,
    /// The directory of the certificate could not be synced to disk.
    #[error("syncing directory {}", dir.display())]
    SyncDir {
        /// The directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// `mayfly host cert`: certifies the host key and writes the certificate
/// atomically (mode 0644). Returns the answer and the path written.
pub async fn host_cert(opts: &HostCertOptions) -> Result<(CertAnswer, PathBuf), HostCertError> {
    let base = client::server_base(&opts.server, opts.insecure_http)?;
    let text = std::fs::read_to_string(&opts.key).map_err(|source| HostCertError::ReadKey {
        path: opts.key.clone(),
        source,
    })?;
    if text.contains("PRIVATE KEY") {
        return Err(HostCertError::PrivateKey {
            path: opts.key.clone(),
        });
    }
    let key = ssh_key::PublicKey::from_openssh(text.trim()).map_err(|source| {
        HostCertError::NotPublicKey {
            path: opts.key.clone(),
            source,
        }
    })?;
    let public = key.to_openssh().map_err(HostCertError::EncodeKey)?;
    // Before the token: a bad --ca-file must not cost a single-use token.
    let http = http_client(&base, opts.ca_file.as_deref())?;
    let token = client::token::discover(&opts.token, &|k| std::env::var(k).ok()).await?;
    let body = HostCertBody {
        role: &opts.role,
        public_key: &public,
        hostnames: (!opts.hostnames.is_empty()).then_some(opts.hostnames.as_slice()),
        ttl_seconds: opts.ttl.map(|t| t.as_secs()),
    };
    let answer: CertAnswer =
        client::post_json_with_token(&http, &base, "v1/certs/host", &token, &body).await?;
    let cert = ssh_key::Certificate::from_openssh(answer.certificate.trim())
        .map_err(HostCertError::BadCertificate)?;
    if cert.cert_type() != ssh_key::certificate::CertType::Host {
        return Err(HostCertError::NotHostCertificate);
    }
    if cert.public_key() != key.key_data() {
        return Err(HostCertError::WrongKey {
            path: opts.key.clone(),
        });
    }
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| default_cert_path(&opts.key));
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .ok_or(HostCertError::OutNotAFile)?
        .to_string_lossy()
        .into_owned();
    let staged = stage(
        &dir,
        &name,
        format!("{}\n", answer.certificate.trim()).as_bytes(),
    )?;
    commit(staged)?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| HostCertError::SyncDir {
            dir: dir.clone(),
            source,
        })?;
    Ok((answer, out))
}

/// `mayfly known-hosts`: the `@cert-authority` lines for `patterns`.
pub async fn known_hosts(
    server: &str,
    patterns: &[String],
    ca_file: Option<&Path>,
    insecure_http: bool,
) -> Result<Vec<String>, SyncError> {
    let base = base_url(server, insecure_http)?;
    let http = http_client(&base, ca_file)?;
    let url = base
        .join("v1/ca/host.pub")
        .map_err(|e| SyncError::ServerUrl {
            url: server.into(),
            reason: e.to_string(),
        })?;
    let keys = match fetch(&http, &url, None, MAX_CA_FILE_BYTES).await? {
        Fetched::Body { bytes, .. } => {
            CaKeys::parse(&bytes).map_err(|source| SyncError::BadCaKeys {
                url: url.to_string(),
                source,
            })?
        }
        Fetched::NotModified | Fetched::NotFound => {
            return Err(SyncError::Status {
                url: url.to_string(),
                status: 404,
            })
        }
    };
    Ok(known_hosts_lines(patterns, &keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl mayfly-user-ca";

    #[test]
    fn ca_file_with_comments_and_keys_is_accepted_and_newline_terminated() {
        let text = format!("# mayfly user CA\n\n{KEY}\n{KEY}");
        let k = CaKeys::parse(text.as_bytes()).expect("valid");
        assert_eq!(k.key_lines().len(), 2);
        assert!(k.as_bytes().ends_with(b"\n"));
        assert!(k.as_bytes().starts_with(b"# mayfly user CA\n"));
    }

    #[test]
    fn ca_keys_are_compared_by_key_data_not_by_comment_or_order() {
        const OTHER: &str =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF02jlzuH41PbAxdbXcZBgx/lqXTz9vgkMgwNZqgZYGf x";
        let blob = |l: &str| l.split(' ').take(2).collect::<Vec<_>>().join(" ");
        let served = CaKeys::parse(
            format!(
                "{} mayfly user CA\n{} mayfly user CA\n",
                blob(KEY),
                blob(OTHER)
            )
            .as_bytes(),
        )
        .expect("valid");
        // An install by an older version: other comments, other order.
        let old = format!("{} mayfly-ca\n{} mayfly-ca\n", blob(OTHER), blob(KEY));
        assert!(served.same_keys_as(old.as_bytes()));
        // A key less, a key more, or a file that is no key file: changed.
        assert!(!served.same_keys_as(format!("{KEY}\n").as_bytes()));
        let more = format!("{old}ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPvidt52SIjUhYrGA2X1q04SHhiN9m4jOaBuugPEdRPu y\n");
        assert!(!served.same_keys_as(more.as_bytes()));
        assert!(!served.same_keys_as(b"garbage\n"));
    }

    #[test]
    fn ca_file_lines_sshd_cannot_skip_are_refused() {
        // sshd skips only spaces and tabs before a comment or an empty line.
        for (text, line) in [
            (format!("# CA\r\n\r\n{KEY}\n"), 2),
            (format!("{KEY}\n\r\n"), 2),
            (format!("\u{a0}{KEY}\n"), 1),
            (format!("\u{b}# comment\n{KEY}\n"), 1),
            (format!("\u{2028}\n{KEY}\n"), 1),
        ] {
            match CaKeys::parse(text.as_bytes()) {
                Err(CaKeysError::NotAKey { line: l, .. }) if l == line => {}
                other => panic!("{text:?}: unexpected {other:?}"),
            }
        }
        // What sshd reads fine stays accepted, exactly as sent.
        let fine = format!(" \t# CA\n  \n\t{KEY}\r\n{KEY}  \n");
        let k = CaKeys::parse(fine.as_bytes()).expect("valid");
        assert_eq!(k.key_lines(), [KEY, KEY]);
        assert_eq!(k.as_bytes(), fine.as_bytes());
    }

    #[test]
    fn ca_file_without_keys_is_refused() {
        assert_eq!(CaKeys::parse(b""), Err(CaKeysError::NoKey));
        assert_eq!(CaKeys::parse(b"# only\n\n  \n"), Err(CaKeysError::NoKey));
    }

    #[test]
    fn ca_file_with_garbage_line_is_refused_naming_the_line() {
        let text = format!("{KEY}\n<html>502 Bad Gateway</html>\n");
        match CaKeys::parse(text.as_bytes()) {
            Err(CaKeysError::NotAKey { line: 2, .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ca_file_with_certificate_is_refused() {
        let text =
            "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29t x\n";
        match CaKeys::parse(text.as_bytes()) {
            Err(CaKeysError::Certificate { line: 1, algorithm }) => {
                assert_eq!(algorithm, "ssh-ed25519-cert-v01@openssh.com")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ca_file_with_unknown_key_type_is_refused() {
        let text = "foo@example.com AAAAD2Zvb0BleGFtcGxlLmNvbQ==\n";
        assert!(CaKeys::parse(text.as_bytes()).is_err());
    }

    #[test]
    fn ca_file_over_64_kib_is_refused() {
        let mut text = format!("{KEY}\n");
        while text.len() <= MAX_CA_FILE_BYTES {
            text.push_str("# padding padding padding padding padding padding\n");
        }
        assert!(matches!(
            CaKeys::parse(text.as_bytes()),
            Err(CaKeysError::TooLarge { .. })
        ));
    }

    #[test]
    fn ca_file_that_is_not_utf8_is_refused() {
        assert_eq!(CaKeys::parse(b"\xff\xfe"), Err(CaKeysError::NotText));
    }

    #[test]
    fn krl_decision_never_goes_back() {
        assert_eq!(decide_krl(None, 0), KrlDecision::Install);
        assert_eq!(decide_krl(Some(4), 5), KrlDecision::Install);
        assert_eq!(decide_krl(Some(5), 5), KrlDecision::Unchanged);
        assert_eq!(decide_krl(Some(6), 5), KrlDecision::Older);
    }

    #[test]
    fn empty_krl_is_accepted_and_truncated_one_refused() {
        let good = krl::encode_empty(7, 1_700_000_000, "test");
        assert_eq!(
            check_krl(&good),
            Ok(KrlInfo {
                version: 7,
                generated_date: 1_700_000_000
            })
        );
        for cut in [0, 1, 8, 20, 30] {
            assert!(check_krl(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(check_krl(b"SSHKRL\n\0garbage").is_err());
        assert!(check_krl(b"ssh-ed25519 AAAA\n").is_err());
    }

    #[test]
    fn krl_cut_inside_its_sections_is_refused() {
        let full = krl::encode(&krl::KrlSpec {
            krl_version: 9,
            generated_date: 1_700_000_000,
            comment: "test".into(),
            certs: vec![krl::CertSection {
                ca_key_blob: Vec::new(),
                serials: vec![3, 5, 1000],
                key_ids: vec!["job-1".into()],
            }],
            ..Default::default()
        });
        assert_eq!(check_krl(&full).map(|i| i.version), Ok(9));
        let header_len = krl::encode_empty(9, 1_700_000_000, "test").len();
        assert!(krl::parse_header(&full[..full.len() - 1]).is_ok());
        for cut in header_len + 1..full.len() {
            assert!(check_krl(&full[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn known_hosts_lines_join_patterns() {
        let k = CaKeys::parse(format!("{KEY}\n").as_bytes()).expect("valid");
        let lines = known_hosts_lines(&["*.example.com".into(), "10.0.0.*".into()], &k);
        assert_eq!(
            lines,
            vec![format!("@cert-authority *.example.com,10.0.0.* {KEY}")]
        );
    }

    #[test]
    fn host_patterns_with_spaces_or_commas_are_refused() {
        assert!(check_host_pattern("*.example.com").is_ok());
        assert!(check_host_pattern("[host]:2222").is_ok());
        assert!(check_host_pattern("").is_err());
        assert!(check_host_pattern("a b").is_err());
        assert!(check_host_pattern("a,b").is_err());
        assert!(check_host_pattern("@revoked").is_err());
    }

    #[test]
    fn cert_goes_next_to_the_key() {
        assert_eq!(
            default_cert_path(Path::new("/etc/ssh/ssh_host_ed25519_key.pub")),
            PathBuf::from("/etc/ssh/ssh_host_ed25519_key-cert.pub")
        );
        assert_eq!(
            default_cert_path(Path::new("hostkey")),
            PathBuf::from("hostkey-cert.pub")
        );
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(base_url("http://127.0.0.1:8400", false).is_ok());
        assert!(base_url("https://ca.example.com", false).is_ok());
        assert!(base_url("http://ca.example.com", false).is_err());
        assert!(base_url("http://ca.example.com", true).is_ok());
        assert!(base_url("file:///etc/passwd", true).is_err());
        let u = base_url("https://ca.example.com/mayfly", false).expect("ok");
        assert_eq!(
            u.join("v1/krl").expect("join").as_str(),
            "https://ca.example.com/mayfly/v1/krl"
        );
    }

    #[test]
    fn staged_file_is_removed_when_dropped_and_installed_0644_when_committed() {
        let d = tempfile::tempdir().expect("tempdir");
        let s = stage(d.path(), "a", b"one").expect("stage");
        drop(s);
        assert_eq!(std::fs::read_dir(d.path()).expect("ls").count(), 0);
        let s = stage(d.path(), "a", b"two").expect("stage");
        commit(s).expect("commit");
        let p = d.path().join("a");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let mode = std::fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(std::fs::read_dir(d.path()).expect("ls").count(), 1);
    }
}
