//! Bot side: find the workload token, make a fresh key, get it certified,
//! and either write key + certificate to a directory (`mayfly cert`) or
//! hand them to `ssh` through an in-process agent (`mayfly ssh`, and
//! `mayfly exec` for a whole job, renewing as it runs) so the private key
//! never touches disk.
pub mod agent;
pub mod exec;
pub mod http;
pub mod operator;
pub mod token;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand_core::OsRng;
use serde::{Deserialize, Serialize};

use crate::config::is_loopback_http;

/// Why the bot did not get a certificate.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No token.
    #[error(transparent)]
    Token(#[from] token::TokenSourceError),
    /// The server URL is unusable.
    #[error("--server {url}: {reason}")]
    ServerUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Could not reach the server.
    #[error("cannot reach the CA at {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server said no.
    #[error("the CA refused ({status} {code}): {message} [request_id {request_id}]")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Error code.
        code: String,
        /// Server's explanation.
        message: String,
        /// Request id to quote to the CA operator.
        request_id: String,
    },
    /// Nobody approved in time; the bot cancelled its request (or says
    /// why it could not).
    #[error("no approval for request {id} after {waited}s; {cancel}; ask an approver, or raise --approval-timeout")]
    ApprovalTimeout {
        /// Approval request id.
        id: String,
        /// Seconds waited.
        waited: u64,
        /// What became of the request: cancelled, or why it could not be.
        cancel: String,
    },
    /// The answer could not be understood.
    #[error("the CA's answer is not understood: {0}")]
    BadAnswer(String),
    /// `--out` is no place for a private key.
    #[error("--out {dir}: {reason}")]
    OutDir {
        /// The directory given.
        dir: String,
        /// Why it is refused.
        reason: String,
    },
    /// Local file or process trouble.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Body of `POST /v1/certs/user`.
#[derive(Debug, Serialize)]
struct CertBody<'a> {
    role: &'a str,
    public_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    principals: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_request: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    renewal: Option<RenewalBody<'a>>,
}

/// The `renewal` object: the certificate renewed and the proof by its key.
#[derive(Debug, Clone, Copy, Serialize)]
struct RenewalBody<'a> {
    certificate: &'a str,
    signature: &'a str,
}

/// What a renewal request continues from (`mayfly exec`).
#[derive(Debug)]
pub struct Renewal<'a> {
    /// The certificate being renewed (OpenSSH line).
    pub certificate: &'a str,
    /// Its key's signature over the new key ([`crate::ca::renewal::sign`]).
    pub signature: String,
    /// The approval the first certificate redeemed, if the role needs one.
    pub approval_request: Option<&'a str>,
}

/// Successful answer of `POST /v1/certs/user`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CertAnswer {
    /// OpenSSH certificate line.
    pub certificate: String,
    /// Serial.
    pub serial: u64,
    /// Key id.
    pub key_id: String,
    /// Principals.
    pub principals: Vec<String>,
    /// Unix seconds.
    pub valid_after: u64,
    /// Unix seconds.
    pub valid_before: u64,
}

#[derive(Debug, Deserialize)]
struct ErrorAnswer {
    error: String,
    message: String,
    #[serde(default)]
    request_id: String,
}

/// What the bot asks for.
#[derive(Debug, Clone)]
pub struct CertOptions {
    /// CA base URL.
    pub server: String,
    /// Role.
    pub role: String,
    /// Lifetime, if not the role default.
    pub ttl: Option<Duration>,
    /// Subset of principals.
    pub principals: Option<Vec<String>>,
    /// Where the token comes from.
    pub token: token::TokenSource,
    /// Allow `http://` to a non-loopback server (sends the token in clear).
    pub insecure_http: bool,
    /// PEM CA certificate(s) trusted for the server's TLS certificate
    /// instead of the built-in web roots (`--ca-file`).
    pub ca_file: Option<PathBuf>,
    /// How long to wait for a human approval (roles that need one).
    pub approval_timeout: Duration,
}

