//! CA key files: generated once, written 0600 with write-then-rename, never
//! overwritten, optionally encrypted at rest with OpenSSH's own format
//! (bcrypt-pbkdf + aes256-ctr, readable by `ssh-keygen`), and held in memory
//! as an `ed25519_dalek::SigningKey` so each signature does not rebuild the
//! key.
//!
//! [`open_ca_signer`] turns the `[ca]` config into a [`CaSigner`], whether
//! the key is a file in `data_dir` or lives in a PKCS#11 token
//! ([`super::pkcs11`]). The server does not read key files itself: it gets
//! the OpenSSH text of each key from the store ([`StoredKey`]; files in
//! `data_dir` with SQLite, rows with a shared database) and opens it with
//! [`CaKey::from_openssh`], so the same checks apply wherever a key is kept.
//! [`read_key_file`] and [`write_new_key_file`] are the file half, used by
//! the store's file implementation.
//!
//! Secrets (the key passphrase, the token PIN) come from, in order, a file
//! named in the config, a systemd credential (`LoadCredential=`, found in
//! `$CREDENTIALS_DIRECTORY`), or an environment variable; see [`read_secret`].

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rand_core::OsRng;
use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::public::KeyData;
use zeroize::Zeroizing;

use super::pkcs11::{Pkcs11Error, Pkcs11Signer};
use super::signer::{CaSigner, SignError};
use crate::config::{CaKeyConfig, KeyProtection};

/// Name of the systemd credential that holds the CA key passphrase.
pub const PASSPHRASE_CREDENTIAL: &str = "mayfly-ca-passphrase";
/// Environment variable that may hold the CA key passphrase (least preferred:
/// the environment is visible to the same user in `/proc/<pid>/environ`).
pub const PASSPHRASE_ENV: &str = "MAYFLY_CA_PASSPHRASE";
/// Name of the systemd credential that holds the PKCS#11 user PIN.
pub const PIN_CREDENTIAL: &str = "mayfly-pkcs11-pin";
/// Environment variable that may hold the PKCS#11 user PIN.
pub const PIN_ENV: &str = "MAYFLY_PKCS11_PIN";

/// Longest secret read from a file; a larger file is a mistake, not a passphrase.
const MAX_SECRET_BYTES: u64 = 4096;

/// Why a CA key could not be opened.
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
    /// The key is not an OpenSSH Ed25519 private key.
    #[error("CA key {key} is not usable: {reason}; mayfly never overwrites an existing CA key, {}", key.fix_hint())]
    Invalid {
        /// Where the key is.
        key: KeyLocation,
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
    /// `key_protection = "passphrase"` but the existing key is not encrypted.
    #[error(
        "CA key {key} is not encrypted but [ca] key_protection = \"passphrase\"; \
             {} using the passphrase mayfly reads ({origin}), or set key_protection = \"none\"",
        key.encrypt_hint()
    )]
    NotEncrypted {
        /// Where the key is.
        key: KeyLocation,
        /// Where the passphrase came from (never the passphrase).
        origin: String,
    },
    /// The key is encrypted but no passphrase protection is configured.
    #[error(
        "CA key {key} is encrypted; set [ca] key_protection = \"passphrase\" and give \
             the passphrase in [ca] passphrase_file, the systemd credential \
             {PASSPHRASE_CREDENTIAL} or ${PASSPHRASE_ENV}"
    )]
    Encrypted {
        /// Where the key is.
        key: KeyLocation,
    },
    /// The passphrase does not decrypt the key.
    #[error(
        "cannot decrypt CA key {key} with the passphrase from {origin}: wrong \
             passphrase (or a damaged {})",
        key.kind()
    )]
    WrongPassphrase {
        /// Where the key is.
        key: KeyLocation,
        /// Where the passphrase came from (never the passphrase).
        origin: String,
    },
    /// A new key could not be encoded (never expected).
    #[error("generating a CA key: {0}")]
    Generate(String),
    /// The passphrase or PIN could not be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The PKCS#11 token or key could not be used.
    #[error(transparent)]
    Pkcs11(#[from] Pkcs11Error),
}

/// Where a CA key is kept, for messages and `ca status` (never key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLocation {
    /// A file (SQLite mode: `data_dir/user_ca`, `user_ca.next`, ...).
    File(PathBuf),
    /// A row of a database shared by replicas: the CA's base name and slot
    /// (`user_ca`, `next`).
    Database {
        /// CA base name (`user_ca`, `host_ca`, `user_ca-<group>`).
        base: String,
        /// Slot name (`active`, `next`, `previous`).
        slot: &'static str,
    },
}

