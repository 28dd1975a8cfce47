//! Operator side of the CA's HTTP API: the people who approve requests
//! (`mayfly request ...`) and administer the CA from their own machine
//! (`mayfly revoke|identity|ca status|audit search|status --server URL`).
//!
//! Every call carries the operator's own OIDC token; the CA matches it
//! against its `[[admin]]` rules (or a role's `[approval]` rules) and
//! records the token's identity as the actor. Where the CA also requires
//! a TLS client certificate for admin calls, `--client-cert`/`--client-key`
//! present one. Nothing here needs the CA's files or database.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{
    cancel_with, check_request_id, check_server, http_client_with, refused, send, token,
    ClientError,
};
use crate::approval::ApprovalRequest;
use crate::audit::search::AuditQuery;

/// Where an operator's commands go, and as whom.
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// CA base URL.
    pub server: String,
    /// The operator's own OIDC token.
    pub token: token::TokenSource,
    /// Allow plain http to a non-loopback CA.
    pub insecure_http: bool,
    /// Extra TLS trust root.
    pub ca_file: Option<PathBuf>,
    /// TLS client certificate (PEM) for a CA whose admin API requires one.
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub client_key: Option<PathBuf>,
}

/// One operator's connection to the CA: the checked base URL, the HTTP
/// client and the token, found once per command.
struct Session {
    base: url::Url,
    http: reqwest::Client,
    token: token::Token,
    ca_file: Option<PathBuf>,
}

impl OperatorOptions {
    async fn session(&self) -> Result<Session, ClientError> {
        let base = check_server(&self.server, self.insecure_http)?;
        let identity = match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => {
                return Err(ClientError::ServerUrl {
                    url: self.server.clone(),
                    reason: "--client-cert and --client-key go together".into(),
                })
            }
        };
        let http = http_client_with(&base, self.ca_file.as_deref(), identity)?;
        let token = token::discover(&self.token, &|k| std::env::var(k).ok()).await?;
        Ok(Session {
            base,
            http,
            token,
            ca_file: self.ca_file.clone(),
        })
    }
}

