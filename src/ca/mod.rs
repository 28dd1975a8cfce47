//! The certificate authority: CA keys (opened from what the store keeps,
//! or in a PKCS#11 token), and minting OpenSSH user
//! certificates from a [`CertSpec`] that policy already decided.
//!
//! Minting applies no policy. It re-checks the spec's hard bounds just before
//! signing, so a bug upstream cannot produce a golden ticket.

pub mod hostreport;
pub mod keys;
pub mod krl;
pub mod pkcs11;
pub mod proof;
pub mod renewal;
pub mod rotation;
pub mod signer;
pub mod spec;

use std::time::Duration;

pub use keys::{CaKey, KeyFileError, KeyLocation, NewKey, StoredKey};
pub use signer::{CaSigner, SignError};
pub use spec::{
    key_id, key_id_problem, CertKind, CertSpec, Extension, Principal, PrincipalError, SubjectKey,
    SubjectKeyError, MAX_HOST_CERT_TTL, MAX_PRINCIPALS, MAX_USER_CERT_TTL,
};

use ssh_key::certificate::{Builder, CertType};

/// Why minting refused a spec (a bug upstream, never a user error).
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The spec breaks a hard bound.
    #[error("certificate spec out of bounds: {0}")]
    OutOfBounds(&'static str),
    /// ssh-key refused to build or sign.
    #[error("signing failed: {0}")]
    Sign(#[from] ssh_key::Error),
}

/// The comment of the CA public key line mayfly records: audit records,
/// revocations and the store name a signing key by this exact line, so it
/// never changes (records written by earlier versions must keep matching).
/// The lines published to hosts and clients carry [`published_comment`]
/// instead.
pub const CA_KEY_COMMENT: &str = "mayfly-ca";

/// The comment of the public key lines published for the CA whose keys
/// have base name `base` (`user_ca`, `host_ca`, `user_ca-<group>`): `mayfly
/// user CA`, `mayfly host CA`, `mayfly user CA group <group>`. It tells a
/// person reading sshd's or ssh's files which CA a line is; nothing
/// compares it (keys are compared by type and key data), so files written
/// with an older comment keep working. The slot (next, active, previous)
/// is not in it: it changes at every rotation while the key does not, and
/// `mayfly ca status` shows it.
pub fn published_comment(base: &str) -> String {
    use crate::config::files::{HOST_CA_KEY, USER_CA_KEY};
    if base == HOST_CA_KEY {
        "mayfly host CA".into()
    } else if base == USER_CA_KEY {
        "mayfly user CA".into()
    } else if let Some(group) = base
        .strip_prefix(USER_CA_KEY)
        .and_then(|g| g.strip_prefix('-'))
    {
        format!("mayfly user CA group {group}")
    } else {
        format!("mayfly {base}")
    }
}

/// `line` (an OpenSSH public key line) with the published comment of CA
/// `base`; the line unchanged if it does not parse.
pub fn published_line(line: &str, base: &str) -> String {
    match ssh_key::PublicKey::from_openssh(line.trim()) {
        Ok(k) => signer::public_key_line(k.key_data(), &published_comment(base)),
        Err(_) => line.to_string(),
    }
}

/// Slack above [`MAX_USER_CERT_TTL`] for the backdated part of the window.
const MAX_BACKDATE: Duration = Duration::from_secs(3600);

/// Signs certificates with one CA key (file or HSM).
pub struct Authority {
    key: Box<dyn CaSigner>,
    /// [`Authority::public_key_line`], encoded once: every issuance
    /// records it.
    line: String,
}

impl Authority {
    /// Wraps a loaded CA key.
    pub fn new(key: impl CaSigner + 'static) -> Authority {
        Authority::from_boxed(Box::new(key))
    }

    /// Wraps an already boxed signer (file or HSM).
    pub fn from_boxed(key: Box<dyn CaSigner>) -> Authority {
        let line = signer::public_key_line(key.public_key(), CA_KEY_COMMENT);
        Authority { key, line }
    }

    /// The CA public key as one OpenSSH line (no newline) with the
    /// recorded comment [`CA_KEY_COMMENT`]: the form audit records name it
    /// by. Files for sshd use [`Authority::published_line`].
    pub fn public_key_line(&self) -> String {
        self.line.clone()
    }

    /// The CA public key as published for CA `base` (see
    /// [`published_comment`]), no newline.
    pub fn published_line(&self, base: &str) -> String {
        signer::public_key_line(self.key.public_key(), &published_comment(base))
    }

    /// The CA key's `SHA256:` fingerprint.
    pub fn fingerprint(&self) -> String {
        signer::fingerprint(self.key.public_key())
    }

    /// The CA public key.
    pub fn public_key(&self) -> &ssh_key::public::KeyData {
        self.key.public_key()
    }

    /// Where the key lives.
    pub fn describe(&self) -> String {
        self.key.describe()
    }

    /// Signs `spec` into an OpenSSH user certificate.
    pub fn mint(&self, spec: &CertSpec) -> Result<ssh_key::Certificate, MintError> {
        check_bounds(spec)?;
        // The nonce comes from the thread's CSPRNG (seeded and reseeded
        // from the OS), not a getrandom call per certificate.
        let mut b = Builder::new_with_random_nonce(
            &mut rand::thread_rng(),
            spec.subject.0.key_data().clone(),
            spec.valid_after.get(),
            spec.valid_before.get(),
        )?;
        b.serial(spec.serial)?;
        b.key_id(spec.key_id.clone())?;
        b.cert_type(match spec.kind {
            CertKind::User => CertType::User,
            CertKind::Host => CertType::Host,
        })?;
        for p in &spec.principals {
            b.valid_principal(p.as_str())?;
        }
        if let Some(cmd) = &spec.force_command {
            b.critical_option("force-command", cmd.clone())?;
        }
        if !spec.source_address.is_empty() {
            let list: Vec<String> = spec.source_address.iter().map(|n| n.to_string()).collect();
            b.critical_option("source-address", list.join(","))?;
        }
        for e in &spec.extensions {
            b.extension(e.as_str(), "")?;
        }
        Ok(b.sign(&signer::BuilderSigner(self.key.as_ref()))?)
    }
}

fn check_bounds(spec: &CertSpec) -> Result<(), MintError> {
    if spec.principals.is_empty() {
        return Err(MintError::OutOfBounds("no principals"));
    }
    if spec.principals.len() > MAX_PRINCIPALS {
        return Err(MintError::OutOfBounds("too many principals"));
    }
    if spec.serial == 0 {
        return Err(MintError::OutOfBounds("serial 0"));
    }
    if spec.valid_before <= spec.valid_after {
        return Err(MintError::OutOfBounds("empty validity window"));
    }
    let ceiling = match spec.kind {
        CertKind::User => MAX_USER_CERT_TTL,
        CertKind::Host => MAX_HOST_CERT_TTL,
    };
    if spec.kind == CertKind::Host
        && (!spec.extensions.is_empty()
            || spec.force_command.is_some()
            || !spec.source_address.is_empty())
    {
        return Err(MintError::OutOfBounds(
            "host certificates carry no options or extensions",
        ));
    }
    if spec.valid_before.since(spec.valid_after) > (ceiling + MAX_BACKDATE).as_secs() {
        return Err(MintError::OutOfBounds("validity window too long"));
    }
    if spec.key_id.is_empty() || spec.key_id.len() > 512 {
        return Err(MintError::OutOfBounds("key id length"));
    }
    if let Some(cmd) = &spec.force_command {
        if cmd.is_empty() || cmd.chars().any(|c| c.is_control()) {
            return Err(MintError::OutOfBounds("force_command"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(subject: SubjectKey) -> CertSpec {
        CertSpec {
            kind: CertKind::User,
            subject,
            serial: 42,
            key_id: "mayfly:deploy:gh:repo:1:42".into(),
            principals: vec![Principal::parse("deploy").unwrap()],
            valid_after: crate::time::UnixSecs(1_700_000_000),
            valid_before: crate::time::UnixSecs(1_700_000_300),
            extensions: vec![Extension::PermitPty],
            force_command: Some("/bin/true".into()),
            source_address: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    fn subject() -> SubjectKey {
        let k = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)
            .unwrap();
        SubjectKey::parse(&k.public_key().to_openssh().unwrap()).unwrap()
    }

    #[test]
    fn minted_certificate_carries_exactly_the_spec() {
        let ca = Authority::new(CaKey::generate());
        let cert = ca.mint(&spec(subject())).unwrap();
        assert_eq!(cert.serial(), 42);
        assert_eq!(cert.valid_principals(), ["deploy".to_string()]);
        assert_eq!(cert.valid_after(), 1_700_000_000);
        assert_eq!(cert.valid_before(), 1_700_000_300);
        assert_eq!(cert.extensions().len(), 1);
        assert_eq!(cert.critical_options().len(), 2);
        let fp = ssh_key::PublicKey::from_openssh(&ca.public_key_line())
            .unwrap()
            .fingerprint(Default::default());
        cert.validate_at(1_700_000_100, &[fp]).unwrap();
    }

    #[test]
    fn mint_refuses_out_of_bounds_specs() {
        let ca = Authority::new(CaKey::generate());
        let mut s = spec(subject());
        s.principals.clear();
        assert!(ca.mint(&s).is_err());
        let mut s = spec(subject());
        s.valid_before = s
            .valid_after
            .saturating_add(std::time::Duration::from_secs(30 * 24 * 3600));
        assert!(ca.mint(&s).is_err());
        let mut s = spec(subject());
        s.serial = 0;
        assert!(ca.mint(&s).is_err());
        let mut s = spec(subject());
        s.force_command = Some("a\nb".into());
        assert!(ca.mint(&s).is_err());
    }
}