impl fmt::Display for KeyLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyLocation::File(p) => write!(f, "file {}", p.display()),
            KeyLocation::Database { base, slot } => write!(f, "{base} ({slot}) in the database"),
        }
    }
}

impl KeyLocation {
    fn kind(&self) -> &'static str {
        match self {
            KeyLocation::File(_) => "file",
            KeyLocation::Database { .. } => "stored key",
        }
    }

    fn fix_hint(&self) -> &'static str {
        match self {
            KeyLocation::File(_) => "fix or move the file",
            KeyLocation::Database { .. } => "restore the stored key from a backup",
        }
    }

    fn encrypt_hint(&self) -> String {
        match self {
            KeyLocation::File(p) => format!(
                "encrypt it in place with `ssh-keygen -p -f {}`",
                p.display()
            ),
            KeyLocation::Database { .. } => {
                "store it encrypted (`ssh-keygen -p` on a copy of it)".to_string()
            }
        }
    }
}

/// One CA key as the store keeps it: the OpenSSH private key text
/// (passphrase-encrypted under `key_protection = "passphrase"`) and its
/// public key line, readable without the passphrase. `Debug` never shows
/// the private text, which is zeroized on drop.
#[derive(Clone)]
pub struct StoredKey {
    /// OpenSSH public key line, as [`super::Authority::public_key_line`]
    /// writes it (the form audit records name the signing key in).
    pub public: String,
    /// OpenSSH private key text.
    pub private: Zeroizing<String>,
    /// Unix seconds the key was written, if known (for its age).
    pub created_at: Option<u64>,
    /// Where it is kept.
    pub location: KeyLocation,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "StoredKey({}, {}, [redacted])",
            self.location, self.public
        )
    }
}

/// A freshly generated CA key, not yet stored: what
/// [`StoredKey`] holds minus where and when.
#[derive(Clone)]
pub struct NewKey {
    /// OpenSSH public key line (as [`StoredKey::public`]).
    pub public: String,
    /// OpenSSH private key text, encrypted when a passphrase was given.
    pub private: Zeroizing<String>,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NewKey({}, [redacted])", self.public)
    }
}

impl NewKey {
    /// A new random Ed25519 CA key, encrypted with `passphrase` if given
    /// (OpenSSH format, as [`CaKey::write_new_encrypted`]).
    pub fn generate(passphrase: Option<&Secret>) -> Result<NewKey, KeyFileError> {
        let key = CaKey::generate();
        let plain = key
            .to_private_key()
            .map_err(|e| KeyFileError::Generate(e.to_string()))?;
        let pk = match passphrase {
            None => plain,
            Some(p) => plain
                .encrypt(&mut OsRng, p.expose().as_bytes())
                .map_err(|e| KeyFileError::Generate(format!("encrypting the key: {e}")))?,
        };
        let text = pk
            .to_openssh(ssh_key::LineEnding::LF)
            .map_err(|e| KeyFileError::Generate(e.to_string()))?;
        Ok(NewKey {
            public: super::signer::public_key_line(&key.signer.public, super::CA_KEY_COMMENT),
            private: Zeroizing::new(text.to_string()),
        })
    }
}

/// The public key line (as [`StoredKey::public`]) of the OpenSSH private
/// key `text`, read without decrypting it.
pub fn public_line_of(text: &str, key: &KeyLocation) -> Result<String, KeyFileError> {
    let pk =
        ssh_key::PrivateKey::from_openssh(text.as_bytes()).map_err(|e| KeyFileError::Invalid {
            key: key.clone(),
            reason: e.to_string(),
        })?;
    Ok(super::signer::public_key_line(
        pk.public_key().key_data(),
        super::CA_KEY_COMMENT,
    ))
}

/// Whether the OpenSSH private key `text` is passphrase-encrypted (`None`
/// if it is not an OpenSSH private key). A store shared by replicas
/// refuses keys for which this is not `Some(true)`.
pub fn is_encrypted(text: &str) -> Option<bool> {
    ssh_key::PrivateKey::from_openssh(text.as_bytes())
        .ok()
        .map(|pk| pk.is_encrypted())
}

/// Reads the CA key file at `path`, refusing one other users can read.
/// `Err(KeyFileError::Io)` with `NotFound` when there is no file.
pub fn read_key_file(path: &Path) -> Result<Zeroizing<String>, KeyFileError> {
    use std::io::Read as _;
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::File::open(path).map_err(io)?;
    let mode = f.metadata().map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut text = Zeroizing::new(String::new());
    f.read_to_string(&mut text).map_err(io)?;
    Ok(text)
}

