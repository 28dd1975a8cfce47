//! The one HTTP client builder of mayfly's outbound sides: the bot
//! (`mayfly cert`, `mayfly ssh`, `mayfly request`), the host agent
//! (`mayfly host sync`, `host cert`, `known-hosts`) and the CI token
//! source. Each side keeps its own timeouts and user agent; the rules that
//! keep a token or a trust file from going astray are applied here, once:
//!
//! - **No redirects.** A redirect could lead from https to http, or to
//!   another host, which would then get the bearer token (bot side) or
//!   choose which CA a host trusts (host side). A 3xx answer is returned
//!   as it is; [`redirect_refusal`] words it for the user.
//! - **TLS 1.2 or newer, rustls**, with the built-in web roots, or with
//!   *only* the certificates of a `--ca-file` (like curl `--cacert`), which
//!   then requires an `https://` server: a private CA is never added on top
//!   of the web roots, and a CA file with a plain-http URL is a mistake
//!   worth stopping at.

use std::path::Path;
use std::time::Duration;

/// What a side asks of its client.
#[derive(Debug, Clone, Copy)]
pub struct ClientSpec<'a> {
    /// The server the client is for (checked against `ca_file`).
    pub base: &'a url::Url,
    /// Trust only the PEM certificates in this file (`--ca-file`).
    pub ca_file: Option<&'a Path>,
    /// Limit for connecting (TCP and TLS).
    pub connect_timeout: Duration,
    /// Limit for a whole request.
    pub timeout: Duration,
    /// `User-Agent` header, if the side sends one.
    pub user_agent: Option<&'static str>,
    /// A TLS client certificate to present: PEM certificate (chain) file
    /// and PEM private key file (`--client-cert`, `--client-key`).
    pub identity: Option<(&'a Path, &'a Path)>,
}

/// Why no client was built. Each side words these for its own flags.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// A CA file was given for a server that is not `https://`.
    #[error("is for a CA served over TLS, but {base} is not https")]
    CaFileNeedsHttps {
        /// The server URL.
        base: String,
    },
    /// The CA file cannot be read.
    #[error(transparent)]
    ReadCaFile(std::io::Error),
    /// The CA file is not PEM.
    #[error("{0}")]
    ParseCaFile(String),
    /// The CA file holds no certificate.
    #[error("holds no PEM certificate")]
    NoCertificate,
    /// The TLS stack refused the configuration.
    #[error(transparent)]
    Build(reqwest::Error),
    /// A client certificate was given for a server that is not `https://`.
    #[error("a client certificate is for a CA served over TLS, but {base} is not https")]
    IdentityNeedsHttps {
        /// The server URL.
        base: String,
    },
    /// The client certificate or key file cannot be read.
    #[error("{path}: {source}")]
    ReadIdentity {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The client certificate and key are not a usable PEM pair.
    #[error(
        "the client certificate and key are not a usable PEM certificate and private key: {0}"
    )]
    ParseIdentity(String),
}

/// Builds the client for `spec` with the rules in the module doc.
pub fn build(spec: &ClientSpec<'_>) -> Result<reqwest::Client, HttpClientError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(spec.connect_timeout)
        .timeout(spec.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .min_tls_version(reqwest::tls::Version::TLS_1_2);
    if let Some(ua) = spec.user_agent {
        b = b.user_agent(ua);
    }
    if let Some(path) = spec.ca_file {
        if spec.base.scheme() != "https" {
            return Err(HttpClientError::CaFileNeedsHttps {
                base: spec.base.to_string(),
            });
        }
        let pem = std::fs::read(path).map_err(HttpClientError::ReadCaFile)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| HttpClientError::ParseCaFile(e.to_string()))?;
        if certs.is_empty() {
            return Err(HttpClientError::NoCertificate);
        }
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if let Some((cert, key)) = spec.identity {
        if spec.base.scheme() != "https" {
            return Err(HttpClientError::IdentityNeedsHttps {
                base: spec.base.to_string(),
            });
        }
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| HttpClientError::ReadIdentity {
                path: p.display().to_string(),
                source,
            })
        };
        // The private key is a secret: wiped from memory once reqwest has it.
        let mut pem = zeroize::Zeroizing::new(read(cert)?);
        pem.push(b'\n');
        pem.extend_from_slice(&zeroize::Zeroizing::new(read(key)?));
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|e| HttpClientError::ParseIdentity(e.to_string()))?;
        b = b.identity(id);
    }
    b.build().map_err(HttpClientError::Build)
}

/// For a redirect answer (3xx other than 304 Not Modified): what to tell
/// the user, naming where it pointed. `None` for any other answer.
pub fn redirect_refusal(resp: &reqwest::Response) -> Option<String> {
    let status = resp.status();
    if !status.is_redirection() || status == reqwest::StatusCode::NOT_MODIFIED {
        return None;
    }
    let to = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| l.chars().take(200).collect::<String>())
        .unwrap_or_else(|| "nowhere".into());
    Some(format!(
        "the server answered HTTP {} with a redirect to {to}; mayfly does not follow redirects, so that nothing is sent to another address: give the final URL",
        status.as_u16()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A server answering every request with `answer`; counts connections.
    async fn serve(answer: String) -> (url::Url, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url =
            url::Url::parse(&format!("http://{}/", l.local_addr().expect("addr"))).expect("url");
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                h.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        (url, hits)
    }

    fn spec(base: &url::Url) -> ClientSpec<'_> {
        ClientSpec {
            base,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            user_agent: None,
            identity: None,
        }
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (target, target_hits) =
            serve("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".into())
                .await;
        let (from, _) = serve(format!(
            "HTTP/1.1 302 Found\r\nlocation: {target}stolen\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ))
        .await;
        let client = build(&spec(&from)).expect("client");
        let resp = client
            .get(from.clone())
            .bearer_auth("secret")
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status(), reqwest::StatusCode::FOUND);
        let why = redirect_refusal(&resp).expect("a redirect is refused");
        assert!(why.contains(&format!("{target}stolen")), "{why}");
        assert_eq!(target_hits.load(Ordering::SeqCst), 0, "redirect followed");
    }

    #[tokio::test]
    async fn not_modified_is_no_redirect() {
        let (from, _) =
            serve("HTTP/1.1 304 Not Modified\r\nconnection: close\r\n\r\n".into()).await;
        let client = build(&spec(&from)).expect("client");
        let resp = client.get(from.clone()).send().await.expect("answer");
        assert_eq!(resp.status(), reqwest::StatusCode::NOT_MODIFIED);
        assert_eq!(redirect_refusal(&resp), None);
    }

    #[test]
    fn ca_file_needs_https_and_a_certificate() {
        let http = url::Url::parse("http://ca.example/").expect("url");
        let https = url::Url::parse("https://ca.example/").expect("url");
        let dir = tempfile::tempdir().expect("tmp");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").expect("write");
        let with = |base, file| ClientSpec {
            ca_file: Some(file),
            ..spec(base)
        };
        assert!(matches!(
            build(&with(&http, &empty)),
            Err(HttpClientError::CaFileNeedsHttps { .. })
        ));
        assert!(matches!(
            build(&with(&https, &empty)),
            Err(HttpClientError::NoCertificate)
        ));
        assert!(matches!(
            build(&with(&https, &dir.path().join("missing.pem"))),
            Err(HttpClientError::ReadCaFile(_))
        ));
    }
}