impl Session {
    /// GET (`body` `None`) or POST `body` as JSON to `path`, and decode the
    /// 2xx JSON answer; an error answer is [`ClientError::Refused`] with
    /// the CA's code, message and request id.
    async fn call<A: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<A, ClientError> {
        let url = self.base.join(path).map_err(|e| ClientError::ServerUrl {
            url: self.base.to_string(),
            reason: e.to_string(),
        })?;
        let req = match body {
            Some(b) => self.http.post(url.clone()).json(&b),
            None => self.http.get(url.clone()),
        };
        let req = req.bearer_auth(self.token.expose());
        let (status, bytes) = send(req, &url, self.ca_file.as_deref()).await?;
        if !status.is_success() {
            return Err(refused(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadAnswer(e.to_string()))
    }

    async fn get<A: DeserializeOwned>(&self, path: &str) -> Result<A, ClientError> {
        self.call(path, None).await
    }

    async fn post<A: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<A, ClientError> {
        let body = serde_json::to_value(body)
            .map_err(|e| ClientError::BadAnswer(format!("encoding the request: {e}")))?;
        self.call(path, Some(body)).await
    }
}

/// Pending approval requests the caller may decide.
pub async fn list_requests(opts: &OperatorOptions) -> Result<Vec<ApprovalRequest>, ClientError> {
    opts.session().await?.get("v1/requests").await
}

/// Approval requests of the roles the caller approves: the recent ones in
/// every state.
pub async fn list_all_requests(
    opts: &OperatorOptions,
) -> Result<Vec<ApprovalRequest>, ClientError> {
    opts.session().await?.get("v1/requests?all=true").await
}

/// Cancels a request: the identity that made it (the bot's token), or an
/// administrator.
pub async fn cancel_request(
    opts: &OperatorOptions,
    id: &str,
    reason: &str,
) -> Result<ApprovalRequest, ClientError> {
    check_request_id(id)?;
    let s = opts.session().await?;
    cancel_with(&s.http, &s.base, &s.token, id, reason).await
}

/// Approves or denies a request.
pub async fn vote_request(
    opts: &OperatorOptions,
    id: &str,
    approve: bool,
    reason: &str,
) -> Result<ApprovalRequest, ClientError> {
    let verb = if approve { "approve" } else { "deny" };
    check_request_id(id)?;
    opts.session()
        .await?
        .post(
            &format!("v1/requests/{id}/{verb}"),
            &serde_json::json!({ "reason": reason }),
        )
        .await
}

/// What `POST /v1/admin/revoke` revokes: exactly one of a serial, a key id,
/// a role, or an identity (optionally in one role).
#[derive(Debug, Clone, Serialize)]
pub struct RevokeRequest {
    /// Serial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<u64>,
    /// Key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Issuer name of `subject`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Token subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Why (audited).
    pub reason: String,
}

/// Revokes through the admin API; the CA records the token's identity as
/// the actor.
pub async fn revoke(
    opts: &OperatorOptions,
    what: &RevokeRequest,
) -> Result<crate::revocation::RevokeOutcome, ClientError> {
    opts.session().await?.post("v1/admin/revoke", what).await
}

/// Disables (`enable` false) or enables an identity or role through the
/// admin API.
pub async fn set_disabled(
    opts: &OperatorOptions,
    target: &crate::store::DisableTarget,
    enable: bool,
    reason: &str,
) -> Result<crate::revocation::DisableOutcome, ClientError> {
    let (issuer, subject, role) = target.columns();
    let body = serde_json::json!({
        "issuer": issuer, "subject": subject, "role": role, "reason": reason,
    });
    let path = if enable {
        "v1/admin/enable"
    } else {
        "v1/admin/disable"
    };
    opts.session().await?.post(path, &body).await
}

/// Every disabled identity and role.
pub async fn disabled(
    opts: &OperatorOptions,
) -> Result<Vec<crate::store::DisabledEntry>, ClientError> {
    opts.session().await?.get("v1/admin/disabled").await
}

/// The identity inventory (`stale_days`: days without a certificate after
/// which an identity is stale; the CA's default when `None`).
pub async fn identities(
    opts: &OperatorOptions,
    stale_days: Option<u64>,
) -> Result<crate::inventory::Inventory, ClientError> {
    let path = match stale_days {
        Some(d) => format!("v1/identities?stale_days={d}"),
        None => "v1/identities".to_string(),
    };
    opts.session().await?.get(&path).await
}

/// Every CA key with its slot, fingerprint, age and whether it signs.
pub async fn ca_status(
    opts: &OperatorOptions,
) -> Result<Vec<crate::ca::rotation::KeyStatus>, ClientError> {
    opts.session().await?.get("v1/admin/ca").await
}

/// The hosts that report to the CA, their lag, and the stale and
/// never-reported ones, judged by the CA's `[hosts]`.
pub async fn hosts(opts: &OperatorOptions) -> Result<crate::fleet::FleetView, ClientError> {
    opts.session().await?.get("v1/admin/hosts").await
}

/// The replicas of the CA's store and whether they run one policy.
pub async fn replicas(opts: &OperatorOptions) -> Result<crate::replica::StatusReport, ClientError> {
    opts.session().await?.get("v1/admin/replicas").await
}

/// Audit records matching `q`, oldest first, as the CA host's `mayfly
/// audit search` finds them.
pub async fn audit_search(
    opts: &OperatorOptions,
    q: &AuditQuery,
) -> Result<crate::audit::search::SearchAnswer, ClientError> {
    let mut url = url::Url::parse("http://x/v1/admin/audit")
        .map_err(|e| ClientError::BadAnswer(format!("building the audit search query: {e}")))?;
    {
        let mut p = url.query_pairs_mut();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                p.append_pair(k, &v);
            }
        };
        put("subject", q.subject.clone());
        put("issuer", q.issuer.clone());
        put("role", q.role.clone());
        put("serial", q.serial.map(|n| n.to_string()));
        put("key_id", q.key_id.clone());
        put("event", q.event.clone());
        put("since_ms", q.since_ms.map(|n| n.to_string()));
        put("limit", Some(q.limit.to_string()));
    }
    let path = format!("v1/admin/audit?{}", url.query().unwrap_or(""));
    opts.session().await?.get(&path).await
}
