//! Policy hot reload: the server watches `policy_dir` (polling file names,
//! sizes and modification times every `policy_poll_interval`) and reloads
//! on SIGHUP. A valid change takes
//! effect without dropping requests; an invalid one is rejected with the
//! reason logged and audited, and the last good policy stays in force. Each
//! reload is audited with the policy digest and, if the directory is a git
//! checkout, its commit, so every certificate traces to the exact policy
//! version that allowed it.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use crate::audit::{AuditRecord, EventKind};
use crate::config::Config;
use crate::service::Service;

/// A cheap fingerprint of the directory listing (names, sizes, mtimes).
fn dir_fingerprint(dir: &Path) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut items: Vec<(String, u64, u128)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                let mtime = m
                    .modified()
                    .ok()?
                    .duration_since(UNIX_EPOCH)
                    .ok()?
                    .as_nanos();
                Some((e.file_name().to_string_lossy().to_string(), m.len(), mtime))
            })
            .collect();
        items.sort();
        items.hash(&mut h);
    }
    h.finish()
}

/// The git commit checked out at `dir`, if it is inside a git work tree.
pub fn git_commit(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--verify", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && s.len() >= 40 && s.bytes().all(|b| b.is_ascii_hexdigit())).then_some(s)
}

/// Reloads the policy from `cfg.policy_dir` now. Returns whether a new
/// policy took effect.
pub async fn reload(service: &Service, cfg: &Config, trigger: &str) -> bool {
    let dir = cfg.policy_dir.clone();
    let loaded = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            crate::policy::load::load_for_issuers(&cfg.policy_dir, &cfg.issuer_names())
        })
        .await
    };
    let commit = git_commit(&dir);
    let mut rec = AuditRecord::new(
        EventKind::PolicyReloaded,
        crate::clock::unix_ms(service.clock().now()),
        "policy-reload",
    );
    rec.actor = Some(format!("reload:{trigger}"));
    let changed = match loaded {
        Ok(Ok(policy)) => {
            let old = service.policy();
            if old.digest == policy.digest {
                return false;
            }
            rec.policy_digest = Some(policy.digest.clone());
            rec.reason = Some(format!(
                "{} role(s) from {}{}; previous digest {}",
                policy.roles.len(),
                dir.display(),
                commit
                    .as_deref()
                    .map(|c| format!(" at git commit {c}"))
                    .unwrap_or_default(),
                old.digest
            ));
            tracing::info!(digest = %policy.digest, roles = policy.roles.len(), git_commit = commit.as_deref().unwrap_or(""), trigger, "policy reloaded");
            // New CA groups get their keys before any role can use them.
            if let Err(e) = service.load_group_keys(&policy).await {
                rec.event = EventKind::PolicyRejected;
                rec.reason = Some(format!(
                    "loading CA group keys: {e}; keeping the previous policy"
                ));
                tracing::error!(error = %e, "policy change rejected: CA group keys");
                false
            } else {
                service.set_policy(policy);
                true
            }
        }
        Ok(Err(e)) => {
            rec.event = EventKind::PolicyRejected;
            rec.policy_digest = Some(service.policy().digest.clone());
            rec.reason = Some(format!("{e}\nkeeping the previous policy"));
            tracing::error!(trigger, error = %e, "policy change rejected; keeping the previous policy");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "policy reload task failed");
            return false;
        }
    };
    if let Err(e) = service.store().append(rec).await {
        tracing::error!(error = %e, "audit record of a policy reload not stored");
    }
    changed
}

/// Starts the watcher: SIGHUP or a change in the directory triggers a
/// reload. `after_change` runs after each reload that put a new policy in
/// force (the server sends a heartbeat with the new digest).
pub fn spawn_watcher(
    service: Arc<Service>,
    cfg: Config,
    after_change: impl Fn() + Send + Sync + 'static,
) {
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; policy reloads on file changes only");
                None
            }
        };
        let mut seen = dir_fingerprint(&cfg.policy_dir);
        loop {
            let trigger = tokio::select! {
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => "SIGHUP",
                _ = tokio::time::sleep(cfg.policy_poll_interval) => "change",
            };
            if trigger == "change" {
                let fp = dir_fingerprint(&cfg.policy_dir);
                if fp == seen {
                    continue;
                }
                seen = fp;
            }
            if reload(&service, &cfg, trigger).await {
                after_change();
            }
        }
    });
}
