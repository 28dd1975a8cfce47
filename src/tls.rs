//! Transport security for `mayfly serve`: HTTPS with rustls, certificate
//! files reloaded when they change, optional client certificates for
//! operators, and the rule that plain HTTP stays on loopback.
//!
//! ```text
//!  server::connections (accept, max_connections slot, one task per connection)
//!    --> ServerTls::handshake (timeout; holds the connection's slot)
//!          rustls ServerConfig (aws-lc-rs, TLS 1.3 + 1.2)
//!            cert:   CertReloader (swapped when files change)
//!            client: WebPkiClientVerifier, requested not required
//!    --> ClientIdentity read once per connection
//!    --> the same HTTP/1.1 loop as plain HTTP (header read timeout,
//!        graceful shutdown), ConnectInfo<SocketAddr> + ClientIdentity
//!        inserted into every request, then the Router
//! ```
//!
//! Why this shape: this module only turns a TCP stream into a TLS stream
//! and an identity; accepting, bounding and serving connections is
//! `server::connections`, shared with plain HTTP, so both transports get
//! the same limits and drain the same way. Each handshake runs in its
//! connection's own task so one slow client cannot stall `accept`, and it
//! counts against `max_connections`, so a flood of idle sockets cannot
//! exhaust memory or descriptors. Only `http/1.1` is offered by ALPN: the
//! server has no HTTP/2 support, and advertising `h2` without serving it
//! would break clients.
//!
//! rustls never renegotiates and implements no TLS below 1.2, so neither
//! needs configuring. The crypto provider is aws-lc-rs, the same library
//! that verifies JWTs. Client CA files are read at start-up only; CRLs are
//! not checked (client certificates for operators should be short-lived).

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

use crate::config::TlsConfig;

/// A client that has not finished its handshake by then is dropped. A
/// handshake holds one of the `max_connections` slots meanwhile.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS could not be set up, or why plain HTTP is refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file this is (`tls.cert_file`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The certificate file holds no usable PEM certificate.
    #[error("{path}: {reason}; tls.cert_file must hold PEM \"CERTIFICATE\" blocks, the server's certificate first, then its intermediates")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file holds no usable private key.
    #[error("{path}: {reason}; tls.key_file must hold one PEM \"PRIVATE KEY\" (PKCS#8), \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong (never key material).
        reason: String,
    },
    /// Key and certificate do not belong together.
    #[error("{key} is not the private key of the certificate in {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The client CA file is unusable.
    #[error("{path}: {reason}; tls.client_ca_file must hold the PEM certificates of the CAs that issue operator client certificates")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// Plain HTTP on a network address without the explicit, dangerous opt-in.
    #[error(
        "refusing to serve plain HTTP on {addr}: it is not a loopback address, so bearer tokens \
         would cross the network in clear. Configure TLS in mayfly.toml:\n\n  [tls]\n  \
         cert_file = \"/etc/mayfly/tls/cert.pem\"\n  key_file = \"/etc/mayfly/tls/key.pem\"\n\n\
         or listen on 127.0.0.1 behind a TLS-terminating proxy, or (dangerous) start with \
         --insecure-http or set insecure_http = true"
    )]
    PlainHttpRefused {
        /// The configured listen address.
        addr: SocketAddr,
    },
}

/// How `mayfly serve` will talk to clients, decided by [`check_listen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS (a `[tls]` section is configured).
    Https,
    /// Plain HTTP on a loopback address.
    LoopbackHttp,
    /// Plain HTTP on a network address, allowed by `insecure_http`: dangerous.
    InsecureHttp,
}

/// Decides the transport: plain HTTP is allowed on loopback, or elsewhere
/// only with `insecure_http`.
pub fn check_listen(
    addr: SocketAddr,
    tls: bool,
    insecure_http: bool,
) -> Result<Transport, TlsError> {
    if tls {
        Ok(Transport::Https)
    } else if addr.ip().is_loopback() {
        Ok(Transport::LoopbackHttp)
    } else if insecure_http {
        Ok(Transport::InsecureHttp)
    } else {
        Err(TlsError::PlainHttpRefused { addr })
    }
}

