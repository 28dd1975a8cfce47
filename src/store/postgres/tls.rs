//! TLS to PostgreSQL with rustls (aws-lc-rs, as the HTTPS side), doing
//! what `sslmode` asks ([`super::url::SslMode`]):
//!
//! * `verify-full`: the certificate chains to a trusted root and names the
//!   host (rustls' WebPKI verifier).
//! * `verify-ca`: the certificate chains to a trusted root; its names are
//!   not checked (for servers reached by an address their certificate does
//!   not list).
//! * `prefer` / `require` without `sslrootcert`: encrypted but not
//!   verified, as libpq does. The handshake signature is still checked, so
//!   SCRAM channel binding binds to the certificate actually presented.
//!
//! Roots: the PEM file named by `sslrootcert`, else the system's trust
//! store (`rustls-native-certs`): a database's CA is usually a private one
//! that operators install system-wide, which a bundled web root list would
//! not have.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::url::{Roots, SslMode};

/// The connector for `mode`, or an error that says what to fix.
pub fn connector(
    mode: SslMode,
    roots: &Roots,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS to PostgreSQL: {e}"))?;
    let config = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CertCheck {
                roots: None,
                provider,
            }))
            .with_no_client_auth(),
        SslMode::VerifyCa => {
            let roots = Arc::new(load_roots(roots)?);
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(CertCheck {
                    roots: Some(roots),
                    provider,
                }))
                .with_no_client_auth()
        }
        SslMode::VerifyFull => builder
            .with_root_certificates(load_roots(roots)?)
            .with_no_client_auth(),
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The trusted roots, or why there are none.
fn load_roots(roots: &Roots) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let certs = read_pem(path)?;
            let (added, _ignored) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "store.url sslrootcert={}: no usable CA certificate in the file",
                    path.display()
                ));
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "sslmode=verify-ca/verify-full without sslrootcert uses the system trust \
                     store, which has no certificates here; set sslrootcert=/path/to/ca.pem in \
                     store.url (or install the CA certificates package)"
                        .into(),
                );
            }
        }
    }
    Ok(store)
}

fn read_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "store.url sslrootcert={}: cannot read it: {e}",
            path.display()
        )
    })?;
    CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "store.url sslrootcert={}: not a PEM certificate file: {e}",
                path.display()
            )
        })
}

fn signature_schemes(provider: &CryptoProvider) -> Vec<SignatureScheme> {
    provider
        .signature_verification_algorithms
        .supported_schemes()
}

/// The server certificate check of `prefer`/`require` (`roots: None`: any
/// certificate, as libpq) and of `verify-ca` (the chain must reach a trusted
/// root, validity dates and key usage included; the names in the
/// certificate are not checked). Handshake signatures are verified against
/// the certificate either way.
#[derive(Debug)]
struct CertCheck {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for CertCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_schemes(&self.provider)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_missing_or_empty_root_file_is_refused_with_its_name() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("none.pem");
        let e = connector(SslMode::VerifyFull, &Roots::File(missing.clone()))
            .err()
            .unwrap();
        assert!(e.contains("cannot read") && e.contains("none.pem"), "{e}");
        let empty = d.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = connector(SslMode::VerifyCa, &Roots::File(empty))
            .err()
            .unwrap();
        assert!(e.contains("no usable CA certificate"), "{e}");
        // Modes that do not verify need no roots.
        assert!(connector(SslMode::Require, &Roots::File(missing)).is_ok());
    }
}
