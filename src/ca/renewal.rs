//! Renewal proofs: how a bot that holds a live certificate asks for its
//! successor (`mayfly exec` renews before expiry).
//!
//! A renewal request carries the certificate it renews and an SSH signature
//! (`SSHSIG`, namespace [`NAMESPACE`]) made with that certificate's private
//! key over [`message`]: the new key's fingerprint and, for roles that need
//! approval, the approval request id. The CA checks the proof here (CA
//! signature, validity now, the signature over the message) and that the
//! certificate is the same identity's in the same role; the store then
//! refuses a renewal whose certificate was revoked, in the issuance's own
//! commit. So a renewal never outlives a revocation, and an approval's
//! renewals form one chain held by whoever holds the latest key.

use ssh_key::{HashAlg, LineEnding, PrivateKey};

use super::{Authority, SubjectKey};

/// SSHSIG namespace of renewal proofs (never valid for another purpose).
pub const NAMESPACE: &str = "renewal@mayfly";

/// The signed message: what the old key vouches for.
pub fn message(new_key_fingerprint: &str, approval_request: Option<&str>) -> Vec<u8> {
    format!(
        "mayfly renewal v1\nnew-key {new_key_fingerprint}\napproval {}\n",
        approval_request.unwrap_or("-")
    )
    .into_bytes()
}

/// Bot side: signs the renewal message with the key of the certificate
/// being renewed. Returns the armored `SSHSIG`.
pub fn sign(
    old_key: &PrivateKey,
    new_key_fingerprint: &str,
    approval_request: Option<&str>,
) -> Result<String, ssh_key::Error> {
    let msg = message(new_key_fingerprint, approval_request);
    old_key
        .sign(NAMESPACE, HashAlg::Sha512, &msg)?
        .to_pem(LineEnding::LF)
}

/// The certificate a verified renewal replaces, as the store checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousCert {
    /// OpenSSH line of the CA key that signed it (as audit records name it).
    pub ca_key: String,
    /// Its serial.
    pub serial: u64,
    /// Its key id.
    pub key_id: String,
    /// `SHA256:` fingerprint of its key.
    pub key_fingerprint: String,
    /// End of its validity (unix seconds).
    pub valid_before: u64,
}

impl PreviousCert {
    /// Whether it still counts as a valid certificate at `now`.
    pub fn valid_at(&self, now: u64) -> bool {
        now < self.valid_before
    }
}

/// Why a renewal proof was refused; each says what is wrong, never echoes
/// the proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenewalError {
    /// The certificate does not parse.
    #[error("renewal.certificate is not an OpenSSH certificate: {0}")]
    Certificate(String),
    /// Not signed by a CA key this CA publishes.
    #[error("renewal.certificate was not signed by a user CA key this CA publishes")]
    UnknownCa,
    /// Signed by us, but the signature or validity does not check out.
    #[error("renewal.certificate is not valid now (expired, not yet valid, or its signature does not verify); request a new certificate instead")]
    NotValid,
    /// A certificate of another identity or role.
    #[error("renewal.certificate was issued to another identity or role (key id {0:?})")]
    OtherIdentity(String),
    /// The signature does not parse.
    #[error("renewal.signature is not an armored SSH signature: {0}")]
    Signature(String),
    /// The signature is not over this request by the certificate's key.
    #[error("renewal.signature does not verify: it must be made with the renewed certificate's key over this request's new key")]
    BadSignature,
}

