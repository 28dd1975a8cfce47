//! The KRL served at `/v1/krl`, cached until the store's state changes.

use std::sync::Arc;
use std::time::SystemTime;

use crate::clock::unix_secs as unix;
use crate::store::StoreError;

use super::Service;

/// An encoded KRL and its HTTP validators.
#[derive(Debug)]
pub struct KrlSnapshot {
    /// KRL version (the store's state version).
    pub version: u64,
    /// Unix seconds of the last revocation change.
    pub generated_date: u64,
    /// The encoded KRL.
    pub bytes: Vec<u8>,
    /// Strong ETag.
    pub etag: String,
}

impl Service {
    /// The current KRL (rebuilt when revocations changed).
    pub async fn krl(&self, now: SystemTime) -> Result<Arc<KrlSnapshot>, StoreError> {
        self.refresh_admin().await?;
        let version = {
            let g = self.admin.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(k) = &g.krl {
                return Ok(k.clone());
            }
            g.version.unwrap_or_default()
        };
        let revocations = self.store.access().live_revocations(unix(now)).await?;
        let bytes = crate::revocation::encode_krl(&revocations, version);
        let snap = Arc::new(KrlSnapshot {
            version: version.version,
            generated_date: version.changed_at,
            etag: format!("\"krl-{}-{}\"", version.version, bytes.len()),
            bytes,
        });
        let mut g = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        if g.version == Some(version) {
            g.krl = Some(snap.clone());
        }
        Ok(snap)
    }
}
