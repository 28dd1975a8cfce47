//! OpenSSH Key Revocation Lists (PROTOCOL.krl).
//!
//! This version publishes the header only (nothing is revocable yet), which
//! sshd's `RevokedKeys` accepts as "nothing revoked".

/// `SSHKRL\n\0`
const KRL_MAGIC: &[u8; 8] = b"SSHKRL\n\0";
const KRL_FORMAT_VERSION: u32 = 1;

/// Encodes a KRL with no revocations.
pub fn encode_empty(krl_version: u64, generated_date: u64, comment: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(KRL_MAGIC);
    out.extend_from_slice(&KRL_FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&krl_version.to_be_bytes());
    out.extend_from_slice(&generated_date.to_be_bytes());
    out.extend_from_slice(&0u64.to_be_bytes()); // flags
    out.extend_from_slice(&0u32.to_be_bytes()); // reserved: empty string
    out.extend_from_slice(&(comment.len() as u32).to_be_bytes());
    out.extend_from_slice(comment.as_bytes());
    out
}
