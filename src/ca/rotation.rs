//! CA key rotation without downtime: the key slots, the rotation state
//! machine, and the key ring a server signs with.
//!
//! Each CA (user, host, each CA group) has up to three key slots:
//!
//! | slot     | file (SQLite mode)   | published | signs |
//! |----------|----------------------|-----------|-------|
//! | next     | `user_ca.next`       | yes       | no    |
//! | active   | `user_ca`            | yes       | yes   |
//! | previous | `user_ca.previous`   | yes       | no    |
//!
//! `stage` creates the next key, so hosts learn it (through
//! `/v1/ca/user.pub` and the host sync agent) before anything is signed
//! with it; `activate` makes it sign (the old key becomes `previous`, still
//! trusted, so certificates it signed keep working); `retire` drops the
//! previous key once every certificate it signed has expired.
//!
//! Where the keys are kept is the store's business
//! (`crate::store::KeyStore`: files in `data_dir` with SQLite, rows with a
//! shared database). This module holds what every store must agree on:
//! [`check_step`] and [`check_retire_expiry`] decide whether a step fits
//! the stored state, and each store calls them inside the operation that
//! applies the step, so all backends refuse alike and with the same words.
//! Rotation of PKCS#11 keys is not supported by this version: nothing of
//! them is stored, they stay on the token.

use serde::Serialize;

use super::keys::{CaKey, KeyFileError, KeyLocation, NewKey, Secret, StoredKey};
use super::signer::fingerprint_of_line;
use super::Authority;
use crate::config::CaKeyConfig;

/// Why a rotation step (or loading a CA's keys) was refused.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The step does not fit the current state.
    #[error("{0}")]
    State(String),
    /// The keys changed between reading them and applying the step
    /// (another rotation ran at the same time); nothing was changed.
    #[error("the keys of CA {base} changed while this command ran (another `mayfly ca rotate` at the same time?); nothing was changed, run it again")]
    Changed {
        /// CA base name.
        base: String,
    },
    /// Key trouble (file, passphrase, token).
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// File system trouble.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The store failed.
    #[error("{0}")]
    Store(String),
}

/// A slot of a CA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    /// Signs certificates.
    Active,
    /// Published, not yet signing.
    Next,
    /// Published until retired; signed certificates still valid.
    Previous,
}

impl Slot {
    /// Every slot, in the order `ca status` lists them.
    pub const ALL: [Slot; 3] = [Slot::Next, Slot::Active, Slot::Previous];

    /// What the slot's key file name adds to the CA's base name.
    pub fn file_suffix(self) -> &'static str {
        match self {
            Slot::Active => "",
            Slot::Next => ".next",
            Slot::Previous => ".previous",
        }
    }

    /// Name of the slot.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Active => "active",
            Slot::Next => "next",
            Slot::Previous => "previous",
        }
    }
}

/// The stored keys of one CA, by slot.
#[derive(Debug, Clone, Default)]
pub struct CaKeys {
    /// Signs.
    pub active: Option<StoredKey>,
    /// Staged for the next activation.
    pub next: Option<StoredKey>,
    /// The key before the last activation.
    pub previous: Option<StoredKey>,
}

impl CaKeys {
    /// The key in `slot`.
    pub fn get(&self, slot: Slot) -> Option<&StoredKey> {
        match slot {
            Slot::Active => self.active.as_ref(),
            Slot::Next => self.next.as_ref(),
            Slot::Previous => self.previous.as_ref(),
        }
    }

    /// The key in `slot`, to change it.
    pub fn get_mut(&mut self, slot: Slot) -> &mut Option<StoredKey> {
        match slot {
            Slot::Active => &mut self.active,
            Slot::Next => &mut self.next,
            Slot::Previous => &mut self.previous,
        }
    }

    /// The public lines by slot: what a step is decided on.
    pub fn slots(&self) -> Slots {
        let line = |k: &Option<StoredKey>| k.as_ref().map(|k| k.public.clone());
        Slots {
            active: line(&self.active),
            next: line(&self.next),
            previous: line(&self.previous),
        }
    }