/// Writes a new CA key file: a temp file in the same directory (0600,
/// fsynced), hard-linked into place, directory fsynced. Never replaces a
/// file: when `path` exists the error is `Io` with kind `AlreadyExists`,
/// so of two processes writing the same key file at once exactly one wins.
pub fn write_new_key_file(path: &Path, text: &str) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(
            ".{}.tmp-",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("key")
        ))
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(text.as_bytes()).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    // hard_link refuses to replace an existing file, unlike rename.
    fs::hard_link(tmp.path(), path).map_err(io)?;
    drop(tmp);
    sync_dir(dir).map_err(io)
}

/// Why a secret (passphrase, PIN) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// None of the places a secret may come from has it.
    #[error(
        "no {what}: set [ca] {file_key} in the config, or provide the systemd credential \
             {credential} (LoadCredential={credential}:..., read from \
             $CREDENTIALS_DIRECTORY/{credential}), or set ${env_var}"
    )]
    Missing {
        /// What the secret is for ("CA key passphrase").
        what: &'static str,
        /// The config key naming a file.
        file_key: &'static str,
        /// The systemd credential name.
        credential: &'static str,
        /// The environment variable.
        env_var: &'static str,
    },
    /// A file that should hold the secret could not be read.
    #[error("cannot read the {what} from {path}: {source}")]
    Io {
        /// What the secret is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The secret is empty (or only a newline).
    #[error("the {what} from {origin} is empty")]
    Empty {
        /// What the secret is for.
        what: &'static str,
        /// Where it came from.
        origin: String,
    },
    /// The file holding the secret can be read by every user.
    #[error("{path} holds the {what} but has mode {mode:o}; run `chmod o-rwx {path}`")]
    Permissions {
        /// What the secret is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
}

/// Where a kind of secret may come from, in order.
#[derive(Debug, Clone, Copy)]
pub struct SecretSources<'a> {
    /// What the secret is for, for messages ("CA key passphrase").
    pub what: &'static str,
    /// The config key that names a file (`passphrase_file`).
    pub file_key: &'static str,
    /// The file named in the config, if any; when set, it is the only source.
    pub file: Option<&'a Path>,
    /// The systemd credential name (a file in `$CREDENTIALS_DIRECTORY`).
    pub credential: &'static str,
    /// The environment variable.
    pub env_var: &'static str,
}

impl<'a> SecretSources<'a> {
    /// The sources of the file-backed CA key passphrase.
    pub fn passphrase(file: Option<&'a Path>) -> Self {
        SecretSources {
            what: "CA key passphrase",
            file_key: "passphrase_file",
            file,
            credential: PASSPHRASE_CREDENTIAL,
            env_var: PASSPHRASE_ENV,
        }
    }

    /// The sources of the PKCS#11 user PIN.
    pub fn pin(file: Option<&'a Path>) -> Self {
        SecretSources {
            what: "PKCS#11 user PIN",
            file_key: "pin_file",
            file,
            credential: PIN_CREDENTIAL,
            env_var: PIN_ENV,
        }
    }
}

/// A passphrase or PIN, zeroized on drop; `Debug` shows only where it came from.
pub struct Secret {
    value: Zeroizing<String>,
    source: String,
}

impl Secret {
    /// Wraps `value`, read from `source` (a description, e.g. `file /run/pass`).
    pub fn new(value: Zeroizing<String>, source: impl Into<String>) -> Secret {
        Secret {
            value,
            source: source.into(),
        }
    }

    /// The secret itself; do not log or copy it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Where it came from, safe to show.
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(from {}, [redacted])", self.source)
    }
}

