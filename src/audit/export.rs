//! The SIEM export format: one JSON object per line, ECS-like (Elastic
//! Common Schema field names where one fits, `ssh.*` and `mayfly.*`
//! otherwise). The full schema is in `docs/audit-schema.md`.
//!
//! Every line carries the record's chain position and hashes
//! (`mayfly.audit.seq`, `.hash`, `.prev_hash`) and every field the hash
//! covers, so a file of exported lines can be re-verified on its own
//! ([`record_from_line`] is the exact inverse of [`to_line`]), and lines a
//! SIEM already holds anchor the database outside the CA host.

use std::io::BufRead;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::chain::{self, StoredRecord};

/// Version of this line schema (`mayfly.audit.schema`); bumped only for
/// incompatible changes, fields are only ever added.
pub const SCHEMA_VERSION: u32 = 1;

/// ECS version the field names follow.
const ECS_VERSION: &str = "8.11.0";

/// Why an exported line could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// Not JSON of the expected shape.
    #[error("not a mayfly audit line: {0}")]
    Json(#[from] serde_json::Error),
    /// A field has a value an export never contains.
    #[error("{0}")]
    Field(String),
}

/// One exported line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Line {
    /// Record time, RFC 3339 UTC with milliseconds.
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    /// One-line human summary (not covered by the hash).
    #[serde(default)]
    pub message: String,
    /// ECS version.
    #[serde(default)]
    pub ecs: Ecs,
    /// What happened.
    pub event: Event,
    /// The workload identity (token subject and issuer).
    #[serde(default, skip_serializing_if = "User::is_empty")]
    pub user: User,
    /// The client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// The certificate.
    #[serde(default, skip_serializing_if = "Ssh::is_empty")]
    pub ssh: Ssh,
    /// ECS `related.*` for pivoting.
    #[serde(default, skip_serializing_if = "Related::is_empty")]
    pub related: Related,
    /// mayfly's own fields.
    pub mayfly: Mayfly,
}

/// `ecs.*`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Ecs {
    /// ECS version.
    #[serde(default)]
    pub version: String,
}

/// `event.*`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Event {
    /// Always `event`.
    #[serde(default)]
    pub kind: String,
    /// `iam`.
    #[serde(default)]
    pub category: Vec<String>,
    /// ECS event type (`creation`, `deletion`, `change`, `denied`, `info`).
    #[serde(default, rename = "type")]
    pub kind_type: Vec<String>,
    /// The audit event name (`cert_issued`, `cert_denied`, ...).
    pub action: String,
    /// `success` or `failure`.
    #[serde(default)]
    pub outcome: String,
    /// Human reason (refusals, revocations, deactivations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The chain hash: unique per record, for de-duplication.
    #[serde(default)]
    pub id: String,
    /// `mayfly.audit`.
    #[serde(default)]
    pub dataset: String,
    /// `mayfly`.
    #[serde(default)]
    pub module: String,
}

/// `user.*`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct User {
    /// Token subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Issuer name (the identity's domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl User {
    fn is_empty(&self) -> bool {
        self.name.is_none() && self.domain.is_none()
    }
}

/// `source.*`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Source {
    /// Client socket address as recorded (`ip:port`).
    pub address: String,
    /// The IP part, when the address parses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The port part, when the address parses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// `ssh.*`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Ssh {
    /// `ssh.cert.*`.
    #[serde(default, skip_serializing_if = "Cert::is_empty")]
    pub cert: Cert,
}

impl Ssh {
    fn is_empty(&self) -> bool {
        self.cert.is_empty()
    }
}

/// `ssh.cert.*`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Cert {
    /// Serial (issuance records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<u64>,
    /// Key id, as sshd logs it on login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Granted principals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Validity start (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_after: Option<i64>,
    /// Validity end (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_before: Option<i64>,
    /// `user` or `host`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub cert_type: Option<String>,
    /// `SHA256:` fingerprint of the certified public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// OpenSSH line of the CA key that signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<String>,
}

impl Cert {
    fn is_empty(&self) -> bool {
        *self == Cert::default()
    }
}

/// `related.*`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Related {
    /// Key fingerprints in the record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash: Vec<String>,
    /// Subjects and actors in the record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user: Vec<String>,
}

impl Related {
    fn is_empty(&self) -> bool {
        self.hash.is_empty() && self.user.is_empty()
    }
}

