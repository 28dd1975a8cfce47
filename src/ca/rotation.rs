//! CA key rotation without downtime.
//!
//! Each CA (user, host) has up to three key slots in `data_dir`:
//!
//! | file                 | slot     | published | signs |
//! |----------------------|----------|-----------|-------|
//! | `user_ca.next`       | next     | yes       | no    |
//! | `user_ca`            | active   | yes       | yes   |
//! | `user_ca.previous`   | previous | yes       | no    |
//!
//! `stage` creates the next key, so hosts learn it (through
//! `/v1/ca/user.pub` and the host sync agent) before anything is signed
//! with it; `activate` makes it sign (the old key becomes `previous`, still
//! trusted, so certificates it signed keep working); `retire` drops the
//! previous key once every certificate it signed has expired. Each step is
//! a rename in one directory, so a crash leaves a state the next command
//! understands. Rotation of PKCS#11 keys is not supported by this version.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::keys::{open_ca_signer, KeyFileError};
use super::Authority;
use crate::config::CaKeyConfig;

/// Why a rotation step was refused.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The step does not fit the current state.
    #[error("{0}")]
    State(String),
    /// Key file trouble.
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
}

/// A slot of a CA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    fn suffix(self) -> &'static str {
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
    /// Every published key as OpenSSH lines (the `TrustedUserCAKeys` file):
    /// active first, then next, then previous.
    pub fn public_lines(&self) -> String {
        let mut out = String::new();
        for a in [
            Some(&self.active),
            self.next.as_ref(),
            self.previous.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            out.push_str(&a.public_key_line());
            out.push('\n');
        }
        out
    }
}

fn slot_name(base: &str, slot: Slot) -> String {
    format!("{base}{}", slot.suffix())
}

fn slot_path(dir: &Path, base: &str, slot: Slot) -> PathBuf {
    dir.join(slot_name(base, slot))
}

fn file_backend(cfg: &CaKeyConfig) -> Result<(), RotationError> {
    match cfg {
        CaKeyConfig::File { .. } => Ok(()),
        _ => Err(RotationError::State(
            "rotation of PKCS#11 keys is not supported by this version; create the new key in the token and change key labels".into(),
        )),
    }
}

fn open_existing(
    cfg: &CaKeyConfig,
    dir: &Path,
    base: &str,
    slot: Slot,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Authority>, RotationError> {
    if matches!(cfg, CaKeyConfig::File { .. }) && !slot_path(dir, base, slot).exists() {
        return Ok(None);
    }
    if slot != Slot::Active && !matches!(cfg, CaKeyConfig::File { .. }) {
        return Ok(None);
    }
    let (signer, _) = open_ca_signer(cfg, dir, &slot_name(base, slot), env)?;
    Ok(Some(Authority::from_boxed(signer)))
}

/// Loads the key ring of CA `base` (`user_ca` or `host_ca`), generating the
/// active key on first start. Returns the ring and whether the active key
/// was just created.
pub fn load(
    cfg: &CaKeyConfig,
    dir: &Path,
    base: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(KeyRing, bool), RotationError> {
    if matches!(cfg, CaKeyConfig::File { .. })
        && !slot_path(dir, base, Slot::Active).exists()
        && slot_path(dir, base, Slot::Next).exists()
    {
        return Err(RotationError::State(format!(
            "{} is missing but {} exists: an activation was interrupted; rename {} to {} to finish it",
            slot_path(dir, base, Slot::Active).display(),
            slot_path(dir, base, Slot::Next).display(),
            slot_name(base, Slot::Next),
            base
        )));
    }
    let (active, created) = open_ca_signer(cfg, dir, base, env)?;
    Ok((
        KeyRing {
            active: Authority::from_boxed(active),
            next: open_existing(cfg, dir, base, Slot::Next, env)?,
            previous: open_existing(cfg, dir, base, Slot::Previous, env)?,
        },
        created,
    ))
}

fn sync_dir(dir: &Path) -> Result<(), RotationError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|source| RotationError::Io {
            what: format!("syncing {}", dir.display()),
            source,
        })
}

