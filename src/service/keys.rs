//! The CA key rings in force: loaded at start (the first process on an
//! empty store creates the keys), reloaded after a rotation, wherever it
//! ran. [`KeyLoader`] reads the keys from the store's [`KeyStore`] and
//! decrypts them with the `[ca]` passphrase, which the store never sees;
//! PKCS#11 keys are opened in the token and not stored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Service;
use crate::audit::checkpoint::{AuditKey, KEY_FILE as AUDIT_KEY_BASE};
use crate::ca;
use crate::ca::keys::{
    open_ca_signer, shared_audit_key_passphrase, shared_store_refusal, stored_key_passphrase,
    NewKey, Secret,
};
use crate::ca::rotation::{self, CaKeys, KeyRing, KeyStatus, RotationError, Slot};
use crate::ca::Authority;
use crate::config::CaKeyConfig;
use crate::policy::Policy;
use crate::store::{KeyStore, StoreError};

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

    /// Opens every stored key of a CA (decrypting them); `None` when it
    /// has no active key.
    pub async fn open(&self, keys: CaKeys) -> Result<Option<KeyRing>, RotationError> {
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

    /// The audit checkpoint key of a store shared by replicas: one key in
    /// the database for all of them, created by the first (the same race
    /// rule as CA keys), encrypted with the CA passphrase. `None` when
    /// the store is not shared: the key is the file `data_dir/audit_key`.
    pub async fn audit_key(&self) -> Result<Option<(AuditKey, bool)>, RotationError> {
        if !self.keys.shared() {
            return Ok(None);
        }
        let cfg = self.cfg.clone();
        let pass = blocking(move || Ok(shared_audit_key_passphrase(&cfg, &env)?)).await?;
        let pass = Arc::new(pass);
        let mut keys = self.stored(AUDIT_KEY_BASE).await?;
        let mut created = false;
        if keys.active.is_none() {
            let p = pass.clone();
            let new = blocking(move || Ok(NewKey::generate(Some(&p))?)).await?;
            created = self
                .keys
                .create_active_if_absent(AUDIT_KEY_BASE, new)
                .await
                .map_err(store_err)??
                .1;
            keys = self.stored(AUDIT_KEY_BASE).await?;
        }
        let stored = keys.active.ok_or_else(|| {
            RotationError::State(
                "the audit key is not in the database right after storing it".into(),
            )
        })?;
        let key =
            blocking(move || Ok(crate::ca::CaKey::from_stored(&stored, Some(&pass))?)).await?;
        Ok(Some((AuditKey::from_key(key), created)))
    }

    /// A new key for the next slot, encrypted as `[ca]` says.
    pub async fn generate(&self) -> Result<NewKey, RotationError> {
        let cfg = self.cfg.clone();
        blocking(move || Ok(NewKey::generate(passphrase(&cfg)?.as_ref())?)).await
    }

    /// `ca status` rows of every CA (user, host, and each CA group the
    /// store holds keys of), as of `now`: what `mayfly ca status` and
    /// `GET /v1/admin/ca` show.
    pub async fn status_all(&self, now: u64) -> Result<Vec<KeyStatus>, RotationError> {
        use crate::config::files::{HOST_CA_KEY, USER_CA_KEY};
        let mut cas = vec![
            (USER_CA_KEY.to_string(), "user".to_string()),
            (HOST_CA_KEY.to_string(), "host".to_string()),
        ];
        let prefix = format!("{USER_CA_KEY}-");
        for base in self.keys.cas().await.map_err(store_err)? {
            if let Some(g) = base.strip_prefix(&prefix) {
                cas.push((base.clone(), format!("user:{g}")));
            }
        }
        let mut out = Vec::new();
        for (base, ca) in cas {
            out.extend(self.status(&base, &ca, now).await?);
        }
        Ok(out)
    }

    /// `ca status` rows of CA `base`, shown as `ca`, as of `now`.
    pub async fn status(
        &self,
        base: &str,
        ca: &str,
        now: u64,
    ) -> Result<Vec<KeyStatus>, RotationError> {
        let row = |slot: Slot, a: &Authority, created_at: Option<u64>| {
            KeyStatus::of(ca, slot, a, created_at.map(|t| now.saturating_sub(t)))
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
    Ok(stored_key_passphrase(cfg, &env)?)
}

impl Service {
    /// The user CA keys in force.
    pub fn user_keys(&self) -> Arc<KeyRing> {
        self.user_keys
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The host CA keys in force.
    pub fn host_keys(&self) -> Arc<KeyRing> {
        self.host_keys
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The key ring of CA group `group` (roles with `ca_group`), if loaded.
    pub fn group_keys(&self, group: &str) -> Option<Arc<KeyRing>> {
        self.group_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(group)
            .cloned()
    }

    /// Every published user CA key: the default CA's, then each group's.
    pub fn all_user_public_lines(&self) -> String {
        let mut out = self
            .user_keys()
            .public_lines(crate::config::files::USER_CA_KEY);
        for (group, ring) in self
            .group_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            out.push_str(&ring.public_lines(&crate::config::files::group_base(group)));
        }
        out
    }

    /// Loads (generating on first use) the key ring of every CA group the
    /// policy names; groups already loaded are reloaded when their stored
    /// keys changed.
    pub async fn load_group_keys(
        &self,
        policy: &Policy,
    ) -> Result<(), ca::rotation::RotationError> {
        let Some(loader) = &self.key_loader else {
            return Ok(());
        };
        let mut fresh = std::collections::BTreeMap::new();
        for g in policy.ca_groups() {
            let base = crate::config::files::group_base(&g);
            let ring = match self.group_keys(&g) {
                Some(current) => match loader.reload(&base, &current).await? {
                    Some(ring) => Arc::new(ring),
                    None => current,
                },
                None => Arc::new(loader.load_or_create(&base).await?.0),
            };
            fresh.insert(g, ring);
        }
        *self.group_keys.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// Reloads the key rings whose stored keys changed (after `mayfly ca
    /// rotate`, wherever it ran). On failure the keys in force stay and the
    /// error is logged.
    pub(super) async fn reload_keys(&self) {
        if let Err(e) = self.load_group_keys(&self.policy()).await {
            tracing::error!(error = %e, "reloading CA group keys failed; keeping the keys in force");
        }
        let Some(loader) = &self.key_loader else {
            return;
        };
        for (base, slot) in [("user_ca", &self.user_keys), ("host_ca", &self.host_keys)] {
            let current = slot
                .read()
                .map(|k| k.clone())
                .unwrap_or_else(|p| p.into_inner().clone());
            match loader.reload(base, &current).await {
                Ok(None) => {}
                Ok(Some(ring)) => {
                    if current.fingerprints() != ring.fingerprints() {
                        tracing::info!(ca = base, active = %ring.active.fingerprint(), "CA keys reloaded");
                    }
                    *slot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
                }
                Err(e) => {
                    tracing::error!(ca = base, error = %e, "reloading CA keys failed; keeping the keys in force")
                }
            }
        }
    }

    /// Every CA key with its slot, fingerprint, location and age, as of
    /// `now` (`GET /v1/admin/ca`, the answer of `mayfly ca status`). Read
    /// from the store, so a rotation made anywhere shows at once. Without a
    /// key loader (keys fixed at start) the key rings in force are shown.
    pub async fn ca_status(&self, now: u64) -> Result<Vec<KeyStatus>, RotationError> {
        if let Some(loader) = &self.key_loader {
            return loader.status_all(now).await;
        }
        let mut out = Vec::new();
        for (ca, ring) in [("user", self.user_keys()), ("host", self.host_keys())] {
            for (slot, a) in [
                (Slot::Next, ring.next.as_ref()),
                (Slot::Active, Some(&ring.active)),
                (Slot::Previous, ring.previous.as_ref()),
            ] {
                if let Some(a) = a {
                    out.push(KeyStatus::of(ca, slot, a, None));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod loader_tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;
    use crate::audit::{AuditRecord, EventKind};
    use crate::ca::rotation::KeyStep;
    use crate::config::KeyProtection;
    use crate::config::StoreBackend;
    use crate::store::key_memory::MemoryKeys;
    use crate::store::{KeyChange, OpenMode, Store, StoreConfig};

    fn sqlite(dir: &Path) -> Store {
        crate::store::open(&StoreConfig {
            backend: StoreBackend::SQLite,
            sqlite_path: dir.join(crate::store::SQLITE_FILE),
            busy_timeout: Duration::from_secs(5),
            mode: OpenMode::Create,
            postgres: None,
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

    /// Three loaders starting at once on one fresh store, as replicas on
    /// an empty database: every one gets the same key, one created it.
    async fn race(cfg: &CaKeyConfig) -> KeyRing {
        let d = tempfile::tempdir().expect("test step");
        let store = sqlite(d.path());
        let starts: Vec<_> = (0..3)
            .map(|_| {
                let loader = KeyLoader::new(cfg, d.path(), store.keys_shared()).expect("loader");
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
        rings.swap_remove(0).0
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processes_starting_at_once_on_one_store_sign_with_one_key() {
        for _ in 0..10 {
            race(&CaKeyConfig::default()).await;
        }
        let d = tempfile::tempdir().expect("test step");
        let ring = race(&protected(d.path())).await;
        let at = ring.active.describe();
        assert!(at.contains("(encrypted: bcrypt-pbkdf"), "{at}");
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