/// CA side: checks a renewal proof for a request by `(role, issuer,
/// subject)` to certify `new_key`, against the CA keys that signed user
/// certificates (`authorities`, as published), at `now`.
#[allow(clippy::too_many_arguments)]
pub fn verify(
    certificate: &str,
    signature: &str,
    new_key: &SubjectKey,
    approval_request: Option<&str>,
    identity: (&str, &str, &str),
    authorities: &[&Authority],
    now: u64,
) -> Result<PreviousCert, RenewalError> {
    use super::proof::{certified, signed_by, CertProblem, SignatureProblem};
    let (cert, ca) = certified(
        certificate,
        ssh_key::certificate::CertType::User,
        authorities,
        now,
    )
    .map_err(|p| match p {
        CertProblem::Parse(e) => RenewalError::Certificate(e),
        CertProblem::UnknownCa => RenewalError::UnknownCa,
        CertProblem::NotValid => RenewalError::NotValid,
    })?;
    let (role, issuer, subject) = identity;
    if cert.key_id() != super::key_id(role, issuer, subject, cert.serial()) {
        return Err(RenewalError::OtherIdentity(cert.key_id().to_string()));
    }
    let msg = message(&new_key.fingerprint(), approval_request);
    signed_by(&cert, NAMESPACE, &msg, signature).map_err(|p| match p {
        SignatureProblem::Parse(e) => RenewalError::Signature(e),
        SignatureProblem::Bad => RenewalError::BadSignature,
    })?;
    Ok(PreviousCert {
        ca_key: ca.public_key_line(),
        serial: cert.serial(),
        key_id: cert.key_id().to_string(),
        key_fingerprint: cert.public_key().fingerprint(HashAlg::Sha256).to_string(),
        valid_before: cert.valid_before(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CaKey, CertKind, CertSpec, Principal};
    use rand_core::OsRng;

    const NOW: u64 = 1_700_000_100;
    const IDENTITY: (&str, &str, &str) = ("deploy", "gh", "repo:acme/api");

    fn key() -> PrivateKey {
        PrivateKey::random(&mut OsRng, ssh_key::Algorithm::Ed25519).unwrap()
    }

    fn subject(k: &PrivateKey) -> SubjectKey {
        SubjectKey::parse(&k.public_key().to_openssh().unwrap()).unwrap()
    }

    fn cert(ca: &Authority, k: &PrivateKey, key_id: String) -> String {
        let spec = CertSpec {
            kind: CertKind::User,
            subject: subject(k),
            serial: 7,
            key_id,
            principals: vec![Principal::parse("deploy").unwrap()],
            valid_after: crate::time::UnixSecs(NOW - 60),
            valid_before: crate::time::UnixSecs(NOW + 300),
            extensions: vec![],
            force_command: None,
            source_address: vec![],
        };
        ca.mint(&spec).unwrap().to_openssh().unwrap()
    }

    struct Case {
        ca: Authority,
        old: PrivateKey,
        new: SubjectKey,
        cert: String,
    }

    fn case() -> Case {
        let ca = Authority::new(CaKey::generate());
        let old = key();
        let (r, i, s) = IDENTITY;
        let cert = cert(&ca, &old, crate::ca::key_id(r, i, s, 7));
        Case {
            ca,
            old,
            new: subject(&key()),
            cert,
        }
    }

    fn check(
        c: &Case,
        sig: &str,
        approval: Option<&str>,
        now: u64,
    ) -> Result<PreviousCert, RenewalError> {
        verify(&c.cert, sig, &c.new, approval, IDENTITY, &[&c.ca], now)
    }

    #[test]
    fn a_proof_by_the_certified_key_verifies_and_names_the_certificate() {
        let c = case();
        let sig = sign(&c.old, &c.new.fingerprint(), Some("apr_1")).unwrap();
        let prev = check(&c, &sig, Some("apr_1"), NOW).unwrap();
        assert_eq!(prev.serial, 7);
        assert_eq!(prev.ca_key, c.ca.public_key_line());
        assert_eq!(prev.key_fingerprint, subject(&c.old).fingerprint());
        assert_eq!(prev.valid_before, NOW + 300);
    }

    #[test]
    fn a_proof_for_another_new_key_or_approval_is_refused() {
        let c = case();
        let other = subject(&key());
        let sig = sign(&c.old, &other.fingerprint(), None).unwrap();
        assert_eq!(check(&c, &sig, None, NOW), Err(RenewalError::BadSignature));
        let sig = sign(&c.old, &c.new.fingerprint(), Some("apr_1")).unwrap();
        assert_eq!(
            check(&c, &sig, Some("apr_2"), NOW),
            Err(RenewalError::BadSignature)
        );
        assert_eq!(check(&c, &sig, None, NOW), Err(RenewalError::BadSignature));
    }

    #[test]
    fn a_proof_signed_by_another_key_is_refused() {
        let c = case();
        let sig = sign(&key(), &c.new.fingerprint(), None).unwrap();
        assert_eq!(check(&c, &sig, None, NOW), Err(RenewalError::BadSignature));
    }

    #[test]
    fn an_expired_certificate_cannot_be_renewed() {
        let c = case();
        let sig = sign(&c.old, &c.new.fingerprint(), None).unwrap();
        assert_eq!(
            check(&c, &sig, None, NOW + 300),
            Err(RenewalError::NotValid)
        );
        assert!(check(&c, &sig, None, NOW + 299).is_ok());
    }

    #[test]
    fn a_certificate_from_another_ca_or_identity_is_refused() {
        let c = case();
        let sig = sign(&c.old, &c.new.fingerprint(), None).unwrap();
        let stranger = Authority::new(CaKey::generate());
        assert_eq!(
            verify(&c.cert, &sig, &c.new, None, IDENTITY, &[&stranger], NOW),
            Err(RenewalError::UnknownCa)
        );
        let other = ("deploy", "gh", "repo:acme/other");
        assert!(matches!(
            verify(&c.cert, &sig, &c.new, None, other, &[&c.ca], NOW),
            Err(RenewalError::OtherIdentity(_))
        ));
        let other_role = ("admin", "gh", "repo:acme/api");
        assert!(matches!(
            verify(&c.cert, &sig, &c.new, None, other_role, &[&c.ca], NOW),
            Err(RenewalError::OtherIdentity(_))
        ));
    }

    #[test]
    fn garbage_is_a_clear_error_not_a_panic() {
        let c = case();
        let sig = sign(&c.old, &c.new.fingerprint(), None).unwrap();
        let bad = |cert: &str, sig: &str| {
            verify(cert, sig, &c.new, None, IDENTITY, &[&c.ca], NOW).unwrap_err()
        };
        assert!(matches!(
            bad("ssh-ed25519 AAAA", &sig),
            RenewalError::Certificate(_)
        ));
        assert!(matches!(
            bad(&c.cert, "not a signature"),
            RenewalError::Signature(_)
        ));
    }
}
