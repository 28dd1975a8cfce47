//! CA keys in process memory: a [`KeyStore`] for tests and fakes, and a
//! model of what a database-backed one does. Every operation runs under
//! one lock, as a database runs it in one transaction: read the CA's keys,
//! [`check_step`], apply, append the audit record, bump the state version.
//! [`MemoryKeys::shared`] behaves like a store shared by replicas and
//! refuses unencrypted keys.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::traits::{KeyChange, KeyStore, StoreFuture};
use super::StateVersion;
use crate::audit::AuditRecord;
use crate::ca::keys::{is_encrypted, NewKey, StoredKey, UNENCRYPTED_SHARED_KEY};
use crate::ca::rotation::{check_retire_expiry, check_step, CaKeys, KeyStep, RotationError, Slot};
use crate::ca::KeyLocation;

/// CA keys, their audit records and state version, in memory.
#[derive(Default)]
pub struct MemoryKeys {
    shared: bool,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    cas: BTreeMap<String, CaKeys>,
    audit: Vec<AuditRecord>,
    version: StateVersion,
    /// Latest `valid_before` by signing key line.
    issued: HashMap<String, u64>,
}

impl MemoryKeys {
    /// An empty store, as one server's own.
    pub fn new() -> MemoryKeys {
        MemoryKeys::default()
    }

    /// An empty store that acts as one shared by replicas: it only takes
    /// passphrase-encrypted keys.
    pub fn shared() -> MemoryKeys {
        MemoryKeys {
            shared: true,
            ..MemoryKeys::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `ca_key` signed a certificate valid until `valid_before`
    /// (what retire's expiry check reads).
    pub fn record_issued(&self, ca_key: &str, valid_before: u64) {
        let mut g = self.lock();
        let e = g.issued.entry(ca_key.to_string()).or_default();
        *e = (*e).max(valid_before);
    }

    /// The audit records written so far.
    pub fn audit(&self) -> Vec<AuditRecord> {
        self.lock().audit.clone()
    }

    /// The state version now.
    pub fn version(&self) -> StateVersion {
        self.lock().version
    }

    fn accept(&self, key: &NewKey) -> Result<(), RotationError> {
        if self.shared && is_encrypted(&key.private) != Some(true) {
            return Err(RotationError::State(UNENCRYPTED_SHARED_KEY.into()));
        }
        Ok(())
    }
}

fn stored(base: &str, slot: Slot, key: NewKey, now: Option<u64>) -> StoredKey {
    StoredKey {
        public: key.public,
        private: key.private,
        created_at: now,
        location: KeyLocation::Database {
            base: base.to_string(),
            slot: slot.as_str(),
        },
    }
}

fn relabel(key: &mut Option<StoredKey>, base: &str, slot: Slot) {
    if let Some(k) = key {
        k.location = KeyLocation::Database {
            base: base.to_string(),
            slot: slot.as_str(),
        };
    }
}

impl KeyStore for MemoryKeys {
    fn shared(&self) -> bool {
        self.shared
    }

    fn cas(&self) -> StoreFuture<'_, Vec<String>> {
        let names = self
            .lock()
            .cas
            .iter()
            .filter(|(_, k)| !k.is_empty())
            .map(|(b, _)| b.clone())
            .collect();
        Box::pin(std::future::ready(Ok(names)))
    }

    fn ca_keys(&self, base: &str) -> StoreFuture<'_, Result<CaKeys, RotationError>> {
        let keys = self.lock().cas.get(base).cloned().unwrap_or_default();
        Box::pin(std::future::ready(Ok(Ok(keys))))
    }

