//! CA keys behind the store: loading and first-start creation for the
//! server ([`KeyLoader`]), and `mayfly ca rotate` / `mayfly ca status`.
//!
//! Keys are read from and written to the store's [`KeyStore`] (files in
//! `data_dir` with SQLite, rows of the shared database with replicas);
//! this module decrypts them with the `[ca]` passphrase, which the store
//! never sees. A rotation step is recorded in the audit log and bumps the
//! store's state version in the same store operation, so every running
//! server reloads its keys and republishes `/v1/ca/*.pub` without a
//! restart, wherever the command ran. PKCS#11 keys are opened in the token
//! and not stored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::audit::{AuditRecord, EventKind};
use crate::ca::keys::{
    open_ca_signer, read_secret, shared_store_refusal, NewKey, Secret, SecretSources,
};
use crate::ca::rotation::{
    self, check_step, CaKeys, KeyRing, KeyStatus, KeyStep, RotationError, Slot,
};
use crate::ca::signer::fingerprint_of_line;
use crate::ca::Authority;
use crate::config::files;
use crate::config::{CaKeyConfig, Config, KeyProtection};
use crate::store::{KeyChange, KeyStore, OpenMode, Store, StoreConfig, StoreError};

/// Which rotation step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Create and publish the next key.
    Stage,
    /// Switch signing to the next key.
    Activate,
    /// Drop the previous key.
    Retire {
        /// Retire even if certificates it signed are still valid.
        force: bool,
    },
}

/// Which CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// The user CA (`TrustedUserCAKeys`).
    User,
    /// The host CA (`@cert-authority`).
    Host,
    /// The user CA of one `ca_group`.
    Group(String),
}

impl Which {
    fn base(&self) -> String {
        match self {
            Which::User => files::USER_CA_KEY.into(),
            Which::Host => files::HOST_CA_KEY.into(),
            Which::Group(g) => files::group_base(g),
        }
    }
    fn public(&self) -> String {
        match self {
            Which::User => files::USER_CA_PUB.into(),
            Which::Host => files::HOST_CA_PUB.into(),
            Which::Group(g) => format!("{}.pub", files::group_base(g)),
        }
    }
    fn name(&self) -> String {
        match self {
            Which::User => "user".into(),
            Which::Host => "host".into(),
            Which::Group(g) => format!("user (group {g})"),
        }
    }
}

/// Why a rotation command failed.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The key step failed; nothing changed.
    #[error(transparent)]
    Rotation(#[from] RotationError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Opening the store failed.
    #[error(transparent)]
    Open(#[from] crate::revocation::RevokeError),
    /// Writing the public key file failed.
    #[error("writing {0}: {1}")]
    Io(String, std::io::Error),
}

fn store_err(e: StoreError) -> RotationError {
    RotationError::Store(e.to_string())
}

/// Runs blocking key work (decryption, PKCS#11) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RotationError> + Send + 'static,
) -> Result<T, RotationError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RotationError::Store(format!("CA key task failed: {e}")))?
}

/// Opens CA key rings as `[ca]` says: stored keys (from the store's
/// [`KeyStore`]) decrypted with the configured passphrase, or keys in a
/// PKCS#11 token. Creates a CA's active key on first use, race-safe
/// across processes sharing the store.
#[derive(Clone)]
pub struct KeyLoader {
    cfg: CaKeyConfig,
    data_dir: PathBuf,
    keys: Arc<dyn KeyStore>,
}

impl KeyLoader {
    /// A loader over `keys`. Refuses unencrypted file keys when the store
    /// is shared by replicas.
    pub fn new(
        cfg: &CaKeyConfig,
        data_dir: &Path,
        keys: Arc<dyn KeyStore>,
    ) -> Result<KeyLoader, RotationError> {
        if keys.shared() {
            if let Some(why) = shared_store_refusal(cfg) {
                return Err(RotationError::State(why.into()));
            }
        }
        Ok(KeyLoader {
            cfg: cfg.clone(),
            data_dir: data_dir.to_path_buf(),
            keys,
        })
    }

    /// The stored keys of CA `base`.
    pub async fn stored(&self, base: &str) -> Result<CaKeys, RotationError> {
        self.keys.ca_keys(base).await.map_err(store_err)?
    }

