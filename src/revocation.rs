//! Taking access away: revoking issued certificates (published in the KRL
//! that hosts load as sshd `RevokedKeys`) and disabling identities or roles
//! so they get no new certificates. Used by the CLI on the CA host and by
//! the admin HTTP API; every change is durable, with its audit record,
//! before the call returns.

use serde::Serialize;

use crate::audit::{AuditRecord, EventKind};
use crate::store::{
    CertFilter, DisableTarget, DisableTargetError, DisabledEntry, IssuedCert, Revocation,
    StateVersion, Store, StoreError,
};

/// A target that names nothing usable: bad arguments.
impl From<DisableTargetError> for RevokeError {
    fn from(e: DisableTargetError) -> Self {
        RevokeError::Invalid(e.to_string())
    }
}

/// Why a revocation or deactivation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// Nothing matched.
    #[error("{0}")]
    NothingMatched(String),
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
    /// The store failed; nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a revocation did.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RevokeOutcome {
    /// The certificates revoked.
    pub revoked: Vec<IssuedCert>,
    /// The KRL version that includes them.
    pub krl_version: u64,
    /// Certificates the target names that an earlier revocation already
    /// covers: revoking again changes nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub already_revoked: Vec<PastRevocation>,
    /// Certificates the target names that have expired: sshd refuses them
    /// without a revocation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expired: Vec<ExpiredCert>,
}

/// An earlier revocation, as its audit record tells it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, serde::Deserialize)]
pub struct PastRevocation {
    /// Serial of the certificate.
    pub serial: u64,
    /// Its key id.
    pub key_id: String,
    /// When it was revoked (unix seconds).
    pub revoked_at: u64,
    /// Who revoked it.
    pub actor: String,
    /// Why.
    pub reason: String,
}

/// A certificate that expired before anyone revoked it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, serde::Deserialize)]
pub struct ExpiredCert {
    /// Serial.
    pub serial: u64,
    /// Key id.
    pub key_id: String,
    /// When it stopped being valid (unix seconds).
    pub valid_before: u64,
}

/// What a deactivation did.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DisableOutcome {
    /// What was disabled or enabled.
    pub target: DisableTarget,
    /// False if it already was in that state.
    pub changed: bool,
    /// Live certificates revoked along with the deactivation.
    pub revoked: Vec<IssuedCert>,
}

fn now_ms(now: u64) -> u64 {
    now.saturating_mul(1000)
}

fn describe(filter: &CertFilter) -> String {
    match filter {
        CertFilter::Serial(s) => format!("serial {s}"),
        CertFilter::KeyId(k) => format!("key id {k:?}"),
        CertFilter::Role(r) => format!("role {r:?}"),
        CertFilter::Identity {
            issuer,
            subject,
            role,
        } => match role {
            Some(r) => format!("identity {issuer}/{subject} in role {r:?}"),
            None => format!("identity {issuer}/{subject}"),
        },
    }
}

/// Revokes every unexpired certificate matching `filter`. By key id the
/// KRL gets a key-id entry; otherwise serial entries.
pub async fn revoke(
    store: &Store,
    filter: CertFilter,
    reason: &str,
    actor: &str,
    now: u64,
) -> Result<RevokeOutcome, RevokeError> {
    if reason.chars().any(|c| c.is_control()) || reason.len() > 1024 {
        return Err(RevokeError::Invalid(
            "--reason must be one line of at most 1024 bytes".into(),
        ));
    }
    let by_key_id = matches!(filter, CertFilter::KeyId(_));
    let revoke = revoker(
        by_key_id,
        reason.to_string(),
        format!("revoked by {}", describe(&filter)),
        actor.to_string(),
        now,
    );
    // Reading the matching certificates and revoking them is one
    // transaction, so a certificate recorded in between cannot be missed.
    let (certs, v): (Vec<IssuedCert>, StateVersion) = store
        .access()
        .revoke_matching(filter.clone(), now, Box::new(revoke))
        .await?;
    if certs.is_empty() {
        // Nothing live: say whether the target was revoked before, has
        // expired, or never existed (a typo).
        return not_live(store, &filter, now, v.version).await;
    }
    tracing::info!(target_filter = %describe(&filter), count = certs.len(), krl_version = v.version, actor, "certificates revoked");
    Ok(RevokeOutcome {
        revoked: certs,
        krl_version: v.version,
        already_revoked: Vec::new(),
        expired: Vec::new(),
    })
}

/// Most audit records read to explain a target with nothing live.
const HISTORY_LIMIT: usize = 1000;

