//! `mayfly ca rotate` and `mayfly ca status`: CA key rotation through the
//! store's [`crate::store::KeyStore`] (files in `data_dir` with SQLite,
//! rows of the shared database with replicas), keys opened with the
//! service's [`KeyLoader`].
//!
//! A rotation step is recorded in the audit log and bumps the store's
//! state version in the same store operation, so every running server
//! reloads its keys and republishes `/v1/ca/*.pub` without a restart,
//! wherever the command ran. PKCS#11 keys are opened in the token and not
//! stored; their rotation is refused.

use crate::audit::{AuditRecord, EventKind};
use crate::ca::rotation::{self, check_step, CaKeys, KeyStatus, KeyStep, RotationError, Slot};
use crate::ca::signer::fingerprint_of_line;
use crate::config::files;
use crate::config::Config;
use crate::service::KeyLoader;
use crate::store::{KeyChange, OpenMode, Store, StoreConfig, StoreError};

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
    /// Known hosts do not trust the key the step needs yet.
    #[error("{0}")]
    HostsNotReady(String),
}

/// The fleet check of an activate or retire step of a user CA: every
/// known, non-stale host of this CA must trust `needed` (the key that
/// signs after the step). Returns a note for the summary (and its audit
/// record): hosts that could not be checked, or that `force` overrode.
#[allow(clippy::too_many_arguments)]
async fn check_fleet(
    cfg: &Config,
    store: &Store,
    which: &Which,
    keys: &CaKeys,
    needed: &str,
    what: &str,
    force: bool,
    now: u64,
) -> Result<String, RotateError> {
    if *which == Which::Host {
        return Ok(format!(
            "; mayfly cannot see bots' known_hosts: before this step every bot's known_hosts must \
             hold the host CA key {needed} (the @cert-authority lines of `mayfly known-hosts`)"
        ));
    }
    let published: Vec<String> = [Slot::Active, Slot::Next, Slot::Previous]
        .into_iter()
        .filter_map(|s| keys.get(s))
        .map(|k| fingerprint_of_line(&k.public))
        .collect();
    let rows = store.hosts().hosts().await?;
    let s = crate::fleet::Staleness::of(&cfg.hosts);
    let (missing, stale) = crate::fleet::not_trusting(&rows, needed, &published, s, now);
    let names = |v: &[&crate::fleet::HostRow]| {
        v.iter()
            .map(|r| r.host.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut note = String::new();
    if !missing.is_empty() {
        if !force {
            return Err(RotateError::HostsNotReady(format!(
                "refusing to {what}: {} known host(s) do not trust {needed} yet (their \
                 TrustedUserCAKeys, as their last `mayfly host sync` reported): {}; wait for them \
                 to sync (`mayfly hosts --config ...`), or pass --force to {what} anyway (audited)",
                missing.len(),
                names(&missing)
            )));
        }
        note.push_str(&format!(
            "; forced although {} host(s) did not trust {needed}: {}",
            missing.len(),
            names(&missing)
        ));
    }
    if !stale.is_empty() {
        note.push_str(&format!(
            "; {} stale host(s) not checked (no report for {} s): {}",
            stale.len(),
            s.after_secs(),
            names(&stale)
        ));
    }
    Ok(note)
}

/// Every published key of `keys` (CA `base`) as OpenSSH lines, as
/// [`KeyRing::public_lines`] writes them.
fn public_lines(keys: &CaKeys, base: &str) -> String {
    [Slot::Active, Slot::Next, Slot::Previous]
        .into_iter()
        .filter_map(|s| keys.get(s))
        .map(|k| format!("{}\n", crate::ca::published_line(&k.public, base)))
        .collect()
}

/// Runs one rotation step for one CA and returns a one-line summary.
pub async fn rotate(
    cfg: &Config,
    which: Which,
    step: Step,
    force_fleet: bool,
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
    let fleet_note = match step {
        Step::Stage => String::new(),
        Step::Activate => {
            check_fleet(
                cfg,
                &store,
                &which,
                &keys,
                &fp(Slot::Next),
                "activate",
                force_fleet,
                now,
            )
            .await?
        }
        Step::Retire { .. } => {
            check_fleet(
                cfg,
                &store,
                &which,
                &keys,
                &fp(Slot::Active),
                "retire",
                force_fleet,
                now,
            )
            .await?
        }
    };
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
    let summary = format!("{summary}{fleet_note}");
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
    // Keep data_dir/<ca>.pub in step with what the server publishes. With
    // keys in a shared database this may run on a host without the
    // replicas' data_dir: the replicas publish the keys themselves.
    if store.keys().shared() && !cfg.data_dir.is_dir() {
        return Ok(summary);
    }
    let after = loader.stored(&base).await?;
    let pub_path = cfg.data_dir.join(which.public());
    crate::ca::keys::write_atomic(&pub_path, public_lines(&after, &base).as_bytes(), 0o644)
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
    Ok(loader.status_all(now).await?)
}