    /// Loads the ring of CA `base` (`user_ca`, `host_ca`,
    /// `user_ca-<group>`), creating its active key on first use. Returns
    /// the ring and whether the key was just created (by this process).
    pub async fn load_or_create(&self, base: &str) -> Result<(KeyRing, bool), RotationError> {
        if let CaKeyConfig::Pkcs11(_) = &self.cfg {
            return self.open_in_token(base).await;
        }
        let mut keys = self.stored(base).await?;
        let mut created = false;
        if keys.active.is_none() {
            let cfg = self.cfg.clone();
            let new = blocking(move || Ok(NewKey::generate(passphrase(&cfg)?.as_ref())?)).await?;
            created = self
                .keys
                .create_active_if_absent(base, new)
                .await
                .map_err(store_err)??
                .1;
            keys = self.stored(base).await?;
        }
        let ring = self.open(keys).await?.ok_or_else(|| {
            RotationError::State(format!(
                "CA {base} has no active key right after creating it"
            ))
        })?;
        Ok((ring, created))
    }

    /// Reloads the ring of CA `base` if its stored keys are no longer the
    /// ones `current` holds (`None`: unchanged, nothing decrypted).
    /// Never creates a key. PKCS#11 keys are not stored and cannot be
    /// rotated: they stay as loaded at start.
    pub async fn reload(
        &self,
        base: &str,
        current: &KeyRing,
    ) -> Result<Option<KeyRing>, RotationError> {
        if let CaKeyConfig::Pkcs11(_) = &self.cfg {
            return Ok(None);
        }
        let keys = self.stored(base).await?;
        if current.matches(&keys) {
            return Ok(None);
        }
        self.open(keys).await?.map(Some).ok_or_else(|| {
            RotationError::State(format!(
                "CA {base} has no active key in the store any more; keeping the keys in force"
            ))
        })
    }

    async fn open(&self, keys: CaKeys) -> Result<Option<KeyRing>, RotationError> {
        let cfg = self.cfg.clone();
        blocking(move || KeyRing::open(&keys, passphrase(&cfg)?.as_ref())).await
    }

    async fn open_in_token(&self, base: &str) -> Result<(KeyRing, bool), RotationError> {
        let (cfg, dir, base) = (self.cfg.clone(), self.data_dir.clone(), base.to_string());
        blocking(move || {
            let (signer, created) = open_ca_signer(&cfg, &dir, &base, &env)?;
            Ok((
                KeyRing {
                    active: Authority::from_boxed(signer),
                    next: None,
                    previous: None,
                },
                created,
            ))
        })
        .await
    }

    /// A new key for the next slot, encrypted as `[ca]` says.
    async fn generate(&self) -> Result<NewKey, RotationError> {
        let cfg = self.cfg.clone();
        blocking(move || Ok(NewKey::generate(passphrase(&cfg)?.as_ref())?)).await
    }

