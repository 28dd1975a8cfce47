//! Rate limits, the cap on concurrently valid certificates, and the
//! answers for refusals the store makes at commit.

use crate::auth::VerifiedToken;
use crate::policy::{Denial, DenialCode};

use super::{IssueError, Service};
use crate::store::DisableTarget;

impl Service {
    /// Per-role and per-identity rate limits and the cap on concurrently
    /// valid certificates of one identity in a role.
    pub(super) async fn check_limits(
        &self,
        role: &crate::policy::Role,
        verified: &VerifiedToken,
        renews: Option<&crate::ca::renewal::PreviousCert>,
        now_s: u64,
    ) -> Result<(), IssueError> {
        let t = self.clock.monotonic().as_secs_f64();
        if let Some(r) = role.rate_limit {
            self.store
                .counters()
                .take_rate(&format!("role\0{}", role.name), r, t)
                .await?
                .map_err(|retry_after| IssueError::RateLimited {
                    scope: "role",
                    limit: r.to_string(),
                    retry_after,
                })?;
        }
        if let Some(r) = role.identity_rate_limit {
            let key = format!(
                "id\0{}\0{}\0{}",
                verified.issuer(),
                verified.subject(),
                role.name
            );
            self.store
                .counters()
                .take_rate(&key, r, t)
                .await?
                .map_err(|retry_after| IssueError::RateLimited {
                    scope: "identity",
                    limit: r.to_string(),
                    retry_after,
                })?;
        }
        self.check_active(role, verified, renews, now_s).await
    }

    /// The cap on concurrently valid certificates of one identity in a
    /// role, checked early for a clear answer before signing; the commit
    /// checks it again atomically ([`crate::store::IssueGuard`]).
    pub(super) async fn check_active(
        &self,
        role: &crate::policy::Role,
        verified: &VerifiedToken,
        renews: Option<&crate::ca::renewal::PreviousCert>,
        now_s: u64,
    ) -> Result<(), IssueError> {
        if let Some(max) = role.max_active_certs {
            let live = self
                .store
                .issuance()
                .active_certs(verified.issuer(), verified.subject(), &role.name, now_s)
                .await?
                .saturating_sub(u64::from(renews.is_some_and(|p| p.valid_at(now_s))));
            if live >= u64::from(max) {
                return Err(too_many_active(&role.name, live, max));
            }
        }
        Ok(())
    }
}

pub(super) fn too_many_active(role: &str, live: u64, max: u32) -> IssueError {
    Denial {
        code: DenialCode::TooManyActiveCerts,
        rule: format!("{role}.toml max_active_certs"),
        message: format!(
            "{live} certificate(s) of this identity are still valid; the role allows {max} at a time (wait for one to expire or have it revoked)"
        ),
    }
    .into()
}

/// Why the store refused a guarded issuance at commit, as the bot sees it.
pub(super) fn guard_refusal(refusal: crate::store::GuardRefusal, role: &str) -> IssueError {
    use crate::store::GuardRefusal;
    match refusal {
        GuardRefusal::Disabled(d) => disabled_denial(&d),
        GuardRefusal::TooManyActive { live, max } => too_many_active(role, live, max),
        GuardRefusal::Approval(a) => IssueError::Approval(a),
        GuardRefusal::RenewsRevoked { serial, key_id } => Denial {
            code: DenialCode::RenewedCertRevoked,
            rule: "revocation".into(),
            message: format!(
                "certificate serial {serial} ({key_id}) that this request renews was revoked; a revoked certificate is not renewed"
            ),
        }
        .into(),
        GuardRefusal::Replayed => crate::auth::TokenError::Replayed.into(),
        GuardRefusal::Stale {
            acted_on,
            keys_changed,
        } => IssueError::Store(crate::store::StoreError::Backend(format!(
            "the CA keys kept changing while the request was signed (last at state version {keys_changed}, read at {acted_on}); send it again"
        ))),
    }
}

/// The answer for a disabled identity or role.
pub(super) fn disabled_denial(d: &DisableTarget) -> IssueError {
    Denial {
        code: DenialCode::Disabled,
        rule: "deactivation".into(),
        message: d.refusal_message(),
    }
    .into()
}