/// Creates the next key. Returns its fingerprint.
pub fn stage(
    cfg: &CaKeyConfig,
    dir: &Path,
    base: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, RotationError> {
    file_backend(cfg)?;
    if let Some(next) = open_existing(cfg, dir, base, Slot::Next, env)? {
        return Err(RotationError::State(format!(
            "a next key ({}) is already staged; activate it (--activate) or remove {} to discard it",
            next.fingerprint(),
            slot_path(dir, base, Slot::Next).display()
        )));
    }
    let (signer, _) = open_ca_signer(cfg, dir, &slot_name(base, Slot::Next), env)?;
    Ok(Authority::from_boxed(signer).fingerprint())
}

/// Makes the next key sign; the active one becomes previous. Returns
/// (old fingerprint, new fingerprint).
pub fn activate(
    cfg: &CaKeyConfig,
    dir: &Path,
    base: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, String), RotationError> {
    file_backend(cfg)?;
    let Some(next) = open_existing(cfg, dir, base, Slot::Next, env)? else {
        return Err(RotationError::State(
            "no next key is staged; run --stage first and let hosts sync".into(),
        ));
    };
    if let Some(prev) = open_existing(cfg, dir, base, Slot::Previous, env)? {
        return Err(RotationError::State(format!(
            "the previous key ({}) is still published; retire it (--retire) before activating another",
            prev.fingerprint()
        )));
    }
    let (active, _) = open_ca_signer(cfg, dir, base, env)?;
    let old_fp = Authority::from_boxed(active).fingerprint();
    let io = |what: &str| {
        let what = what.to_string();
        move |source| RotationError::Io { what, source }
    };
    // A hard link first: at every instant `base` holds a valid key.
    fs::hard_link(
        slot_path(dir, base, Slot::Active),
        slot_path(dir, base, Slot::Previous),
    )
    .map_err(io("keeping the active key as previous"))?;
    sync_dir(dir)?;
    fs::rename(
        slot_path(dir, base, Slot::Next),
        slot_path(dir, base, Slot::Active),
    )
    .map_err(io("moving the next key into place"))?;
    sync_dir(dir)?;
    Ok((old_fp, next.fingerprint()))
}

/// Removes the previous key. `last_expiry` is the latest `valid_before`
/// of certificates it signed; refused while that is in the future unless
/// `force`. Returns the retired fingerprint.
pub fn retire(
    cfg: &CaKeyConfig,
    dir: &Path,
    base: &str,
    env: &dyn Fn(&str) -> Option<String>,
    last_expiry: impl FnOnce(&str) -> Result<u64, String>,
    now: u64,
    force: bool,
) -> Result<String, RotationError> {
    file_backend(cfg)?;
    let Some(prev) = open_existing(cfg, dir, base, Slot::Previous, env)? else {
        return Err(RotationError::State(
            "there is no previous key to retire".into(),
        ));
    };
    let last = last_expiry(&prev.public_key_line()).map_err(RotationError::State)?;
    if last > now && !force {
        return Err(RotationError::State(format!(
            "certificates signed by the previous key ({}) are valid for another {}s; retire after that, or --force to cut them off",
            prev.fingerprint(),
            last - now
        )));
    }
    fs::remove_file(slot_path(dir, base, Slot::Previous)).map_err(|source| RotationError::Io {
        what: "removing the previous key".into(),
        source,
    })?;
    sync_dir(dir)?;
    Ok(prev.fingerprint())
}

/// One key's status for `mayfly ca status`.
#[derive(Debug, Clone, Serialize)]
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

/// Status of every key of CA `base`.
pub fn status(
    cfg: &CaKeyConfig,
    dir: &Path,
    base: &str,
    ca: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<KeyStatus>, RotationError> {
    let mut out = Vec::new();
    for slot in [Slot::Next, Slot::Active, Slot::Previous] {
        let a = if slot == Slot::Active {
            if matches!(cfg, CaKeyConfig::File { .. }) && !slot_path(dir, base, slot).exists() {
                None
            } else {
                Some(Authority::from_boxed(
                    open_ca_signer(cfg, dir, base, env)?.0,
                ))
            }
        } else {
            open_existing(cfg, dir, base, slot, env)?
        };
        let Some(a) = a else { continue };
        let age_seconds = fs::metadata(slot_path(dir, base, slot))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map(|d| d.as_secs());
        out.push(KeyStatus {
            ca: ca.to_string(),
            slot,
            fingerprint: a.fingerprint(),
            location: a.describe(),
            age_seconds,
            signs: slot == Slot::Active,
        });
    }
    Ok(out)
}