/// Default wait for approvals.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Poll interval while waiting for an approval.
const APPROVAL_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
struct PendingAnswer {
    approval_request: String,
    #[serde(default)]
    approvals_needed: u32,
    #[serde(default)]
    expires_at: u64,
}

/// The CA's error answer as a [`ClientError::Refused`]; a body that is not
/// the JSON error shape is shown (shortened) as the message.
pub(crate) fn refused(status: reqwest::StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorAnswer>(body) {
        Ok(e) => ClientError::Refused {
            status: status.as_u16(),
            code: e.error,
            message: e.message,
            request_id: e.request_id,
        },
        Err(_) => ClientError::Refused {
            status: status.as_u16(),
            code: "http_error".into(),
            message: String::from_utf8_lossy(body).chars().take(300).collect(),
            request_id: String::new(),
        },
    }
}

pub(crate) fn check_server(url: &str, insecure_http: bool) -> Result<url::Url, ClientError> {
    let u = url::Url::parse(url).map_err(|e| ClientError::ServerUrl {
        url: url.into(),
        reason: e.to_string(),
    })?;
    match u.scheme() {
        "https" => Ok(u),
        "http" if is_loopback_http(&u) || insecure_http => Ok(u),
        "http" => Err(ClientError::ServerUrl {
            url: url.into(),
            reason: "plain http would send the token in clear; use https (http only for loopback)"
                .into(),
        }),
        other => Err(ClientError::ServerUrl {
            url: url.into(),
            reason: format!("scheme {other} is not http(s)"),
        }),
    }
}

/// The HTTP client for the CA at `base` ([`http::build`]: no redirects,
/// rustls with the built-in web roots, or with only the certificates in
/// `ca_file` (like curl `--cacert`), which then requires an `https://`
/// server).
pub fn http_client(
    base: &url::Url,
    ca_file: Option<&Path>,
) -> Result<reqwest::Client, ClientError> {
    http_client_with(base, ca_file, None)
}

/// [`http_client`], presenting a TLS client certificate (`identity`: PEM
/// certificate file and PEM key file) when given: an operator calling an
/// admin API that requires one.
pub fn http_client_with(
    base: &url::Url,
    ca_file: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<reqwest::Client, ClientError> {
    let spec = http::ClientSpec {
        base,
        ca_file,
        connect_timeout: Duration::from_secs(10),
        timeout: Duration::from_secs(60),
        user_agent: None,
        identity,
    };
    http::build(&spec).map_err(|e| {
        let io = |source: std::io::Error| ClientError::Io {
            what: format!("--ca-file {}", ca_file.unwrap_or(Path::new("")).display()),
            source,
        };
        let https_only = |flag: &str| ClientError::ServerUrl {
            url: base.to_string(),
            reason: format!("{flag} is for a CA served over TLS; use an https:// URL"),
        };
        match e {
            http::HttpClientError::CaFileNeedsHttps { .. } => https_only("--ca-file"),
            http::HttpClientError::IdentityNeedsHttps { .. } => https_only("--client-cert"),
            http::HttpClientError::ReadCaFile(source) => io(source),
            http::HttpClientError::ParseCaFile(m) => io(std::io::Error::other(m)),
            http::HttpClientError::NoCertificate => io(std::io::Error::other(
                "no PEM certificate found; give the CA certificate that signed the server's TLS certificate",
            )),
            http::HttpClientError::ReadIdentity { path, source } => ClientError::Io {
                what: format!("--client-cert/--client-key {path}"),
                source,
            },
            e @ http::HttpClientError::ParseIdentity(_) => ClientError::Io {
                what: "--client-cert/--client-key".into(),
                source: std::io::Error::other(e.to_string()),
            },
            http::HttpClientError::Build(e) => ClientError::Unreachable {
                url: base.to_string(),
                reason: e.to_string(),
            },
        }
    })
}

/// A redirect answer as a [`ClientError::Refused`] (the client does not
/// follow redirects; see [`http`]).
pub(crate) fn refused_redirect(resp: &reqwest::Response) -> Option<ClientError> {
    http::redirect_refusal(resp).map(|message| ClientError::Refused {
        status: resp.status().as_u16(),
        code: "redirect".into(),
        message,
        request_id: String::new(),
    })
}

/// A request error with its causes (the TLS reason is only in the causes)
/// and what to do when the server's certificate is not trusted.
pub(crate) fn send_error(e: &reqwest::Error, ca_file: Option<&Path>) -> String {
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    if msg.contains("certificate") {
        match ca_file {
            None => msg.push_str(
                "; if the CA server's TLS certificate comes from a private CA, pass --ca-file with that CA's PEM certificate",
            ),
            Some(p) => msg.push_str(&format!(
                "; check that the server's certificate is signed by a CA in {} and names this host",
                p.display()
            )),
        }
    }
    msg
}

/// Sends `req` (for `url`) and reads the whole answer. A redirect is
/// refused (the client never follows one, see [`http`]); failing to send or
/// to read is [`ClientError::Unreachable`] with the causes and, for a TLS
/// trust failure, what to do about `ca_file`.
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    url: &url::Url,
    ca_file: Option<&Path>,
) -> Result<(reqwest::StatusCode, Vec<u8>), ClientError> {
    let unreachable = |e: reqwest::Error| ClientError::Unreachable {
        url: url.to_string(),
        reason: send_error(&e, ca_file),
    };
    let resp = req.send().await.map_err(unreachable)?;
    if let Some(e) = refused_redirect(&resp) {
        return Err(e);
    }
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(unreachable)?;
    Ok((status, bytes.to_vec()))
}