/// Reads a secret from the first source that has it: the configured file;
/// else `$CREDENTIALS_DIRECTORY/<credential>` if that file exists; else the
/// environment variable. A configured file that is unreadable is an error,
/// never a fallback to another source. One trailing newline is removed.
pub fn read_secret(
    sources: &SecretSources<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, SecretError> {
    let what = sources.what;
    if let Some(path) = sources.file {
        return read_secret_file(what, path, format!("file {}", path.display()));
    }
    if let Some(dir) = env("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
        let path = Path::new(&dir).join(sources.credential);
        if path.exists() {
            return read_secret_file(
                what,
                &path,
                format!("systemd credential {}", sources.credential),
            );
        }
    }
    if let Some(v) = env(sources.env_var) {
        return finish_secret(what, Zeroizing::new(v), format!("${}", sources.env_var));
    }
    Err(SecretError::Missing {
        what,
        file_key: sources.file_key,
        credential: sources.credential,
        env_var: sources.env_var,
    })
}

fn read_secret_file(
    what: &'static str,
    path: &Path,
    source: String,
) -> Result<Secret, SecretError> {
    use std::io::Read as _;
    let io = |source| SecretError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let f = fs::File::open(path).map_err(io)?;
    let mode = f.metadata().map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(SecretError::Permissions {
            what,
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Zeroizing::new(Vec::new());
    f.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(io(std::io::Error::other(format!(
            "longer than {MAX_SECRET_BYTES} bytes"
        ))));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| io(std::io::Error::other("not UTF-8")))?;
    finish_secret(what, Zeroizing::new(text.to_string()), source)
}

fn finish_secret(
    what: &'static str,
    mut value: Zeroizing<String>,
    source: String,
) -> Result<Secret, SecretError> {
    // `echo pass > file` and systemd's SetCredential= add one newline.
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        return Err(SecretError::Empty {
            what,
            origin: source,
        });
    }
    Ok(Secret::new(value, source))
}

/// Opens the CA key `key_name` (`user_ca`, `host_ca`) as `[ca]` says: the
/// file `data_dir/<key_name>` (generated if missing, encrypted when
/// `key_protection = "passphrase"`), or the key labelled for `key_name` in a
/// PKCS#11 token. Returns the signer and whether the key was just created.
/// `env` looks up environment variables (`CREDENTIALS_DIRECTORY`,
/// `MAYFLY_CA_PASSPHRASE`, `MAYFLY_PKCS11_PIN`).
pub fn open_ca_signer(
    cfg: &CaKeyConfig,
    data_dir: &Path,
    key_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Box<dyn CaSigner>, bool), KeyFileError> {
    match cfg {
        CaKeyConfig::File {
            protection,
            passphrase_file,
        } => {
            let path = data_dir.join(key_name);
            let passphrase = match protection {
                KeyProtection::None => None,
                KeyProtection::Passphrase => Some(read_secret(
                    &SecretSources::passphrase(passphrase_file.as_deref()),
                    env,
                )?),
            };
            let (key, created) = CaKey::open_or_generate(&path, passphrase.as_ref())?;
            Ok((Box::new(key), created))
        }
        CaKeyConfig::Pkcs11(p) => {
            let pin = read_secret(&SecretSources::pin(p.pin_file.as_deref()), env)?;
            let (signer, created) = Pkcs11Signer::open(p, &p.key_label(key_name), &pin)?;
            Ok((Box::new(signer), created))
        }
    }
}

/// A start-up warning for `[ca]` settings that leave the CA key weakly
/// protected, or `None`. Log it at `warn` once.
pub fn at_rest_warning(cfg: &CaKeyConfig) -> Option<&'static str> {
    match cfg {
        CaKeyConfig::File {
            protection: KeyProtection::None,
            ..
        } => Some(
            "CA keys are stored unencrypted (mode 0600): anyone who can read data_dir can sign \
             certificates. Set [ca] key_protection = \"passphrase\" (encrypt existing keys with \
             `ssh-keygen -p -f <file>`) or use backend = \"pkcs11\"",
        ),
        _ => None,
    }
}

/// Why a store shared by replicas (a database) refuses a key text that
/// is not passphrase-encrypted.
pub const UNENCRYPTED_SHARED_KEY: &str =
    "refusing to store an unencrypted CA key in a database shared by replicas; \
     set [ca] key_protection = \"passphrase\" or use backend = \"pkcs11\"";

/// Why `[ca]` cannot be used with a store shared by replicas, or `None`:
/// every replica and every backup of the database would hold a key that
/// signs certificates, so file keys there must be passphrase-encrypted
/// (PKCS#11 keys are not stored at all).
pub fn shared_store_refusal(cfg: &CaKeyConfig) -> Option<&'static str> {
    match cfg {
        CaKeyConfig::File {
            protection: KeyProtection::None,
            ..
        } => Some(
            "[store] keeps CA keys in a database shared by replicas, and [ca] key_protection \
             = \"none\" would store them unencrypted; set [ca] key_protection = \"passphrase\" \
             (the passphrase from [ca] passphrase_file, the systemd credential \
             mayfly-ca-passphrase or $MAYFLY_CA_PASSPHRASE, the same on every replica) or use \
             backend = \"pkcs11\"",
        ),
        _ => None,
    }
}