/// The rustls crypto provider mayfly uses everywhere it builds a TLS config.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Describes a PEM error without echoing file contents (the key file's
/// contents are secret).
fn pem_reason(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::NoItemsFound => "no PEM block of the expected kind found",
        pem::Error::MissingSectionEnd { .. } => "a PEM block has no END line",
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a PEM block is not valid base64",
        _ => "not valid PEM",
    }
}

/// Reads PEM certificates; at least one must be present. `bad` turns a
/// content problem into the caller's error.
fn read_certs(
    what: &'static str,
    path: &Path,
    bad: impl Fn(String) -> TlsError,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(pem_reason(&e).to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// Loads a certificate chain and its private key, checking that they belong
/// together.
pub fn load_certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs("tls.cert_file", cert_file, |reason| {
        TlsError::BadCertificate {
            path: cert_file.to_path_buf(),
            reason,
        }
    })?;
    if let Some(leaf) = chain.first() {
        if let Err(e) = x509_cert::Certificate::from_der(leaf) {
            return Err(TlsError::BadCertificate {
                path: cert_file.to_path_buf(),
                reason: format!("the first certificate is not valid X.509 ({e})"),
            });
        }
    }
    let key_pem = zeroize::Zeroizing::new(read_file("tls.key_file", key_file)?);
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
        path: key_file.to_path_buf(),
        reason: pem_reason(&e).into(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: cert_file.to_path_buf(),
            key: key_file.to_path_buf(),
        },
        // The end-entity certificate failed to parse inside rustls.
        rustls::Error::InvalidCertificate(c) => TlsError::BadCertificate {
            path: cert_file.to_path_buf(),
            reason: format!("the first certificate is unusable ({c:?})"),
        },
        _ => TlsError::BadKey {
            path: key_file.to_path_buf(),
            reason: "the key cannot be used for TLS signatures (unsupported type or curve)".into(),
        },
    })
}

/// Logs the certificate now served (`event` is "loaded" or "reloaded"),
/// as a warning if it has expired.
fn log_served(event: &str, cert_file: &Path, key: &CertifiedKey) {
    let (about, expired) = describe_leaf(key);
    if expired {
        tracing::warn!(cert_file = %cert_file.display(),
            "TLS certificate {event}, but it has EXPIRED and clients will refuse it: {about}");
    } else {
        tracing::info!(cert_file = %cert_file.display(), "TLS certificate {event}: {about}");
    }
}

/// What a log line says about a served certificate (subject, expiry,
/// SHA-256 fingerprint), and whether it has expired.
fn describe_leaf(key: &CertifiedKey) -> (String, bool) {
    let Some(leaf) = key.cert.first() else {
        return ("no certificate".into(), false);
    };
    let fingerprint: String = Sha256::digest(leaf.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let Ok(c) = x509_cert::Certificate::from_der(leaf) else {
        return (format!("sha256 {fingerprint}"), false);
    };
    let not_after = c.tbs_certificate.validity.not_after.to_system_time();
    let left = not_after.duration_since(SystemTime::now()).ok();
    let secs = not_after
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = left
        .map(|d| format!("expires in {} days", d.as_secs() / 86_400))
        .unwrap_or_else(|| "expired".into());
    (
        format!(
            "subject \"{}\", not_after {secs} ({days}), sha256 {fingerprint}",
            c.tbs_certificate.subject
        ),
        left.is_none(),
    )
}

/// Identity of one version of a file on disk: a rename, rewrite or
/// symlink swap (Kubernetes secret volumes) changes at least one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileStamp {
    fn of(path: &Path) -> io::Result<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }
}

/// The server certificate in force, swapped for a new one when the
/// certificate or key file changes; a bad new file leaves the old one
/// serving.
pub struct CertReloader {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The file versions last tried (loaded or refused), so a bad file is
    /// reported once, not on every poll.
    seen: Mutex<Option<(FileStamp, FileStamp)>>,
}