/// A fresh Ed25519 key pair, made in memory.
pub fn fresh_key() -> Result<ssh_key::PrivateKey, ClientError> {
    ssh_key::PrivateKey::random(&mut OsRng, ssh_key::Algorithm::Ed25519).map_err(|e| {
        ClientError::Io {
            what: "generating a key".into(),
            source: std::io::Error::other(e.to_string()),
        }
    })
}

/// Asks the CA to certify `key`'s public half.
pub async fn request_cert(
    opts: &CertOptions,
    key: &ssh_key::PrivateKey,
) -> Result<(CertAnswer, ssh_key::Certificate), ClientError> {
    request_cert_as(opts, key, None)
        .await
        .map(|(answer, cert, _)| (answer, cert))
}

/// Checks what can be checked before anything is spent or written: the
/// server URL and the TLS trust (`--ca-file`).
pub fn check_options(opts: &CertOptions) -> Result<(), ClientError> {
    let base = check_server(&opts.server, opts.insecure_http)?;
    http_client(&base, opts.ca_file.as_deref()).map(drop)
}

/// Asks the CA to certify `key`'s public half, as a renewal of another
/// certificate if `renewal` says so. Also returns the approval request the
/// certificate redeemed, if the role needed one. A renewal never waits for
/// a person: if the CA asks for a new approval, that is an error.
pub async fn request_cert_as(
    opts: &CertOptions,
    key: &ssh_key::PrivateKey,
    renewal: Option<&Renewal<'_>>,
) -> Result<(CertAnswer, ssh_key::Certificate, Option<String>), ClientError> {
    let base = check_server(&opts.server, opts.insecure_http)?;
    // Before the token: a bad --ca-file must not cost a single-use token.
    let http = http_client(&base, opts.ca_file.as_deref())?;
    let url = base
        .join("v1/certs/user")
        .map_err(|e| ClientError::ServerUrl {
            url: opts.server.clone(),
            reason: e.to_string(),
        })?;
    let public = key.public_key().to_openssh().map_err(|e| ClientError::Io {
        what: "encoding the public key".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let started = std::time::Instant::now();
    let mut approval_request: Option<String> =
        renewal.and_then(|r| r.approval_request.map(str::to_string));
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_needed: Option<u32> = None;
    let bytes = loop {
        // Fetched per attempt: a CI token source hands out a fresh one, and
        // a waiting request is not charged against single use.
        let token = token::discover(&opts.token, &|k| std::env::var(k).ok()).await?;
        let body = CertBody {
            role: &opts.role,
            public_key: &public,
            ttl_seconds: opts.ttl.map(|t| t.as_secs()),
            principals: opts.principals.as_deref(),
            approval_request: approval_request.as_deref(),
            renewal: renewal.map(|r| RenewalBody {
                certificate: r.certificate,
                signature: &r.signature,
            }),
        };
        let req = http
            .post(url.clone())
            .bearer_auth(token.expose())
            .json(&body);
        let (status, bytes) = send(req, &url, opts.ca_file.as_deref()).await?;
        if status == reqwest::StatusCode::ACCEPTED {
            let p: PendingAnswer = serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::BadAnswer(format!("202 answer: {e}")))?;
            if renewal.is_some() {
                return Err(ClientError::Refused {
                    status: status.as_u16(),
                    code: "approval_required".into(),
                    message: format!(
                        "the renewal needs a new approval (request {}); a renewal does not wait for a person",
                        p.approval_request
                    ),
                    request_id: String::new(),
                });
            }
            let waited = started.elapsed();
            if waited >= opts.approval_timeout {
                if approval_request.is_some() && terminal {
                    eprintln!();
                }
                // Giving up withdraws the request, so no approver acts on
                // a job that is gone (and no one approves it later).
                let reason = format!(
                    "the bot gave up after --approval-timeout {}s",
                    opts.approval_timeout.as_secs()
                );
                let cancel =
                    match cancel_with(&http, &base, &token, &p.approval_request, &reason).await {
                        Ok(_) => "the request is cancelled".to_string(),
                        Err(e) => format!("cancelling the request failed: {e}"),
                    };
                return Err(ClientError::ApprovalTimeout {
                    id: p.approval_request,
                    waited: waited.as_secs(),
                    cancel,
                });
            }
            if approval_request.is_none() {
                eprintln!(
                    "mayfly: role {} needs approval; ask an approver to run: mayfly request approve {} --server {}",
                    opts.role, p.approval_request, opts.server
                );
            }
            // On a terminal one line counts up in place; in a CI log, a
            // line per change of state, not per poll.
            if terminal {
                eprint!(
                    "\rmayfly: waiting for approval of {} ({} more needed, request expires in {}s) ... {}s ",
                    p.approval_request,
                    p.approvals_needed,
                    remaining(p.expires_at),
                    waited.as_secs()
                );
            } else if last_needed != Some(p.approvals_needed) {
                eprintln!(
                    "mayfly: waiting for approval of {} ({} more needed, request expires at {})",
                    p.approval_request,
                    p.approvals_needed,
                    crate::time::rfc3339(p.expires_at)
                );
            }
            last_needed = Some(p.approvals_needed);
            approval_request = Some(p.approval_request);
            tokio::time::sleep(APPROVAL_POLL).await;
            continue;
        }
        if approval_request.is_some() && terminal {
            eprintln!();
        }
        if !status.is_success() {
            return Err(refused(status, &bytes));
        }
        break bytes;
    };
    let answer: CertAnswer =
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
    let cert = ssh_key::Certificate::from_openssh(&answer.certificate)
        .map_err(|e| ClientError::BadAnswer(format!("certificate does not parse: {e}")))?;
    if cert.public_key() != key.public_key().key_data() {
        return Err(ClientError::BadAnswer(
            "certificate is not for the key we sent".into(),
        ));
    }
    Ok((answer, cert, approval_request))
}

/// File names `mayfly cert --out DIR` writes.
pub const KEY_FILE: &str = "id_ed25519";
/// Public key file name.
pub const PUB_FILE: &str = "id_ed25519.pub";
/// Certificate file name (what `ssh` looks for next to the key).
pub const CERT_FILE: &str = "id_ed25519-cert.pub";

/// Makes sure `dir` is a directory only this user can use, creating it
/// (0700) if missing: a private key is never written where another user
/// could list, replace or read it.
pub fn private_dir(dir: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    let io = |what: String| move |source| ClientError::Io { what, source };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("creating {}", dir.display())))?;
    }
    let meta = std::fs::metadata(dir).map_err(io(format!("reading {}", dir.display())))?;
    let refuse = |reason: String| ClientError::OutDir {
        dir: dir.display().to_string(),
        reason,
    };
    if !meta.is_dir() {
        return Err(refuse(
            "is not a directory; give the directory for id_ed25519 and its certificate".into(),
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(refuse(format!(
            "belongs to uid {}, not to you (uid {me}); a private key needs a directory of your own, e.g. --out \"$(mktemp -d)\"",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "is open to other users (mode {mode:04o}); a private key needs a directory only you can use: chmod 700 it, or use --out \"$(mktemp -d)\""
        )));
    }
    Ok(())
}

/// `mayfly cert`: writes a fresh key (0600), its public key and certificate
/// into `out` (a private directory, see [`private_dir`]), each atomically.
/// Returns the certificate path.
pub async fn cert_to_dir(
    opts: &CertOptions,
    out: &Path,
) -> Result<(CertAnswer, PathBuf), ClientError> {
    // Before the token is spent: a bad server or a directory that cannot
    // take the key must not cost a certificate.
    check_options(opts)?;
    private_dir(out)?;
    let key = fresh_key()?;
    let (answer, _cert) = request_cert(opts, &key).await?;
    let io = |what: &str| {
        let what = what.to_string();
        move |source| ClientError::Io { what, source }
    };
    let pem = key
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| ClientError::Io {
            what: "encoding the private key".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let public = key.public_key().to_openssh().unwrap_or_default();
    let write = crate::ca::keys::write_atomic;
    let key_path = out.join(KEY_FILE);
    write(&key_path, pem.as_bytes(), 0o600)
        .map_err(io(&format!("writing {}", key_path.display())))?;
    let pub_path = out.join(PUB_FILE);
    write(&pub_path, format!("{public}\n").as_bytes(), 0o644)
        .map_err(io(&format!("writing {}", pub_path.display())))?;
    let cert_path = out.join(CERT_FILE);
    write(
        &cert_path,
        format!("{}\n", answer.certificate).as_bytes(),
        0o644,
    )
    .map_err(io(&format!("writing {}", cert_path.display())))?;
    Ok((answer, cert_path))
}

/// `mayfly ssh`: certifies an in-memory key, serves it from a private agent
/// for the certificate's lifetime, runs `ssh_program` with `args`, and
/// returns its exit code.
pub async fn ssh_with_cert(
    opts: &CertOptions,
    ssh_program: &str,
    args: &[String],
) -> Result<i32, ClientError> {
    let key = fresh_key()?;
    let (answer, cert) = request_cert(opts, &key).await?;
    let expires = UNIX_EPOCH + Duration::from_secs(answer.valid_before);
    // Only public material goes to disk: naming the public key and the
    // certificate as identity files makes ssh use them (through the agent,
    // which holds the private key) even under `IdentitiesOnly yes`.
    let public_dir = tempfile::Builder::new()
        .prefix("mayfly-ssh-")
        .tempdir()
        .map_err(|source| ClientError::Io {
            what: "creating a temporary directory".into(),
            source,
        })?;
    let pub_path = public_dir.path().join(PUB_FILE);
    let cert_path = public_dir.path().join(CERT_FILE);
    let public = key.public_key().to_openssh().unwrap_or_default();
    for (path, line) in [(&pub_path, &public), (&cert_path, &answer.certificate)] {
        // 0600 although public: ssh checks identity-file permissions as if
        // they were private keys and ignores "too open" ones.
        crate::ca::keys::write_atomic(path, format!("{line}\n").as_bytes(), 0o600).map_err(
            |source| ClientError::Io {
                what: format!("writing {}", path.display()),
                source,
            },
        )?;
    }
    let agent = agent::Agent::spawn(
        agent::AgentIdentity {
            private_key: key,
            certificate: cert,
        },
        expires,
    )
    .map_err(|source| ClientError::Io {
        what: "starting the in-process ssh agent".into(),
        source,
    })?;
    tracing::debug!(serial = answer.serial, key_id = %answer.key_id, "certificate obtained; running ssh");
    let status = tokio::process::Command::new(ssh_program)
        .arg("-o")
        .arg(format!("IdentityAgent={}", agent.socket_path().display()))
        .arg("-o")
        .arg(format!("IdentityFile={}", pub_path.display()))
        .arg("-o")
        .arg(format!("CertificateFile={}", cert_path.display()))
        .args(args)
        .env("SSH_AUTH_SOCK", agent.socket_path())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|source| ClientError::Io {
            what: format!("running {ssh_program}"),
            source,
        })?;
    drop(agent);
    Ok(exit_code(status))
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    }
}