    fn create_active_if_absent(
        &self,
        base: &str,
        key: NewKey,
    ) -> StoreFuture<'_, Result<(StoredKey, bool), RotationError>> {
        let r = self.accept(&key).and_then(|()| {
            let mut g = self.lock();
            let keys = g.cas.entry(base.to_string()).or_default();
            if let Some(active) = &keys.active {
                return Ok((active.clone(), false));
            }
            if !keys.is_empty() {
                return Err(RotationError::State(format!(
                    "CA {base} has a next or previous key but no active key"
                )));
            }
            let k = stored(base, Slot::Active, key, None);
            keys.active = Some(k.clone());
            Ok((k, true))
        });
        Box::pin(std::future::ready(Ok(r)))
    }

    fn rotate(&self, change: KeyChange) -> StoreFuture<'_, Result<StateVersion, RotationError>> {
        let r = (|| {
            if let KeyStep::Stage(k) = &change.step {
                self.accept(k)?;
            }
            let mut g = self.lock();
            let current = g.cas.get(&change.base).cloned().unwrap_or_default();
            check_step(&change.base, &change.step, &current, &change.expected)?;
            let mut keys = current;
            match change.step {
                KeyStep::Stage(k) => {
                    keys.next = Some(stored(&change.base, Slot::Next, k, Some(change.now)));
                }
                KeyStep::Activate => {
                    keys.previous = keys.active.take();
                    keys.active = keys.next.take();
                    relabel(&mut keys.previous, &change.base, Slot::Previous);
                    relabel(&mut keys.active, &change.base, Slot::Active);
                }
                KeyStep::Retire { force } => {
                    if let Some(prev) = &keys.previous {
                        let last = g.issued.get(&prev.public).copied().unwrap_or(0);
                        check_retire_expiry(prev, last, change.now, force)?;
                    }
                    keys.previous = None;
                }
            }
            g.cas.insert(change.base.clone(), keys);
            g.audit.push(change.audit);
            g.version = StateVersion {
                version: g.version.version + 1,
                changed_at: change.now,
            };
            Ok(g.version)
        })();
        Box::pin(std::future::ready(Ok(r)))
    }

    fn import_keys(&self, base: &str, keys: CaKeys) -> StoreFuture<'_, Result<(), RotationError>> {
        let r = (|| {
            for slot in Slot::ALL {
                if let Some(k) = keys.get(slot) {
                    if self.shared && is_encrypted(&k.private) != Some(true) {
                        return Err(RotationError::State(UNENCRYPTED_SHARED_KEY.into()));
                    }
                }
            }
            let mut g = self.lock();
            let stored = g.cas.entry(base.to_string()).or_default();
            if !stored.is_empty() {
                return Err(RotationError::State(format!(
                    "CA {base} has stored keys already"
                )));
            }
            *stored = keys;
            for slot in Slot::ALL {
                relabel(stored.get_mut(slot), base, slot);
            }
            Ok(())
        })();
        Box::pin(std::future::ready(Ok(r)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::EventKind;
    use crate::ca::keys::Secret;
    use crate::ca::rotation::Slots;

    fn key() -> NewKey {
        NewKey::generate(None).expect("test step")
    }

    fn record(what: &str) -> AuditRecord {
        let mut r = AuditRecord::new(EventKind::CaKeyRotated, 1_000, "admin");
        r.reason = Some(what.into());
        r
    }

    async fn slots(s: &MemoryKeys, base: &str) -> Slots {
        s.ca_keys(base).await.expect("store").expect("keys").slots()
    }

    async fn step(s: &MemoryKeys, step: KeyStep, now: u64) -> Result<StateVersion, RotationError> {
        let expected = slots(s, "user_ca").await;
        s.rotate(KeyChange {
            base: "user_ca".into(),
            audit: record(step.name()),
            step,
            expected,
            now,
        })
        .await
        .expect("store")
    }

    async fn started() -> MemoryKeys {
        let s = MemoryKeys::new();
        s.create_active_if_absent("user_ca", key())
            .await
            .expect("store")
            .expect("create");
        s
    }

    #[tokio::test]
    async fn concurrent_first_starts_end_up_with_one_key() {
        let s = Arc::new(MemoryKeys::new());
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.create_active_if_absent("user_ca", key())
                        .await
                        .expect("store")
                        .expect("create")
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            winners.push(t.await.expect("task"));
        }
        assert_eq!(winners.iter().filter(|(_, created)| *created).count(), 1);
        assert!(winners.iter().all(|(k, _)| k.public == winners[0].0.public));
        assert_eq!(s.version().version, 0, "creation is not a state change");
    }

    #[tokio::test]
    async fn staging_twice_is_refused_and_writes_nothing() {
        let s = started().await;
        step(&s, KeyStep::Stage(key()), 10)
            .await
            .expect("first stage");
        let v = s.version();
        let err = step(&s, KeyStep::Stage(key()), 11)
            .await
            .expect_err("second stage");
        assert!(err.to_string().contains("already staged"), "{err}");
        assert_eq!(s.version(), v);
        assert_eq!(s.audit().len(), 1);
    }

    #[tokio::test]
    async fn activating_without_a_next_key_is_refused() {
        let s = started().await;
        let err = step(&s, KeyStep::Activate, 10).await.expect_err("refused");
        assert!(err.to_string().contains("no next key is staged"), "{err}");
        assert!(s.audit().is_empty());
        assert_eq!(s.version().version, 0);
    }

    #[tokio::test]
    async fn a_full_rotation_moves_the_keys_and_audits_each_step_with_a_version_bump() {
        let s = started().await;
        let old = slots(&s, "user_ca").await.active.expect("active");
        let next = key();
        step(&s, KeyStep::Stage(next.clone()), 10)
            .await
            .expect("stage");
        let v = step(&s, KeyStep::Activate, 20).await.expect("activate");
        assert_eq!(v.version, 2);
        let now = slots(&s, "user_ca").await;
        assert_eq!(now.active.as_deref(), Some(next.public.as_str()));
        assert_eq!(now.previous.as_deref(), Some(old.as_str()));
        step(&s, KeyStep::Retire { force: false }, 30)
            .await
            .expect("retire");
        let after = slots(&s, "user_ca").await;
        assert_eq!(after.previous, None);
        let steps: Vec<_> = s.audit().into_iter().filter_map(|r| r.reason).collect();
        assert_eq!(steps, ["stage", "activate", "retire"]);
        assert_eq!(
            s.version(),
            StateVersion {
                version: 3,
                changed_at: 30
            }
        );
    }

    #[tokio::test]
    async fn retiring_while_the_previous_keys_certificates_are_valid_needs_force() {
        let s = started().await;
        let old = slots(&s, "user_ca").await.active.expect("active");
        step(&s, KeyStep::Stage(key()), 10).await.expect("stage");
        step(&s, KeyStep::Activate, 20).await.expect("activate");
        s.record_issued(&old, 500);
        let err = step(&s, KeyStep::Retire { force: false }, 100)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("valid for another 400s"), "{err}");
        assert!(slots(&s, "user_ca").await.previous.is_some());
        step(&s, KeyStep::Retire { force: true }, 100)
            .await
            .expect("forced");
        assert!(slots(&s, "user_ca").await.previous.is_none());
    }

    #[tokio::test]
    async fn a_step_decided_before_another_rotation_is_refused_as_changed() {
        let s = started().await;
        let stale = slots(&s, "user_ca").await;
        step(&s, KeyStep::Stage(key()), 10).await.expect("stage");
        step(&s, KeyStep::Activate, 20).await.expect("activate");
        step(&s, KeyStep::Retire { force: true }, 30)
            .await
            .expect("retire");
        step(&s, KeyStep::Stage(key()), 40)
            .await
            .expect("stage again");
        // Decided on the first state: "no next key" held then, not now.
        let r = s
            .rotate(KeyChange {
                base: "user_ca".into(),
                step: KeyStep::Stage(key()),
                expected: stale,
                audit: record("late"),
                now: 50,
            })
            .await
            .expect("store");
        assert!(matches!(r, Err(RotationError::Changed { .. })), "{r:?}");
        assert_eq!(s.audit().len(), 4);
    }

    #[tokio::test]
    async fn a_shared_store_refuses_unencrypted_keys() {
        let s = MemoryKeys::shared();
        let err = s
            .create_active_if_absent("user_ca", key())
            .await
            .expect("store")
            .expect_err("refused");
        assert!(err.to_string().contains("unencrypted"), "{err}");
        let pass = Secret::new(zeroize::Zeroizing::new("pw".into()), "test");
        let enc = NewKey::generate(Some(&pass)).expect("test step");
        s.create_active_if_absent("user_ca", enc)
            .await
            .expect("store")
            .expect("encrypted is taken");
        let err = step(&s, KeyStep::Stage(key()), 10)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("unencrypted"), "{err}");
    }
}