    /// `ca status` rows of CA `base`, shown as `ca`.
    async fn status(
        &self,
        base: &str,
        ca: &str,
        now: u64,
    ) -> Result<Vec<KeyStatus>, RotationError> {
        let row = |slot: Slot, a: &Authority, created_at: Option<u64>| KeyStatus {
            ca: ca.to_string(),
            slot,
            fingerprint: a.fingerprint(),
            location: a.describe(),
            age_seconds: created_at.map(|t| now.saturating_sub(t)),
            signs: slot == Slot::Active,
        };
        if let CaKeyConfig::Pkcs11(_) = &self.cfg {
            let (ring, _) = self.open_in_token(base).await?;
            return Ok(vec![row(Slot::Active, &ring.active, None)]);
        }
        let keys = self.stored(base).await?;
        let cfg = self.cfg.clone();
        let opened = blocking(move || {
            let pass = passphrase(&cfg)?;
            Slot::ALL
                .into_iter()
                .filter_map(|slot| keys.get(slot).map(|k| (slot, k)))
                .map(|(slot, k)| Ok((slot, rotation::open_stored(k, pass.as_ref())?, k.created_at)))
                .collect::<Result<Vec<_>, RotationError>>()
        })
        .await?;
        Ok(opened
            .iter()
            .map(|(slot, a, created)| row(*slot, a, *created))
            .collect())
    }
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// The file-key passphrase, if `[ca]` asks for one.
fn passphrase(cfg: &CaKeyConfig) -> Result<Option<Secret>, RotationError> {
    match cfg {
        CaKeyConfig::File {
            protection: KeyProtection::Passphrase,
            passphrase_file,
        } => Ok(Some(
            read_secret(&SecretSources::passphrase(passphrase_file.as_deref()), &env)
                .map_err(crate::ca::KeyFileError::from)?,
        )),
        _ => Ok(None),
    }
}

/// Every published key of `keys` as OpenSSH lines, as
/// [`KeyRing::public_lines`] writes them.
fn public_lines(keys: &CaKeys) -> String {
    [Slot::Active, Slot::Next, Slot::Previous]
        .into_iter()
        .filter_map(|s| keys.get(s))
        .map(|k| format!("{}\n", k.public))
        .collect()
}

/// Runs one rotation step for one CA and returns a one-line summary.
pub async fn rotate(
    cfg: &Config,
    which: Which,
    step: Step,
    actor: &str,
    now: u64,
) -> Result<String, RotateError> {
    let store: Store = crate::revocation::open_store(cfg)?;
    rotation::check_rotatable(&cfg.ca)?;
    let loader = KeyLoader::new(&cfg.ca, &cfg.data_dir, store.keys_shared())?;
    let base = which.base();
    let keys = loader.stored(&base).await?;
    if let (Which::Group(g), None) = (&which, &keys.active) {
        return Err(RotationError::State(format!(
            "CA group {g:?} has no key yet; it is created when the server loads a role with ca_group = {g:?}"
        ))
        .into());
    }
    // Every key opens (right passphrase, sound keys) before anything changes.
    loader.open(keys.clone()).await?;
    let key_step = match step {
        Step::Stage => KeyStep::Stage(loader.generate().await?),
        Step::Activate => KeyStep::Activate,
        Step::Retire { force } => KeyStep::Retire { force },
    };
    check_step(&base, &key_step, &keys, &keys.slots())?;
    let line = |slot: Slot| keys.get(slot).map(|k| k.public.clone()).unwrap_or_default();
    let fp = |slot: Slot| fingerprint_of_line(&line(slot));
    let (summary, signing) = match &key_step {
        KeyStep::Stage(k) => (
            format!(
                "{} CA: staged next key {}; it is published now, activate it after every host has synced",
                which.name(),
                fingerprint_of_line(&k.public)
            ),
            line(Slot::Active),
        ),
        KeyStep::Activate => (
            format!(
                "{} CA: {} signs now; {} stays published as previous until retired",
                which.name(),
                fp(Slot::Next),
                fp(Slot::Active)
            ),
            line(Slot::Next),
        ),
        KeyStep::Retire { .. } => (
            format!(
                "{} CA: retired {}; hosts drop it at their next sync",
                which.name(),
                fp(Slot::Previous)
            ),
            line(Slot::Active),
        ),
    };
    let mut rec = AuditRecord::new(EventKind::CaKeyRotated, now.saturating_mul(1000), "admin");
    rec.actor = Some(actor.to_string());
    rec.cert_type = Some(which.name());
    rec.ca_key = Some(signing);
    rec.reason = Some(summary.clone());
    store
        .keys()
        .rotate(KeyChange {
            base: base.clone(),
            step: key_step,
            expected: keys.slots(),
            audit: rec,
            now,
        })
        .await??;
    // Keep data_dir/<ca>.pub in step with what the server publishes.
    let after = loader.stored(&base).await?;
    let pub_path = cfg.data_dir.join(which.public());
    crate::ca::keys::write_atomic(&pub_path, public_lines(&after).as_bytes(), 0o644)
        .map_err(|e| RotateError::Io(pub_path.display().to_string(), e))?;
    Ok(summary)
}

/// Status of every CA's keys (user, host, and each CA group the store has).
pub async fn status(cfg: &Config, now: u64) -> Result<Vec<KeyStatus>, RotateError> {
    let store = crate::store::open(&StoreConfig::from_config(cfg, OpenMode::ReadOnly)).map_err(
        |e| match e {
            StoreError::Missing(_) => {
                RotateError::Open(crate::revocation::RevokeError::Invalid(e.to_string()))
            }
            other => RotateError::Store(other),
        },
    )?;
    let loader = KeyLoader::new(&cfg.ca, &cfg.data_dir, store.keys_shared())?;
    let mut cas = vec![
        (files::USER_CA_KEY.to_string(), "user".to_string()),
        (files::HOST_CA_KEY.to_string(), "host".to_string()),
    ];
    let prefix = format!("{}-", files::USER_CA_KEY);
    for base in store.keys().cas().await? {
        if let Some(g) = base.strip_prefix(&prefix) {
            cas.push((base.clone(), format!("user:{g}")));
        }
    }
    let mut out = Vec::new();
    for (base, ca) in cas {
        out.extend(loader.status(&base, &ca, now).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;
    use crate::config::StoreBackend;
    use crate::store::key_memory::MemoryKeys;

    fn sqlite(dir: &Path) -> Store {
        crate::store::open(&StoreConfig {
            backend: StoreBackend::SQLite,
            sqlite_path: dir.join(crate::store::SQLITE_FILE),
            busy_timeout: Duration::from_secs(5),
            mode: OpenMode::Create,
        })
        .expect("store opens")
    }

    fn protected(dir: &Path) -> CaKeyConfig {
        let pass = dir.join("pass");
        std::fs::write(&pass, "correct horse").expect("test step");
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).expect("test step");
        CaKeyConfig::File {
            protection: KeyProtection::Passphrase,
            passphrase_file: Some(pass),
        }
    }

    #[test]
    fn a_shared_store_refuses_unencrypted_file_keys_but_not_encrypted_or_token_keys() {
        let d = tempfile::tempdir().expect("test step");
        let shared: Arc<dyn KeyStore> = Arc::new(MemoryKeys::shared());
        let err = KeyLoader::new(&CaKeyConfig::default(), d.path(), shared.clone())
            .err()
            .expect("refused");
        assert!(
            err.to_string().contains("key_protection = \"passphrase\""),
            "{err}"
        );
        KeyLoader::new(&protected(d.path()), d.path(), shared).expect("encrypted keys are fine");
        let own: Arc<dyn KeyStore> = Arc::new(MemoryKeys::new());
        KeyLoader::new(&CaKeyConfig::default(), d.path(), own).expect("one server's own store");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_starting_on_one_store_sign_with_one_encrypted_key() {
        for _ in 0..10 {
            let d = tempfile::tempdir().expect("test step");
            let store = sqlite(d.path());
            let cfg = protected(d.path());
            let starts: Vec<_> = (0..3)
                .map(|_| {
                    let loader =
                        KeyLoader::new(&cfg, d.path(), store.keys_shared()).expect("loader");
                    tokio::spawn(async move { loader.load_or_create("user_ca").await })
                })
                .collect();
            let mut rings = Vec::new();
            for s in starts {
                rings.push(s.await.expect("task").expect("load"));
            }
            let fp = rings[0].0.active.fingerprint();
            assert!(rings.iter().all(|(r, _)| r.active.fingerprint() == fp));
            assert_eq!(rings.iter().filter(|(_, created)| *created).count(), 1);
            let stored = store
                .keys()
                .ca_keys("user_ca")
                .await
                .expect("store")
                .expect("keys");
            assert_eq!(
                crate::ca::signer::fingerprint_of_line(&stored.active.expect("active").public),
                fp
            );
            let d = rings[0].0.active.describe();
            assert!(d.contains("(encrypted: bcrypt-pbkdf"), "{d}");
        }
    }

    #[tokio::test]
    async fn reload_decrypts_nothing_until_the_stored_keys_change() {
        let d = tempfile::tempdir().expect("test step");
        let store = sqlite(d.path());
        let loader =
            KeyLoader::new(&CaKeyConfig::default(), d.path(), store.keys_shared()).expect("loader");
        let (ring, created) = loader.load_or_create("host_ca").await.expect("load");
        assert!(created);
        assert!(loader
            .reload("host_ca", &ring)
            .await
            .expect("reload")
            .is_none());
        let keys = loader.stored("host_ca").await.expect("stored");
        let next = loader.generate().await.expect("generate");
        let mut rec = AuditRecord::new(EventKind::CaKeyRotated, 1_000, "admin");
        rec.reason = Some("test".into());
        store
            .keys()
            .rotate(KeyChange {
                base: "host_ca".into(),
                step: KeyStep::Stage(next.clone()),
                expected: keys.slots(),
                audit: rec,
                now: 1,
            })
            .await
            .expect("store")
            .expect("stage");
        let fresh = loader
            .reload("host_ca", &ring)
            .await
            .expect("reload")
            .expect("changed");
        assert_eq!(fresh.next.expect("next").public_key_line(), next.public);
        // Reload never creates: a CA without keys stays an error.
        assert!(loader.reload("user_ca", &ring).await.is_err());
    }
}