/// The answer for a target with no live certificate, from the audit log:
/// success with what was revoked before or has expired (revoking twice is
/// not an error), or `NothingMatched` when the log has never seen it.
async fn not_live(
    store: &Store,
    filter: &CertFilter,
    now: u64,
    krl_version: u64,
) -> Result<RevokeOutcome, RevokeError> {
    let mut q = crate::audit::search::AuditQuery {
        limit: HISTORY_LIMIT,
        ..Default::default()
    };
    match filter {
        CertFilter::Serial(n) => q.serial = Some(*n),
        CertFilter::KeyId(k) => q.key_id = Some(k.clone()),
        CertFilter::Role(r) => q.role = Some(r.clone()),
        CertFilter::Identity {
            issuer,
            subject,
            role,
        } => {
            q.issuer = Some(issuer.clone());
            q.subject = Some(subject.clone());
            q.role = role.clone();
        }
    }
    let rows: Vec<_> = store
        .audit()
        .search(&q)
        .await?
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    if rows.is_empty() {
        return Err(RevokeError::NothingMatched(format!(
            "no certificate matches {}: the audit log has no record of it; check the {}",
            describe(filter),
            match filter {
                CertFilter::Serial(_) => "serial",
                CertFilter::KeyId(_) => "key id (as sshd logs it)",
                CertFilter::Role(_) => "role name",
                CertFilter::Identity { .. } => "issuer name and subject",
            }
        )));
    }
    let mut out = RevokeOutcome {
        revoked: Vec::new(),
        krl_version,
        already_revoked: Vec::new(),
        expired: Vec::new(),
    };
    // Only a serial or key id names certificates one by one; for a role or
    // an identity, "nothing live" is the whole answer.
    if matches!(filter, CertFilter::Serial(_) | CertFilter::KeyId(_)) {
        for r in &rows {
            let Some((serial, why)) = crate::audit::chain::revoked_serial(r) else {
                continue;
            };
            if out.already_revoked.iter().any(|p| p.serial == serial) {
                continue;
            }
            out.already_revoked.push(PastRevocation {
                serial,
                key_id: r.key_id.clone().unwrap_or_default(),
                revoked_at: (r.time_ms.max(0) as u64) / 1000,
                actor: r.actor.clone().unwrap_or_default(),
                reason: why.to_string(),
            });
        }
        for r in rows
            .iter()
            .filter(|r| r.event == EventKind::CertIssued.as_str())
        {
            let Some(serial) = r.serial.map(|s| s as u64) else {
                continue;
            };
            let valid_before = r.valid_before.map(|v| v.max(0) as u64).unwrap_or(0);
            if valid_before <= now && !out.already_revoked.iter().any(|p| p.serial == serial) {
                out.expired.push(ExpiredCert {
                    serial,
                    key_id: r.key_id.clone().unwrap_or_default(),
                    valid_before,
                });
            }
        }
    }
    Ok(out)
}

/// Turns an issued certificate into its revocation entry and audit record.
/// By key id the KRL gets a key-id entry; otherwise a serial entry.
fn revoker(
    by_key_id: bool,
    reason: String,
    reason_code: String,
    actor: String,
    now: u64,
) -> impl Fn(&IssuedCert) -> (Revocation, AuditRecord) + Send + Sync + 'static {
    move |c: &IssuedCert| {
        let revocation = Revocation {
            ca_key: c.ca_key.clone(),
            serial: (!by_key_id).then_some(c.serial),
            key_id: by_key_id.then(|| c.key_id.clone()),
            expires_at: c.valid_before,
            reason: reason.clone(),
            actor: actor.clone(),
        };
        let mut r = AuditRecord::new(EventKind::CertRevoked, now_ms(now), "admin");
        r.serial = Some(c.serial);
        r.key_id = Some(c.key_id.clone());
        r.role = Some(c.role.clone());
        r.issuer = Some(c.issuer.clone());
        r.subject = Some(c.subject.clone());
        r.valid_before = Some(c.valid_before);
        r.cert_type = Some(c.cert_type.clone());
        r.ca_key = Some(c.ca_key.clone());
        r.reason = Some(reason.clone());
        r.reason_code = Some(reason_code.clone());
        r.actor = Some(actor.clone());
        (revocation, r)
    }
}