    /// Whether no slot holds a key.
    pub fn is_empty(&self) -> bool {
        self.active.is_none() && self.next.is_none() && self.previous.is_none()
    }
}

/// The public key lines of one CA's slots. A rotation step carries the
/// slots it was decided on, and the store refuses it
/// ([`RotationError::Changed`]) when the stored slots differ by then.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slots {
    /// Public line of the active key.
    pub active: Option<String>,
    /// Public line of the next key.
    pub next: Option<String>,
    /// Public line of the previous key.
    pub previous: Option<String>,
}

/// One rotation step as a store applies it.
#[derive(Debug, Clone)]
pub enum KeyStep {
    /// Store the new key as next.
    Stage(NewKey),
    /// next becomes active, active becomes previous.
    Activate,
    /// Drop the previous key.
    Retire {
        /// Even though certificates it signed are still valid.
        force: bool,
    },
}

impl KeyStep {
    /// The step's name (`stage`, `activate`, `retire`).
    pub fn name(&self) -> &'static str {
        match self {
            KeyStep::Stage(_) => "stage",
            KeyStep::Activate => "activate",
            KeyStep::Retire { .. } => "retire",
        }
    }
}

/// Whether `step` fits the stored keys `stored` of CA `base`, which must
/// still be what the step was decided on (`expected`). Every key store
/// calls this inside the operation that applies the step.
pub fn check_step(
    base: &str,
    step: &KeyStep,
    stored: &CaKeys,
    expected: &Slots,
) -> Result<(), RotationError> {
    if stored.slots() != *expected {
        return Err(RotationError::Changed { base: base.into() });
    }
    let Some(active) = &stored.active else {
        return Err(RotationError::State(format!(
            "CA {base} has no active key yet; it is created when the server first starts (or first loads a role of the CA group)"
        )));
    };
    match step {
        KeyStep::Stage(_) => {
            if let Some(next) = &stored.next {
                return Err(RotationError::State(format!(
                    "a next key ({}) is already staged; activate it (--activate){}",
                    fingerprint_of_line(&next.public),
                    match &next.location {
                        KeyLocation::File(p) => format!(" or remove {} to discard it", p.display()),
                        KeyLocation::Database { .. } => String::new(),
                    }
                )));
            }
        }
        KeyStep::Activate => {
            if stored.next.is_none() {
                return Err(RotationError::State(
                    "no next key is staged; run --stage first and let hosts sync".into(),
                ));
            }
            // previous == active: a file-mode activation stopped after
            // keeping the active key as previous; activating finishes it.
            if let Some(prev) = stored
                .previous
                .as_ref()
                .filter(|p| p.public != active.public)
            {
                return Err(RotationError::State(format!(
                    "the previous key ({}) is still published; retire it (--retire) before activating another",
                    fingerprint_of_line(&prev.public)
                )));
            }
        }
        KeyStep::Retire { .. } => {
            if stored.previous.is_none() {
                return Err(RotationError::State(
                    "there is no previous key to retire".into(),
                ));
            }
        }
    }
    Ok(())
}

/// Whether the previous key may be retired: refused while a certificate it
/// signed is valid (`last_expiry`, the latest `valid_before` recorded for
/// it, is after `now`) unless `force`.
pub fn check_retire_expiry(
    previous: &StoredKey,
    last_expiry: u64,
    now: u64,
    force: bool,
) -> Result<(), RotationError> {
    if last_expiry > now && !force {
        return Err(RotationError::State(format!(
            "certificates signed by the previous key ({}) are valid for another {}s; retire after that, or --force to cut them off",
            fingerprint_of_line(&previous.public),
            last_expiry - now
        )));
    }
    Ok(())
}

/// Refuses rotation of keys that are not stored (PKCS#11).
pub fn check_rotatable(cfg: &CaKeyConfig) -> Result<(), RotationError> {
    match cfg {
        CaKeyConfig::File { .. } => Ok(()),
        _ => Err(RotationError::State(
            "rotation of PKCS#11 keys is not supported by this version; create the new key in the token and change key labels".into(),
        )),
    }
}