/// The passphrase that stored file keys are encrypted with, if `[ca]`
/// asks for one (`key_protection = "passphrase"`).
pub fn stored_key_passphrase(
    cfg: &CaKeyConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, KeyFileError> {
    match cfg {
        CaKeyConfig::File {
            protection: KeyProtection::Passphrase,
            passphrase_file,
        } => Ok(Some(read_secret(
            &SecretSources::passphrase(passphrase_file.as_deref()),
            env,
        )?)),
        _ => Ok(None),
    }
}

/// The passphrase the audit checkpoint key is encrypted with in a store
/// shared by replicas: the CA key passphrase; with PKCS#11 CA keys (which
/// have none) the same sources without a file (the systemd credential
/// `mayfly-ca-passphrase` or `$MAYFLY_CA_PASSPHRASE`).
pub fn shared_audit_key_passphrase(
    cfg: &CaKeyConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, KeyFileError> {
    if let Some(p) = stored_key_passphrase(cfg, env)? {
        return Ok(p);
    }
    Ok(read_secret(&SecretSources::passphrase(None), env)?)
}

/// `text`, an OpenSSH private key (unencrypted), encrypted with
/// `passphrase` (a plain key moved into a store shared by replicas).
pub fn encrypt_key_text(text: &str, passphrase: &Secret) -> Result<NewKey, KeyFileError> {
    let bad = |e: ssh_key::Error| KeyFileError::Generate(e.to_string());
    let pk = ssh_key::PrivateKey::from_openssh(text.as_bytes()).map_err(bad)?;
    let enc = if pk.is_encrypted() {
        pk
    } else {
        pk.encrypt(&mut OsRng, passphrase.expose().as_bytes())
            .map_err(bad)?
    };
    let out = enc.to_openssh(ssh_key::LineEnding::LF).map_err(bad)?;
    Ok(NewKey {
        public: super::signer::public_key_line(enc.public_key().key_data(), super::CA_KEY_COMMENT),
        private: Zeroizing::new(out.to_string()),
    })
}

/// How a loaded key is protected, for [`CaSigner::describe`].
#[derive(Debug, Clone)]
enum AtRest {
    /// Generated in memory, never written.
    Memory,
    /// Unencrypted.
    Plain(KeyLocation),
    /// Encrypted: where, KDF rounds, cipher name.
    Encrypted(KeyLocation, u32, String),
}

/// A file-backed Ed25519 CA key, held as an `ed25519_dalek::SigningKey` so
/// each signature does not rebuild the key. `Debug` never shows key
/// material and the secret is zeroized on drop (ed25519-dalek's `zeroize`).
pub struct CaKey {
    signer: FileSigner,
}

struct FileSigner {
    key: ed25519_dalek::SigningKey,
    /// The same key loaded into aws-lc, which signs in about half the
    /// time ed25519-dalek takes (its scalar multiplication is assembly
    /// for x86-64 and aarch64) and gives the very same signature, since
    /// Ed25519 is deterministic. aws-lc wipes the key's memory when it is
    /// freed, as `key` is zeroized on drop. `None` only if aws-lc refused
    /// the key, which a valid seed never makes it do; then `key` signs.
    fast: Option<aws_lc_rs::signature::Ed25519KeyPair>,
    public: KeyData,
    at_rest: AtRest,
}

impl CaSigner for CaKey {
    fn public_key(&self) -> &KeyData {
        &self.signer.public
    }

    fn sign(&self, msg: &[u8]) -> Result<ssh_key::Signature, SignError> {
        let bytes = match &self.signer.fast {
            Some(k) => k.sign(msg).as_ref().to_vec(),
            None => ed25519_dalek::Signer::sign(&self.signer.key, msg)
                .to_bytes()
                .to_vec(),
        };
        ssh_key::Signature::new(ssh_key::Algorithm::Ed25519, bytes)
            .map_err(|e| SignError(e.to_string()))
    }

    fn describe(&self) -> String {
        match &self.signer.at_rest {
            AtRest::Memory => "in-memory key".into(),
            AtRest::Plain(at) => format!("{at} (unencrypted)"),
            AtRest::Encrypted(at, rounds, cipher) => {
                format!("{at} (encrypted: bcrypt-pbkdf {rounds} rounds, {cipher})")
            }
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
                fast: aws_lc_rs::signature::Ed25519KeyPair::from_seed_and_public_key(
                    key.as_bytes(),
                    key.verifying_key().as_bytes(),
                )
                .ok(),
                key,
                public,
                at_rest: AtRest::Memory,
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

    /// Loads the unencrypted key at `path`, or generates and writes one if
    /// the file does not exist. Returns the key and whether it was just created.
    pub fn load_or_generate(path: &Path) -> Result<(CaKey, bool), KeyFileError> {
        CaKey::open_or_generate(path, None)
    }

    /// Loads the key at `path`, or generates and writes one if the file does
    /// not exist. With `passphrase` the file must be (and a new file is)
    /// encrypted; without, it must not be. Returns the key and whether it
    /// was just created.
    pub fn open_or_generate(
        path: &Path,
        passphrase: Option<&Secret>,
    ) -> Result<(CaKey, bool), KeyFileError> {
        match fs::symlink_metadata(path) {
            Ok(_) => Ok((CaKey::open(path, passphrase)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = CaKey::generate();
                let written = match passphrase {
                    None => key.write_new(path),
                    Some(p) => key.write_new_encrypted(path, p),
                };
                match written {
                    // Another process wrote it first: use that key.
                    Err(KeyFileError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists =>
                    {
                        Ok((CaKey::open(path, passphrase)?, false))
                    }
                    Err(e) => Err(e),
                    // Reload so that `describe` reports what is on disk.
                    Ok(()) => Ok((CaKey::open(path, passphrase)?, true)),
                }
            }
            Err(source) => Err(KeyFileError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Loads an existing unencrypted OpenSSH Ed25519 key file.
    pub fn load(path: &Path) -> Result<CaKey, KeyFileError> {
        CaKey::open(path, None)
    }

    /// Loads an existing key file: encrypted (OpenSSH format, any cipher
    /// ssh-key supports) when `passphrase` is given, plain otherwise; the
    /// other kind is refused with a message that says how to fix it.
    pub fn open(path: &Path, passphrase: Option<&Secret>) -> Result<CaKey, KeyFileError> {
        let text = read_key_file(path)?;
        CaKey::from_openssh(&text, passphrase, KeyLocation::File(path.to_path_buf()))
    }

    /// Opens a stored key with `passphrase` (as [`CaKey::from_openssh`]).
    pub fn from_stored(
        key: &StoredKey,
        passphrase: Option<&Secret>,
    ) -> Result<CaKey, KeyFileError> {
        let k = CaKey::from_openssh(&key.private, passphrase, key.location.clone())?;
        let public = super::signer::public_key_line(&k.signer.public, super::CA_KEY_COMMENT);
        if public != key.public {
            return Err(KeyFileError::Invalid {
                key: key.location.clone(),
                reason: "its private key does not match the public key stored with it".into(),
            });
        }
        Ok(k)
    }

    /// Opens the OpenSSH private key `text` kept at `at`: encrypted when
    /// `passphrase` is given, plain otherwise; the other kind is refused
    /// with a message that says how to fix it.
    pub fn from_openssh(
        text: &str,
        passphrase: Option<&Secret>,
        at: KeyLocation,
    ) -> Result<CaKey, KeyFileError> {
        let invalid = |reason: String| KeyFileError::Invalid {
            key: at.clone(),
            reason,
        };
        let pk = ssh_key::PrivateKey::from_openssh(text.as_bytes())
            .map_err(|e| invalid(e.to_string()))?;
        let (pk, at_rest) = match (pk.is_encrypted(), passphrase) {
            (false, None) => (pk, AtRest::Plain(at.clone())),
            (true, None) => return Err(KeyFileError::Encrypted { key: at }),
            (false, Some(p)) => {
                return Err(KeyFileError::NotEncrypted {
                    key: at,
                    origin: p.source().to_string(),
                })
            }
            (true, Some(p)) => {
                let rounds = match pk.kdf() {
                    ssh_key::Kdf::Bcrypt { rounds, .. } => *rounds,
                    _ => 0,
                };
                let at_rest = AtRest::Encrypted(at.clone(), rounds, pk.cipher().as_str().into());
                let plain = pk.decrypt(p.expose().as_bytes()).map_err(|_| {
                    KeyFileError::WrongPassphrase {
                        key: at.clone(),
                        origin: p.source().to_string(),
                    }
                })?;
                (plain, at_rest)
            }
        };
        match pk.key_data() {
            KeypairData::Ed25519(kp) => {
                let secret = Zeroizing::new(kp.private.to_bytes());
                let mut k = CaKey::from_dalek(ed25519_dalek::SigningKey::from_bytes(&secret));
                if k.signer.public != pk.public_key().key_data().clone() {
                    return Err(invalid(
                        "its public key does not match its private key".into(),
                    ));
                }
                k.signer.at_rest = at_rest;
                Ok(k)
            }
            other => Err(invalid(format!(
                "it holds a {} key; a CA key file must be Ed25519 (use backend = \"pkcs11\" \
                 for ECDSA or RSA keys)",
                other.algorithm().map(|a| a.to_string()).unwrap_or_default()
            ))),
        }
    }

    /// Writes the key to a new unencrypted file (0600, fsynced, linked into
    /// place); fails if `path` already exists.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyFileError> {
        let pk = self.to_private_key().map_err(|e| encode_err(path, e))?;
        write_pem(path, &pk)
    }

    /// Writes the key to a new file encrypted with `passphrase` in OpenSSH's
    /// format (bcrypt-pbkdf, 16 rounds as `ssh-keygen`; aes256-ctr); fails
    /// if `path` already exists. `ssh-keygen -y -f <path>` reads it back.
    pub fn write_new_encrypted(
        &self,
        path: &Path,
        passphrase: &Secret,
    ) -> Result<(), KeyFileError> {
        let plain = self.to_private_key().map_err(|e| encode_err(path, e))?;
        let pk = plain
            .encrypt(&mut OsRng, passphrase.expose().as_bytes())
            .map_err(|e| KeyFileError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(format!("encrypting the key: {e}")),
            })?;
        write_pem(path, &pk)
    }

    fn to_private_key(&self) -> Result<ssh_key::PrivateKey, ssh_key::Error> {
        let kp = Ed25519Keypair::from(&self.signer.key);
        ssh_key::PrivateKey::new(KeypairData::Ed25519(kp), "mayfly-user-ca")
    }
}

fn encode_err(path: &Path, e: ssh_key::Error) -> KeyFileError {
    KeyFileError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

fn write_pem(path: &Path, pk: &ssh_key::PrivateKey) -> Result<(), KeyFileError> {
    let pem = pk
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| encode_err(path, e))?;
    write_new_key_file(path, &pem)
}

/// Writes `contents` to `path` atomically: temp file in the same directory,
/// fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".mayfly-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// The directory `path` is in: `.` for a bare file name (whose
/// `parent()` is the empty path, which no system call accepts).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aws_lc_key_signs_as_the_seed_does() {
        // Ed25519 is deterministic: the key held in aws-lc must give the
        // very signature ed25519-dalek gives from the seed, and it must verify.
        let k = CaKey::generate();
        assert!(k.signer.fast.is_some(), "aws-lc took the key");
        for msg in [&b""[..], b"certificate to be signed", &[7u8; 1000]] {
            let sig = k.sign(msg).unwrap();
            assert_eq!(
                sig.as_bytes(),
                ed25519_dalek::Signer::sign(&k.signer.key, msg).to_bytes()
            );
            let bytes: [u8; 64] = sig.as_bytes().try_into().unwrap();
            k.signer
                .key
                .verifying_key()
                .verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&bytes))
                .unwrap();
        }
    }

    #[test]
    fn a_bare_file_name_is_written_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("report.md")), Path::new("."));
        assert_eq!(parent_dir(Path::new("out/report.md")), Path::new("out"));
        assert_eq!(parent_dir(Path::new("/report.md")), Path::new("/"));
    }

    #[test]
    fn a_plain_key_encrypted_for_a_shared_store_opens_only_with_the_passphrase() {
        let plain = NewKey::generate(None).expect("test step");
        assert_eq!(is_encrypted(&plain.private), Some(false));
        let pass = Secret::new(Zeroizing::new("s3cret".into()), "test");
        let enc = encrypt_key_text(&plain.private, &pass).expect("encrypt");
        assert_eq!(is_encrypted(&enc.private), Some(true));
        assert_eq!(enc.public, plain.public);
        let at = KeyLocation::Database {
            base: "audit_key".into(),
            slot: "active",
        };
        let k = CaKey::from_openssh(&enc.private, Some(&pass), at.clone()).expect("opens");
        assert_eq!(
            super::super::signer::public_key_line(&k.signer.public, super::super::CA_KEY_COMMENT),
            plain.public
        );
        let wrong = Secret::new(Zeroizing::new("other".into()), "test");
        assert!(CaKey::from_openssh(&enc.private, Some(&wrong), at).is_err());
        assert!(encrypt_key_text("not a key", &pass).is_err());
    }

    fn secret(s: &str) -> Secret {
        Secret::new(Zeroizing::new(s.to_string()), "test")
    }

    #[test]
    fn generated_key_is_written_0600_and_reloaded_not_overwritten() {
        let d = tempfile::tempdir().expect("test step");
        let p = d.path().join("user_ca");
        let (k1, created) = CaKey::load_or_generate(&p).expect("test step");
        assert!(created);
        let mode = fs::metadata(&p).expect("test step").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = CaKey::load_or_generate(&p).expect("test step");
        assert!(!created);
        assert_eq!(k1.public_key_line(), k2.public_key_line());
        assert!(
            k1.write_new(&p).is_err(),
            "existing key must not be replaced"
        );
        assert!(!format!("{k1:?}").contains("PRIVATE"));
        assert!(
            k2.describe().ends_with("(unencrypted)"),
            "{}",
            k2.describe()
        );
    }

    #[test]
    fn corrupt_key_file_is_an_error_not_a_new_key() {
        let d = tempfile::tempdir().expect("test step");
        let p = d.path().join("user_ca");
        fs::write(&p, "junk").expect("test step");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("test step");
        assert!(matches!(
            CaKey::load_or_generate(&p),
            Err(KeyFileError::Invalid { .. })
        ));
        assert_eq!(fs::read_to_string(&p).expect("test step"), "junk");
    }

    #[test]
    fn world_readable_key_is_refused() {
        let d = tempfile::tempdir().expect("test step");
        let p = d.path().join("user_ca");
        CaKey::generate().write_new(&p).expect("test step");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("test step");
        assert!(matches!(
            CaKey::load(&p),
            Err(KeyFileError::Permissions { .. })
        ));
    }

    #[test]
    fn encrypted_key_round_trips_and_refuses_the_wrong_passphrase() {
        let d = tempfile::tempdir().expect("test step");
        let p = d.path().join("user_ca");
        let (k1, created) =
            CaKey::open_or_generate(&p, Some(&secret("correct horse"))).expect("test step");
        assert!(created);
        assert!(fs::read_to_string(&p)
            .expect("test step")
            .contains("OPENSSH PRIVATE KEY"));
        assert!(k1
            .describe()
            .contains("encrypted: bcrypt-pbkdf 16 rounds, aes256-ctr"));
        let (k2, created) =
            CaKey::open_or_generate(&p, Some(&secret("correct horse"))).expect("test step");
        assert!(!created);
        assert_eq!(k1.public_key_line(), k2.public_key_line());
        let err = CaKey::open(&p, Some(&secret("wrong"))).expect_err("must fail");
        assert!(matches!(err, KeyFileError::WrongPassphrase { .. }), "{err}");
        assert!(!err.to_string().contains("wrong\""), "{err}");
        assert!(matches!(
            CaKey::open(&p, None),
            Err(KeyFileError::Encrypted { .. })
        ));
    }

    #[test]
    fn plain_key_is_refused_when_a_passphrase_is_expected() {
        let d = tempfile::tempdir().expect("test step");
        let p = d.path().join("user_ca");
        CaKey::generate().write_new(&p).expect("test step");
        let err = CaKey::open(&p, Some(&secret("x"))).expect_err("must fail");
        assert!(err.to_string().contains("ssh-keygen -p -f"), "{err}");
    }

    #[test]
    fn secret_sources_are_tried_in_order_and_a_missing_one_names_all_three() {
        let d = tempfile::tempdir().expect("test step");
        let f = d.path().join("pass");
        fs::write(&f, "from-file\n").expect("test step");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).expect("test step");
        fs::write(d.path().join(PASSPHRASE_CREDENTIAL), "from-cred").expect("test step");
        fs::set_permissions(
            d.path().join(PASSPHRASE_CREDENTIAL),
            fs::Permissions::from_mode(0o400),
        )
        .expect("test step");
        let dir = d.path().to_str().expect("test step").to_string();
        let env_all = move |k: &str| match k {
            "CREDENTIALS_DIRECTORY" => Some(dir.clone()),
            PASSPHRASE_ENV => Some("from-env".into()),
            _ => None,
        };
        let s = read_secret(&SecretSources::passphrase(Some(&f)), &env_all).expect("test step");
        assert_eq!(s.expose(), "from-file");
        let s = read_secret(&SecretSources::passphrase(None), &env_all).expect("test step");
        assert_eq!(s.expose(), "from-cred");
        let env_only = |k: &str| (k == PASSPHRASE_ENV).then(|| "from-env".to_string());
        let s = read_secret(&SecretSources::passphrase(None), &env_only).expect("test step");
        assert_eq!(s.expose(), "from-env");
        assert!(!format!("{s:?}").contains("from-env\""));
        let err = read_secret(&SecretSources::passphrase(None), &|_| None).expect_err("must fail");
        let msg = err.to_string();
        for needle in [
            "passphrase_file",
            "CREDENTIALS_DIRECTORY/mayfly-ca-passphrase",
            "MAYFLY_CA_PASSPHRASE",
        ] {
            assert!(msg.contains(needle), "{msg}");
        }
        // A configured file that is missing is an error, not a fallback.
        let gone = d.path().join("gone");
        assert!(read_secret(&SecretSources::passphrase(Some(&gone)), &env_all).is_err());
    }

    #[test]
    fn world_readable_or_empty_secret_files_are_refused() {
        let d = tempfile::tempdir().expect("test step");
        let f = d.path().join("pass");
        fs::write(&f, "x").expect("test step");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).expect("test step");
        assert!(matches!(
            read_secret(&SecretSources::passphrase(Some(&f)), &|_| None),
            Err(SecretError::Permissions { .. })
        ));
        fs::write(&f, "\n").expect("test step");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).expect("test step");
        assert!(matches!(
            read_secret(&SecretSources::passphrase(Some(&f)), &|_| None),
            Err(SecretError::Empty { .. })
        ));
    }
}
