//! Signed checkpoints of the audit chain.
//!
//! The hash chain alone stops nobody who can write the database from
//! rewriting history *and* recomputing every later hash. A checkpoint is the
//! chain head `(seq, hash)` at a time, signed with a dedicated Ed25519 audit
//! key (`data_dir/audit_key`, mode 0600, generated on first start; its
//! public half is `data_dir/audit_key.pub`; with a store shared by
//! replicas, one key for all of them, stored encrypted in the database:
//! [`crate::store::KeyStore`]). Rewriting anything at or before
//! a checkpointed seq then needs that key.
//!
//! The signature is an OpenSSH `SSHSIG` (namespace
//! `mayfly-audit-checkpoint`) over one line of text:
//!
//! ```text
//! mayfly-audit-checkpoint v1 seq=<seq> hash=<64 hex> time_ms=<unix ms>\n
//! ```
//!
//! so anyone can check one with stock OpenSSH, without mayfly:
//!
//! ```sh
//! printf 'mayfly-audit-checkpoint v1 seq=%s hash=%s time_ms=%s\n' "$SEQ" "$HASH" "$TIME" > msg
//! echo "mayfly-audit namespaces=\"mayfly-audit-checkpoint\" $(cat audit_key.pub)" > allowed
//! ssh-keygen -Y verify -f allowed -I mayfly-audit -n mayfly-audit-checkpoint -s sig.pem < msg
//! ```
//!
//! (This module is the one outside `ca` that uses `ssh_key`: only for the
//! `SSHSIG` container; the key itself is a [`crate::ca::CaKey`].)

use std::path::{Path, PathBuf};

use super::chain::{hex, Hash};
use crate::ca::{self, CaKey, CaSigner};

/// `SSHSIG` namespace of checkpoint signatures.
pub const NAMESPACE: &str = "mayfly-audit-checkpoint";
/// Private key file name in `data_dir`.
pub const KEY_FILE: &str = "audit_key";
/// Public key file name in `data_dir`.
pub const PUB_FILE: &str = "audit_key.pub";
/// Comment on the public key line.
const KEY_COMMENT: &str = "mayfly-audit";

/// Why the audit key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    /// Loading or generating the private key failed.
    #[error("audit key: {0}")]
    Key(#[from] ca::KeyFileError),
    /// A public key file could not be read or written.
    #[error("audit public key {path}: {reason}")]
    PublicKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Signing a checkpoint failed.
    #[error("signing an audit checkpoint: {0}")]
    Sign(String),
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Row id (increases by one per checkpoint; a gap means deleted ones).
    pub id: i64,
    /// The chain head's seq.
    pub seq: u64,
    /// The chain head's hash.
    pub hash: Hash,
    /// When it was signed (unix ms).
    pub time_ms: i64,
    /// `SHA256:` fingerprint of the signing key.
    pub key_fingerprint: String,
    /// Armored `SSHSIG` over [`message`].
    pub signature: String,
}

/// The exact text a checkpoint signs.
pub fn message(seq: u64, hash: &Hash, time_ms: i64) -> String {
    format!(
        "mayfly-audit-checkpoint v1 seq={seq} hash={} time_ms={time_ms}\n",
        hex(hash)
    )
}

/// The audit signing key, held in memory.
pub struct AuditKey {
    key: CaKey,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditKey({}, [redacted])", self.fingerprint())
    }
}

impl AuditKey {
    /// Loads `data_dir/audit_key`, generating it (0600, never overwritten)
    /// if missing, and (re)writes `data_dir/audit_key.pub` atomically.
    /// Returns the key and whether it was just created.
    pub fn load_or_generate(data_dir: &Path) -> Result<(AuditKey, bool), AuditKeyError> {
        let (key, created) = CaKey::load_or_generate(&data_dir.join(KEY_FILE))?;
        let k = AuditKey { key };
        let pub_path = data_dir.join(PUB_FILE);
        let line = format!("{}\n", k.public_key_line());
        ca::keys::write_atomic(&pub_path, line.as_bytes(), 0o644).map_err(|e| {
            AuditKeyError::PublicKey {
                path: pub_path,
                reason: e.to_string(),
            }
        })?;
        Ok((k, created))
    }

    /// The key `key` (one stored in a database shared by replicas,
    /// decrypted by the caller).
    pub fn from_key(key: CaKey) -> AuditKey {
        AuditKey { key }
    }

    /// A fresh key that is never written (tests, benchmarks).
    pub fn ephemeral() -> AuditKey {
        AuditKey {
            key: CaKey::generate(),
        }
    }

    /// The OpenSSH public key line (no newline).
    pub fn public_key_line(&self) -> String {
        ca::signer::public_key_line(self.key.public_key(), KEY_COMMENT)
    }