/// `mayfly.*`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Mayfly {
    /// Requested role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Request id (as returned to the client; `admin` for CLI changes).
    pub request_id: String,
    /// Stable refusal code (`claim_mismatch`, ...) or revocation scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<String>,
    /// Who performed an administrative action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The job behind the token: its issuer's `audit_claims` (`run_id`,
    /// `sha`, `actor`, ...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub job: std::collections::BTreeMap<String, String>,
    /// The token used.
    #[serde(default, skip_serializing_if = "Token::is_empty")]
    pub token: Token,
    /// The policy that decided.
    #[serde(default, skip_serializing_if = "PolicyRef::is_empty")]
    pub policy: PolicyRef,
    /// Chain position and hashes.
    pub audit: Audit,
}

/// `mayfly.token.*`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Token {
    /// Replay id (`issuer:jti` or a hash); never the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Token expiry (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
}

impl Token {
    fn is_empty(&self) -> bool {
        self.id.is_none() && self.exp.is_none()
    }
}

/// `mayfly.policy.*`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PolicyRef {
    /// Digest of the policy version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl PolicyRef {
    fn is_empty(&self) -> bool {
        self.digest.is_none()
    }
}

/// `mayfly.audit.*`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Audit {
    /// Position in the log.
    pub seq: u64,
    /// Chain hash of this record (hex).
    #[serde(default)]
    pub hash: String,
    /// Chain hash of the record before (hex).
    #[serde(default)]
    pub prev_hash: String,
    /// Chain encoding version.
    #[serde(default)]
    pub chain: u32,
    /// Line schema version.
    #[serde(default)]
    pub schema: u32,
}

/// `success`, or `failure` for refusals (`*_denied`, `*_failed`).
pub fn outcome(event: &str) -> &'static str {
    if event.ends_with("_denied") || event.ends_with("_failed") {
        "failure"
    } else {
        "success"
    }
}

fn ecs_type(event: &str) -> &'static str {
    match event {
        "cert_issued" => "creation",
        "cert_revoked" => "deletion",
        "disabled" | "enabled" => "change",
        e if outcome(e) == "failure" => "denied",
        _ => "info",
    }
}

/// The last millisecond RFC 3339 can write: 9999-12-31T23:59:59.999Z.
pub const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

/// RFC 3339 UTC with milliseconds for unix ms. Times before 1970 clamp to
/// 1970 and times after year 9999 to its last millisecond (a stored record
/// can hold any integer; the formatter would panic on those).
pub fn rfc3339_ms(time_ms: i64) -> String {
    let ms = time_ms.clamp(0, MAX_RFC3339_MS) as u64;
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn summary(r: &StoredRecord) -> String {
    let mut s = r.event.clone();
    let mut kv = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            s.push_str(&format!(" {k}={v}"));
        }
    };
    kv("role", &r.role);
    kv("issuer", &r.issuer);
    kv("subject", &r.subject);
    kv("key_id", &r.key_id);
    kv("actor", &r.actor);
    if let Some(job) = r.claims.as_deref().and_then(chain::parse_claims) {
        if !job.is_empty() {
            s.push_str(&format!(" job=[{}]", super::claims::one_line(&job)));
        }
    }
    if let Some(reason) = &r.reason {
        s.push_str(": ");
        s.push_str(reason);
    }
    s
}