/// The keys of one CA: the one that signs and the ones hosts must trust.
pub struct KeyRing {
    /// Signs.
    pub active: Authority,
    /// Staged for the next activation.
    pub next: Option<Authority>,
    /// The key before the last activation.
    pub previous: Option<Authority>,
}

impl KeyRing {
    /// Every published key: active, then next, then previous.
    pub fn authorities(&self) -> impl Iterator<Item = &Authority> {
        [
            Some(&self.active),
            self.next.as_ref(),
            self.previous.as_ref(),
        ]
        .into_iter()
        .flatten()
    }

    /// Every published key of CA `base` (`user_ca`, `host_ca`,
    /// `user_ca-<group>`) as OpenSSH lines with that CA's comment (the
    /// `TrustedUserCAKeys` file): active first, then next, then previous.
    pub fn public_lines(&self, base: &str) -> String {
        let mut out = String::new();
        for a in self.authorities() {
            out.push_str(&a.published_line(base));
            out.push('\n');
        }
        out
    }

    /// The fingerprints of every published key, active first.
    pub fn fingerprints(&self) -> Vec<String> {
        self.authorities().map(Authority::fingerprint).collect()
    }

    /// Whether this ring holds exactly the keys `keys` stores.
    /// Keys are compared by key data, never by their lines' comments.
    pub fn matches(&self, keys: &CaKeys) -> bool {
        let ours = |a: Option<&Authority>| a.map(Authority::fingerprint);
        let stored = |s: Slot| keys.get(s).map(|k| fingerprint_of_line(&k.public));
        stored(Slot::Active) == ours(Some(&self.active))
            && stored(Slot::Next) == ours(self.next.as_ref())
            && stored(Slot::Previous) == ours(self.previous.as_ref())
    }

    /// Opens every stored key of a CA (decrypting with `passphrase`);
    /// `None` when it has no active key.
    pub fn open(
        keys: &CaKeys,
        passphrase: Option<&Secret>,
    ) -> Result<Option<KeyRing>, RotationError> {
        let Some(active) = &keys.active else {
            return Ok(None);
        };
        let open =
            |k: &Option<StoredKey>| k.as_ref().map(|k| open_stored(k, passphrase)).transpose();
        Ok(Some(KeyRing {
            active: open_stored(active, passphrase)?,
            next: open(&keys.next)?,
            previous: open(&keys.previous)?,
        }))
    }
}

/// Opens one stored key (decrypting it with `passphrase`).
pub fn open_stored(
    key: &StoredKey,
    passphrase: Option<&Secret>,
) -> Result<Authority, RotationError> {
    Ok(Authority::new(CaKey::from_stored(key, passphrase)?))
}

/// One key's status for `mayfly ca status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct KeyStatus {
    /// `user` or `host`.
    pub ca: String,
    /// Slot.
    pub slot: Slot,
    /// `SHA256:` fingerprint.
    pub fingerprint: String,
    /// Where the key lives.
    pub location: String,
    /// Seconds since the key file was written, if known.
    pub age_seconds: Option<u64>,
    /// Whether it signs new certificates.
    pub signs: bool,
}

