//! The CA key rings in force: loaded at start, reloaded after a rotation.

use std::sync::Arc;

use super::Service;
use crate::ca;
use crate::ca::rotation::KeyRing;
use crate::policy::Policy;

/// Loads CA key rings from `data_dir` as `[ca]` says.
pub struct KeyLoader {
    /// `[ca]` settings.
    pub cfg: crate::config::CaKeyConfig,
    /// Where key files live.
    pub data_dir: std::path::PathBuf,
}

impl KeyLoader {
    /// Loads the ring of `base` (`user_ca` / `host_ca`).
    pub fn load(&self, base: &str) -> Result<KeyRing, ca::rotation::RotationError> {
        ca::rotation::load(&self.cfg, &self.data_dir, base, &|k| std::env::var(k).ok())
            .map(|(r, _)| r)
    }
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
        let mut out = self.user_keys().public_lines();
        for ring in self
            .group_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            out.push_str(&ring.public_lines());
        }
        out
    }

    /// Loads (generating on first use) the key ring of every CA group the
    /// policy names; groups already loaded are reloaded from disk.
    pub fn load_group_keys(&self, policy: &Policy) -> Result<(), ca::rotation::RotationError> {
        let Some(loader) = &self.key_loader else {
            return Ok(());
        };
        let mut fresh = std::collections::BTreeMap::new();
        for g in policy.ca_groups() {
            let ring = loader.load(&crate::config::files::group_base(&g))?;
            fresh.insert(g, Arc::new(ring));
        }
        *self.group_keys.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// Reloads both key rings from disk (after `mayfly ca rotate`). On
    /// failure the keys in force stay and the error is logged.
    pub(super) fn reload_keys(&self) {
        if let Err(e) = self.load_group_keys(&self.policy()) {
            tracing::error!(error = %e, "reloading CA group keys failed; keeping the keys in force");
        }
        let Some(loader) = &self.key_loader else {
            return;
        };
        for (base, slot) in [("user_ca", &self.user_keys), ("host_ca", &self.host_keys)] {
            match loader.load(base) {
                Ok(ring) => {
                    let mut g = slot.write().unwrap_or_else(|p| p.into_inner());
                    if g.public_lines() != ring.public_lines() {
                        tracing::info!(ca = base, active = %ring.active.fingerprint(), "CA keys reloaded");
                    }
                    *g = Arc::new(ring);
                }
                Err(e) => {
                    tracing::error!(ca = base, error = %e, "reloading CA keys failed; keeping the keys in force")
                }
            }
        }
    }
}
