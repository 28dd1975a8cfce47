//! The KRL served at `/v1/krl`, cached until the store's state changes.

use std::collections::BTreeMap;
use std::sync::Arc;

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

/// The strong ETag of a KRL: its version and a hash of its bytes. The
/// version alone is not enough: a CA rebuilt from scratch counts versions
/// from 0 again, and its KRL of version N must not answer 304 to a host
/// that holds the old CA's KRL of version N (the host would keep the old
/// revocations and miss the new ones). Replicas serving the same bytes
/// give the same ETag.
pub fn krl_etag(version: u64, bytes: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(bytes);
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"krl-{version}-{hex}\"")
}

impl Service {
    /// The current KRL (rebuilt when revocations changed).
    pub async fn krl(&self) -> Result<Arc<KrlSnapshot>, StoreError> {
        self.refresh_admin().await?;
        let version = {
            let g = self.admin.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(k) = &g.krl {
                return Ok(k.clone());
            }
            g.version.unwrap_or_default()
        };
        // The revocations live when this version was made, not now: the
        // KRL of a version is then the same bytes whenever and wherever it
        // is built (every replica, after every restart). Entries that
        // expired since stay until the next change; revoking an expired
        // certificate changes nothing for sshd.
        let revocations = self
            .store
            .access()
            .live_revocations(version.changed_at)
            .await?;
        let bytes = encode_krl(&revocations, version);
        let snap = Arc::new(KrlSnapshot {
            version: version.version,
            generated_date: version.changed_at,
            etag: krl_etag(version.version, &bytes),
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

#[cfg(test)]
mod etag_tests {
    use super::krl_etag;

    #[test]
    fn krls_of_one_version_and_length_but_other_bytes_have_other_etags() {
        let a = krl_etag(1, b"revokes serial 1");
        let b = krl_etag(1, b"revokes serial 2");
        assert_ne!(a, b);
        assert_eq!(a, krl_etag(1, b"revokes serial 1"));
        assert!(a.starts_with("\"krl-1-") && a.ends_with('"'), "{a}");
    }
}