/// The export line of a stored record.
pub fn to_line(r: &StoredRecord) -> Line {
    let source = r.client_addr.as_ref().map(|a| {
        let parsed = a.parse::<std::net::SocketAddr>().ok();
        Source {
            address: a.clone(),
            ip: parsed.map(|p| p.ip().to_string()),
            port: parsed.map(|p| p.port()),
        }
    });
    let mut related = Related::default();
    if let Some(f) = &r.key_fingerprint {
        related.hash.push(f.clone());
    }
    for u in [&r.subject, &r.actor].into_iter().flatten() {
        if !related.user.contains(u) {
            related.user.push(u.clone());
        }
    }
    Line {
        timestamp: rfc3339_ms(r.time_ms),
        message: summary(r),
        ecs: Ecs {
            version: ECS_VERSION.into(),
        },
        event: Event {
            kind: "event".into(),
            category: vec!["iam".into()],
            kind_type: vec![ecs_type(&r.event).into()],
            action: r.event.clone(),
            outcome: outcome(&r.event).into(),
            reason: r.reason.clone(),
            id: r.hash.as_ref().map(chain::hex).unwrap_or_default(),
            dataset: "mayfly.audit".into(),
            module: "mayfly".into(),
        },
        user: User {
            name: r.subject.clone(),
            domain: r.issuer.clone(),
        },
        source,
        ssh: Ssh {
            cert: Cert {
                serial: r.serial.map(|s| s as u64),
                key_id: r.key_id.clone(),
                principals: r.principals.clone(),
                valid_after: r.valid_after,
                valid_before: r.valid_before,
                cert_type: r.cert_type.clone(),
                key_fingerprint: r.key_fingerprint.clone(),
                ca_key: r.ca_key.clone(),
            },
        },
        related,
        mayfly: Mayfly {
            role: r.role.clone(),
            request_id: r.request_id.clone(),
            reason_code: r.reason_code.clone(),
            actor: r.actor.clone(),
            job: r
                .claims
                .as_deref()
                .and_then(chain::parse_claims)
                .unwrap_or_default(),
            token: Token {
                id: r.token_id.clone(),
                exp: r.token_exp,
            },
            policy: PolicyRef {
                digest: r.policy_digest.clone(),
            },
            audit: Audit {
                seq: r.seq,
                hash: r.hash.as_ref().map(chain::hex).unwrap_or_default(),
                prev_hash: r.prev_hash.as_ref().map(chain::hex).unwrap_or_default(),
                chain: chain::record_version(r),
                schema: SCHEMA_VERSION,
            },
        },
    }
}

/// The export line of a stored record as JSON text (no newline).
pub fn to_json(r: &StoredRecord) -> String {
    serde_json::to_string(&to_line(r)).unwrap_or_default()
}

/// The stored record an export line describes: the inverse of [`to_line`].
pub fn record_from_line(text: &str) -> Result<StoredRecord, LineError> {
    record_of(serde_json::from_str(text)?)
}

/// The stored record an export line describes (see [`record_from_line`]).
pub fn record_of(l: Line) -> Result<StoredRecord, LineError> {
    let field = |m: String| LineError::Field(m);
    let time = humantime::parse_rfc3339(&l.timestamp)
        .map_err(|e| field(format!("@timestamp {:?}: {e}", l.timestamp)))?;
    let time_ms = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| field("@timestamp is before 1970".into()))?;
    let hash_of = |name: &str, s: &str| -> Result<Option<chain::Hash>, LineError> {
        if s.is_empty() {
            return Ok(None);
        }
        chain::parse_hex(s)
            .map(Some)
            .ok_or_else(|| field(format!("mayfly.audit.{name} is not 64 hex digits")))
    };
    if !(1..=chain::CHAIN_VERSION).contains(&l.mayfly.audit.chain) {
        return Err(field(format!(
            "mayfly.audit.chain {} is not a chain version this mayfly knows (1 to {})",
            l.mayfly.audit.chain,
            chain::CHAIN_VERSION
        )));
    }
    let claims = chain::claims_json(&l.mayfly.job);
    if (claims.is_some() && l.mayfly.audit.chain < 2)
        || (claims.is_none() && l.mayfly.audit.chain > 1)
    {
        return Err(field(format!(
            "mayfly.audit.chain {} does not fit the record: chain 2 is the records with mayfly.job, 1 those without",
            l.mayfly.audit.chain
        )));
    }
    Ok(StoredRecord {
        seq: l.mayfly.audit.seq,
        time_ms,
        event: l.event.action,
        request_id: l.mayfly.request_id,
        client_addr: l.source.map(|s| s.address),
        issuer: l.user.domain,
        subject: l.user.name,
        role: l.mayfly.role,
        reason_code: l.mayfly.reason_code,
        reason: l.event.reason,
        serial: l.ssh.cert.serial.map(|s| s as i64),
        key_id: l.ssh.cert.key_id,
        principals: l.ssh.cert.principals,
        valid_after: l.ssh.cert.valid_after,
        valid_before: l.ssh.cert.valid_before,
        key_fingerprint: l.ssh.cert.key_fingerprint,
        token_id: l.mayfly.token.id,
        token_exp: l.mayfly.token.exp,
        policy_digest: l.mayfly.policy.digest,
        cert_type: l.ssh.cert.cert_type,
        ca_key: l.ssh.cert.ca_key,
        actor: l.mayfly.actor,
        claims,
        prev_hash: hash_of("prev_hash", &l.mayfly.audit.prev_hash)?,
        hash: hash_of("hash", &l.mayfly.audit.hash)?,
    })
}

