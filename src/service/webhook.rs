//! Approver notifications: when a role that needs approval gets a new
//! request, mayfly POSTs a JSON notice to a webhook (the role's
//! `[approval] webhook`, else `[approval_webhook] url` in mayfly.toml), so
//! the people in the loop hear of it without watching `request list`.
//!
//! Delivery runs in its own task after the request is stored: it never
//! delays or fails the bot's answer. Each delivery is retried with
//! doubling backoff and its outcome (delivered after N attempts, or the
//! last error) is audited. The body can be signed with HMAC-SHA256 over
//! its exact bytes (`X-Mayfly-Signature-256: sha256=<hex>`, the scheme
//! GitHub webhooks use) with a secret read from a file; the secret and
//! the URL's path and query (chat webhooks carry their credential there)
//! never appear in logs or audit records, only the URL's origin does.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::approval::ApprovalRequest;
use crate::audit::{AuditRecord, EventKind};
use crate::clock::{unix_ms, Clock};
use crate::config::{ApprovalWebhookConfig, WebhookSecret};
use crate::store::AuditLog;

/// Timeout of one delivery attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends approval notices; shared by every request of the process.
pub struct Notifier {
    http: reqwest::Client,
    cfg: ApprovalWebhookConfig,
    audit: Arc<dyn AuditLog>,
    clock: Arc<dyn Clock>,
}

/// `scheme://host[:port]` of `url`: what logs and audit records show.
pub fn origin(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}

/// The JSON notice of a new approval request.
pub fn notice(r: &ApprovalRequest, server_url: Option<&url::Url>) -> serde_json::Value {
    let mut command = format!("mayfly request approve {}", r.id);
    if let Some(u) = server_url {
        command.push_str(&format!(" --server {}", u.as_str().trim_end_matches('/')));
    }
    let expires = jiff::Timestamp::from_second(r.expires_at.get() as i64)
        .map(|t| t.to_string())
        .unwrap_or_default();
    json!({
        "event": "approval_requested",
        "id": r.id,
        "role": r.role,
        "identity": format!("{}:{}", r.issuer, r.subject),
        "issuer": r.issuer,
        "subject": r.subject,
        "principals": r.principals,
        "ttl_seconds": r.ttl_seconds,
        "key_fingerprint": r.key_fingerprint,
        "claims": r.requester_claims,
        "approvals_required": r.required,
        "expires_at": expires,
        "expires_at_unix": r.expires_at.get(),
        "approve_command": command,
    })
}

/// `sha256=<hex>` HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &WebhookSecret, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.expose());
    let tag = aws_lc_rs::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl Notifier {
    /// A notifier with `cfg`'s global URL, secret and retries, auditing to `audit`.
    pub fn new(
        cfg: ApprovalWebhookConfig,
        audit: Arc<dyn AuditLog>,
        clock: Arc<dyn Clock>,
    ) -> Result<Notifier, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mayfly/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Notifier {
            http,
            cfg,
            audit,
            clock,
        })
    }

    /// Starts delivering the notice of `r` to `role_url`, else the global
    /// URL; returns at once (no URL: nothing to do).
    pub fn notify(self: &Arc<Self>, r: &ApprovalRequest, role_url: Option<&url::Url>) {
        let Some(url) = role_url.or(self.cfg.url.as_ref()).cloned() else {
            return;
        };
        let body = match serde_json::to_vec(&notice(r, self.cfg.server_url.as_ref())) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "approval webhook: cannot encode the notice");
                return;
            }
        };
        let me = self.clone();
        let r = r.clone();
        tokio::spawn(async move { me.deliver(url, body, r).await });
    }

    async fn deliver(&self, url: url::Url, body: Vec<u8>, r: ApprovalRequest) {
        let signature = self.cfg.secret.as_ref().map(|s| signature(s, &body));
        let attempts = self.cfg.retries.saturating_add(1);
        let mut wait = self.cfg.retry_initial;
        let mut last_error = String::new();
        for attempt in 1..=attempts {
            let mut req = self
                .http
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("X-Mayfly-Event", "approval_requested")
                .header("X-Mayfly-Delivery", r.id.as_str())
                .body(body.clone());
            if let Some(sig) = &signature {
                req = req.header("X-Mayfly-Signature-256", sig.as_str());
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    self.record(&r, &url, true, attempt, "").await;
                    return;
                }
                Ok(resp) => last_error = format!("HTTP {}", resp.status()),
                // Without the URL: reqwest's message names it, path included.
                Err(e) => last_error = describe(&e.without_url()),
            }
            tracing::warn!(approval = %r.id, webhook = %origin(&url), attempt, error = %last_error,
                "approval webhook delivery failed");
            if attempt < attempts {
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2).min(Duration::from_secs(300));
            }
        }
        self.record(&r, &url, false, attempts, &last_error).await;
    }

    async fn record(
        &self,
        r: &ApprovalRequest,
        url: &url::Url,
        delivered: bool,
        attempts: u32,
        error: &str,
    ) {
        let event = if delivered {
            EventKind::ApprovalWebhookDelivered
        } else {
            EventKind::ApprovalWebhookFailed
        };
        let mut rec = AuditRecord::new(event, unix_ms(self.clock.now()), &r.id);
        rec.role = Some(r.role.clone());
        rec.issuer = Some(r.issuer.clone());
        rec.subject = Some(r.subject.clone());
        rec.actor = Some(format!("webhook:{}", origin(url)));
        rec.reason = Some(if delivered {
            format!(
                "approval request {}: notice delivered to {} (attempt {attempts})",
                r.id,
                origin(url)
            )
        } else {
            format!(
                "approval request {}: notice not delivered to {} after {attempts} attempt(s): {error}",
                r.id,
                origin(url)
            )
        });
        if delivered {
            tracing::info!(approval = %r.id, webhook = %origin(url), attempts, "approval webhook delivered");
        } else {
            tracing::error!(approval = %r.id, webhook = %origin(url), attempts, error,
                "approval webhook not delivered; approvers were not notified");
        }
        if let Err(e) = self.audit.append(rec).await {
            tracing::error!(error = %e, "audit record of an approval webhook delivery not stored");
        }
    }
}

/// An error with its causes (the reason is often only in a cause).
fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex_and_the_origin_hides_path_and_query() {
        // RFC 4231 test case 2.
        let s = WebhookSecret::new(b"Jefe".to_vec());
        assert_eq!(
            signature(&s, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(format!("{s:?}"), "WebhookSecret([redacted])");
        let u =
            url::Url::parse("https://hooks.example.com:8443/services/T0/B0/secret?x=1").unwrap();
        assert_eq!(origin(&u), "https://hooks.example.com:8443");
    }
}
