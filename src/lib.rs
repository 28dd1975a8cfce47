//! # mayfly: an ephemeral SSH certificate authority for machines
//!
//! A bot (CI job, Kubernetes pod, cron service) proves who it is with a
//! workload token it already has (an OIDC ID token, a service-account JWT).
//! mayfly verifies the token, finds the role the bot asked for in policy
//! files kept in git, and signs the bot's fresh public key into an OpenSSH
//! certificate that is valid for minutes. Hosts trust the CA key through
//! sshd `TrustedUserCAKeys`; no long-lived key is copied anywhere.
//!
//! ## Request lifecycle
//!
//! ```text
//!  POST /v1/certs/user (Bearer JWT, public key, role)
//!    api      parse, size limit, request id, timeout         -> 400/413
//!    auth     JWT: alg pinned by issuer key, iss, aud,       -> 401 (503 if
//!             exp/nbf/iat, sub                                  keys unavailable)
//!    policy   role file: issuer, claims, principals, TTL     -> 403 naming the rule
//!    auth     replay: token single use                       -> 401
//!    ca       mint: re-check bounds, sign with the CA key
//!    store    audit record committed (group commit, fsync)   -> 503, no cert
//!    api      200 {certificate, serial, key_id, ...}
//! ```
//!
//! Modules depend downward only: `api -> service -> {auth, policy, ca,
//! store}`; `policy` receives verified claims and knows nothing of JWTs, `ca`
//! knows nothing of HTTP, and only `store` writes SQL.
//!
//! ## Security notes
//!
//! * Fail closed: no certificate is returned before its audit record is
//!   durable; unknown roles, claims or issuers are refused.
//! * CA keys are written 0600 and never overwritten. This version stores
//!   them unencrypted on disk; protect the data directory.
//! * Tokens and private keys never appear in logs, errors or `Debug` output.
#![forbid(unsafe_code)]

pub mod api;
pub mod approval;
pub mod audit;
pub mod auth;
pub mod bench;
pub mod ca;
pub mod client;
pub mod clock;
pub mod config;
pub mod evidence;
pub mod hostsync;
pub mod inventory;
pub mod metrics;
pub mod policy;
pub mod reload;
pub mod report;
pub mod revocation;
pub mod rotation;
pub mod server;
pub mod service;
pub mod store;
pub mod time;
pub mod tls;
