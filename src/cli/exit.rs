//! Exit codes: one table for every command, so a script can tell "the CA
//! said no" from "the CA is down" from "you typed it wrong" without
//! parsing messages.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other error (a config or file that cannot be read, a failed `policy test --cases`, ...) |
//! | 2 | usage: bad or missing arguments (clap's own code) |
//! | 3 | refused: a policy denial, an approval denied or not given in time, `policy explain`/`test` answering deny |
//! | 4 | token: no token could be had, or the CA rejected it (HTTP 401) |
//! | 5 | unavailable: the CA cannot be reached or answered 5xx, the store is down, no replica is live |
//! | 6 | rate limited (HTTP 429) |
//! | 7 | not found: an unknown serial, key id, request or role; `audit search` without a match |
//! | 8 | tampered: the audit log (or an export of it) does not verify |
//! | 9 | drift: live replicas enforce different policy (`status`), hosts lag or are stale (`hosts`), `revoke --wait` timed out |
//!
//! `mayfly ssh` and `mayfly exec` exit with their command's own code once
//! it has started; the codes above are theirs only before that.

use std::process::ExitCode;

use mayfly::client::token::TokenSourceError;
use mayfly::client::ClientError;
use mayfly::hostsync::{HostCertError, SyncError};
use mayfly::revocation::RevokeError;
use mayfly::store::StoreError;

/// Why a command did not succeed, as its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Any other error.
    Error = 1,
    /// Bad or missing arguments.
    Usage = 2,
    /// The CA or the policy said no.
    Refused = 3,
    /// No token, or the CA rejected it.
    Token = 4,
    /// The CA or its store cannot serve.
    Unavailable = 5,
    /// Too many requests.
    RateLimited = 6,
    /// What was named does not exist.
    NotFound = 7,
    /// The audit log does not verify.
    Tampered = 8,
    /// Replicas enforce different policy, or hosts are behind the CA.
    Drift = 9,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// An error whose exit code the command decided.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Fail {
    exit: Exit,
    message: String,
}

/// An error with its exit code, for `?` and `bail`-like returns.
pub fn fail(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    Fail {
        exit,
        message: message.into(),
    }
    .into()
}

/// The exit code of an error that ended a command: the first cause in its
/// chain that says what kind of failure it was.
pub fn classify(e: &anyhow::Error) -> Exit {
    e.chain().find_map(kind).unwrap_or(Exit::Error)
}

/// The kind of one error, if it is one whose kind is known. Wrappers that
/// are `#[error(transparent)]` hide their inner error from the chain, so
/// they are opened here.
fn kind(cause: &(dyn std::error::Error + 'static)) -> Option<Exit> {
    if let Some(f) = cause.downcast_ref::<Fail>() {
        return Some(f.exit);
    }
    if let Some(c) = cause.downcast_ref::<ClientError>() {
        return Some(of_client(c));
    }
    if cause.is::<TokenSourceError>() {
        return Some(Exit::Token);
    }
    if let Some(r) = cause.downcast_ref::<RevokeError>() {
        return Some(match r {
            RevokeError::NothingMatched(_) => Exit::NotFound,
            RevokeError::Invalid(_) => Exit::Usage,
            RevokeError::Store(s) => of_store(s),
        });
    }
    if let Some(s) = cause.downcast_ref::<StoreError>() {
        return Some(of_store(s));
    }
    if let Some(s) = cause.downcast_ref::<SyncError>() {
        return Some(of_sync(s));
    }
    if let Some(h) = cause.downcast_ref::<HostCertError>() {
        return match h {
            HostCertError::Client(c) => Some(of_client(c)),
            HostCertError::Token(_) => Some(Exit::Token),
            HostCertError::Sync(s) => Some(of_sync(s)),
            _ => None,
        };
    }
    None
}

/// A failed `host sync` fetch.
fn of_sync(s: &SyncError) -> Exit {
    match s {
        SyncError::ServerUrl { .. } => Exit::Usage,
        SyncError::Unreachable { .. } => Exit::Unavailable,
        SyncError::Status { status, .. } => of_status(*status),
        _ => Exit::Error,
    }
}

/// The CA's answer, by HTTP status.
fn of_client(c: &ClientError) -> Exit {
    match c {
        ClientError::Token(_) => Exit::Token,
        ClientError::ServerUrl { .. } => Exit::Usage,
        ClientError::Unreachable { .. } => Exit::Unavailable,
        ClientError::Refused { status, .. } => of_status(*status),
        ClientError::ApprovalTimeout { .. } => Exit::Refused,
        ClientError::BadAnswer(_) | ClientError::Io { .. } | ClientError::OutDir { .. } => {
            Exit::Error
        }
    }
}

/// An HTTP error status from the CA.
pub fn of_status(status: u16) -> Exit {
    match status {
        401 => Exit::Token,
        403 => Exit::Refused,
        404 => Exit::NotFound,
        429 => Exit::RateLimited,
        500..=599 => Exit::Unavailable,
        _ => Exit::Error,
    }
}

/// A store that failed is unavailable; one that is not there is a
/// configuration error.
fn of_store(s: &StoreError) -> Exit {
    match s {
        StoreError::Backend(_) | StoreError::WriterGone => Exit::Unavailable,
        StoreError::Missing(_) | StoreError::NoSchema(_) => Exit::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_kind_has_its_own_code() {
        let all = [
            Exit::Error,
            Exit::Usage,
            Exit::Refused,
            Exit::Token,
            Exit::Unavailable,
            Exit::RateLimited,
            Exit::NotFound,
            Exit::Tampered,
            Exit::Drift,
        ];
        let mut codes: Vec<u8> = all.iter().map(|e| *e as u8).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        assert!(!codes.contains(&0));
    }

    #[test]
    fn the_cas_statuses_map_to_their_kinds() {
        assert_eq!(of_status(401), Exit::Token);
        assert_eq!(of_status(403), Exit::Refused);
        assert_eq!(of_status(404), Exit::NotFound);
        assert_eq!(of_status(429), Exit::RateLimited);
        assert_eq!(of_status(503), Exit::Unavailable);
        assert_eq!(of_status(400), Exit::Error);
    }

    #[test]
    fn the_first_typed_cause_decides_even_under_context() {
        let e = anyhow::Error::new(ClientError::Refused {
            status: 429,
            code: "rate_limited".into(),
            message: "slow down".into(),
            request_id: "r".into(),
        })
        .context("getting a certificate");
        assert_eq!(classify(&e), Exit::RateLimited);
        let e = fail(Exit::NotFound, "no such serial").context("revoking");
        assert_eq!(classify(&e), Exit::NotFound);
        assert_eq!(classify(&anyhow::anyhow!("anything else")), Exit::Error);
    }
}
