//! Who may call the admin API, and the audit trail of those refused.

use std::time::SystemTime;

use crate::audit::{AuditRecord, EventKind};
use crate::auth::{TokenError, VerifiedToken};
use crate::clock::{unix_ms, unix_secs as unix};
use crate::policy::{Denial, DenialCode};

use super::{IssueError, Service};

impl Service {
    /// Checks an admin API token: verified like a bot token (without
    /// single use) and matched against the `[[admin]]` rules. Returns the
    /// actor name for audit records; refusals are audited.
    pub async fn authorize_admin(
        &self,
        token: Option<&crate::auth::BearerToken>,
        action: &str,
        request_id: &str,
        now: SystemTime,
    ) -> Result<String, IssueError> {
        let result = async {
            let token = token.ok_or(TokenError::Missing)?;
            let v = self.verifier.verify(token.expose(), unix(now)).await?;
            self.admin_actor(&v)
        }
        .await;
        if let Err(e) = &result {
            self.record_admin_refusal(action, request_id, e.code(), &e.to_string(), now)
                .await;
        }
        result
    }

    /// Whether a verified identity matches an `[[admin]]` rule.
    pub(super) fn is_admin(&self, v: &crate::auth::VerifiedToken) -> bool {
        self.admin_actor(v).is_ok()
    }

    /// The admin actor name (`admin:<issuer>:<subject>`) of a verified
    /// person, or why no `[[admin]]` rule makes them one. Not audited: the
    /// caller audits a refusal with [`Service::record_admin_refusal`]. The
    /// admin API and the web console both decide through this.
    pub fn admin_actor(&self, v: &VerifiedToken) -> Result<String, IssueError> {
        let mut why = format!("no [[admin]] rule names issuer {:?}", v.issuer());
        for (issuer, rules) in &self.admins {
            if issuer != v.issuer() {
                continue;
            }
            match crate::policy::match_claims(rules, v.claims()) {
                Ok(()) => return Ok(format!("admin:{}:{}", v.issuer(), v.subject())),
                Err((rule, msg)) => why = format!("admin {rule}: {msg}"),
            }
        }
        Err(IssueError::Denied(Denial {
            code: DenialCode::NotAdmin,
            rule: "admin".into(),
            message: format!("{} is not an administrator: {why}", v.subject()),
        }))
    }

    /// Audits (and logs) a refused admin call.
    pub async fn record_admin_refusal(
        &self,
        action: &str,
        request_id: &str,
        code: &str,
        reason: &str,
        now: SystemTime,
    ) {
        let mut rec = AuditRecord::new(EventKind::AdminDenied, unix_ms(now), request_id);
        rec.reason_code = Some(code.to_string());
        rec.reason = Some(format!("{action}: {reason}"));
        if let Err(se) = self.store.append(rec).await {
            tracing::error!(error = %se, "audit record of a refused admin call not stored");
        }
        tracing::warn!(request_id, action, code, reason, "admin call refused");
    }
}
