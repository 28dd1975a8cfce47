//! The CA key rings in force: loaded at start, reloaded after a rotation
//! (from the store, through [`KeyLoader`]).

use std::sync::Arc;

use super::Service;
use crate::ca;
use crate::ca::rotation::KeyRing;
use crate::policy::Policy;
pub use crate::rotation::KeyLoader;

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
                    if current.public_lines() != ring.public_lines() {
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
}
