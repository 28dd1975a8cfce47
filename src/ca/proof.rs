//! Certificates presented back to the CA as proof (a renewal, a host's
//! sync report): one of ours, of the right type, valid now, and an SSHSIG
//! made with its key. One check for every caller, so none can skip a step.

use ssh_key::certificate::CertType;
use ssh_key::{Certificate, HashAlg, SshSig};

use super::Authority;

/// Why a presented certificate is no proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertProblem {
    /// It does not parse.
    Parse(String),
    /// None of the given CA keys signed it.
    UnknownCa,
    /// Its signature or validity does not check out at this time, or it is
    /// of the other type (user/host).
    NotValid,
}

/// Why a presented signature is no proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureProblem {
    /// It does not parse.
    Parse(String),
    /// It is not over this message by the certified key.
    Bad,
}

/// `certificate` if one of `authorities` signed it, it is of `kind`, and
/// it is valid at `now`; with the authority that signed it.
pub fn certified<'a>(
    certificate: &str,
    kind: CertType,
    authorities: &[&'a Authority],
    now: u64,
) -> Result<(Certificate, &'a Authority), CertProblem> {
    let cert = Certificate::from_openssh(certificate.trim())
        .map_err(|e| CertProblem::Parse(e.to_string()))?;
    let ca = authorities
        .iter()
        .find(|a| a.public_key() == cert.signature_key())
        .copied()
        .ok_or(CertProblem::UnknownCa)?;
    let ca_fp = cert.signature_key().fingerprint(HashAlg::Sha256);
    cert.validate_at(now, [&ca_fp])
        .map_err(|_| CertProblem::NotValid)?;
    if cert.cert_type() != kind {
        return Err(CertProblem::NotValid);
    }
    Ok((cert, ca))
}

/// Checks that `signature` (armored SSHSIG) is `cert`'s key's over `msg` in
/// `namespace`.
pub fn signed_by(
    cert: &Certificate,
    namespace: &str,
    msg: &[u8],
    signature: &str,
) -> Result<(), SignatureProblem> {
    let sig = SshSig::from_pem(signature.trim().as_bytes())
        .map_err(|e| SignatureProblem::Parse(e.to_string()))?;
    ssh_key::PublicKey::from(cert.public_key().clone())
        .verify(namespace, msg, &sig)
        .map_err(|_| SignatureProblem::Bad)
}