impl KeyStatus {
    /// The row of key `a` in `slot` of CA `ca`, `age_seconds` old if known.
    pub fn of(ca: &str, slot: Slot, a: &Authority, age_seconds: Option<u64>) -> KeyStatus {
        KeyStatus {
            ca: ca.to_string(),
            slot,
            fingerprint: a.fingerprint(),
            location: a.describe(),
            age_seconds,
            signs: slot == Slot::Active,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(slot: Slot) -> StoredKey {
        let k = NewKey::generate(None).expect("test step");
        StoredKey {
            public: k.public,
            private: k.private,
            created_at: None,
            location: KeyLocation::Database {
                base: "user_ca".into(),
                slot: slot.as_str(),
            },
        }
    }

    fn keys(next: bool, previous: bool) -> CaKeys {
        CaKeys {
            active: Some(stored(Slot::Active)),
            next: next.then(|| stored(Slot::Next)),
            previous: previous.then(|| stored(Slot::Previous)),
        }
    }

    fn stage() -> KeyStep {
        KeyStep::Stage(NewKey::generate(None).expect("test step"))
    }

    fn state_err(r: Result<(), RotationError>) -> String {
        match r {
            Err(RotationError::State(m)) => m,
            other => panic!("expected a state refusal, got {other:?}"),
        }
    }

    #[test]
    fn each_step_is_refused_when_the_state_does_not_fit() {
        let k = keys(true, false);
        let m = state_err(check_step("user_ca", &stage(), &k, &k.slots()));
        assert!(m.contains("already staged"), "{m}");
        let k = keys(false, false);
        let m = state_err(check_step("user_ca", &KeyStep::Activate, &k, &k.slots()));
        assert!(m.contains("no next key is staged"), "{m}");
        let k = keys(true, true);
        let m = state_err(check_step("user_ca", &KeyStep::Activate, &k, &k.slots()));
        assert!(m.contains("retire it (--retire)"), "{m}");
        let k = keys(false, false);
        let m = state_err(check_step(
            "user_ca",
            &KeyStep::Retire { force: true },
            &k,
            &k.slots(),
        ));
        assert!(m.contains("no previous key"), "{m}");
        let none = CaKeys::default();
        let m = state_err(check_step("user_ca", &stage(), &none, &none.slots()));
        assert!(m.contains("no active key"), "{m}");
    }

    #[test]
    fn steps_that_fit_are_allowed() {
        let k = keys(false, false);
        check_step("user_ca", &stage(), &k, &k.slots()).expect("stage");
        let k = keys(true, false);
        check_step("user_ca", &KeyStep::Activate, &k, &k.slots()).expect("activate");
        let k = keys(false, true);
        check_step("user_ca", &KeyStep::Retire { force: false }, &k, &k.slots()).expect("retire");
    }

    #[test]
    fn a_step_decided_on_other_keys_is_refused_as_changed() {
        let read = keys(false, false);
        let mut now = read.clone();
        now.next = Some(stored(Slot::Next));
        assert!(matches!(
            check_step("user_ca", &stage(), &now, &read.slots()),
            Err(RotationError::Changed { .. })
        ));
    }

    #[test]
    fn activation_interrupted_after_keeping_the_active_key_can_finish() {
        let mut k = keys(true, false);
        k.previous = k.active.clone();
        check_step("user_ca", &KeyStep::Activate, &k, &k.slots()).expect("finishes");
    }

    #[test]
    fn retire_waits_for_the_previous_keys_certificates_unless_forced() {
        let p = stored(Slot::Previous);
        let m = state_err(check_retire_expiry(&p, 1_100, 1_000, false));
        assert!(m.contains("valid for another 100s"), "{m}");
        check_retire_expiry(&p, 1_100, 1_000, true).expect("forced");
        check_retire_expiry(&p, 1_000, 1_000, false).expect("expired");
    }

    #[test]
    fn a_ring_opens_from_stored_keys_and_matches_them() {
        let k = keys(true, true);
        let ring = KeyRing::open(&k, None).expect("opens").expect("has active");
        assert!(ring.matches(&k));
        let lines = ring.public_lines("user_ca");
        assert_eq!(lines.lines().count(), 3);
        assert!(
            lines.lines().all(|l| l.ends_with(" mayfly user CA")),
            "{lines}"
        );
        assert!(ring
            .public_lines("host_ca")
            .lines()
            .all(|l| l.ends_with(" mayfly host CA")));
        let mut other = k.clone();
        other.next = None;
        assert!(!ring.matches(&other));
        assert!(KeyRing::open(&CaKeys::default(), None)
            .expect("ok")
            .is_none());
    }

    #[test]
    fn a_stored_key_whose_public_line_lies_is_refused() {
        let mut k = stored(Slot::Active);
        k.public = stored(Slot::Next).public;
        assert!(matches!(
            open_stored(&k, None),
            Err(RotationError::Key(KeyFileError::Invalid { .. }))
        ));
    }
}
