//! CA key files: generated once, written 0600 with write-then-rename, never
//! overwritten, and held in memory as an `ed25519_dalek::SigningKey` so each
//! signature does not rebuild the key.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand_core::OsRng;
use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::public::KeyData;

use super::signer::{CaSigner, SignError};
use ed25519_dalek::Signer as _;

/// Why a CA key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("CA key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file exists but is not an unencrypted OpenSSH Ed25519 private key.
    #[error("CA key file {path} is not usable: {reason}; mayfly never overwrites an existing CA key, fix or move the file")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file can be read by other users.
    #[error("CA key file {path} has mode {mode:o}; run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its current mode bits.
        mode: u32,
    },
}

/// A file-backed Ed25519 CA key, held as an `ed25519_dalek::SigningKey` so
/// each signature does not rebuild the key. `Debug` never shows key
/// material and the secret is zeroized on drop (ed25519-dalek's `zeroize`).
pub struct CaKey {
    signer: FileSigner,
}

struct FileSigner {
    key: ed25519_dalek::SigningKey,
    public: KeyData,
    path: Option<PathBuf>,
}

impl CaSigner for CaKey {
    fn public_key(&self) -> &KeyData {
        &self.signer.public
    }

    fn sign(&self, msg: &[u8]) -> Result<ssh_key::Signature, SignError> {
        let sig = self.signer.key.sign(msg);
        ssh_key::Signature::new(ssh_key::Algorithm::Ed25519, sig.to_bytes().to_vec())
            .map_err(|e| SignError(e.to_string()))
    }

    fn describe(&self) -> String {
        match &self.signer.path {
            Some(p) => format!("file {}", p.display()),
            None => "in-memory key".into(),
        }
    }
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaKey({}, [redacted])", self.fingerprint())
    }
}

impl CaKey {
    /// A fresh random key (not yet on disk).
    pub fn generate() -> CaKey {
        CaKey::from_dalek(ed25519_dalek::SigningKey::generate(&mut OsRng))
    }

    fn from_dalek(key: ed25519_dalek::SigningKey) -> CaKey {
        let public = KeyData::Ed25519(ssh_key::public::Ed25519PublicKey(
            key.verifying_key().to_bytes(),
        ));
        CaKey {
            signer: FileSigner {
                key,
                public,
                path: None,
            },
        }
    }

    /// One OpenSSH public key line, no trailing newline.
    pub fn public_key_line(&self) -> String {
        ssh_key::PublicKey::new(self.signer.public.clone(), "mayfly-user-ca")
            .to_openssh()
            .unwrap_or_default()
    }

    /// `SHA256:` fingerprint of the public key.
    pub fn fingerprint(&self) -> String {
        self.signer
            .public
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string()
    }

    /// Loads the key at `path`, or generates and writes one if the file does
    /// not exist. Returns the key and whether it was just created.
    pub fn load_or_generate(path: &Path) -> Result<(CaKey, bool), KeyFileError> {
        match fs::metadata(path) {
            Ok(_) => Ok((CaKey::load(path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = CaKey::generate();
                key.write_new(path)?;
                Ok((key, true))
            }
            Err(source) => Err(KeyFileError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Loads an existing unencrypted OpenSSH Ed25519 key file.
    pub fn load(path: &Path) -> Result<CaKey, KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = zeroize::Zeroizing::new(fs::read_to_string(path).map_err(io)?);
        let invalid = |reason: String| KeyFileError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let pk = ssh_key::PrivateKey::from_openssh(text.as_bytes())
            .map_err(|e| invalid(e.to_string()))?;
        if pk.is_encrypted() {
            return Err(invalid(
                "it is encrypted, which this version cannot read".into(),
            ));
        }
        match pk.key_data() {
            KeypairData::Ed25519(kp) => {
                let mut k = CaKey::from_dalek(ed25519_dalek::SigningKey::from_bytes(
                    &kp.private.to_bytes(),
                ));
                k.signer.path = Some(path.to_path_buf());
                Ok(k)
            }
            other => Err(invalid(format!(
                "it holds a {} key; the CA key must be Ed25519",
                other.algorithm().map(|a| a.to_string()).unwrap_or_default()
            ))),
        }
    }

    /// Writes the key to a new file (0600, fsynced, renamed into place);
    /// fails if `path` already exists.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let kp = Ed25519Keypair::from(&self.signer.key);
        let pk = ssh_key::PrivateKey::new(KeypairData::Ed25519(kp), "mayfly-user-ca")
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        let pem = pk
            .to_openssh(ssh_key::LineEnding::LF)
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("key"),
            std::process::id()
        ));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let written = f
            .write_all(pem.as_bytes())
            .and_then(|_| f.sync_all())
            // hard_link refuses to replace an existing file, unlike rename.
            .and_then(|_| fs::hard_link(&tmp, path));
        let _ = fs::remove_file(&tmp);
        written.map_err(io)?;
        sync_dir(dir).map_err(io)
    }
}

/// Writes `contents` to `path` atomically: temp file in the same directory,
/// fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".mayfly-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_written_0600_and_reloaded_not_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("user_ca");
        let (k1, created) = CaKey::load_or_generate(&p).unwrap();
        assert!(created);
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = CaKey::load_or_generate(&p).unwrap();
        assert!(!created);
        assert_eq!(k1.public_key_line(), k2.public_key_line());
        assert!(
            k1.write_new(&p).is_err(),
            "existing key must not be replaced"
        );
        assert!(!format!("{k1:?}").contains("PRIVATE"));
    }

    #[test]
    fn corrupt_key_file_is_an_error_not_a_new_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("user_ca");
        fs::write(&p, "junk").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            CaKey::load_or_generate(&p),
            Err(KeyFileError::Invalid { .. })
        ));
        assert_eq!(fs::read_to_string(&p).unwrap(), "junk");
    }

    #[test]
    fn world_readable_key_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("user_ca");
        CaKey::generate().write_new(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            CaKey::load(&p),
            Err(KeyFileError::Permissions { .. })
        ));
    }
}