/// Seconds until `valid_before`, for messages.
pub fn remaining(valid_before: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    valid_before.saturating_sub(now)
}

/// Checks a `--server` URL for a command that sends a token: https, or
/// plain http to loopback only unless `insecure_http`.
pub fn server_base(url: &str, insecure_http: bool) -> Result<url::Url, ClientError> {
    check_server(url, insecure_http)
}

/// POSTs `body` as JSON to `path` under `base` with `token` as the bearer,
/// using `http`, and decodes a 2xx JSON answer. Error answers become
/// [`ClientError::Refused`] with the server's code, message and request id,
/// exactly as for `POST /v1/certs/user`.
pub async fn post_json_with_token<B, A>(
    http: &reqwest::Client,
    base: &url::Url,
    path: &str,
    token: &token::Token,
    body: &B,
) -> Result<A, ClientError>
where
    B: Serialize + ?Sized,
    A: serde::de::DeserializeOwned,
{
    let url = base.join(path).map_err(|e| ClientError::ServerUrl {
        url: base.to_string(),
        reason: e.to_string(),
    })?;
    let req = http
        .post(url.clone())
        .bearer_auth(token.expose())
        .json(body);
    let (status, bytes) = send(req, &url, None).await?;
    if !status.is_success() {
        return Err(refused(status, &bytes));
    }
    serde_json::from_slice(&bytes).map_err(|e| ClientError::BadAnswer(e.to_string()))
}

/// Whether `id` looks like an approval request id (it goes into a URL path).
pub(crate) fn check_request_id(id: &str) -> Result<(), ClientError> {
    let id_ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if id_ok {
        Ok(())
    } else {
        Err(ClientError::ServerUrl {
            url: id.to_string(),
            reason: "not an approval request id (apr_...)".into(),
        })
    }
}

/// `POST /v1/requests/{id}/cancel` with `token`.
pub(crate) async fn cancel_with(
    http: &reqwest::Client,
    base: &url::Url,
    token: &token::Token,
    id: &str,
    reason: &str,
) -> Result<crate::approval::ApprovalRequest, ClientError> {
    check_request_id(id)?;
    post_json_with_token(
        http,
        base,
        &format!("v1/requests/{id}/cancel"),
        token,
        &serde_json::json!({ "reason": reason }),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(check_server("http://127.0.0.1:8400", false).is_ok());
        assert!(check_server("https://ca.example.com", false).is_ok());
        assert!(check_server("http://ca.example.com", false).is_err());
        assert!(check_server("http://ca.example.com", true).is_ok());
        assert!(check_server("ftp://x", true).is_err());
    }
}
