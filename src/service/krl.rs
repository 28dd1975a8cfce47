//! The KRL served at `/v1/krl`, cached until the store's state changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::clock::unix_secs as unix;
use crate::store::{Revocation, StateVersion, StoreError};

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
        let bytes = encode_krl(&revocations, version);
        let snap = Arc::new(KrlSnapshot {
            version: version.version,
            generated_date: version.changed_at,
            etag: format!("\"krl-{}-{}\"", version.version, bytes.len()),
            bytes,
        });
        self.metrics
            .krl_built(snap.version, snap.bytes.len(), snap.generated_date);
        let mut g = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        if g.version == Some(version) {
            g.krl = Some(snap.clone());
        }
        Ok(snap)
    }
}

/// Encodes the KRL of `revocations` (grouped by CA key) at `version`.
pub fn encode_krl(revocations: &[Revocation], version: StateVersion) -> Vec<u8> {
    let mut by_ca: BTreeMap<&str, (Vec<u64>, Vec<String>)> = BTreeMap::new();
    for r in revocations {
        let e = by_ca.entry(r.ca_key.as_str()).or_default();
        if let Some(s) = r.serial {
            e.0.push(s);
        }
        if let Some(k) = &r.key_id {
            e.1.push(k.clone());
        }
    }
    let mut certs = Vec::new();
    for (ca_line, (serials, key_ids)) in by_ca {
        // A line that no longer parses cannot be scoped to its CA; it is
        // skipped rather than published as "revoked under any CA".
        let Some(blob) = crate::ca::signer::key_blob(ca_line) else {
            tracing::error!(
                ca_key = ca_line,
                "revocation names an unparseable CA key; skipped in KRL"
            );
            continue;
        };
        certs.push(crate::ca::krl::CertSection {
            ca_key_blob: blob,
            serials,
            key_ids,
        });
    }
    crate::ca::krl::encode(&crate::ca::krl::KrlSpec {
        krl_version: version.version,
        generated_date: version.changed_at,
        comment: "mayfly".into(),
        certs,
        explicit_keys: Vec::new(),
        sha256_fingerprints: Vec::new(),
    })
}
