//! The evidence side: reading the audit log back out of a store and
//! judging it. Above the store (it takes [`crate::store::AuditLog`] trait
//! objects), below the API and the CLI.
//!
//! * [`export`]: `mayfly audit export`, the log as JSON Lines
//!   ([`crate::audit::export`] is the line format).
//! * [`verify`]: `mayfly audit verify` over a stored log or an export
//!   ([`crate::audit::verify`] decides; this module reads).
//! * [`stream`]: live streaming to sinks and periodic signed checkpoints,
//!   off the request path.

pub mod export;
pub mod stream;
pub mod verify;

/// Records or checkpoints read per page from the store.
const PAGE: usize = 10_000;
