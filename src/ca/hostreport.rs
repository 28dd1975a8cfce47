//! Host sync reports: how `mayfly host sync` proves which host is reporting.
//!
//! A report is signed like a renewal proof (`renewal.rs`): an `SSHSIG`
//! (namespace [`NAMESPACE`], never valid for another purpose) over the
//! exact report text, made with the host's private key, sent with the host
//! certificate this CA issued for that key. The CA checks here that the
//! certificate is a host certificate signed by a host-CA key it publishes,
//! valid now, and that the signature is by the certified key over these
//! bytes. The caller then checks that the reported host name is one of the
//! certificate's principals (a host cannot report for another), that the
//! report is fresh (its time is in the signed text), and that the
//! certificate is not revoked. So nobody without a host key the CA
//! certified can write a report, and a report cannot be replayed for long.

use ssh_key::{HashAlg, LineEnding, PrivateKey};

use super::Authority;

/// SSHSIG namespace of host reports.
pub const NAMESPACE: &str = "host-report@mayfly";

/// Host side: signs `report` (the exact bytes sent) with the host key.
/// Returns the armored `SSHSIG`.
pub fn sign(host_key: &PrivateKey, report: &[u8]) -> Result<String, ssh_key::Error> {
    host_key
        .sign(NAMESPACE, HashAlg::Sha512, report)?
        .to_pem(LineEnding::LF)
}

/// The certificate behind a verified report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reporter {
    /// Host names the certificate is valid for.
    pub principals: Vec<String>,
    /// Its serial.
    pub serial: u64,
    /// Its key id.
    pub key_id: String,
    /// OpenSSH line of the host-CA key that signed it.
    pub ca_key: String,
}

/// Why a report's proof was refused; each says what is wrong, never echoes
/// the proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportProofError {
    /// The certificate does not parse.
    #[error("certificate is not an OpenSSH certificate: {0}")]
    Certificate(String),
    /// Not a host certificate of a host-CA key this CA publishes.
    #[error("certificate was not signed by a host CA key this CA publishes (get one with `mayfly host cert`)")]
    UnknownCa,
    /// Signed by us, but not valid now (or not a host certificate).
    #[error("certificate is not a valid host certificate now (expired, not yet valid, or a user certificate); renew it with `mayfly host cert`")]
    NotValid,
    /// The signature does not parse.
    #[error("signature is not an armored SSH signature: {0}")]
    Signature(String),
    /// The signature is not over this report by the certified key.
    #[error(
        "signature does not verify: it must be made with the certified host key over this report"
    )]
    BadSignature,
}

/// CA side: checks that `signature` is the certified host key's over
/// `report`, and that `certificate` is a host certificate valid at `now`
/// signed by one of `authorities` (the published host-CA keys).
pub fn verify(
    report: &[u8],
    certificate: &str,
    signature: &str,
    authorities: &[&Authority],
    now: u64,
) -> Result<Reporter, ReportProofError> {
    use super::proof::{certified, signed_by, CertProblem, SignatureProblem};
    let (cert, ca) = certified(
        certificate,
        ssh_key::certificate::CertType::Host,
        authorities,
        now,
    )
    .map_err(|p| match p {
        CertProblem::Parse(e) => ReportProofError::Certificate(e),
        CertProblem::UnknownCa => ReportProofError::UnknownCa,
        CertProblem::NotValid => ReportProofError::NotValid,
    })?;
    signed_by(&cert, NAMESPACE, report, signature).map_err(|p| match p {
        SignatureProblem::Parse(e) => ReportProofError::Signature(e),
        SignatureProblem::Bad => ReportProofError::BadSignature,
    })?;
    Ok(Reporter {
        principals: cert.valid_principals().to_vec(),
        serial: cert.serial(),
        key_id: cert.key_id().to_string(),
        ca_key: ca.public_key_line(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ca::{CaKey, CertKind, CertSpec, Principal, SubjectKey};
    use rand_core::OsRng;

    const NOW: u64 = 1_700_000_100;

    fn key() -> PrivateKey {
        PrivateKey::random(&mut OsRng, ssh_key::Algorithm::Ed25519).unwrap()
    }

    fn cert(ca: &Authority, k: &PrivateKey, kind: CertKind) -> String {
        let spec = CertSpec {
            kind,
            subject: SubjectKey::parse(&k.public_key().to_openssh().unwrap()).unwrap(),
            serial: 9,
            key_id: "host-web1".into(),
            principals: vec![Principal::parse("web1.example.com").unwrap()],
            valid_after: crate::time::UnixSecs(NOW - 60),
            valid_before: crate::time::UnixSecs(NOW + 300),
            extensions: vec![],
            force_command: None,
            source_address: vec![],
        };
        ca.mint(&spec).unwrap().to_openssh().unwrap()
    }

    #[test]
    fn a_report_signed_by_the_certified_host_key_verifies() {
        let ca = Authority::new(CaKey::generate());
        let k = key();
        let c = cert(&ca, &k, CertKind::Host);
        let sig = sign(&k, b"report").unwrap();
        let who = verify(b"report", &c, &sig, &[&ca], NOW).unwrap();
        assert_eq!(who.principals, ["web1.example.com"]);
        assert_eq!(who.serial, 9);
    }

    #[test]
    fn other_bytes_keys_cas_user_certs_and_expired_certs_are_refused() {
        let ca = Authority::new(CaKey::generate());
        let k = key();
        let c = cert(&ca, &k, CertKind::Host);
        let sig = sign(&k, b"report").unwrap();
        assert_eq!(
            verify(b"other", &c, &sig, &[&ca], NOW),
            Err(ReportProofError::BadSignature)
        );
        let forged = sign(&key(), b"report").unwrap();
        assert_eq!(
            verify(b"report", &c, &forged, &[&ca], NOW),
            Err(ReportProofError::BadSignature)
        );
        let other_ca = Authority::new(CaKey::generate());
        assert_eq!(
            verify(b"report", &c, &sig, &[&other_ca], NOW),
            Err(ReportProofError::UnknownCa)
        );
        assert_eq!(
            verify(b"report", &c, &sig, &[&ca], NOW + 1000),
            Err(ReportProofError::NotValid)
        );
        let user = cert(&ca, &k, CertKind::User);
        assert_eq!(
            verify(b"report", &user, &sig, &[&ca], NOW),
            Err(ReportProofError::NotValid)
        );
        assert!(verify(b"report", "garbage", &sig, &[&ca], NOW).is_err());
        assert!(verify(b"report", &c, "garbage", &[&ca], NOW).is_err());
    }
}
