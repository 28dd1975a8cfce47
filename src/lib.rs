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
//!    api      request id + span, bearer, size limit, timeout   -> 400/413
//!    service  (service::issue, in this order)
//!      auth     JWT: alg pinned by issuer key, iss, aud,       -> 401 (503 if
//!               exp/nbf/iat, sub                                  keys unavailable)
//!      policy   role file: issuer, claims, principals, TTL     -> 403 naming the rule
//!      limits   rate limits, max_active_certs                  -> 429 / 403
//!      approval roles that need one: a pending outcome         -> 202
//!      replay   token single use (store counters)              -> 401
//!      spec+ca  grant -> CertSpec (pure), mint re-checks bounds
//!      store    guarded commit of the audit record: disabled?, -> 503 / 403, no cert
//!               max_active_certs?, approval redeemed once?
//!    api      200 {certificate, serial, key_id, ...}
//! ```
//!
//! ## Layers
//!
//! Modules depend downward only (CI runs `scripts/modcycles.py`: no import
//! cycle between them). From the bottom:
//!
//! * base: [`config`], [`clock`] (the injected [`clock::Clock`]), [`time`]
//!   (dates), [`tls`];
//! * domain: [`ca`] (keys, signers, `CertSpec`, mint, KRL codec), [`policy`]
//!   (roles, pure evaluation), [`approval`] (the workflow as a pure state
//!   machine), [`audit`] (the record, the chain and its canonical stored
//!   form, checkpoints, the search query), [`replica`] (replica ids,
//!   heartbeats, live/stale and policy drift);
//! * state: [`store`], async traits by concern with SQLite behind them;
//!   nothing else names SQLite;
//! * core: [`auth`] (token verification, JWKS cache), [`metrics`],
//!   [`service`] (one file per job: issue, spec, limits, approvals, admin,
//!   keys, krl);
//! * operations and evidence: [`reload`], [`heartbeat`] (this replica's
//!   heartbeats, the replicas' status), [`rotation`], [`revocation`],
//!   [`inventory`], [`report`], [`evidence`] (export, verify, stream),
//!   [`migrate`] (a stopped CA's state into an empty store, verified);
//! * edge: [`api`] (axum; extractors and the admin sub-router apply the
//!   cross-cutting rules once), [`server`] (`serve`), [`bench`](mod@bench);
//! * beside: [`client`] and [`hostsync`], the bot and host sides, on one
//!   HTTP client ([`client::http`]).
//!
//! The command line (clap, anyhow, printing) is the binary: `src/main.rs`
//! and `src/cli/`. The library has none of it.
//!
//! ## Security notes
//!
//! * Fail closed: no certificate is returned before its audit record is
//!   durable; unknown roles, claims or issuers are refused.
//! * CA keys are written 0600 and never overwritten; they can be
//!   passphrase-encrypted or kept in a PKCS#11 token (`[ca]`).
//! * Tokens and private keys never appear in logs, errors or `Debug` output.
#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod time;
pub mod tls;

pub mod approval;
pub mod audit;
pub mod ca;
pub mod fleet;
pub mod policy;
pub mod replica;

pub mod store;

pub mod auth;
pub mod metrics;
pub mod service;

pub mod evidence;
pub mod heartbeat;
pub mod inventory;
pub mod migrate;
pub mod reload;
pub mod report;
pub mod revocation;
pub mod rotation;

pub mod api;
pub mod bench;
pub mod console;
pub mod server;

pub mod client;
pub mod hostsync;