impl fmt::Debug for CertReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertReloader")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl CertReloader {
    /// Loads the certificate and key; fails if they are unusable.
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<CertReloader, TlsError> {
        let stamps = FileStamp::of(cert_file)
            .and_then(|c| FileStamp::of(key_file).map(|k| (c, k)))
            .ok();
        let key = load_certified_key(cert_file, key_file, &provider)?;
        log_served("loaded", cert_file, &key);
        Ok(CertReloader {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(key)),
            seen: Mutex::new(stamps),
        })
    }

    /// The certificate and key served to the next handshake.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads the files if either changed since the last attempt.
    /// `Ok(true)`: a new certificate is in force; `Ok(false)`: nothing
    /// changed; `Err`: the new files are unusable and the old certificate
    /// stays in force (the same files are not retried until they change).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamp = |what, path: &Path| {
            FileStamp::of(path).map_err(|source| TlsError::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        let now = (
            stamp("tls.cert_file", &self.cert_file)?,
            stamp("tls.key_file", &self.key_file)?,
        );
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == Some(now) {
                return Ok(false);
            }
            *seen = Some(now);
        }
        let key = load_certified_key(&self.cert_file, &self.key_file, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(true)
    }

    /// Polls the files every `every` until the returned task is aborted,
    /// logging each reload and each refusal (once per bad version).
    pub fn watch(self: Arc<Self>, every: Duration) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut last_error: Option<String> = None;
            loop {
                tick.tick().await;
                let me = self.clone();
                let outcome = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
                match outcome {
                    Ok(Ok(true)) => {
                        last_error = None;
                        log_served("reloaded", &self.cert_file, &self.current());
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        let msg = e.to_string();
                        if last_error.as_deref() != Some(msg.as_str()) {
                            // Also seen mid-rotation (new cert, old key yet):
                            // the next change of either file retries.
                            tracing::warn!(
                                "TLS certificate not reloaded, the previous one stays in force: {msg}"
                            );
                            last_error = Some(msg);
                        }
                    }
                    Err(e) => tracing::error!("TLS certificate reload task failed: {e}"),
                }
            }
        })
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Why a TLS handshake did not give a connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client did not finish within the handshake timeout.
    #[error("TLS handshake not finished within {0:?}")]
    TimedOut(Duration),
    /// The handshake failed (not TLS, no shared cipher, a client
    /// certificate that does not verify, ...).
    #[error("TLS handshake failed: {0}")]
    Failed(io::Error),
}

/// A loaded `[tls]` configuration, ready to serve.
pub struct ServerTls {
    acceptor: TlsAcceptor,
    reloader: Arc<CertReloader>,
    reload_interval: Duration,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("reloader", &self.reloader)
            .field("reload_interval", &self.reload_interval)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the certificate, key and client CA files and builds the rustls
    /// server configuration (TLS 1.3 and 1.2, ALPN `http/1.1`).
    pub fn load(cfg: &TlsConfig) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let reloader = Arc::new(CertReloader::load(
            &cfg.cert_file,
            &cfg.key_file,
            provider.clone(),
        )?);
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &cfg.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let bad = |reason: String| TlsError::ClientCa {
                    path: path.clone(),
                    reason,
                };
                let mut roots = RootCertStore::empty();
                for cert in read_certs("tls.client_ca_file", path, bad)? {
                    roots.add(cert).map_err(|e| {
                        bad(format!("a certificate is unusable as a trust anchor ({e})"))
                    })?;
                }
                // Requested, not required: bots authenticate with bearer
                // tokens; a presented certificate must still verify.
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| bad(e.to_string()))?;
                tracing::info!(client_ca_file = %path.display(),
                    "TLS client certificates are requested and verified against these CAs");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(reloader.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            reloader,
            reload_interval: cfg.reload_interval,
        })
    }

    /// The certificate reloader (its `current()` is what clients see).
    pub fn reloader(&self) -> &Arc<CertReloader> {
        &self.reloader
    }

    /// Starts polling the certificate files for changes; polling stops
    /// when the returned guard drops.
    pub fn watch_files(&self) -> AbortOnDrop {
        AbortOnDrop(self.reloader.clone().watch(self.reload_interval))
    }

    /// Runs the server side of the handshake on `tcp`, bounded by the
    /// handshake timeout, and reads the verified client certificate's
    /// identity once for the whole connection.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, ClientIdentity), HandshakeError> {
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp))
            .await
            .map_err(|_| HandshakeError::TimedOut(HANDSHAKE_TIMEOUT))?
            .map_err(HandshakeError::Failed)?;
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| client_identity(leaf));
        Ok((tls, ClientIdentity(identity)))
    }
}