/// Reads an exported file: each non-empty line as a record, or why not
/// (with its 1-based line number).
pub fn read_lines(
    input: impl BufRead,
    f: &mut dyn FnMut(usize, Result<StoredRecord, LineError>) -> bool,
) -> std::io::Result<()> {
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        if !f(i + 1, record_from_line(&line)) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> StoredRecord {
        let mut r = StoredRecord {
            seq: 7,
            time_ms: 1_793_491_200_123,
            event: "cert_issued".into(),
            request_id: "r-1".into(),
            client_addr: Some("10.0.0.5:40222".into()),
            issuer: Some("ci".into()),
            subject: Some("repo:acme/api:ref:refs/heads/main".into()),
            role: Some("deploy".into()),
            serial: Some(1 << 55),
            key_id: Some("mayfly:deploy:ci:x:1".into()),
            principals: vec!["deploy".into(), "ops".into()],
            valid_after: Some(1_793_491_140),
            valid_before: Some(1_793_491_500),
            key_fingerprint: Some("SHA256:abc".into()),
            token_id: Some("ci:jti-1".into()),
            token_exp: Some(1_793_491_500),
            policy_digest: Some("sha256:p".into()),
            cert_type: Some("user".into()),
            ca_key: Some("ssh-ed25519 AAAA mayfly-user-ca".into()),
            ..StoredRecord::default()
        };
        chain::chain(std::slice::from_mut(&mut r), [3; 32]);
        r
    }

    #[test]
    fn times_outside_rfc3339_are_clamped_not_a_panic() {
        assert_eq!(rfc3339_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(MAX_RFC3339_MS + 1), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(i64::MIN), "1970-01-01T00:00:00.000Z");
        let r = StoredRecord {
            time_ms: i64::MAX,
            ..rec()
        };
        assert!(to_json(&r).contains("\"@timestamp\":\"9999-12-31T23:59:59.999Z\""));
    }

    #[test]
    fn line_round_trips_to_the_same_record_and_hash() {
        let r = rec();
        let text = to_json(&r);
        let back = record_from_line(&text).expect("parses");
        assert_eq!(back, r);
        assert_eq!(chain::record_hash(&back, &[3; 32]), r.hash.expect("hash"));
        let mut denied = StoredRecord {
            event: "cert_denied".into(),
            serial: None,
            principals: vec![],
            reason: Some("deploy.toml claims.sub: no".into()),
            reason_code: Some("claim_mismatch".into()),
            client_addr: None,
            ..r
        };
        chain::chain(std::slice::from_mut(&mut denied), [1; 32]);
        assert_eq!(record_from_line(&to_json(&denied)).expect("parses"), denied);
    }

    #[test]
    fn line_uses_the_documented_field_names() {
        let v: serde_json::Value = serde_json::from_str(&to_json(&rec())).expect("json");
        assert_eq!(v["@timestamp"], "2026-11-01T00:00:00.123Z");
        assert_eq!(v["event"]["action"], "cert_issued");
        assert_eq!(v["event"]["outcome"], "success");
        assert_eq!(v["user"]["name"], "repo:acme/api:ref:refs/heads/main");
        assert_eq!(v["user"]["domain"], "ci");
        assert_eq!(v["mayfly"]["role"], "deploy");
        assert_eq!(v["ssh"]["cert"]["serial"], 1u64 << 55);
        assert_eq!(v["ssh"]["cert"]["principals"][1], "ops");
        assert_eq!(v["source"]["ip"], "10.0.0.5");
        assert_eq!(v["related"]["hash"][0], "SHA256:abc");
        assert_eq!(v["mayfly"]["audit"]["seq"], 7);
        assert_eq!(v["mayfly"]["audit"]["prev_hash"], chain::hex(&[3; 32]));
        assert_eq!(v["event"]["id"], v["mayfly"]["audit"]["hash"]);
    }

    #[test]
    fn an_edited_line_no_longer_matches_its_hash() {
        let r = rec();
        let text = to_json(&r).replace("\"deploy\",\"ops\"", "\"deploy\",\"root\"");
        let back = record_from_line(&text).expect("parses");
        assert_ne!(chain::record_hash(&back, &[3; 32]), r.hash.expect("hash"));
    }
}