    /// `SHA256:` fingerprint.
    pub fn fingerprint(&self) -> String {
        ca::signer::fingerprint(self.key.public_key())
    }

    /// The public half, for verifying.
    pub fn public(&self) -> AuditPublicKey {
        AuditPublicKey(ssh_key::PublicKey::new(
            self.key.public_key().clone(),
            KEY_COMMENT,
        ))
    }

    /// Signs the checkpoint `(seq, hash, time_ms)`; returns the armored `SSHSIG`.
    pub fn sign(&self, seq: u64, hash: &Hash, time_ms: i64) -> Result<String, AuditKeyError> {
        let msg = message(seq, hash, time_ms);
        let hash_alg = ssh_key::HashAlg::Sha512;
        let data = ssh_key::SshSig::signed_data(NAMESPACE, hash_alg, msg.as_bytes())
            .map_err(|e| AuditKeyError::Sign(e.to_string()))?;
        let sig = self
            .key
            .sign(&data)
            .map_err(|e| AuditKeyError::Sign(e.to_string()))?;
        ssh_key::SshSig::new(self.key.public_key().clone(), NAMESPACE, hash_alg, sig)
            .and_then(|s| s.to_pem(ssh_key::LineEnding::LF))
            .map_err(|e| AuditKeyError::Sign(e.to_string()))
    }
}

/// The audit public key that checkpoints are verified with.
#[derive(Debug, Clone)]
pub struct AuditPublicKey(ssh_key::PublicKey);

impl AuditPublicKey {
    /// Reads an OpenSSH public key file (`audit_key.pub`).
    pub fn read(path: &Path) -> Result<AuditPublicKey, AuditKeyError> {
        let bad = |reason: String| AuditKeyError::PublicKey {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        AuditPublicKey::parse(&text).map_err(bad)
    }

    /// Parses one OpenSSH public key line.
    pub fn parse(line: &str) -> Result<AuditPublicKey, String> {
        ssh_key::PublicKey::from_openssh(line.trim())
            .map(AuditPublicKey)
            .map_err(|e| format!("not an OpenSSH public key: {e}"))
    }

    /// `SHA256:` fingerprint.
    pub fn fingerprint(&self) -> String {
        ca::signer::fingerprint(self.0.key_data())
    }

    /// Checks `cp`'s signature; the error says what is wrong.
    pub fn verify(&self, cp: &Checkpoint) -> Result<(), String> {
        let sig = ssh_key::SshSig::from_pem(cp.signature.as_bytes())
            .map_err(|e| format!("signature is not an SSHSIG: {e}"))?;
        if sig.public_key() != self.0.key_data() {
            return Err(format!(
                "signed by {}, not by the audit key {}",
                ca::signer::fingerprint(sig.public_key()),
                self.fingerprint()
            ));
        }
        self.0
            .verify(
                NAMESPACE,
                message(cp.seq, &cp.hash, cp.time_ms).as_bytes(),
                &sig,
            )
            .map_err(|_| "signature does not match (seq, hash or time changed)".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(key: &AuditKey, seq: u64, hash: Hash, time_ms: i64) -> Checkpoint {
        Checkpoint {
            id: 1,
            seq,
            hash,
            time_ms,
            key_fingerprint: key.fingerprint(),
            signature: key.sign(seq, &hash, time_ms).expect("sign"),
        }
    }

    #[test]
    fn checkpoint_verifies_and_any_change_is_refused() {
        let k = AuditKey::ephemeral();
        let pk = k.public();
        let good = cp(&k, 42, [7; 32], 1_700_000_000_000);
        pk.verify(&good).expect("verifies");
        for bad in [
            Checkpoint {
                seq: 43,
                ..good.clone()
            },
            Checkpoint {
                hash: [8; 32],
                ..good.clone()
            },
            Checkpoint {
                time_ms: 1,
                ..good.clone()
            },
        ] {
            assert!(pk.verify(&bad).is_err());
        }
        let other = AuditKey::ephemeral();
        let err = other.public().verify(&good).expect_err("other key");
        assert!(err.contains("not by the audit key"), "{err}");
    }

    #[test]
    fn key_is_generated_once_with_its_public_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let (k1, created) = AuditKey::load_or_generate(d.path()).expect("generate");
        assert!(created);
        let (k2, created) = AuditKey::load_or_generate(d.path()).expect("load");
        assert!(!created);
        assert_eq!(k1.public_key_line(), k2.public_key_line());
        let pk = AuditPublicKey::read(&d.path().join(PUB_FILE)).expect("read pub");
        assert_eq!(pk.fingerprint(), k1.fingerprint());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join(KEY_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{k1:?}").contains("PRIVATE"));
    }
}