/// Disables `target` (no new certificates) and revokes its live
/// certificates; or, with `enable`, lifts the deactivation only (revoked
/// certificates stay revoked).
pub async fn set_disabled(
    store: &Store,
    target: DisableTarget,
    enable: bool,
    reason: &str,
    actor: &str,
    now: u64,
) -> Result<DisableOutcome, RevokeError> {
    let mut rec = AuditRecord::new(
        if enable {
            EventKind::Enabled
        } else {
            EventKind::Disabled
        },
        now_ms(now),
        "admin",
    );
    rec.issuer = target.issuer().map(str::to_string);
    rec.subject = target.subject().map(str::to_string);
    rec.role = target.role().map(str::to_string);
    rec.reason = Some(reason.to_string());
    rec.actor = Some(actor.to_string());
    if enable {
        let changed = store
            .access()
            .set_disabled(target.clone(), None, rec, now)
            .await?;
        return Ok(DisableOutcome {
            target,
            changed,
            revoked: Vec::new(),
        });
    }
    let filter = target.cert_filter();
    let revoke = revoker(
        false,
        format!("disabled: {reason}"),
        format!("revoked by {}", describe(&filter)),
        actor.to_string(),
        now,
    );
    let entry = DisabledEntry {
        key: target.clone(),
        time_ms: now_ms(now),
        reason: reason.to_string(),
        actor: actor.to_string(),
    };
    // The flag and the sweep of live certificates are one transaction; an
    // issuance checks the flag inside its own commit, so every certificate
    // is either refused or swept.
    let (changed, revoked) = store
        .access()
        .disable_and_revoke(entry, rec, filter, now, Box::new(revoke))
        .await?;
    Ok(DisableOutcome {
        target,
        changed,
        revoked,
    })
}

/// Opens the CA's store for an administrative command on the CA host
/// (`mayfly revoke`, `mayfly identity ...`); safe while the server runs.
pub fn open_store(cfg: &crate::config::Config) -> Result<Store, RevokeError> {
    use crate::store::{OpenMode, StoreConfig};
    crate::store::open(&StoreConfig::from_config(cfg, OpenMode::Existing)).map_err(|e| match e {
        StoreError::Missing(_) => RevokeError::Invalid(e.to_string()),
        other => RevokeError::Store(other),
    })
}

/// The actor name for CLI actions, from the operating system rather than
/// `$USER` (which anyone can set): `cli:<name>(uid <n>)` of the real uid,
/// its name from `/etc/passwd`. As root under sudo, the invoking user sudo
/// recorded is added: `cli:root(uid 0, sudo alice)`. `env` reads
/// `SUDO_USER` (only consulted for root, who could forge anything anyway).
pub fn cli_actor(env: &dyn Fn(&str) -> Option<String>) -> String {
    let uid = rustix::process::getuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    actor_for(uid, &passwd, env("SUDO_USER").as_deref())
}

/// The name `/etc/passwd` gives `uid` ("unknown" if none), cleaned for
/// log and audit lines.
pub fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    name_in(uid, &passwd)
}

fn clean_name(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() && !"(),".contains(*c))
        .take(64)
        .collect()
}

fn name_in(uid: u32, passwd: &str) -> String {
    passwd
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let _password = f.next()?;
            let id: u32 = f.next()?.parse().ok()?;
            (id == uid).then(|| clean_name(name))
        })
        .find(|n| !n.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// [`cli_actor`] from its inputs.
fn actor_for(uid: u32, passwd: &str, sudo_user: Option<&str>) -> String {
    let clean = clean_name;
    let name = name_in(uid, passwd);
    match sudo_user.map(clean).filter(|s| uid == 0 && !s.is_empty()) {
        Some(by) => format!("cli:{name}(uid {uid}, sudo {by})"),
        None => format!("cli:{name}(uid {uid})"),
    }
}

#[cfg(test)]
mod actor_tests {
    use super::actor_for;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\nbad line\n";

    #[test]
    fn the_actor_is_the_os_user_not_an_environment_variable() {
        assert_eq!(actor_for(1000, PASSWD, None), "cli:alice(uid 1000)");
        // SUDO_USER counts only for root (sudo sets it; a user could too).
        assert_eq!(actor_for(1000, PASSWD, Some("root")), "cli:alice(uid 1000)");
        assert_eq!(
            actor_for(0, PASSWD, Some("alice")),
            "cli:root(uid 0, sudo alice)"
        );
        assert_eq!(actor_for(4242, PASSWD, None), "cli:unknown(uid 4242)");
        assert_eq!(
            actor_for(0, PASSWD, Some("a) b(")),
            "cli:root(uid 0, sudo ab)"
        );
    }
}