/// Aborts a task when dropped, so background work ends with its owner.
#[derive(Debug)]
pub struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The verified TLS client certificate's identity, for handlers that
/// require an operator certificate: the subject DN (RFC 4514, e.g.
/// `CN=alice,O=ops`), or if the subject is empty the first subject
/// alternative name (`DNS:..`, `URI:..`, `email:..`, `IP:..`). `None` when
/// no certificate was presented or the connection is plain HTTP.
///
/// Present on every request as an extension; extracting it never fails.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIdentity {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientIdentity>()
            .cloned()
            .unwrap_or_default())
    }
}

/// The identity string of a (verified) client certificate, as described on
/// [`ClientIdentity`]; `None` if the DER does not parse or names nobody.
pub fn client_identity(cert_der: &[u8]) -> Option<String> {
    let cert = x509_cert::Certificate::from_der(cert_der).ok()?;
    let tbs = &cert.tbs_certificate;
    if !tbs.subject.0.is_empty() {
        return Some(tbs.subject.to_string());
    }
    let (_, san) = tbs.get::<SubjectAltName>().ok()??;
    san.0.iter().find_map(|name| match name {
        GeneralName::DnsName(n) => Some(format!("DNS:{}", n.as_str())),
        GeneralName::UniformResourceIdentifier(u) => Some(format!("URI:{}", u.as_str())),
        GeneralName::Rfc822Name(e) => Some(format!("email:{}", e.as_str())),
        GeneralName::IpAddress(ip) => match ip.as_bytes().len() {
            4 => <[u8; 4]>::try_from(ip.as_bytes())
                .ok()
                .map(|b| format!("IP:{}", std::net::Ipv4Addr::from(b))),
            16 => <[u8; 16]>::try_from(ip.as_bytes())
                .ok()
                .map(|b| format!("IP:{}", std::net::Ipv6Addr::from(b))),
            _ => None,
        },
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, SanType};

    fn ca() -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("test setup");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        let key = KeyPair::generate().expect("test setup");
        let cert = params.self_signed(&key).expect("test setup");
        (cert, Issuer::new(params, key))
    }

    fn leaf(
        issuer: &Issuer<'_, KeyPair>,
        dn: &[(DnType, &str)],
        sans: Vec<SanType>,
    ) -> (rcgen::Certificate, KeyPair) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("test setup");
        params.distinguished_name = DistinguishedName::new();
        for (t, v) in dn {
            params.distinguished_name.push(t.clone(), *v);
        }
        params.subject_alt_names = sans;
        let key = KeyPair::generate().expect("test setup");
        (params.signed_by(&key, issuer).expect("test setup"), key)
    }

    #[test]
    fn identity_is_the_subject_dn() {
        let (_, issuer) = ca();
        let (cert, _) = leaf(
            &issuer,
            &[
                (DnType::OrganizationName, "ops"),
                (DnType::CommonName, "alice"),
            ],
            vec![SanType::DnsName(
                "alice.example".try_into().expect("test setup"),
            )],
        );
        assert_eq!(
            client_identity(cert.der()).as_deref(),
            Some("CN=alice,O=ops")
        );
    }

    #[test]
    fn identity_falls_back_to_the_first_san_when_the_subject_is_empty() {
        let (_, issuer) = ca();
        let (cert, _) = leaf(
            &issuer,
            &[],
            vec![
                SanType::URI("spiffe://example.org/admin".try_into().expect("test setup")),
                SanType::DnsName("bot.example".try_into().expect("test setup")),
            ],
        );
        assert_eq!(
            client_identity(cert.der()).as_deref(),
            Some("URI:spiffe://example.org/admin")
        );
        let (cert, _) = leaf(&issuer, &[], vec![SanType::IpAddress([10, 0, 0, 1].into())]);
        assert_eq!(client_identity(cert.der()).as_deref(), Some("IP:10.0.0.1"));
    }

    #[test]
    fn identity_of_garbage_or_an_anonymous_cert_is_none() {
        assert_eq!(client_identity(b"not a certificate"), None);
        let (_, issuer) = ca();
        let (cert, _) = leaf(&issuer, &[], vec![]);
        assert_eq!(client_identity(cert.der()), None);
    }

    #[tokio::test]
    async fn identity_extractor_defaults_to_none_on_plain_http() {
        let (mut parts, ()) = axum::http::Request::new(()).into_parts();
        let got = ClientIdentity::from_request_parts(&mut parts, &()).await;
        assert_eq!(got, Ok(ClientIdentity(None)));
        parts
            .extensions
            .insert(ClientIdentity(Some("CN=alice".into())));
        let got = ClientIdentity::from_request_parts(&mut parts, &()).await;
        assert_eq!(got, Ok(ClientIdentity(Some("CN=alice".into()))));
    }

    #[test]
    fn plain_http_is_refused_off_loopback_unless_insecure() {
        let lo: SocketAddr = "127.0.0.1:8400".parse().expect("test setup");
        let lo6: SocketAddr = "[::1]:8400".parse().expect("test setup");
        let any: SocketAddr = "0.0.0.0:8400".parse().expect("test setup");
        assert_eq!(
            check_listen(lo, false, false).expect("test setup"),
            Transport::LoopbackHttp
        );
        assert_eq!(
            check_listen(lo6, false, false).expect("test setup"),
            Transport::LoopbackHttp
        );
        assert_eq!(
            check_listen(any, true, false).expect("test setup"),
            Transport::Https
        );
        assert_eq!(
            check_listen(any, false, true).expect("test setup"),
            Transport::InsecureHttp
        );
        let err = check_listen(any, false, false)
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("0.0.0.0:8400"), "{err}");
        assert!(
            err.contains("[tls]") && err.contains("--insecure-http"),
            "{err}"
        );
    }

    fn write_atomic(path: &Path, data: &[u8]) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, data).expect("test setup");
        std::fs::rename(&tmp, path).expect("test setup");
    }

    struct Files {
        dir: tempfile::TempDir,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Files {
        fn new() -> Files {
            Files {
                dir: tempfile::tempdir().expect("test setup"),
                issuer: ca().1,
            }
        }
        fn cert(&self) -> PathBuf {
            self.dir.path().join("cert.pem")
        }
        fn key(&self) -> PathBuf {
            self.dir.path().join("key.pem")
        }
        /// Writes a fresh server cert + key; returns the cert DER.
        fn rotate(&self) -> Vec<u8> {
            let (cert, key) = leaf(
                &self.issuer,
                &[(DnType::CommonName, "mayfly")],
                vec![SanType::DnsName(
                    "localhost".try_into().expect("test setup"),
                )],
            );
            write_atomic(&self.cert(), cert.pem().as_bytes());
            write_atomic(&self.key(), key.serialize_pem().as_bytes());
            cert.der().to_vec()
        }
    }

    #[test]
    fn changed_files_are_reloaded_and_bad_ones_keep_the_old_certificate() {
        let f = Files::new();
        let first = f.rotate();
        let r = CertReloader::load(&f.cert(), &f.key(), provider()).expect("test setup");
        assert_eq!(r.current().cert[0].as_ref(), &first[..]);
        assert!(
            !r.reload_if_changed().expect("test setup"),
            "nothing changed yet"
        );

        let second = f.rotate();
        assert!(r.reload_if_changed().expect("test setup"));
        assert_eq!(r.current().cert[0].as_ref(), &second[..]);

        write_atomic(&f.cert(), b"garbage\n");
        let err = r.reload_if_changed().expect_err("must fail");
        assert!(matches!(err, TlsError::BadCertificate { .. }), "{err}");
        assert_eq!(r.current().cert[0].as_ref(), &second[..], "old cert stays");
        assert!(
            !r.reload_if_changed().expect("test setup"),
            "a bad version is tried once"
        );

        let third = f.rotate();
        assert!(r.reload_if_changed().expect("test setup"));
        assert_eq!(r.current().cert[0].as_ref(), &third[..]);
    }

    #[test]
    fn an_expired_certificate_still_loads_but_is_reported_as_expired() {
        let f = Files::new();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &f.issuer).expect("sign");
        write_atomic(&f.cert(), cert.pem().as_bytes());
        write_atomic(&f.key(), key.serialize_pem().as_bytes());
        let loaded = load_certified_key(&f.cert(), &f.key(), &provider()).expect("loads");
        let (about, expired) = describe_leaf(&loaded);
        assert!(expired, "{about}");
        assert!(about.contains("not_after 978307200"), "{about}");
        f.rotate();
        let loaded = load_certified_key(&f.cert(), &f.key(), &provider()).expect("loads");
        let (about, expired) = describe_leaf(&loaded);
        assert!(
            !expired && about.contains("subject \"CN=mayfly\""),
            "{about}"
        );
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let f = Files::new();
        f.rotate();
        let other = KeyPair::generate().expect("test setup");
        write_atomic(&f.key(), other.serialize_pem().as_bytes());
        let err = load_certified_key(&f.cert(), &f.key(), &provider()).expect_err("must fail");
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn unreadable_or_empty_files_name_the_file_and_the_fix() {
        let f = Files::new();
        f.rotate();
        std::fs::write(f.key(), "-----BEGIN PRIVATE KEY-----\nAAAA\n").expect("test setup");
        let err = load_certified_key(&f.cert(), &f.key(), &provider()).expect_err("must fail");
        let s = err.to_string();
        assert!(matches!(err, TlsError::BadKey { .. }), "{s}");
        assert!(s.contains("key.pem") && s.contains("PRIVATE KEY"), "{s}");
        std::fs::write(f.cert(), "").expect("test setup");
        let err = load_certified_key(&f.cert(), &f.key(), &provider()).expect_err("must fail");
        assert!(matches!(err, TlsError::BadCertificate { .. }), "{err}");
        let missing = f.dir.path().join("nope.pem");
        let err = load_certified_key(&missing, &f.key(), &provider()).expect_err("must fail");
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }

    fn pem_block(label: &str, der: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("test setup"))
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    /// The inner key of a PKCS#8 PrivateKeyInfo: PKCS#1 RSAPrivateKey or
    /// SEC1 ECPrivateKey, the formats `openssl genrsa`/`ecparam` write.
    fn pkcs8_inner(pkcs8: &[u8]) -> Vec<u8> {
        use x509_cert::der::asn1::OctetString;
        use x509_cert::der::{Reader, SliceReader};
        let mut r = SliceReader::new(pkcs8).expect("test setup");
        let key: OctetString = r
            .sequence(|r| {
                let _version: u8 = r.decode()?;
                let _alg: x509_cert::spki::AlgorithmIdentifierOwned = r.decode()?;
                r.decode()
            })
            .expect("test setup");
        key.as_bytes().to_vec()
    }

    #[test]
    fn rsa_pkcs1_and_sec1_keys_load() {
        let f = Files::new();
        for (key, label) in [
            (
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                    .expect("test setup"),
                "RSA PRIVATE KEY",
            ),
            (KeyPair::generate().expect("test setup"), "EC PRIVATE KEY"),
        ] {
            let mut params =
                CertificateParams::new(vec!["localhost".to_string()]).expect("test setup");
            params.distinguished_name = DistinguishedName::new();
            let cert = params.signed_by(&key, &f.issuer).expect("test setup");
            let inner = pkcs8_inner(&key.serialize_der());
            write_atomic(&f.cert(), cert.pem().as_bytes());
            write_atomic(&f.key(), pem_block(label, &inner).as_bytes());
            load_certified_key(&f.cert(), &f.key(), &provider())
                .unwrap_or_else(|e| panic!("{label}: {e}"));
        }
    }
}
