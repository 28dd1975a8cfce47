//! The one signing interface of the CA: a file key held in memory and a key
//! inside an HSM (PKCS#11) are interchangeable behind [`CaSigner`].

use ssh_key::public::KeyData;

/// Why a signature could not be made.
#[derive(Debug, thiserror::Error)]
#[error("CA signing failed: {0}")]
pub struct SignError(pub String);

/// A CA key that can sign certificates.
pub trait CaSigner: Send + Sync {
    /// The CA public key.
    fn public_key(&self) -> &KeyData;
    /// Signs `msg`, returning an SSH signature (for RSA keys always
    /// `rsa-sha2-512`, never SHA-1 `ssh-rsa`).
    fn sign(&self, msg: &[u8]) -> Result<ssh_key::Signature, SignError>;
    /// Where the key lives, for logs and `ca status` (never key material).
    fn describe(&self) -> String;
}

/// One OpenSSH public key line for `key`, with `comment`.
pub fn public_key_line(key: &KeyData, comment: &str) -> String {
    ssh_key::PublicKey::new(key.clone(), comment)
        .to_openssh()
        .unwrap_or_default()
}

/// `SHA256:` fingerprint of `key`.
pub fn fingerprint(key: &KeyData) -> String {
    key.fingerprint(ssh_key::HashAlg::Sha256).to_string()
}

/// `SHA256:` fingerprint of the key in an OpenSSH public key line (the
/// line itself if it does not parse).
pub fn fingerprint_of_line(line: &str) -> String {
    ssh_key::PublicKey::from_openssh(line.trim())
        .map(|k| fingerprint(k.key_data()))
        .unwrap_or_else(|_| line.to_string())
}

/// The SSH wire encoding of the public key in an OpenSSH line (what KRLs
/// and protocol messages carry), or `None` if the line does not parse.
pub fn key_blob(line: &str) -> Option<Vec<u8>> {
    ssh_key::PublicKey::from_openssh(line.trim())
        .ok()?
        .to_bytes()
        .ok()
}

/// Adapts a `dyn CaSigner` to what ssh-key's certificate builder expects.
pub(crate) struct BuilderSigner<'a>(pub &'a dyn CaSigner);

impl signature::Signer<ssh_key::Signature> for BuilderSigner<'_> {
    fn try_sign(&self, msg: &[u8]) -> Result<ssh_key::Signature, signature::Error> {
        self.0
            .sign(msg)
            .map_err(|e| signature::Error::from_source(Box::new(e)))
    }
}

impl From<&BuilderSigner<'_>> for KeyData {
    fn from(s: &BuilderSigner<'_>) -> KeyData {
        s.0.public_key().clone()
    }
}
