//! `mayfly ca rotate` / `mayfly ca status` on the CA host: the key-file
//! steps of [`crate::ca::rotation`], each recorded in the audit log and
//! announced to the running server through the store's state version (the
//! server reloads its keys and republishes `/v1/ca/*.pub`).

use crate::audit::{AuditRecord, EventKind};
use crate::ca::rotation::{self, KeyStatus, RotationError};
use crate::config::files;
use crate::config::Config;
use crate::store::Store;

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
    Store(#[from] crate::store::StoreError),
    /// Opening the store failed.
    #[error(transparent)]
    Open(#[from] crate::revocation::RevokeError),
    /// Writing the public key file failed.
    #[error("writing {0}: {1}")]
    Io(String, std::io::Error),
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// Runs one rotation step for one CA and returns a one-line summary.
pub async fn rotate(
    cfg: &Config,
    which: Which,
    step: Step,
    actor: &str,
    now: u64,
) -> Result<String, RotateError> {
    let store: Store = crate::revocation::open_store(cfg)?;
    let dir = &cfg.data_dir;
    let base_owned = which.base();
    let base = base_owned.as_str();
    let summary = match step {
        Step::Stage => {
            let fp = rotation::stage(&cfg.ca, dir, base, &env)?;
            format!("{} CA: staged next key {fp}; it is published now, activate it after every host has synced", which.name())
        }
        Step::Activate => {
            let (old, new) = rotation::activate(&cfg.ca, dir, base, &env)?;
            format!(
                "{} CA: {new} signs now; {old} stays published as previous until retired",
                which.name()
            )
        }
        Step::Retire { force } => {
            // The store is async and `retire` is not: read the previous
            // key's last expiry first.
            let previous = rotation::load(&cfg.ca, dir, base, &env)
                .ok()
                .and_then(|(ring, _)| ring.previous.map(|p| p.public_key_line()));
            let last = match &previous {
                Some(line) => Some(
                    store
                        .issuance()
                        .last_expiry_by_ca(line)
                        .await
                        .map_err(|e| e.to_string()),
                ),
                None => None,
            };
            let fp = rotation::retire(
                &cfg.ca,
                dir,
                base,
                &env,
                |line| match (previous.as_deref(), last) {
                    (Some(p), Some(last)) if p == line => last,
                    _ => Err(format!("the store was not read for CA key {line}")),
                },
                now,
                force,
            )?;
            format!(
                "{} CA: retired {fp}; hosts drop it at their next sync",
                which.name()
            )
        }
    };
    // Keep data_dir/<ca>.pub in step with what the server publishes.
    let (ring, _) = rotation::load(&cfg.ca, dir, base, &env)?;
    if let Which::Group(g) = &which {
        if !dir.join(&base_owned).exists() {
            return Err(RotateError::Rotation(RotationError::State(format!(
                "CA group {g:?} has no key yet; it is created when the server loads a role with ca_group = {g:?}"
            ))));
        }
    }
    let pub_path = dir.join(which.public());
    crate::ca::keys::write_atomic(&pub_path, ring.public_lines().as_bytes(), 0o644)
        .map_err(|e| RotateError::Io(pub_path.display().to_string(), e))?;
    let mut rec = AuditRecord::new(EventKind::CaKeyRotated, now.saturating_mul(1000), "admin");
    rec.actor = Some(actor.to_string());
    rec.cert_type = Some(which.name());
    rec.ca_key = Some(ring.active.public_key_line());
    rec.reason = Some(summary.clone());
    store.audit().record_change(rec, now).await?;
    Ok(summary)
}

/// Status of every CA's keys (user, host, and each CA group found on disk).
pub fn status(cfg: &Config) -> Result<Vec<KeyStatus>, RotateError> {
    let mut out = rotation::status(&cfg.ca, &cfg.data_dir, &Which::User.base(), "user", &env)?;
    out.extend(rotation::status(
        &cfg.ca,
        &cfg.data_dir,
        &Which::Host.base(),
        "host",
        &env,
    )?);
    let prefix = format!("{}-", files::USER_CA_KEY);
    let mut groups: Vec<String> = std::fs::read_dir(&cfg.data_dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|n| n.strip_prefix(&prefix).map(str::to_string))
                .filter(|g| !g.contains('.'))
                .collect()
        })
        .unwrap_or_default();
    groups.sort();
    for g in groups {
        out.extend(rotation::status(
            &cfg.ca,
            &cfg.data_dir,
            &files::group_base(&g),
            &format!("user:{g}"),
            &env,
        )?);
    }
    Ok(out)
}
